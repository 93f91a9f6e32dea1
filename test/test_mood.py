"""Moods from per-utterance results (ser_node/inference/mood.py), checked against the formulas in its docstring
computed here by hand: decay with time, confidence, expiry, following a change, the bound on keys."""
from __future__ import annotations

import math

import numpy as np
import pytest

from ser_node.inference.mood import Mood, MoodBook, MoodSettings
from ser_node.labels import EMOTIONS, VALENCE_AROUSAL

JOY, ANGER = EMOTIONS.index("joy"), EMOTIONS.index("anger")


def probabilities(top: int, p: float = 0.7) -> np.ndarray:
    out = np.full(len(EMOTIONS), (1 - p) / (len(EMOTIONS) - 1))
    out[top] = p
    return out


def expected(history: list[tuple[np.ndarray, float]], now: float, settings: MoodSettings) -> tuple:
    """(distribution, confidence) straight from the formulas, over every utterance heard."""
    weights = [p.max() * math.exp(-(now - end) / settings.time_constant_s) for p, end in history]
    sums = sum(w * p for w, (p, _end) in zip(weights, history))
    distribution = sums / sums.sum()
    weight = sum(weights)
    return distribution, weight / (weight + settings.evidence) * distribution.max()


def test_mood_is_the_decayed_weighted_evidence():
    settings = MoodSettings(time_constant_s=20.0, expiry_s=60.0, evidence=1.5)
    mood = Mood(EMOTIONS, settings)
    history = [(probabilities(JOY, 0.8), 1.0), (probabilities(JOY, 0.6), 4.0), (probabilities(ANGER, 0.9), 9.0)]
    for p, end in history:
        mood.observe(p, end)
    for now in (9.0, 15.0, 40.0):
        reading = mood.reading(now)
        distribution, confidence = expected(history, now, settings)
        np.testing.assert_allclose(reading.distribution, distribution, atol=1e-9)
        assert reading.confidence == pytest.approx(confidence, abs=1e-9)
        valence = sum(distribution[i] * VALENCE_AROUSAL[c][0] for i, c in enumerate(EMOTIONS))
        assert reading.valence == pytest.approx(valence, abs=1e-9) and reading.age_s == pytest.approx(now - 9.0)
        assert reading.dominant == EMOTIONS[int(np.argmax(distribution))]
    assert mood.reading(9.0).dominant == "anger" and mood.reading(9.0).expression == "angry"
    assert reading.utterances == 3


def test_confidence_grows_with_evidence_and_decays_with_silence_then_expires():
    mood = Mood(EMOTIONS, MoodSettings(time_constant_s=10.0, expiry_s=30.0, evidence=1.0))
    confidences = []
    for k in range(4):
        mood.observe(probabilities(ANGER, 0.8), 2.0 * k)
        confidences.append(mood.reading(2.0 * k).confidence)
    assert confidences == sorted(confidences) and confidences[0] < confidences[-1]
    later = [mood.reading(6.0 + gap).confidence for gap in (0.0, 5.0, 20.0)]
    assert later[0] > later[1] > later[2] > 0
    expired = mood.reading(6.0 + 30.1)
    assert not expired.known and expired.dominant == "unknown" and expired.confidence == 0.0
    assert expired.distribution == [] and expired.age_s == pytest.approx(30.1)
    mood.observe(probabilities(JOY), 100.0)  # after expiry the old anger is gone, not decayed into the new mood
    assert mood.reading(100.0).distribution[ANGER] == pytest.approx(0.3 / 6)


def test_a_sustained_change_takes_over_within_the_documented_time():
    """Joy every 3 s for a minute, then anger every 3 s: with the defaults the dominant class turns at the fifth
    anger utterance (12 s after the first), as README states; the formula by hand says the same."""
    mood = Mood(EMOTIONS, MoodSettings())
    t = 0.0
    for _ in range(20):
        mood.observe(probabilities(JOY), t)
        t += 3.0
    changed_at = None
    for k in range(10):
        mood.observe(probabilities(ANGER), t)
        if mood.reading(t).dominant == "anger":
            changed_at = k + 1
            break
        t += 3.0
    history = [(probabilities(JOY), 3.0 * k) for k in range(20)]
    by_hand = next(k + 1 for k in range(10) if EMOTIONS[int(np.argmax(expected(
        history + [(probabilities(ANGER), 60.0 + 3.0 * j) for j in range(k + 1)], 60.0 + 3.0 * k,
        MoodSettings())[0]))] == "anger")
    assert changed_at == by_hand == 5


def test_unheard_keys_read_unknown_and_the_book_is_bounded():
    book = MoodBook(EMOTIONS, MoodSettings(), limit=3)
    assert not book.reading("nobody", 0.0).known and book.reading("nobody", 0.0).age_s == math.inf
    for k, key in enumerate("abcd"):
        book.observe(key, probabilities(JOY), float(k))
    assert set(book.moods) == {"b", "c", "d"} and book.evicted == 1  # the one heard longest ago went
    book.forget("c")
    assert set(book.moods) == {"b", "d"}
    with pytest.raises(ValueError):
        MoodSettings(time_constant_s=0.0)
