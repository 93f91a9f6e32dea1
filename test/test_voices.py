"""The voice tracker: joins by similarity, opens new voices, keeps a turn going, stays bounded, forgets on request;
and on real speaker embeddings, tells two real speakers apart."""
from __future__ import annotations

import numpy as np
import pytest

from ser_node.inference.voices import VoiceSettings, VoiceTracker


def unit(*values: float) -> np.ndarray:
    v = np.zeros(256)
    v[: len(values)] = values
    return v / np.linalg.norm(v)


def test_joins_similar_opens_dissimilar_and_keeps_a_turn():
    tracker = VoiceTracker(VoiceSettings(threshold=0.8, same_turn_threshold=0.5, turn_gap_s=1.0))
    a = tracker.assign(unit(1, 0), 0.0, 1.0)
    assert tracker.assign(unit(1, 0.1), 5.0, 6.0) is a  # cosine 0.995: same voice
    b = tracker.assign(unit(0, 1), 10.0, 11.0)  # orthogonal: a new voice
    assert b is not a and len(tracker.voices) == 2
    # cosine 0.6 to b: below threshold after a pause, but the same turn continues within 1 s
    assert tracker.assign(unit(0.8, 0.6), 11.5, 12.0) is b
    assert b.utterances == 2 and a.utterances == 2


def test_bounded_least_recent_forgotten_and_forget():
    tracker = VoiceTracker(VoiceSettings(threshold=0.9, same_turn_threshold=0.9, max_voices=3))
    ids = [tracker.assign(unit(*np.eye(8)[k]), 10.0 * k, 10.0 * k + 1).id for k in range(5)]
    assert len(tracker.voices) == 3 and tracker.forgotten == 2
    assert list(tracker.voices) == ids[2:]  # the two least recently heard went first
    assert tracker.forget([ids[3], "nobody"]) == [ids[3]]
    assert tracker.forget() == [ids[2], ids[4]] and not tracker.voices


def test_named_voices_share_the_bound_and_keep_their_ids():
    tracker = VoiceTracker(VoiceSettings(max_voices=2))
    a = tracker.named("upstream_a", 1.0)
    assert tracker.named("upstream_a", 2.0) is a and a.utterances == 2
    tracker.named("upstream_b", 3.0)
    tracker.assign(unit(1, 0), 4.0, 5.0)  # an own voice: the least recent (upstream_a) goes
    assert list(tracker.voices)[0] == "upstream_b" and tracker.forgotten == 1


def test_two_voices_of_one_person_are_merged_once_their_centroids_agree():
    """A person first heard far from their usual voice opens a second voice; once both centroids rest on
    MERGE_MIN utterances and agree within merge_threshold they become one, with both histories."""
    from ser_node.inference.voices import MERGE_MIN

    tracker = VoiceTracker(VoiceSettings(threshold=0.95, same_turn_threshold=0.95, confident_similarity=-1,
                                         merge_threshold=0.9))
    t, vector = 0.0, 0

    def heard(embedding) -> None:  # as the node does: each utterance remembered by the voice it was assigned to
        nonlocal t, vector
        t, vector = t + 10, vector + 1
        tracker.assign(embedding, t, t + 1).adapter.remember(np.full(4, float(vector)))

    for k in range(MERGE_MIN):
        heard(unit(1, 0.0, 0.05 * k))
    assert len(tracker.voices) == 1
    for _ in range(MERGE_MIN - 1):
        heard(unit(1, 0.4))  # cosine 0.93 to the first voice: below the join threshold, a second voice
    assert len(tracker.voices) == 2 and tracker.merged == 0  # not merged before both rest on MERGE_MIN
    heard(unit(1, 0.4))
    assert len(tracker.voices) == 1 and tracker.merged == 1
    (voice,) = tracker.voices.values()
    assert voice.utterances == 2 * MERGE_MIN and voice.adapter.count == 2 * MERGE_MIN
    assert sorted(v[0] for v, _ in voice.adapter.history()) == list(range(1, 2 * MERGE_MIN + 1))  # both histories


