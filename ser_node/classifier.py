"""Runtime emotion classifier: an exported ONNX model in ONNX Runtime, numpy only (no torch on the robot)."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .features import FeatureExtractor
from .model_file import INPUT_NAME, OUTPUT_NAME, ModelFileError, ModelMetadata, metadata_of_session

log = logging.getLogger(__name__)

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


def resolve_providers(device: str) -> tuple[list[str], str | None]:
    """Execution providers for a device name (cpu, cuda, tensorrt; comma-separated for a preference order).

    Returns the providers to use (always ending with CPU) and a warning when a requested one is unavailable.
    """
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    wanted: list[str] = []
    missing: list[str] = []
    for name in (part.strip().lower() for part in device.split(",") if part.strip()):
        if name not in PROVIDERS:
            raise ValueError(f"unknown device {name!r}; choose from {sorted(PROVIDERS)}")
        provider = PROVIDERS[name]
        (wanted if provider in available else missing).append(provider)
    if "CPUExecutionProvider" not in wanted:
        wanted.append("CPUExecutionProvider")
    warning = None
    if missing:
        warning = f"execution provider(s) {missing} not available in this onnxruntime build; falling back to {wanted}"
    return wanted, warning


class Classifier:
    """Loads a ser_node model file and returns per-class probabilities for 16 kHz mono utterances."""

    def __init__(self, path: str | Path, device: str = "cpu", threads: int = 0,
                 warn: Callable[[str], None] | None = None) -> None:
        """`warn` receives the provider-fallback warning (default: this module's logger; the node passes its own
        ROS logger, so the warning appears once, formatted like the rest of its log)."""
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise ModelFileError(f"{self.path}: model file not found")
        providers, warning = resolve_providers(device)
        if warning:
            (warn or log.warning)(warning)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or max(1, min(2, os.cpu_count() or 1))
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle threads must not spin: the robot's CPU is shared with navigation and vision.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=providers)
        except Exception as error:
            raise ModelFileError(f"{self.path}: not a loadable ONNX model ({error})") from error
        self.metadata: ModelMetadata = metadata_of_session(self.session, self.path)
        self._check_graph()
        self.features = FeatureExtractor(self.metadata.features)
        self.providers: list[str] = self.session.get_providers()
        self._probe()

    def _probe(self) -> None:
        """A real inference at load time, on batches of one and two utterances of different lengths: a model that
        loads but answers in the wrong shape (or with NaN) is refused here, not discovered on live speech."""
        rng = np.random.default_rng(0)
        rate = self.metadata.features.sample_rate
        short, long = (0.05 * rng.standard_normal(n).astype(np.float32) for n in (rate // 2, 3 * rate))
        for batch in ([short], [short, long]):
            try:
                scores = self.predict(batch)
            except Exception as error:  # onnxruntime raises several types for graphs that fail at run time
                raise ModelFileError(f"{self.path}: inference on a probe input failed ({error})") from error
            expected = (len(batch), len(self.classes))
            if np.shape(scores) != expected:
                raise ModelFileError(f"{self.path}: the model answered a probe batch of {len(batch)} with shape "
                                     f"{np.shape(scores)}, expected {expected} (batch, classes)")
            if not np.isfinite(scores).all():
                raise ModelFileError(f"{self.path}: the model's scores on a probe input are not finite")

    def _check_graph(self) -> None:
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        if INPUT_NAME not in inputs or OUTPUT_NAME not in outputs:
            raise ModelFileError(
                f"{self.path}: graph needs input '{INPUT_NAME}' and output '{OUTPUT_NAME}', "
                f"has inputs {sorted(inputs)} and outputs {sorted(outputs)}"
            )
        shape = inputs[INPUT_NAME].shape
        cfg = self.metadata.features
        if len(shape) != 4 or list(shape[1:]) != [3, cfg.image_height, cfg.image_width]:
            raise ModelFileError(
                f"{self.path}: input shape {shape} does not match the feature settings "
                f"(N, 3, {cfg.image_height}, {cfg.image_width}) stored in its metadata"
            )
        out_shape = outputs[OUTPUT_NAME].shape
        if isinstance(out_shape[-1], int) and out_shape[-1] != len(self.metadata.classes):
            raise ModelFileError(
                f"{self.path}: the graph outputs {out_shape[-1]} scores but the metadata lists "
                f"{len(self.metadata.classes)} classes"
            )

    @property
    def classes(self) -> list[str]:
        return self.metadata.classes

    @property
    def model_id(self) -> str:
        return self.metadata.model_id

    def predict_images(self, images: np.ndarray) -> np.ndarray:
        """Probabilities (N, classes) for a batch of feature images (N, 3, H, W)."""
        if len(images) == 0:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        (probabilities,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(images, np.float32)})
        return probabilities

    def predict(self, waveforms: Sequence[np.ndarray]) -> np.ndarray:
        """Probabilities (N, classes) for N mono float waveforms at the model's sample rate."""
        return self.predict_images(self.features.batch(waveforms))
