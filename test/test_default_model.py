"""The shipped models: the default (linear heads on the GE2E voice encoder) and the paper's DS-AM alternative.
Metadata consistent with the code that reads it, and above chance on real speech of speakers a model never heard.

Regression guards, not accuracy claims (see models/MODEL_CARD.md for the numbers and their protocol).
"""
from __future__ import annotations

import numpy as np
import pytest
import yaml
from conftest import ROOT

from ser_node.audio.decode import load_audio
from ser_node.inference.classifier import Classifier
from ser_node.inference.features import FeatureConfig
from ser_node.inference.model_file import read_metadata
from ser_node.inference.prosody import PROSODY_SIZE, PROSODY_VERSION
from ser_node.inference.voice_frontend import ENCODER_SHA256, MEL_CONFIG
from ser_node.labels import EMOTIONS
from ser_node.train.corpora import load_emomatch
from ser_node.train.voice_recipe import DEFAULT_MODEL_ID, MODEL_VERSION

DEFAULT = ROOT / "models" / "ser_default.onnx"
DS_AM = ROOT / "models" / "ser_ds_am.onnx"
DS_AM_INT8 = ROOT / "models" / "ser_ds_am.int8.onnx"
DS_AM_HELD_OUT = ("s02", "s09")  # speakers the DS-AM model never trained on (used for its early stopping)


def _accuracy(classifier: Classifier, clips) -> float:
    probabilities = classifier.predict([load_audio(c.path) for c in clips])
    return float(np.mean([EMOTIONS[i] == c.label for i, c in zip(probabilities.argmax(1), clips)]))


def test_default_metadata_names_the_encoder_and_its_recipe():
    metadata = read_metadata(DEFAULT)
    assert metadata.classes == list(EMOTIONS) and metadata.precision == "fp32"
    assert metadata.features == MEL_CONFIG and metadata.variant == "ge2e_heads"
    assert metadata.model_id == DEFAULT_MODEL_ID and metadata.version == MODEL_VERSION  # the code's, not stale
    assert "mean of layer 3" in metadata.model["speaker_embedding"]  # what the voice tracker and enrolments read
    assert metadata.model["encoder"]["sha256"] == ENCODER_SHA256 and metadata.model["encoder"]["version"] == "0.1.4"
    assert set(metadata.training["clips"]) == {"uem-es", "emovo", "emodb", "ased"}
    recipe = yaml.safe_load((ROOT / "config" / "train_voice.yaml").read_text())  # the shipped model's recipe
    assert {k: metadata.model["normalisation"][k] for k in ("warmup", "history", "shrinkage")} == \
        {k: recipe[k] for k in ("warmup", "history", "shrinkage")}
    # v0.9: head sets, each the recipe with its changes; the copies every set trains on are counted per set
    sets = [{**recipe, **changes} for changes in [{}, *recipe.get("head_sets", [])]]
    assert metadata.training["copies"] == {"augmented": 986 * sum(s["augment_copies"] for s in sets),
                                           "rooms": 986 * sum(s["room_copies"] for s in sets)}
    # the room copies' shapes (a model from before the setting trained on the shared ones) and the head sets
    assert metadata.training["recipe"].get("room_shapes", "shared") == recipe.get("room_shapes", "shared")
    assert metadata.training["recipe"].get("head_sets", []) == recipe.get("head_sets", [])
    # each head's widths as the recipe says: an MLP of head_hidden units per averaged seed and head set, or linear
    hidden = {"normalised": recipe["head_hidden"], "plain": recipe.get("plain_head_hidden", recipe["head_hidden"])}
    units_of = {name: units * recipe.get("head_ensemble", 1) * len(sets) for name, units in hidden.items()}
    assert metadata.model["heads"] == {name: [1536] + ([units] if units else []) + [7] for name, units in units_of.items()}
    # v0.7: prosody heads of the same shapes on the block this code computes, fused at the recipe's weight
    prosody = metadata.model.get("prosody")
    assert (prosody is not None) == bool(recipe.get("prosody_weight"))
    if prosody is not None:
        assert prosody["version"] == PROSODY_VERSION and prosody["weight"] == recipe["prosody_weight"]
        assert prosody["heads"] == {name: [PROSODY_SIZE] + ([units] if units else []) + [7]
                                    for name, units in units_of.items()}
        assert metadata.model["feature_size"] == 1536 + PROSODY_SIZE
    # v0.8: the normalised heads read the centred features divided by the voice's spread (input speaker_scale)
    assert metadata.model.get("speaker_scale", False) == recipe.get("speaker_scale", False)
    assert Classifier(DEFAULT).uses_spread == recipe.get("speaker_scale", False)
    # the spread's shrinkage is served from the metadata (0 where a model has none)
    assert Classifier(DEFAULT).adapter_settings.get("spread_shrinkage", 0.0) == recipe.get("spread_shrinkage", 0.0)