def test_voices_of_one_person_pool_their_histories_for_normalisation_only():
    """Two voices whose centroids agree within pool_threshold (the other over MERGE_MIN utterances) are judged by
    the mean of both histories, and a new voice of a known person skips its warm-up; the ids stay apart, and a
    voice of somebody else (centroid far) lends nothing. With pool_threshold 1.0 each voice has its own mean."""
    from ser_node.inference.voices import MERGE_MIN

    def run(pool: float) -> tuple[VoiceTracker, list]:
        tracker = VoiceTracker(VoiceSettings(threshold=0.95, same_turn_threshold=0.95, confident_similarity=-1,
                                             pool_threshold=pool, warmup=3))
        voices = []
        for k, (embedding, value) in enumerate([(unit(1, 0), 1.0)] * MERGE_MIN + [(unit(0, 1), 100.0)] * MERGE_MIN
                                               + [(unit(1, 0.4), 4.0)]):  # cosine 0.93 to the first: a 2nd voice
            voice = tracker.assign(embedding, 10.0 * k, 10.0 * k + 1)
            voice.adapter.remember(np.full(4, value))
            voices.append(voice)
        return tracker, voices

    tracker, voices = run(0.9)
    first, other, second = voices[0], voices[MERGE_MIN], voices[-1]
    assert len(tracker.voices) == 3 and second is not first and tracker.merged == 0  # ids kept apart
    # the second voice holds one utterance (warm-up 3) but borrows the first voice's three: mean of 1, 1, 1, 4
    np.testing.assert_allclose(tracker.offset(second), np.full(4, 7.0 / 4))
    np.testing.assert_allclose(tracker.offset(other), np.full(4, 100.0))  # orthogonal: nothing borrowed
    # the first voice borrows nothing yet: the second rests on fewer than MERGE_MIN utterances
    np.testing.assert_allclose(tracker.offset(first), np.full(4, 1.0))
    tracker, voices = run(1.0)
    assert tracker.offset(voices[-1]) is None  # alone, still in warm-up
    np.testing.assert_allclose(tracker.offset(voices[0]), voices[0].adapter.offset())


def test_settings_are_checked():
    with pytest.raises(ValueError):
        VoiceSettings(pool_threshold=1.5)
    with pytest.raises(ValueError):
        VoiceSettings(threshold=0.5, same_turn_threshold=0.7)
    with pytest.raises(ValueError):
        VoiceSettings(max_voices=0)


def test_tells_two_real_speakers_apart(voice_model, corpus_dir):
    """Real speaker embeddings from the model's graph: two speakers alternating, 10 clips each, separated by
    pauses (no turn continues): their majority voices differ and at least 90 % of the clips share their voice
    with their own speaker only."""
    from ser_node.audio.decode import load_audio
    from ser_node.inference.classifier import Classifier

    classifier = Classifier(voice_model["path"])
    names = ["Ira_04", "Asco_04", "Miedo_04", "Alegria_04", "Neutro_04", "Tristeza_04", "Sorpresa_04",
             "Neutro_06", "Alegria_06", "Tristeza_06"]
    embeddings = {s: [classifier.infer(classifier.prepare([load_audio(corpus_dir / s / f"{n}.flac")]))[0]
                      .speaker_embedding for n in names] for s in ("s06", "s10")}
    tracker = VoiceTracker(VoiceSettings())  # the calibrated defaults
    assigned = {"s06": [], "s10": []}
    t = 0.0
    for k in range(len(names)):
        for speaker in ("s06", "s10"):
            assigned[speaker].append(tracker.assign(embeddings[speaker][k], t, t + 2.0).id)
            t += 5.0
    majority = {s: max(set(v), key=v.count) for s, v in assigned.items()}
    assert majority["s06"] != majority["s10"]
    # Purity: the share of clips whose voice's majority speaker is their own. The calibrated tracker prefers
    # splitting a speaker over mixing two (a mixed voice normalises one person by another's mean).
    voices = set(assigned["s06"] + assigned["s10"])
    purity = sum(max(assigned["s06"].count(v), assigned["s10"].count(v)) for v in voices) / (2 * len(names))
    print(f"voices {len(voices)}, purity {purity:.2f}")
    # Split, not mixed: at most 3 voices per speaker here (bench/conversations.py measures 2.06 on average)
    assert purity >= 0.9 and len(voices) <= 6


