"""The prosody block (inference/prosody.py) and models that fuse a head on it with the GE2E heads: pitch measured
on tones of known F0, independent of chunking and gain, bad input refused; on real speech in the test room the
pitch survives where the encoder's spectrum does not; and an exported prosody model computes, through the node's
stepping code, exactly what the training code (and so bench/prosody.py) scores. Whether the block is worth it is
measured in bench/prosody.py, not here."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ser_node.inference.prosody import PROSODY_NAMES, PROSODY_SIZE, SR, ProsodyTracker, prosody

F0_MEDIAN, VOICED, SLOPE = (PROSODY_NAMES.index(n) for n in ("F0 median", "voiced fraction", "F0 slope (st/s)"))


def harmonic_tone(f0: np.ndarray | float, seconds: float = 2.0) -> np.ndarray:
    """Five harmonics of a (possibly gliding) fundamental, like a sung vowel."""
    f0 = np.broadcast_to(np.asarray(f0, dtype=np.float64), (int(seconds * SR),))
    phase = 2 * np.pi * np.cumsum(f0) / SR
    return 0.1 * sum(np.sin(k * phase) / k for k in range(1, 6))


def semitones(hz: float) -> float:
    return 12 * np.log2(hz / 100.0)


@pytest.mark.parametrize("f0", [70.0, 120.0, 220.0, 450.0])
def test_the_pitch_of_a_tone_is_its_fundamental(f0):
    values = prosody(harmonic_tone(f0))
    assert values.shape == (PROSODY_SIZE,)
    assert values[VOICED] == 1.0
    assert abs(values[F0_MEDIAN] - semitones(f0)) < 0.1  # not an octave off, nor a semitone


def test_a_glide_has_its_slope_and_noise_no_pitch():
    glide = prosody(harmonic_tone(np.linspace(120.0, 240.0, 2 * SR)))  # an octave in 2 s: 6 semitones a second
    assert glide[SLOPE] == pytest.approx(6.0, abs=0.3)
    noise = prosody(0.1 * np.random.default_rng(0).standard_normal(2 * SR))
    assert noise[VOICED] == 0.0 and noise[F0_MEDIAN] == 0.0


def test_chunking_and_gain_change_nothing(real_waveforms):
    """The node feeds the tracker block by block as audio arrives; a robot's microphone is not a corpus's."""
    rng = np.random.default_rng(3)
    for audio in real_waveforms[:4]:
        whole = prosody(audio)
        tracker, start = ProsodyTracker(), 0
        while start < len(audio):
            size = int(rng.integers(1, 4000))
            tracker.push(audio[start:start + size])
            start += size
        np.testing.assert_array_equal(tracker.finish(), whole)
        np.testing.assert_allclose(prosody(0.05 * audio), whole, atol=0.01)
        assert np.isfinite(whole).all() and 0.2 < whole[VOICED] < 1.0


def test_bad_input_is_refused_and_short_input_answered():
    with pytest.raises(ValueError, match="finite"):
        prosody(np.array([0.0, np.nan, 0.1]))
    with pytest.raises(ValueError, match="one channel"):
        prosody(np.zeros((2, 1600)))
    with pytest.raises(ValueError, match="16000"):
        prosody(np.zeros(1600), sr=8000)
    short = prosody(harmonic_tone(200.0, seconds=0.02))  # under one 40 ms frame: padded to one
    assert np.isfinite(short).all()
    assert np.isfinite(prosody(np.zeros(0))).all()


def test_pitch_survives_the_test_room_where_the_spectrum_does_not(corpus_dir):
    """Real clips heard at 2 m in a room of RT60 0.6 s (the robustness bench's test room): the median pitch moves
    by under a semitone on average, while the spectral tilt (alpha ratio) the room colours moves by decibels."""
    pytest.importorskip("pyroomacoustics", reason="the room is simulated with the train extra (pyroomacoustics)")
    from ser_node.audio.decode import load_audio
    from ser_node.train.acoustics import AcousticSimulator, Condition

    tilt = PROSODY_NAMES.index("alpha ratio mean (dB)")
    room = AcousticSimulator(room_seed=0)
    pitch_moves, tilt_moves = [], []
    for name in ("s00/Alegria_01", "s01/Miedo_02", "s02/Tristeza_09", "s05/Sorpresa_12", "s08/Ira_07",
                 "s10/Neutro_07"):
        clean = load_audio(corpus_dir / f"{name}.flac")
        dry, far = prosody(clean), prosody(room(clean, Condition(rt60_s=0.6, distance_m=2.0)))
        pitch_moves.append(abs(far[F0_MEDIAN] - dry[F0_MEDIAN]))
        tilt_moves.append(abs(far[tilt] - dry[tilt]))
    assert np.mean(pitch_moves) < 1.0, pitch_moves
    assert np.mean(tilt_moves) > 2 * np.mean(pitch_moves), (tilt_moves, pitch_moves)


# ------------------------------------------------------------------ models with a prosody head

@pytest.fixture(scope="module")
def prosody_model(voice_model, tmp_path_factory):
    """The conftest voice model's recipe with a prosody head (prosody_weight 1), fitted and exported."""
    from ser_node.train.voice_recipe import export_voice_model, fit_heads, load_voice_data

    recipe = dataclasses.replace(voice_model["recipe"], prosody_weight=1.0)
    heads = fit_heads(load_voice_data(recipe, progress=False), recipe)
    path = export_voice_model(heads, recipe, tmp_path_factory.mktemp("prosody") / "voice.onnx",
                              {"protocol": "test"}, model_id="test-voice-prosody")
    return {"path": path, "heads": heads, "recipe": recipe}


def test_the_exported_prosody_model_is_what_training_scores(prosody_model, real_waveforms, corpus_dir):
    """The node's path (stepping the graph as audio arrives, the tracker's block, the per-voice offset of the whole
    vector) against the training code's numpy heads on the cached features of the same clips, in order."""
    from ser_node.inference.classifier import Classifier, classify_in_order
    from ser_node.train.voice_features import clip_features, clip_prosody
    from ser_node.train.voice_recipe import predict_in_order

    heads, recipe = prosody_model["heads"], prosody_model["recipe"]
    classifier = Classifier(prosody_model["path"])
    assert classifier.prosody_size == PROSODY_SIZE and classifier.feature_size == len(heads.mean) + PROSODY_SIZE
    assert classifier.metadata.model["prosody"]["weight"] == 1.0
    names = ["Ira_01", "Tristeza_02", "Alegria_03", "Neutro_04", "Miedo_05", "Sorpresa_06", "Asco_07"]
    paths = [corpus_dir / speaker / f"{n}.flac" for speaker in ("s04", "s05") for n in names]
    cache = recipe.feature_cache
    x = np.hstack([clip_features(paths, cache, progress=False)[0], clip_prosody(paths, cache, progress=False)])
    z = heads.standardise(x)
    expected = predict_in_order(heads, z, recipe, normalise=True)
    published = classify_in_order(classifier, [(10.0 * i, 10.0 * i + 2, a) for i, a in enumerate(real_waveforms)],
                                  warmup=recipe.warmup, reset_s=1e6)
    np.testing.assert_allclose(published, expected, atol=2e-5)
    # the block matters: the GE2E heads alone answer otherwise on some of these clips
    alone = predict_in_order(dataclasses.replace(heads, prosody=None), z[:, :len(heads.mean)], recipe, True)
    assert np.abs(alone - expected).max() > 0.01


def test_the_end_is_ready_when_the_vad_decides(prosody_model, voice_model, real_waveforms):
    """Behind the segmenter (20 ms messages), every utterance that silence ends had its end prepared during the
    pause (front end, last step and prosody block): nothing is handed over or computed in the message that ends
    it, and the state it ends with is the one of its audio encoded afterwards, prosody block bit for bit."""
    from ser_node.audio.segmenter import Segmenter
    from ser_node.audio.stream import AudioChunk, StreamProcessor
    from ser_node.audio.vad import make_vad
    from ser_node.inference.classifier import Classifier
    from ser_node.inference.voice_stream import UtteranceEncoder

    class Watched(UtteranceEncoder):
        """The node's encoder, noting which message each piece of audio and each utterance's end came in."""

        message = 0
        pieces: list[int] = []  # the message of each piece of audio
        in_last_message: list[int] = []  # per utterance: pieces handed over in the message that ended it

        def audio(self, samples: np.ndarray) -> None:
            self.pieces.append(self.message)
            super().audio(samples)

        def end(self, utterance) -> None:
            self.in_last_message.append(self.pieces.count(self.message))
            super().end(utterance)

    rng = np.random.default_rng(3)
    parts = [p for w in real_waveforms[:6] for p in (w, np.zeros(int(rng.uniform(0.8, 1.2) * SR), np.float32))]
    audio = np.concatenate(parts) + 1e-3 * rng.standard_normal(sum(map(len, parts))).astype(np.float32)
    for model in (prosody_model, voice_model):
        classifier = Classifier(model["path"])
        encoder = Watched(lambda: classifier)
        encoder.pieces, encoder.in_last_message = [], []
        processor, utterances = StreamProcessor(Segmenter(make_vad("silero"), listener=encoder)), []
        for encoder.message, start in enumerate(range(0, audio.size, 320)):
            utterances += processor.feed(AudioChunk(audio[start:start + 320, None], SR, start / SR))
        assert len(utterances) == 6 and {u.reason for u in utterances} == {"silence"} and encoder.errors == 0
        assert encoder.prepared_ends == 6 and encoder.in_last_message == [0] * 6
        offset = np.zeros(classifier.feature_size, np.float32)
        for utterance in utterances:
            after = classifier.prepare([utterance.audio])[0]
            (live,), (again,) = classifier.infer([utterance.encoded], [offset]), classifier.infer([after], [offset])
            np.testing.assert_allclose(live.probabilities, again.probabilities, atol=1e-5)
            np.testing.assert_allclose(live.features, again.features, atol=1e-4)
            if model is prosody_model:
                np.testing.assert_array_equal(utterance.encoded.prosody, after.prosody)
            else:
                assert utterance.encoded.prosody is None


def test_a_model_whose_prosody_this_node_cannot_compute_is_refused(prosody_model, tmp_path):
    """A model built for another version of the block would read numbers with other meanings: refused at load,
    with the reason, as a model of an unknown front end is."""
    import onnx

    from ser_node.inference.classifier import Classifier
    from ser_node.inference.model_file import ModelFileError, read_metadata, write_metadata

    graph = onnx.load(str(prosody_model["path"]))
    metadata = read_metadata(prosody_model["path"])
    metadata.model["prosody"]["version"] = 99
    write_metadata(graph, metadata)
    path = tmp_path / "other.onnx"
    onnx.save(graph, str(path))
    with pytest.raises(ModelFileError, match="prosody version 99"):
        Classifier(path)


def test_a_node_serving_a_prosody_model_publishes_what_the_model_says(prosody_model, real_waveforms):
    """Through a real node fed 16-bit messages: the prosody block is measured while each utterance is spoken, and
    the published scores are the model's on the utterance's audio with the per-voice offset of the whole vector
    (plain during the model's warm-up of 2, normalised after)."""
    pytest.importorskip("rclpy", reason="needs the ROS 2 wheels")
    from ros_harness import Harness, speech_stream, typed_chunks
    from test_voice import collect_utterances, node_adapter

    from ser_node.inference.classifier import Classifier

    stream, bounds = speech_stream(real_waveforms[:5], silence_s=1.0)
    harness = Harness({"model_path": str(prosody_model["path"]), "reliability": "reliable", "vad_backend": "webrtc",
                       "speaker_adaptation": True, "adaptation_warmup": 0, "voice_tracking": False,
                       "publish_utterance": True})
    utterances = collect_utterances(harness)
    try:
        harness.publish(typed_chunks(stream, 16000, 1, "int16", 0.05, 1000.0), speed=8.0)
        got = [np.array([r.score for r in m.results]) for m in harness.wait_for("classification", len(bounds))]
        assert len(got) == len(bounds) and len(utterances) == len(bounds)
        classifier = Classifier(prosody_model["path"])
        adapter, expected = node_adapter(prosody_model, warmup=2), []
        for _, audio in utterances:
            (result,) = classifier.infer(classifier.prepare([audio]), [adapter.offset()])
            assert result.features.shape == (classifier.feature_size,)
            adapter.remember(result.features, result.plain)
            expected.append(result.probabilities)
        np.testing.assert_allclose(got, expected, atol=1e-4)
        assert harness.node.diagnostic_values()[2]["adaptation_utterances"] == str(len(bounds))
    finally:
        harness.close()