def test_ds_am_metadata_matches_the_feature_code():
    for path, precision in ((DS_AM, "fp32"), (DS_AM_INT8, "int8")):
        metadata = read_metadata(path)
        assert metadata.precision == precision and metadata.classes == list(EMOTIONS)
        assert metadata.features == FeatureConfig(image_height=128, image_width=128)
        assert metadata.model["variant"] == "ds_am" and metadata.training["protocol"] == "all"


def test_the_default_recipe_recognises_unseen_speakers(voice_model, corpus_dir):
    """The shipped model heard every uem-es speaker, so the recipe is checked instead: the test's voice model
    (4 speakers, 3 clips per emotion) on 6 speakers it never heard."""
    clips = [c for c in load_emomatch(corpus_dir, check_audio=False).clips
             if c.speaker in ("s06", "s07", "s08", "s09", "s10", "s11") and c.path.stem.endswith(("_05", "_07"))]
    assert len(clips) >= 70
    accuracy = _accuracy(Classifier(voice_model["path"]), clips)
    print(f"voice recipe on {len(clips)} clips of unseen speakers: accuracy {accuracy:.2f} (chance 0.14)")
    assert accuracy > 0.25


def test_the_default_model_fits_its_training_speech(corpus_dir):
    """A guard against a broken export or front end: the shipped model on clips it trained on."""
    clips = [c for c in load_emomatch(corpus_dir, check_audio=False).clips if c.path.stem.endswith("_01")]
    assert _accuracy(Classifier(DEFAULT), clips) > 0.6


def test_ds_am_classifies_real_held_out_clips_above_chance(corpus_dir):
    clips = [c for c in load_emomatch(corpus_dir, check_audio=False).clips
             if c.speaker in DS_AM_HELD_OUT and c.path.stem.endswith(("_01", "_05", "_09"))]
    assert len(clips) >= 36
    accuracy = _accuracy(Classifier(DS_AM), clips)
    print(f"DS-AM on {len(clips)} held-out clips: accuracy {accuracy:.2f} (chance 0.14)")
    assert accuracy > 0.3


def test_ds_am_int8_computes_what_its_graph_says_on_this_cpu(corpus_dir):
    """The int8 model's integer kernels against the same QDQ graph run in float (ONNX Runtime without graph
    optimisation does not fuse it into int8 kernels). With 8-bit weights, AVX2-only x86 CPUs saturate int16 pair
    sums: the model of 2026-11-22 was 0.126 off its graph here; with 7-bit weights (export.py, reduce_range) 0.026,
    rounding only, on any CPU."""
    import onnxruntime as ort

    from ser_node.inference.features import FeatureExtractor

    clips = [c for c in load_emomatch(corpus_dir, check_audio=False).clips
             if c.speaker in DS_AM_HELD_OUT and c.path.stem.endswith(("_01", "_05", "_09"))]
    images = FeatureExtractor(read_metadata(DS_AM_INT8).features).batch([load_audio(c.path) for c in clips])

    def probabilities(level: ort.GraphOptimizationLevel) -> np.ndarray:
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        session = ort.InferenceSession(str(DS_AM_INT8), options, providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: images})[0]

    kernels = probabilities(ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    graph = probabilities(ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    print(f"int8 kernels vs the QDQ graph in float on {len(clips)} clips: max |dp| {np.abs(kernels - graph).max():.3f}")
    assert np.abs(kernels - graph).max() < 0.08
    assert np.array_equal(kernels.argmax(1), graph.argmax(1))


def test_the_node_loads_the_shipped_model_by_default():
    pytest.importorskip("rclpy", reason="needs the ROS 2 wheels")
    from ros_harness import Harness

    harness = Harness({})
    try:
        classifier = harness.node.classifier
        assert classifier.path.name == "ser_default.onnx" and classifier.is_voice_model
        assert classifier.model_id == DEFAULT_MODEL_ID
    finally:
        harness.close()
