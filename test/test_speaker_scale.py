"""Per-voice variance normalisation (recipe speaker_scale): the spread a voice's history gives, training's scaled
centring, and a scaled model exported and served (the graph's speaker_scale input, the voice tracker's candidates)
scoring exactly what the training code scores."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ser_node.inference.adaptation import SPREAD_FLOOR, SpeakerAdapter, voice_spread

pytest.importorskip("torch", reason="fitting and exporting heads needs the train extra (torch)")


def test_the_spread_is_the_history_spread_with_a_floor():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((6, 5)) * np.array([0.5, 1.0, 2.0, 1e-4, 1.0])
    adapter = SpeakerAdapter(warmup=3, history=4, shrinkage=0.0)
    assert adapter.spread() is None
    for k, vector in enumerate(vectors):
        if k >= 3:
            held = vectors[max(0, k - 4):k]  # the history keeps the latest 4
            expected = np.maximum(held.std(axis=0), SPREAD_FLOOR)
            np.testing.assert_allclose(adapter.spread(), expected)
            assert adapter.spread()[3] == SPREAD_FLOOR  # a dimension that hardly moves is not blown up
            # both are kept until the history changes, and are then those of the new history
            np.testing.assert_allclose(adapter.offset(), held.mean(axis=0))
            assert adapter.offset() is adapter.offset() and not adapter.spread().flags.writeable
        adapter.remember(vector)
    # another voice's history counts as the offset counts it
    borrowed = [(v, None) for v in rng.standard_normal((3, 5))]
    pooled = np.vstack([vectors[-4:], [v for v, _ in borrowed]])
    np.testing.assert_allclose(adapter.spread(borrowed), np.maximum(pooled.std(axis=0), SPREAD_FLOOR))
    # a class-balanced history weighs the spread as it weighs the mean
    balanced = SpeakerAdapter(warmup=2, history=10, balance=1.0)
    probabilities = np.array([[0.9, 0.1], [0.9, 0.1], [0.1, 0.9]])
    for vector, p in zip(vectors[:3], probabilities):
        balanced.remember(vector, p)
    weights = balanced._weights(balanced.history())
    np.testing.assert_allclose(balanced.spread(), voice_spread(vectors[:3], weights))
    assert not np.allclose(balanced.spread(), voice_spread(vectors[:3]))


def test_a_short_history_s_spread_is_shrunk_towards_one():
    """spread_shrinkage k: the variance as if k more utterances of unit variance were in the history, so a voice
    heard a few times is not divided by a noisy spread; it fades as the history grows, and the floor still holds."""
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((40, 4)) * np.array([0.3, 1.0, 3.0, 1e-4])
    exact, shrunk = SpeakerAdapter(warmup=3, history=50), SpeakerAdapter(warmup=3, history=50, spread_shrinkage=2.0)
    for n, vector in enumerate(vectors):
        if n >= 3:
            expected = np.sqrt((n * exact.spread() ** 2 + 2.0) / (n + 2.0))
            np.testing.assert_allclose(shrunk.spread(), expected)
            assert shrunk.spread()[3] >= SPREAD_FLOOR and not shrunk.spread().flags.writeable
            np.testing.assert_allclose(shrunk.offset(), exact.offset())  # the offset is not touched
        exact.remember(vector)
        shrunk.remember(vector)
    # the narrow dimension moves towards 1 and the wide one towards 1 from above, less as the history grows
    assert shrunk.spread()[0] > exact.spread()[0] and shrunk.spread()[2] < exact.spread()[2]
    early = np.sqrt((3 * 0.3 ** 2 + 2) / 5) - 0.3
    assert 0 < shrunk.spread()[0] - exact.spread()[0] < early
    with pytest.raises(ValueError, match="spread_shrinkage"):
        SpeakerAdapter(spread_shrinkage=-1.0)


def test_training_centres_and_scales_each_speaker():
    from ser_node.train.voice_recipe import VoiceRecipe, centre_by_speaker

    rng = np.random.default_rng(1)
    speakers = np.repeat(["a", "b", "c"], 20)
    x = rng.standard_normal((60, 4)) * np.repeat([[1.0, 3.0, 0.5, 2.0], [2.0, 0.5, 1.0, 1.0], [1.0, 1.0, 4.0, 0.3]],
                                                 20, axis=0) + np.repeat(rng.standard_normal((3, 4)) * 5, 20, axis=0)
    centred, scaled = centre_by_speaker(x, speakers), centre_by_speaker(x, speakers, scale=True)
    for s in "abc":
        rows = speakers == s
        np.testing.assert_allclose(centred[rows].mean(axis=0), 0, atol=1e-12)
        np.testing.assert_allclose(scaled[rows].mean(axis=0), 0, atol=1e-12)
        np.testing.assert_allclose(scaled[rows].std(axis=0), 1, atol=1e-12)
        np.testing.assert_allclose(scaled[rows], centred[rows] / voice_spread(x[rows]), atol=1e-12)
    with pytest.raises(ValueError, match="speaker_scale"):
        VoiceRecipe(speaker_scale=True, history_neutral_share=0.5)


@pytest.fixture(scope="module")
def scaled_model(voice_model, tmp_path_factory):
    """The conftest voice model's recipe with a prosody head and speaker_scale (served with the spread shrunk),
    fitted and exported."""
    from ser_node.train.voice_recipe import export_voice_model, fit_heads, load_voice_data

    recipe = dataclasses.replace(voice_model["recipe"], prosody_weight=1.0, speaker_scale=True, spread_shrinkage=2.0)
    data = load_voice_data(recipe, progress=False)
    heads = fit_heads(data, recipe)
    path = export_voice_model(heads, recipe, tmp_path_factory.mktemp("scaled") / "voice.onnx",
                              {"protocol": "test"}, model_id="test-voice-scaled")
    return {"path": path, "heads": heads, "recipe": recipe, "data": data}


def test_the_scaled_graph_is_the_numpy_heads(scaled_model):
    """Several candidate voices in one run, each with its offset and spread: the graph's normalised probabilities
    are the numpy heads' on (features - offset) / spread, over the GE2E features and the prosody block alike."""
    from ser_node.inference.classifier import Classifier

    heads, data = scaled_model["heads"], scaled_model["data"]
    assert heads.speaker_scale and heads.prosody is not None
    classifier = Classifier(scaled_model["path"])
    assert classifier.uses_spread and classifier.metadata.model["speaker_scale"] is True
    rng = np.random.default_rng(2)
    size = classifier.feature_size
    for path in data.paths[::14]:
        from ser_node.audio.decode import load_audio

        state = classifier.prepare([load_audio(path)])[0]
        offsets = 0.3 * rng.standard_normal((3, size)).astype(np.float32)
        spreads = rng.uniform(0.5, 2.0, (3, size)).astype(np.float32)
        normalised, result = classifier.infer_candidates(state, offsets, spreads)
        features = result.features[None].astype(np.float64)
        np.testing.assert_allclose(normalised, heads.normalised_probabilities(np.repeat(features, 3, axis=0),
                                                                              offsets, spreads), atol=2e-5)
        unscaled, _ = classifier.infer_candidates(state, offsets)  # no spreads: ones
        np.testing.assert_allclose(unscaled, heads.normalised_probabilities(np.repeat(features, 3, axis=0), offsets,
                                                                            np.ones_like(offsets)), atol=2e-5)
        assert np.abs(unscaled - normalised).max() > 1e-3  # the spread reaches the heads
    with pytest.raises(ValueError, match="need spreads"):
        heads.normalised_probabilities(features, offsets[:1])


