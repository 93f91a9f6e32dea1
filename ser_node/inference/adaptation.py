"""Online adaptation to the current speaker, from that speaker's earlier utterances only.

Acted-speech corpora show it clearly: much of what separates emotions is how a clip differs from the same person's
other clips, not its absolute pitch or timbre. The adapter keeps a running mean of a per-utterance vector (the
voice encoder's pooled features in the node with the default model, or a DeepSpectrum model's
log-probabilities; openSMILE functionals for the baseline) and subtracts it from each new one.
Nothing is used before it has been heard (causal), nothing changes until `warmup` utterances are in, and the
estimate is shrunk toward zero while it rests on few utterances, so a new speaker is never judged on noise.

A history that leans to one emotion (a mostly calm person, or a voice the tracker split off when its speaker got
angry) moves the mean towards that emotion, and the normalised head then reads that emotion as the person's usual
self. With `balance` > 0 each remembered utterance carries the plain head's class probabilities, and the mean
weights every class's share of the history equally: an utterance weighs sum_c p_c / (n_c + balance), n_c the
history's summed probability of class c (balance smooths classes seldom heard). Measured (README Accuracy): it
gains for mostly calm people and costs on balanced speech, and it does not win back what a split voice costs.
"""
from __future__ import annotations

from collections import deque
from typing import Callable

import numpy as np


DEFAULT_WARMUP = 5  # utterances before adapting, for models that do not recommend their own
# Per-voice spread (models trained with speaker_scale): a floor on each dimension's standard deviation, in the
# standardised units the offset is in, so a few near-identical utterances cannot blow a dimension up.
SPREAD_FLOOR = 0.1
Remembered = tuple[np.ndarray, "np.ndarray | None"]  # an utterance's vector and the plain head's probabilities


