"""The shipped default model: metadata consistent with the feature code, above chance on real held-out speech.

A regression guard, not an accuracy claim (see models/MODEL_CARD.md for the numbers and their protocol).
"""
from __future__ import annotations

import numpy as np
import pytest

from ser_node.audio import load_audio
from ser_node.classifier import Classifier
from ser_node.corpora import load_emomatch
from ser_node.features import FeatureConfig
from ser_node.labels import EMOTIONS
from ser_node.model_file import read_metadata

from conftest import ROOT

DEFAULT = ROOT / "models" / "ser_default.onnx"
INT8 = ROOT / "models" / "ser_default.int8.onnx"
HELD_OUT = ("s02", "s09")  # speakers the default model never trained on (used for its early stopping)


def test_metadata_matches_the_feature_code():
    for path, precision in ((DEFAULT, "fp32"), (INT8, "int8")):
        metadata = read_metadata(path)
        assert metadata.precision == precision and metadata.classes == list(EMOTIONS)
        # The stored settings are a valid FeatureConfig and equal the documented defaults but for the size.
        assert metadata.features == FeatureConfig(image_height=128, image_width=128)
        assert metadata.model["variant"] == "ds_am" and metadata.training["protocol"] == "all"


def test_classifies_real_held_out_clips_above_chance(corpus_dir):
    clips = [c for c in load_emomatch(corpus_dir, check_audio=False).clips
             if c.speaker in HELD_OUT and c.path.stem.endswith(("_01", "_05", "_09"))]
    assert len(clips) >= 36
    probabilities = Classifier(DEFAULT).predict([load_audio(c.path) for c in clips])
    accuracy = float(np.mean([EMOTIONS[i] == c.label for i, c in zip(probabilities.argmax(1), clips)]))
    print(f"default model on {len(clips)} held-out clips: accuracy {accuracy:.2f} (chance 0.14)")
    assert accuracy > 0.3


def test_the_node_loads_the_shipped_model_by_default():
    pytest.importorskip("rclpy", reason="needs the ROS 2 wheels")
    from ros_harness import Harness

    harness = Harness({})
    try:
        classifier = harness.node.classifier
        assert classifier.path.name == "ser_default.onnx" and classifier.metadata.precision == "fp32"
        assert classifier.model_id == "ser-default-ds-am-w0.25-128px-v0.1"
    finally:
        harness.close()
