"""A steady mood from a stream of per-utterance results: what a behaviour reads instead of events.

Each utterance adds its class probabilities as evidence; evidence decays with time (not with utterance count), so
a person angry ten minutes ago does not read as angry now. The mood is the evidence-weighted class distribution,
its valence and arousal (the circumplex points of labels.py, weighted by that distribution) and a confidence that
grows with evidence and decays with silence. After `expiry_s` without an utterance the mood is unknown.

  weight(t)       = sum over utterances i of  w_i * exp(-(t - end_i) / time_constant_s)
  distribution(t) = sum_i w_i exp(...) p_i / weight(t)
  confidence(t)   = weight(t) / (weight(t) + evidence) * max(distribution(t))

with w_i the utterance's own confidence (its top probability: an unsure utterance counts less). `evidence` is the
weight at which the evidence term reaches one half (about `evidence` confident utterances just heard).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..labels import ROS4HRI_EXPRESSION, valence_arousal


@dataclass(frozen=True)
class MoodSettings:
    time_constant_s: float = 20.0  # evidence older than this counts e^-1 as much
    expiry_s: float = 60.0  # this long without an utterance: the mood is unknown
    evidence: float = 1.5  # weight (confident utterances) at which the evidence term is one half

    def __post_init__(self) -> None:
        if self.time_constant_s <= 0 or self.expiry_s <= 0 or self.evidence <= 0:
            raise ValueError(f"mood settings must be positive: {self}")


@dataclass
class MoodReading:
    """A mood at one moment. `known` is False before the first utterance and after expiry; then the distribution is
    empty, dominant is "unknown" and valence, arousal and confidence are 0."""

    known: bool
    dominant: str  # canonical class name, or "unknown"
    expression: str  # the dominant class in ROS4HRI words, or "unknown"
    valence: float
    arousal: float
    confidence: float
    distribution: list[float]
    age_s: float  # since the end of the last utterance (inf if none)
    utterances: int  # heard in total


@dataclass
class Mood:
    """The decayed evidence of one voice or person."""

    classes: Sequence[str]
    settings: MoodSettings = field(default_factory=MoodSettings)
    weight: float = 0.0  # as of `last`
    sums: np.ndarray | None = None  # weighted probability sums, as of `last`
    last: float = -math.inf  # end time of the last utterance
    utterances: int = 0

    def observe(self, probabilities: np.ndarray, end: float) -> None:
        """Adds one utterance's probabilities, heard up to `end` (seconds, the same clock as `reading`'s `now`)."""
        p = np.asarray(probabilities, dtype=np.float64)
        p = p / p.sum() if p.sum() > 0 else np.full(len(p), 1.0 / len(p))
        if self.sums is None or end - self.last > self.settings.expiry_s:
            self.weight, self.sums = 0.0, np.zeros(len(p))  # an expired mood starts afresh
        decay = math.exp(-max(0.0, end - self.last) / self.settings.time_constant_s) if self.weight else 0.0
        w = float(p.max())
        self.sums = self.sums * decay + w * p
        self.weight = self.weight * decay + w
        self.last = max(self.last, end)
        self.utterances += 1

    def reading(self, now: float) -> MoodReading:
        age = now - self.last
        if self.sums is None or age > self.settings.expiry_s or self.weight <= 0:
            return MoodReading(False, "unknown", "unknown", 0.0, 0.0, 0.0, [], age if self.sums is not None
                               else math.inf, self.utterances)
        weight = self.weight * math.exp(-max(0.0, age) / self.settings.time_constant_s)
        distribution = self.sums / self.sums.sum()
        top = int(np.argmax(distribution))
        valence, arousal = valence_arousal(distribution, self.classes)
        confidence = weight / (weight + self.settings.evidence) * float(distribution[top])
        dominant = self.classes[top]
        return MoodReading(True, dominant, ROS4HRI_EXPRESSION.get(dominant, dominant), valence, arousal, confidence,
                           [float(x) for x in distribution], max(0.0, age), self.utterances)


class MoodBook:
    """Moods by key (voice or person id), at most `limit` of them: the one heard longest ago is dropped first."""

    def __init__(self, classes: Sequence[str], settings: MoodSettings | None = None, limit: int = 64) -> None:
        self.classes, self.settings, self.limit = list(classes), settings or MoodSettings(), limit
        self.moods: dict[str, Mood] = {}
        self.evicted = 0

    def observe(self, key: str, probabilities: np.ndarray, end: float) -> Mood:
        mood = self.moods.get(key)
        if mood is None:
            if len(self.moods) >= self.limit:
                oldest = min(self.moods, key=lambda k: self.moods[k].last)
                del self.moods[oldest]
                self.evicted += 1
            mood = self.moods[key] = Mood(self.classes, self.settings)
        mood.observe(probabilities, end)
        return mood

    def reading(self, key: str, now: float) -> MoodReading:
        mood = self.moods.get(key)
        return mood.reading(now) if mood is not None else Mood(self.classes, self.settings).reading(now)

    def forget(self, key: str) -> None:
        self.moods.pop(key, None)
