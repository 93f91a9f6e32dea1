"""Export trained PyTorch models to ONNX (fp32, batch axis dynamic) and to static int8 (QDQ, per channel).

Int8 is calibrated on real mel images from a corpus, never on random data: activations of random images have
nothing in common with spectrograms, and the scales they give lose accuracy.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import onnx
import torch
import yaml
from torch import nn

from ..files import atomic_path
from ..inference.model_file import INPUT_NAME, METADATA_KEY, OUTPUT_NAME, ModelMetadata, write_metadata


class _WithSoftmax(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(image), dim=1)


def _atomic_save(model: onnx.ModelProto, path: Path) -> None:
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))


def export_onnx(model: nn.Module, metadata: ModelMetadata, path: str | Path) -> Path:
    """Writes an fp32 ONNX model whose output is the class probabilities, metadata embedded."""
    path = Path(path)
    cfg = metadata.features
    wrapped = _WithSoftmax(model).eval()
    example = torch.zeros(2, 3, cfg.image_height, cfg.image_width)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "model.onnx"
        torch.onnx.export(
            wrapped,
            (example,),
            str(raw),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes={"image": {0: torch.export.Dim("batch", min=1, max=1024)}},
            dynamo=True,
            external_data=False,
            optimize=True,
            verbose=False,
            report=False,
        )
        proto = onnx.load(str(raw))
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    proto.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    metadata.precision = "fp32"
    write_metadata(proto, metadata)
    onnx.checker.check_model(proto)
    _atomic_save(proto, path)
    return path


class _ImageReader:
    """onnxruntime CalibrationDataReader over batches of real feature images."""

    def __init__(self, images: Iterable[np.ndarray]) -> None:
        self._batches: Iterator[np.ndarray] = iter(images)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        if batch is None:
            return None
        return {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)}


def quantize_int8(fp32_path: str | Path, int8_path: str | Path, calibration_images: np.ndarray,
                  batch_size: int = 8) -> Path:
    """Static int8 quantisation (QDQ, per-channel weights) calibrated on real images (N, 3, H, W)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if len(calibration_images) == 0:
        raise ValueError("int8 calibration needs real feature images, got none")
    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    proto = onnx.load(str(fp32_path))
    metadata_props = list(proto.metadata_props)
    # Stale shape annotations from the exporter break onnxruntime's shape inference during quantisation.
    del proto.graph.value_info[:]
    with tempfile.TemporaryDirectory() as tmp:
        cleaned = Path(tmp) / "clean.onnx"
        quantized = Path(tmp) / "int8.onnx"
        onnx.save(proto, str(cleaned))
        # The softmax stays in float: uint8 probabilities (steps of 1/255) would erase the ranking of close classes.
        softmax_nodes = [node.name for node in proto.graph.node if node.op_type == "Softmax"]
        batches = [calibration_images[i : i + batch_size] for i in range(0, len(calibration_images), batch_size)]
        quantize_static(
            str(cleaned),
            str(quantized),
            _ImageReader(batches),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            # 7-bit weights: on x86 without VNNI (AVX2 only) ONNX Runtime's u8s8 kernels add pairs of products in
            # int16 (VPMADDUBSW), which saturates with 8-bit weights: the same model gave probabilities 0.1 apart
            # on two x86 machines, 0.13 off its own QDQ graph on the AVX2 one. With 7 bits no pair saturates and
            # every CPU computes what the graph says (test_default_model.py).
            reduce_range=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=softmax_nodes,
        )
        result = onnx.load(str(quantized))
    del result.metadata_props[:]
    result.metadata_props.extend(metadata_props)

    for prop in result.metadata_props:
        if prop.key == METADATA_KEY:
            metadata = ModelMetadata.from_json(prop.value, str(fp32_path))
            metadata.precision = "int8"
            write_metadata(result, metadata)
            break
    _atomic_save(result, int8_path)
    return int8_path