def test_voices_file_round_trip_and_refusals(tmp_path):
    """save_voices / load_voices: the same ids, centroids and normalisation offsets come back (balanced ones too:
    the plain head's probabilities travel with the history); a file from before they did loads as plain histories;
    a file of another model and a corrupt file are refused with the reason."""
    from ser_node.inference.voices import load_voices, save_voices

    balanced = VoiceSettings(warmup=2, balance=0.5)
    tracker = VoiceTracker(balanced)
    rng = np.random.default_rng(0)
    for k in range(6):
        voice = tracker.assign(unit(1, 0) if k % 2 else unit(0, 1), 10.0 * k, 10.0 * k + 1)
        voice.adapter.remember(rng.normal(size=12), rng.dirichlet(np.full(7, 0.3)))
    path = tmp_path / "voices.npz"
    save_voices(tracker, path, "model-a")
    again = VoiceTracker(balanced)
    assert load_voices(again, path, "model-a") == 2
    for a, b in zip(tracker.voices.values(), again.voices.values()):
        assert a.id == b.id and a.utterances == b.utterances
        np.testing.assert_allclose(a.centroid, b.centroid)
        np.testing.assert_allclose(a.adapter.offset(), b.adapter.offset(), rtol=1e-6)
        plain_mean = np.mean([vector for vector, _ in a.adapter.history()], axis=0)  # VoiceSettings: no shrinkage
        assert not np.allclose(b.adapter.offset(), plain_mean, rtol=1e-3)  # the probabilities came back
    with np.load(path) as saved:
        older = {key: saved[key] for key in saved.files if key != "probabilities"}
    np.savez(tmp_path / "older.npz", **older)
    before = VoiceTracker(balanced)
    assert load_voices(before, tmp_path / "older.npz", "model-a") == 2
    for a, b in zip(tracker.voices.values(), before.voices.values()):
        np.testing.assert_allclose(b.adapter.offset(), np.mean([v for v, _ in a.adapter.history()], axis=0))
    fresh = again.assign(unit(0, 0, 1), 100.0, 101.0)  # somebody new: a new id, the loaded voices untouched
    assert fresh.id not in tracker.voices and len(again.voices) == 3
    with pytest.raises(ValueError, match="not of model-b"):
        load_voices(VoiceTracker(), path, "model-b")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="not a voices file"):
        load_voices(VoiceTracker(), path, "model-a")
    save_voices(VoiceTracker(), tmp_path / "empty.npz", "model-a")  # no voice at all: still a valid file
    assert load_voices(VoiceTracker(), tmp_path / "empty.npz", "model-a") == 0


def test_conversations_bench_says_which_tracker_error_costs(voice_model):
    """bench/conversations.py's decomposition rows, on real clips and the real heads of 4 speakers: each row adds
    exactly one of the tracker's errors to the oracle. With one direction per speaker the tracker errs nowhere, so
    every row is the oracle; with one speaker heard in two directions it only splits, so the splits row is the
    tracked row, the doubts row is still the oracle, and the split speaker's later utterances are judged
    differently (a second warm-up, another history)."""
    import sys
    from dataclasses import replace
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from conversations import DOUBTS, SPLITS, Session, Utterance, judge

    from ser_node.train.voice_recipe import load_voice_data

    data = load_voice_data(voice_model["recipe"], progress=False)
    heads = voice_model["heads"]
    a, b = sorted(set(data.speakers))[:2]
    rows = {s: np.where(data.speakers == s)[0][:12] for s in (a, b)}
    utterances, t = [], 0.0
    for k in range(12):  # turns of one utterance each, 3 s apart: no same-turn joins
        for speaker in (a, b):
            utterances.append(Utterance(int(rows[speaker][k]), speaker, t, t + 2.0, k + 1))
            t += 3.0
    z = heads.standardise(data.features[[u.row for u in utterances]])
    session = Session([a, b], utterances, z, heads.plain_probabilities(z), heads)
    settings = VoiceSettings(warmup=2, pool_threshold=1.0)

    def run(embeddings: dict[int, np.ndarray]) -> dict[str, np.ndarray]:
        with_embeddings = np.zeros_like(data.speaker_embeddings)
        for row, e in embeddings.items():
            with_embeddings[row] = e
        tracked = replace(data, speaker_embeddings=with_embeddings)
        return {system: np.array(judge(tracked, session, system, settings))
                for system in ("oracle identity", "estimated identity", DOUBTS, SPLITS)}

    perfect = run({u.row: unit(1) if u.speaker == a else unit(0, 1) for u in utterances})
    for system in ("estimated identity", DOUBTS, SPLITS):
        np.testing.assert_array_equal(perfect[system], perfect["oracle identity"])
    split = run({u.row: (unit(1) if u.rank % 2 else unit(0, 0, 1)) if u.speaker == a else unit(0, 1)
                 for u in utterances})
    np.testing.assert_array_equal(split[DOUBTS], split["oracle identity"])
    np.testing.assert_array_equal(split[SPLITS], split["estimated identity"])
    later_a = [k for k, u in enumerate(utterances) if u.speaker == a and u.rank > 4]
    assert np.abs(split[SPLITS][later_a] - split["oracle identity"][later_a]).max() > 1e-3
