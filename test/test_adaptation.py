"""Speaker adaptation: causal, silent during warm-up, shrunk while it rests on few utterances, forgettable."""
from __future__ import annotations

import numpy as np
import pytest

from ser_node.inference.adaptation import SpeakerAdapter, adapt_log_probabilities


def test_only_earlier_utterances_count_and_warm_up_changes_nothing():
    adapter = SpeakerAdapter(warmup=3, shrinkage=0.0)
    vectors = [np.array([1.0, 0.0]), np.array([3.0, 0.0]), np.array([5.0, 2.0]), np.array([7.0, 2.0])]
    out = [adapter(v) for v in vectors]
    for v, o in zip(vectors[:3], out[:3]):
        np.testing.assert_array_equal(v, o)  # warm-up: untouched
    np.testing.assert_allclose(out[3], vectors[3] - np.mean(vectors[:3], axis=0))  # never its own value
    assert adapter.count == 4 and adapter.active
    adapter.reset()
    assert adapter.count == 0 and not adapter.active and adapter.offset() is None


def test_shrinkage_and_history():
    adapter = SpeakerAdapter(warmup=1, history=2, shrinkage=2.0)
    for value in (10.0, 20.0, 30.0):
        adapter(np.array([value]))
    np.testing.assert_allclose(adapter.offset(), [25.0 * 2 / 4])  # the last two only, shrunk by n / (n + 2)
    with pytest.raises(ValueError):
        SpeakerAdapter(warmup=0)


def test_a_speaker_who_leans_to_one_class_is_corrected():
    adapter = SpeakerAdapter(warmup=2)
    leaning = np.array([0.6, 0.3, 0.1])  # this speaker's clips all look like class 0
    for _ in range(10):
        adapt_log_probabilities(adapter, leaning)
    shifted = adapt_log_probabilities(adapter, np.array([0.45, 0.45, 0.10]))
    assert shifted.argmax() == 1 and abs(shifted.sum() - 1) < 1e-6


def test_a_balanced_history_weighs_each_class_alike():
    """balance > 0: a history of 7 utterances of one class and 3 of another is centred near the middle of the two
    classes, not 70 % of the way to the first (each utterance weighs sum_c p_c / (n_c + balance)); the plain mean
    with balance 0 or without probabilities; the weights follow the probabilities, not the vectors."""
    a, b = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    one_hot = np.eye(2)
    plain, balanced, unlabelled = (SpeakerAdapter(warmup=1, shrinkage=0.0, balance=x) for x in (0.0, 1.0, 1.0))
    for vector, label in [(a, 0)] * 7 + [(b, 1)] * 3:
        plain.remember(vector, one_hot[label])
        balanced.remember(vector, one_hot[label])
        unlabelled.remember(vector)
    np.testing.assert_allclose(plain.offset(), [0.7, 0.3])
    np.testing.assert_allclose(unlabelled.offset(), [0.7, 0.3])
    wa, wb = 7 / 8, 3 / 4  # 7 utterances of weight 1 / (7 + 1), 3 of weight 1 / (3 + 1)
    np.testing.assert_allclose(balanced.offset(), [wa / (wa + wb), wb / (wa + wb)])
    sharp = SpeakerAdapter(warmup=1, shrinkage=0.0, balance=1e-6)  # little smoothing: the two class means alike
    for vector, label in [(a, 0)] * 7 + [(b, 1)] * 3:
        sharp.remember(vector, one_hot[label])
    np.testing.assert_allclose(sharp.offset(), [0.5, 0.5], atol=1e-6)
    soft = SpeakerAdapter(warmup=1, shrinkage=0.0, balance=1.0)  # soft probabilities spread an utterance's weight
    soft.remember(a, np.array([0.5, 0.5]))
    soft.remember(b, np.array([0.5, 0.5]))
    np.testing.assert_allclose(soft.offset(), [0.5, 0.5])
    with pytest.raises(ValueError):
        SpeakerAdapter(balance=-1.0)