def export_run(run_dir: str | Path, output: str | Path, int8: bool = True, fold: str = "all",
               model_id: str | None = None, calibration_clips: int = 200, version: str = "0.1.0") -> dict[str, Path]:
    """Exports the network of `run_dir/<fold>` to `output` (fp32) and, with int8, `<output stem>.int8.onnx`.

    Int8 is calibrated on feature images of real clips from the run's own corpus (a seeded, class-stratified
    sample), never on random data.
    """
    from ..labels import EMOTIONS
    from .config import TrainConfig
    from .loop import load_trained_network

    run_dir, output = Path(run_dir), Path(output)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} is not a training run: a run folder (written by ser_train --out) holds "
                                "config.yaml, folds.json, report.json and a folder per fold with model.pt")
    config = TrainConfig.from_mapping(yaml.safe_load((run_dir / "config.yaml").read_text()))
    if config.variant == "ds_svc":
        raise ValueError("DS-SVC runs keep a scikit-learn SVM; export DS-FC or DS-AM runs for the node")
    fold_dir = run_dir / fold
    if not (fold_dir / "model.pt").is_file():
        raise FileNotFoundError(f"{fold_dir / 'model.pt'} not found: is the run finished? (protocol 'all' trains "
                                "the deployable model on every clip)")
    model = load_trained_network(fold_dir, config)
    report_path = run_dir / "report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    metadata = ModelMetadata(
        model_id=model_id or f"{config.variant}-w{config.width:g}-{config.image_size}px-{run_dir.name}",
        classes=list(EMOTIONS), features=config.feature_config(), variant=config.variant, version=version,
        model=config.model_config().to_dict(),
        training={"corpus": None if config.corpora else config.corpus, "protocol": config.protocol,
                  "corpora": [{k: e[k] for k in ("name", "role", "weight", "clips", "speakers")}
                              for e in report.get("corpora", [])],
                  "speakers": config.speakers, "epochs": config.epochs, "run": run_dir.name,
                  # the pretrained backbone it started from: file hash and what that backbone was trained on
                  "backbone": report.get("backbone"),
                  "report": report.get("summary")},
    )
    paths = {"fp32": export_onnx(model, metadata, output)}
    if int8:
        if config.corpora:  # calibrate on real images from every corpus the model was trained on
            from .data import prepare_clips

            data = prepare_clips(config)
            clips = data.target + data.extra
        else:
            clips = _corpus_clips(config.corpus, config.speakers)
        images = _calibration_images(clips, config.feature_config(), calibration_clips, config.seed)
        paths["int8"] = quantize_int8(output, _int8_path_of(output), images)
    return paths


def _int8_path_of(fp32_path: Path) -> Path:
    return fp32_path.with_name(fp32_path.stem + ".int8.onnx")


def _corpus_clips(corpus: dict, speakers: list[str] | None) -> list:
    """The clips of a corpus entry, only the named speakers' where a run names any: one selection for export_run
    and requantize, so both calibrate on the same draw."""
    from .corpora import load_corpus

    wanted = set(speakers or [])
    return [c for c in load_corpus(corpus).clips if not wanted or c.speaker in wanted]


def _calibration_images(clips: list, features, count: int, seed: int) -> np.ndarray:
    """Feature images of `count` clips drawn at random (seeded) from `clips`."""
    from ..inference.features import FeatureExtractor
    from .data import AudioBank

    rng = np.random.default_rng(seed)
    chosen = [clips[i] for i in rng.permutation(len(clips))[:count]]
    bank = AudioBank()
    chosen = bank.load(chosen, "calibration audio")
    return FeatureExtractor(features).batch([bank[c] for c in chosen])


def requantize(fp32_path: str | Path, calibration_clips: int = 200, corpus: dict | None = None,
               seed: int = 0) -> Path:
    """The int8 version of an exported fp32 model file, beside it, calibrated on clips of `corpus` (default: the
    corpus and speakers its metadata says it was trained on, drawn as export_run draws them): for models whose
    training run is gone, or after a change to the quantisation."""
    from ..inference.model_file import read_metadata

    fp32_path = Path(fp32_path)
    metadata = read_metadata(fp32_path)
    training = metadata.training or {}
    corpus = corpus or training.get("corpus")
    if not corpus:
        raise ValueError(f"{fp32_path}: its metadata names no training corpus; give one to calibrate on")
    clips = _corpus_clips(corpus, training.get("speakers"))
    return quantize_int8(fp32_path, _int8_path_of(fp32_path),
                         _calibration_images(clips, metadata.features, calibration_clips, seed))
