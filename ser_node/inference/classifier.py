"""Runtime emotion classifier: an exported ONNX model in ONNX Runtime, numpy only (no torch on the robot).

Two kinds of model file: DeepSpectrum networks (input `image`: a viridis mel image per utterance) and the voice
encoder model (a streaming step of the GE2E encoder over mel frames and the heads on its state, with
`speaker_offset` for speaker normalisation in feature space; outputs the pooled features and a speaker embedding
beside the probabilities; see inference/voice_stream.py). `prepare` and `infer` hide the difference from the node;
`predict` gives unnormalised probabilities for either.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .adaptation import DEFAULT_WARMUP
from .features import FeatureExtractor
from .model_file import INPUT_NAME, OUTPUT_NAME, ModelFileError, ModelMetadata, metadata_of_session
from .prosody import PROSODY_SIZE, PROSODY_VERSION
from .voice_stream import (HEAD_OUTPUTS, PROSODY_INPUT, SCALE_INPUT, STEP_INPUTS, STEP_OUTPUTS, EncoderState,
                           VoiceStream)


@dataclass
class Inference:
    """One utterance's result: the probabilities to publish, and for voice models the pooled features (what
    speaker normalisation averages) and the speaker embedding (who is talking)."""

    probabilities: np.ndarray
    features: np.ndarray | None = None
    speaker_embedding: np.ndarray | None = None
    plain: np.ndarray | None = None  # voice models: the plain head's probabilities (a balanced history weighs by them)
    rejected: str = ""  # why it is not to be published (e.g. "self_voice"): then it changed no speaker state

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
        def open_session(intra_op_threads: int) -> Any:
            options = ort.SessionOptions()
            options.intra_op_num_threads = intra_op_threads
            options.inter_op_num_threads = 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            # Idle threads must not spin: the robot's CPU is shared with navigation and vision.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            try:
                return ort.InferenceSession(str(self.path), sess_options=options, providers=providers)
            except Exception as error:
                raise ModelFileError(f"{self.path}: not a loadable ONNX model ({error})") from error

        automatic = max(1, min(2, os.cpu_count() or 1))
        self.session = open_session(threads or automatic)
        self.metadata: ModelMetadata = metadata_of_session(self.session, self.path)
        self.is_voice_model = "frames" in {i.name for i in self.session.get_inputs()}
        if self.is_voice_model and not threads and automatic > 1:
            # An LSTM gains nothing from a second thread, and stepped in blocks it pays for waking one at every
            # run (in process, 100 ms blocks: 20 against 14 ms of CPU per second of speech on one thread). This
            # opens the model a second time at load; the voice graph is only known once it is open.
            self.session = open_session(1)
        if self.is_voice_model:
            self._check_voice_graph()
        else:
            self._check_graph()
        self.features = FeatureExtractor(self.metadata.features)
        self.providers: list[str] = self.session.get_providers()
        self.requested_providers = providers
        if self.providers[0] != providers[0]:  # the build has it, but it could not start (no CUDA libraries, ...)
            (warn or log.warning)(f"{providers[0]} was requested and is in this onnxruntime build, but the session "
                                  f"runs on {self.providers[0]}: see onnxruntime's log for why it did not load")
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
        if self.is_voice_model:  # the normalised path too, with an offset as the node passes it
            try:
                result = self.infer(self.prepare([short]), [np.zeros(self.feature_size, np.float32)])[0]
            except Exception as error:
                raise ModelFileError(f"{self.path}: normalised inference on a probe input failed ({error})") from error
            if result.features is None or result.features.shape != (self.feature_size,) \
                    or not np.isfinite(result.probabilities).all():
                raise ModelFileError(f"{self.path}: the model's normalised outputs on a probe input are unusable")

    def _check_voice_graph(self) -> None:
        from .voice_frontend import COMPUTABLE_FRONTENDS

        version = self.metadata.model.get("frontend_version")
        if version not in COMPUTABLE_FRONTENDS:
            raise ModelFileError(f"{self.path}: built for voice front end version {version}, this ser_node computes "
                                 f"{list(COMPUTABLE_FRONTENDS)}: re-export it with this version's ser_train_voice")
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        if set(STEP_INPUTS) - set(inputs) or set(STEP_OUTPUTS + HEAD_OUTPUTS) - outputs:
            raise ModelFileError(f"{self.path}: a voice model needs inputs {list(STEP_INPUTS)} and outputs "
                                 f"{list(STEP_OUTPUTS + HEAD_OUTPUTS)}; has {sorted(inputs)} and {sorted(outputs)}")
        frames = inputs["frames"].shape
        if len(frames) != 3 or frames[2] != self.metadata.features.n_mels:
            raise ModelFileError(f"{self.path}: input 'frames' has shape {frames}, expected (N, T, "
                                 f"{self.metadata.features.n_mels}) from its metadata")
        size = inputs["speaker_offset"].shape[-1]
        if not isinstance(size, int) or size != self.metadata.model.get("feature_size"):
            raise ModelFileError(f"{self.path}: speaker_offset width {size} does not match feature_size "
                                 f"{self.metadata.model.get('feature_size')} in its metadata")
        prosody = self.metadata.model.get("prosody")
        if (PROSODY_INPUT in inputs) != (prosody is not None):
            raise ModelFileError(f"{self.path}: the graph {'has' if PROSODY_INPUT in inputs else 'lacks'} the input "
                                 f"'{PROSODY_INPUT}' but its metadata {'lacks' if prosody is None else 'has'} "
                                 "'prosody'")
        if prosody is not None and (prosody.get("version") != PROSODY_VERSION
                                    or inputs[PROSODY_INPUT].shape[-1] != PROSODY_SIZE):
            raise ModelFileError(f"{self.path}: built for prosody version {prosody.get('version')} of width "
                                 f"{inputs[PROSODY_INPUT].shape[-1]}, this ser_node computes version "
                                 f"{PROSODY_VERSION} of width {PROSODY_SIZE}: re-export it with this version")
        scaled = bool(self.metadata.model.get("speaker_scale"))
        if (SCALE_INPUT in inputs) != scaled:
            raise ModelFileError(f"{self.path}: the graph {'has' if SCALE_INPUT in inputs else 'lacks'} the input "
                                 f"'{SCALE_INPUT}' but its metadata {'says' if scaled else 'does not say'} "
                                 "speaker_scale")
        self._no_offset = np.zeros((1, size), np.float32)
        self._no_prosody = np.zeros((1, PROSODY_SIZE), np.float32)
        self._dummy_frame = np.zeros((1, 1, self.metadata.features.n_mels), np.float32)

    @property
    def adapter_settings(self) -> dict[str, Any]:
        """SpeakerAdapter history, shrinkage, balance and spread shrinkage stored in a voice model's metadata (what its
        LOSO figures were measured with); empty for models without them (the adapter's own defaults apply)."""
        normalisation = self.metadata.model.get("normalisation", {})
        return {k: normalisation[k] for k in ("history", "shrinkage", "balance", "spread_shrinkage")
                if k in normalisation}

    @property
    def recommended_warmup(self) -> int:
        """Utterances of a voice before its normalisation starts, as the model's LOSO figures were measured (a voice
        model's recipe warm-up); 5 for models that do not say."""
        return int(self.metadata.model.get("normalisation", {}).get("warmup", DEFAULT_WARMUP))

    @property
    def frontend_version(self) -> int:
        """Voice models: what reaches the encoder (voice_frontend.StreamingFrontEnd's version) for this model."""
        return int(self.metadata.model["frontend_version"])

    @property
    def uses_spread(self) -> bool:
        """Voice models trained with speaker_scale: the normalised head reads the centred features divided by the
        voice's spread (SpeakerAdapter.spread), given beside each offset."""
        return bool(self.metadata.model.get("speaker_scale"))

    @property
    def prosody_size(self) -> int:
        """Voice models with a prosody head: the width of the prosody block the graph reads (0 without)."""
        return int(self.metadata.model.get("prosody", {}).get("size", 0))

    @property
    def feature_size(self) -> int:
        """Width of the per-utterance feature vector that speaker normalisation averages (voice models)."""
        return int(self.metadata.model.get("feature_size", 0))

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

    def prepare(self, waveforms: Sequence[np.ndarray]) -> Any:
        """The model's input for N waveforms: images for DeepSpectrum models; for voice models the encoder's final
        state, as the node computes it while an utterance is spoken (here fed whole: the same result)."""
        if self.is_voice_model:
            return [self.encode(w) for w in waveforms]
        return self.features.batch(waveforms)

    def encode(self, waveform: np.ndarray) -> EncoderState:
        """Voice models: one utterance through the causal front end and the encoder's step."""
        stream = VoiceStream(self)
        stream.push(waveform)
        return stream.finish()

    def step(self, state: EncoderState, frames: np.ndarray) -> EncoderState:
        """Voice models: the encoder state after `frames` (T, n_mels) more."""
        feed = self._voice_feed(np.ascontiguousarray(frames[None], np.float32), state, self._no_offset)
        h, c, sums, count = self.session.run(list(STEP_OUTPUTS), feed)
        return EncoderState(h, c, sums, count, model=self)

    def _voice_feed(self, frames: np.ndarray, state: EncoderState, offsets: np.ndarray,
                    heads: bool = False, spreads: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The voice graph's inputs (STEP_INPUTS): frames, the state, speaker offsets; for models with a prosody
        head the state's prosody block (zeros for a step, whose head outputs nobody reads); for models with
        speaker_scale the spreads (ones where none are given: the offsets alone)."""
        feed = dict(zip(STEP_INPUTS, (frames, state.h, state.c, state.sums, state.count, offsets)))
        if self.prosody_size:
            if heads and state.prosody is None:
                raise ValueError("this model's heads read the utterance's prosody, and the encoder state has none")
            feed[PROSODY_INPUT] = state.prosody if heads else self._no_prosody
        if self.uses_spread:
            feed[SCALE_INPUT] = (np.ones_like(offsets) if spreads is None
                                 else np.ascontiguousarray(spreads, np.float32).reshape(offsets.shape))
        return feed

    def infer(self, prepared: Any, offsets: Sequence[np.ndarray | None] | None = None,
              spreads: Sequence[np.ndarray | None] | None = None) -> list[Inference]:
        """Results for prepared inputs. Voice models: an utterance with an offset is judged by the normalised head
        on its features minus the offset (divided by its spread, for models with speaker_scale), one without by
        the plain head. DeepSpectrum models ignore offsets."""
        if not self.is_voice_model:
            return [Inference(row) for row in self.predict_images(prepared)]
        results = []
        for i, state in enumerate(prepared):
            offset = None if offsets is None else offsets[i]
            normalised, result = self.infer_candidates(
                state, np.zeros(self.feature_size, np.float32) if offset is None else offset,
                None if spreads is None or offset is None else spreads[i])
            if offset is not None:
                result.probabilities = normalised[0]
            results.append(result)
        return results

    def infer_candidates(self, state: EncoderState, offsets: np.ndarray,
                         spreads: np.ndarray | None = None) -> tuple[np.ndarray, Inference]:
        """Voice models, one encoded utterance judged against several offsets (K, feature_size) in one run (and
        the voices' spreads, same shape, for models with speaker_scale): (normalised probabilities (K, classes),
        the Inference with the plain head's probabilities). The heads read the state given; the graph's step part
        gets one dummy frame and its outputs are not fetched."""
        if state.frames < 1:
            raise ValueError("an encoder state of no frames has no features (every utterance gives at least one)")
        feed = self._voice_feed(self._dummy_frame, state,
                                np.ascontiguousarray(offsets, np.float32).reshape(-1, self.feature_size), heads=True,
                                spreads=spreads)
        normalised, plain, features, speaker = self.session.run(list(HEAD_OUTPUTS), feed)
        return normalised, Inference(plain[0], features[0], speaker[0], plain[0])

    def infer_adapted(self, prepared_one: Any, adapter: Any,
                      reject: Callable[[Inference], str] | None = None) -> Inference:
        """One prepared utterance judged against its speaker's earlier ones, then added to them: feature offsets
        for voice models, log-probability adaptation for DeepSpectrum models (adaptation.SpeakerAdapter).
        `reject(result)` may name a reason to drop a voice model's utterance before it joins the adapter."""
        from .adaptation import adapt_log_probabilities

        if self.is_voice_model:
            (result,) = self.infer([prepared_one], [adapter.offset()],
                                   [adapter.spread()] if self.uses_spread else None)
            result.rejected = reject(result) if reject is not None else ""
            if not result.rejected:
                adapter.remember(result.features, result.plain)
            return result
        (result,) = self.infer(prepared_one[None])
        result.probabilities = adapt_log_probabilities(adapter, result.probabilities)
        return result

    def predict(self, waveforms: Sequence[np.ndarray]) -> np.ndarray:
        """Probabilities (N, classes) for N mono float waveforms at the model's sample rate (no normalisation)."""
        if not waveforms:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        return np.stack([r.probabilities for r in self.infer(self.prepare(waveforms))])


def classify_in_order(classifier: Classifier, utterances: Sequence[tuple[float, float, np.ndarray]],
                      speaker_adaptation: bool = True, warmup: int = 0, reset_s: float = 30.0,
                      voices: Any = None) -> np.ndarray:
    """Probabilities for (start, end, audio) utterances in time order, as the node publishes them: with speaker
    adaptation, each judged against the speaker's earlier utterances: per voice with `voices` (VoiceSettings, voice
    models), else one state reset after `reset_s` without speech. The node's parameters of the same names (warmup 0:
    the model's own); used by the bag evaluator, so offline scores equal live ones."""
    from .adaptation import SpeakerAdapter, starts_new_speaker

    warmup = warmup or classifier.recommended_warmup

    if not utterances:
        return np.zeros((0, len(classifier.classes)), dtype=np.float32)
    if not speaker_adaptation:
        return classifier.predict([u[2] for u in utterances])
    if voices is not None and classifier.is_voice_model:
        from .voices import VoiceNormaliser

        normaliser = VoiceNormaliser(voices)
        return np.stack([normaliser.judge(classifier, classifier.prepare([audio])[0], start, end)[0].probabilities
                         for start, end, audio in utterances]).astype(np.float32)
    adapter, last_end, out = SpeakerAdapter(warmup, **classifier.adapter_settings), -float("inf"), []
    for start, end, audio in utterances:
        if starts_new_speaker(start, last_end, reset_s):
            adapter = SpeakerAdapter(warmup, **classifier.adapter_settings)
        last_end = end
        out.append(classifier.infer_adapted(classifier.prepare([audio])[0], adapter).probabilities)
    return np.stack(out).astype(np.float32)
