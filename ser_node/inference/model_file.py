"""The exported model file: an ONNX graph whose metadata carries everything inference needs.

The metadata (classes, feature settings, model id, version, variant, precision) lives inside the .onnx file
itself, under one key, so a model and its settings can never be separated or mixed up.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .features import FeatureConfig

PACKAGE = "ser_node"
DEFAULT_MODEL = "ser_default.onnx"  # shipped in models/, installed to share/ser_node/models
METADATA_KEY = "ser_node.metadata"
FORMAT_VERSION = 1
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"


class ModelFileError(RuntimeError):
    """A model file that cannot be used; the message names the file and what is wrong with it."""


@dataclass
class ModelMetadata:
    model_id: str
    classes: list[str]
    features: FeatureConfig
    variant: str
    version: str = "0.1.0"
    precision: str = "fp32"  # fp32 | int8
    model: dict[str, Any] = field(default_factory=dict)  # ModelConfig of the network
    training: dict[str, Any] = field(default_factory=dict)  # corpus, protocol, scores: free-form provenance
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        values = {
            "format_version": self.format_version,
            "model_id": self.model_id,
            "version": self.version,
            "variant": self.variant,
            "precision": self.precision,
            "classes": list(self.classes),
            "features": self.features.to_dict(),
            "model": self.model,
            "training": self.training,
        }
        return json.dumps(values, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "<metadata>") -> "ModelMetadata":
        try:
            values = json.loads(text)
            if values.get("format_version") != FORMAT_VERSION:
                raise ValueError(f"format_version {values.get('format_version')!r}, this ser_node reads {FORMAT_VERSION}")
            classes = values["classes"]
            if not classes or not all(isinstance(c, str) for c in classes):
                raise ValueError("classes must be a non-empty list of names")
            return cls(
                model_id=str(values["model_id"]),
                classes=list(classes),
                features=FeatureConfig.from_dict(values["features"]),
                variant=str(values["variant"]),
                version=str(values.get("version", "")),
                precision=str(values.get("precision", "fp32")),
                model=dict(values.get("model", {})),
                training=dict(values.get("training", {})),
            )
        except (KeyError, ValueError, TypeError) as error:
            raise ModelFileError(f"{source}: invalid ser_node metadata: {error}") from error


def read_metadata(path: str | Path) -> ModelMetadata:
    """Metadata of a model file, read with onnx (train extra) or onnxruntime (runtime), whichever is present."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found")
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as error:
        raise ModelFileError(f"{path}: not a loadable ONNX model ({error})") from error
    return metadata_of_session(session, path)


def metadata_of_session(session: Any, path: str | Path) -> ModelMetadata:
    custom = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in custom:
        raise ModelFileError(f"{path}: ONNX model has no '{METADATA_KEY}' entry: not exported by ser_node")
    return ModelMetadata.from_json(custom[METADATA_KEY], str(path))


def write_metadata(onnx_model: Any, metadata: ModelMetadata) -> None:
    """Sets the metadata entry on an in-memory onnx.ModelProto (replacing an older one)."""
    props = [p for p in onnx_model.metadata_props if p.key != METADATA_KEY]
    del onnx_model.metadata_props[:]
    onnx_model.metadata_props.extend(props)
    entry = onnx_model.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = metadata.to_json()


def default_model_path() -> str:
    """The shipped default model: share/ser_node/models when installed, else the repository's models/."""
    candidates = []
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory(PACKAGE)) / "models" / DEFAULT_MODEL)
    except Exception:  # not installed through ament, or no AMENT_PREFIX_PATH: look beside the sources
        pass
    candidates.append(Path(sys.prefix) / "share" / PACKAGE / "models" / DEFAULT_MODEL)
    candidates.append(Path(__file__).resolve().parents[2] / "models" / DEFAULT_MODEL)
    for path in candidates:
        if path.is_file():
            return str(path)
    return str(candidates[-1])