def test_the_node_path_scores_what_training_scores(scaled_model, real_waveforms):
    """classify_in_order (the node's and the bag evaluator's path: the adapter's offset and spread per utterance)
    equals predict_in_order (what the benchmarks score) on the same features; the voice tracker feeds each
    candidate voice its own spread."""
    from ser_node.inference.classifier import Classifier, classify_in_order
    from ser_node.inference.voices import VoiceNormaliser, VoiceSettings
    from ser_node.train.voice_recipe import predict_in_order

    heads, recipe = scaled_model["heads"], scaled_model["recipe"]
    classifier = Classifier(scaled_model["path"])
    assert classifier.adapter_settings["spread_shrinkage"] == recipe.spread_shrinkage == 2.0  # from the metadata
    utterances = [(10.0 * i, 10.0 * i + 2, a) for i, a in enumerate(real_waveforms)]
    published = classify_in_order(classifier, utterances, warmup=recipe.warmup, reset_s=1e6)
    features = np.stack([classifier.infer(classifier.prepare([a]))[0].features for _, _, a in utterances])
    expected = predict_in_order(heads, features.astype(np.float64), recipe, normalise=True)
    np.testing.assert_allclose(published, expected, atol=2e-5)
    unscaled = predict_in_order(dataclasses.replace(heads, speaker_scale=False), features.astype(np.float64),
                                dataclasses.replace(recipe, speaker_scale=False), normalise=True)
    assert np.abs(unscaled - expected).max() > 0.01  # the spread changes answers on real speech
    unshrunk = predict_in_order(heads, features.astype(np.float64), dataclasses.replace(recipe, spread_shrinkage=0.0),
                                normalise=True)
    assert np.abs(unshrunk - expected).max() > 1e-4  # the metadata's spread shrinkage reached the node's path

    normaliser = VoiceNormaliser(VoiceSettings(threshold=-1.0, same_turn_threshold=-1.0, confident_similarity=-1.0,
                                               warmup=recipe.warmup, **classifier.adapter_settings))
    for start, end, audio in utterances:  # one voice for everybody: the tracker's row is the adapter's answer
        voice = next(iter(normaliser.tracker.voices.values()), None)
        offset = None if voice is None else normaliser.tracker.offset(voice)
        spread = None if voice is None else normaliser.tracker.spread(voice)
        result, _ = normaliser.judge(classifier, classifier.prepare([audio])[0], start, end)
        (alone,) = classifier.infer(classifier.prepare([audio]), [offset], [spread])
        np.testing.assert_allclose(result.probabilities, alone.probabilities, atol=1e-6)
    assert len(normaliser.tracker.voices) == 1 and normaliser.utterances == len(utterances)


def test_a_graph_and_metadata_that_disagree_on_the_spread_are_refused(scaled_model, voice_model, tmp_path):
    import onnx

    from ser_node.inference.classifier import Classifier
    from ser_node.inference.model_file import ModelFileError, read_metadata, write_metadata

    for source, change, message in ((scaled_model, lambda m: m.pop("speaker_scale"), "has the input"),
                                    (voice_model, lambda m: m.update(speaker_scale=True), "lacks the input")):
        metadata = read_metadata(source["path"])
        change(metadata.model)
        graph = onnx.load(str(source["path"]))
        write_metadata(graph, metadata)
        path = tmp_path / "disagreeing.onnx"
        onnx.save(graph, str(path))
        with pytest.raises(ModelFileError, match=message):
            Classifier(path)