class SpeakerAdapter:
    """Running-mean normalisation of one speaker's utterance vectors; `reset()` when the speaker may change."""

    def __init__(self, warmup: int = DEFAULT_WARMUP, history: int = 50, shrinkage: float = 5.0,
                 balance: float = 0.0, spread_shrinkage: float = 0.0) -> None:
        if warmup < 1 or history < warmup or min(shrinkage, balance, spread_shrinkage) < 0:
            raise ValueError(f"need warmup >= 1, history >= warmup, shrinkage, balance and spread_shrinkage >= 0; "
                             f"got {warmup}, {history}, {shrinkage}, {balance}, {spread_shrinkage}")
        self.warmup, self.shrinkage, self.balance = warmup, shrinkage, balance
        self.spread_shrinkage = spread_shrinkage
        self._past: deque[Remembered] = deque(maxlen=history)
        # offset and spread of the own history alone, kept until it changes: the node asks every voice for them
        # at every utterance, and most voices were not the last one heard
        self._memo: dict[str, np.ndarray | None] = {}

    @property
    def count(self) -> int:
        """Utterances the current estimate rests on."""
        return len(self._past)

    @property
    def active(self) -> bool:
        return len(self._past) >= self.warmup

    def reset(self) -> None:
        self._past.clear()
        self._memo.clear()

    def history(self) -> list[Remembered]:
        """What the estimate rests on, oldest first: (vector, the plain head's class probabilities or None)."""
        return list(self._past)

    def offset(self, borrowed: list[Remembered] | tuple = ()) -> np.ndarray | None:
        """What is subtracted now: the shrunk mean of the earlier utterances (None during warm-up), with
        `borrowed` ones counted as earlier utterances (another voice of the same person, VoiceTracker.offset)."""
        return self._kept("offset", self._offset, borrowed)

    def spread(self, borrowed: list[Remembered] | tuple = ()) -> np.ndarray | None:
        """Per dimension, the standard deviation of the history (with `borrowed`, weighted as `offset`), floored
        at SPREAD_FLOOR and shrunk towards 1 by spread_shrinkage; None during warm-up. Models trained with
        speaker_scale divide the centred vector by it: a room's reverberation narrows or widens how a person's
        utterances vary, not only where they sit."""
        return self._kept("spread", self._spread, borrowed)

    def _kept(self, name: str, compute: Callable[[list[Remembered]], np.ndarray | None],
              borrowed: list[Remembered] | tuple) -> np.ndarray | None:
        """compute(history) for the own history alone from the memo (read-only), or afresh when borrowing."""
        if borrowed:
            return compute(list(self._past) + list(borrowed))
        if name not in self._memo:
            self._memo[name] = _frozen(compute(list(self._past)))
        return self._memo[name]

    def _offset(self, past: list[Remembered]) -> np.ndarray | None:
        if len(past) < self.warmup:
            return None
        n = len(past)
        vectors = np.array([vector for vector, _ in past])
        return np.average(vectors, axis=0, weights=self._weights(past)) * (n / (n + self.shrinkage))

    def _spread(self, past: list[Remembered]) -> np.ndarray | None:
        if len(past) < self.warmup:
            return None
        spread = voice_spread(np.array([vector for vector, _ in past]), self._weights(past))
        if not self.spread_shrinkage:
            return spread
        # the variance pulled towards 1 (the standardised population's) as if spread_shrinkage more utterances of
        # unit variance were in: a few utterances' spread is noisy, and a narrow one blows up what is divided by it.
        # Between the floor and 1 it stays there, so the floor still holds.
        n = len(past)
        return np.sqrt((n * spread ** 2 + self.spread_shrinkage) / (n + self.spread_shrinkage))

    def _weights(self, past: list[Remembered]) -> np.ndarray | None:
        """Per utterance, its weight in the class-balanced mean (None: the plain mean). An utterance remembered
        without probabilities (a voices file from before balancing) counts as every class alike."""
        if not self.balance:
            return None
        classes = next((len(p) for _, p in past if p is not None), 0)
        if not classes:
            return None
        p = np.array([np.full(classes, 1.0 / classes) if q is None else q for _, q in past])
        return (p / (p.sum(axis=0) + self.balance)).sum(axis=1)

    def remember(self, vector: np.ndarray, probabilities: np.ndarray | None = None) -> None:
        """Adds an utterance's vector (and the plain head's class probabilities for it, which a balanced mean needs)
        to the history, after it was judged: each one is judged only on its past."""
        self._past.append((np.asarray(vector, dtype=np.float64),
                           None if probabilities is None else np.asarray(probabilities, dtype=np.float64)))
        self._memo.clear()

    def __call__(self, vector: np.ndarray) -> np.ndarray:
        """The adapted vector, then remembers the raw one."""
        vector = np.asarray(vector, dtype=np.float64)
        offset = self.offset()
        self.remember(vector)
        return vector if offset is None else vector - offset


def _frozen(array: np.ndarray | None) -> np.ndarray | None:
    """A kept result made read-only, so a caller that changes it in place fails instead of changing the next."""
    if array is not None:
        array.setflags(write=False)
    return array


def voice_spread(vectors: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Per column, the (weighted) standard deviation of one voice's vectors, floored at SPREAD_FLOOR: what training
    (centre_by_speaker) and the node (SpeakerAdapter.spread) divide a centred vector by."""
    mean = np.average(vectors, axis=0, weights=weights)
    return np.maximum(np.sqrt(np.average((vectors - mean) ** 2, axis=0, weights=weights)), SPREAD_FLOOR)


def starts_new_speaker(start: float, last_end: float, reset_s: float) -> bool:
    """Without voice identity, a pause longer than `reset_s` (or time running backwards, a replayed or restarted
    stream) is taken to mean somebody else may be speaking: start a fresh adapter."""
    gap = start - last_end
    return gap > reset_s or gap < -1.0


def adapt_log_probabilities(adapter: SpeakerAdapter, probabilities: np.ndarray) -> np.ndarray:
    """Class probabilities with the speaker's usual leaning removed (a per-speaker class prior, in log space)."""
    log_p = np.log(np.clip(np.asarray(probabilities, dtype=np.float64), 1e-7, 1.0))
    adapted = adapter(log_p)
    adapted = adapted - adapted.max()
    out = np.exp(adapted)
    return (out / out.sum()).astype(np.float32)
