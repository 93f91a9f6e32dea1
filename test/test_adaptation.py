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
