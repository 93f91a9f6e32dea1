"""For behaviour authors: the current mood of a voice or a person, in the style of pyhri's HRIListener.

    listener = MoodListener(node)                    # any rclpy node of yours; subscribes to ser_node's ~/mood
    mood = listener.person("p_anna")                 # or listener.voice("voice_k3x9q"), or None if never heard
    if mood and mood.known and mood.valence < -0.3 and mood.confidence > 0.5:
        ...                                          # mood.age: seconds since that person last spoke

A reading is what ser_node last published, aged by the time since: `age` grows and `known` turns False after
`expiry_s` even when no new message comes (a node that stopped publishing must not leave a stale mood behind).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any


@dataclass
class MoodState:
    voice_id: str
    person_id: str
    known: bool
    expression: str  # hri_msgs/Expression words, or "unknown"
    valence: float
    arousal: float
    confidence: float
    age: float  # seconds since the last utterance ended, as of now
    utterances: int
    distribution: dict[str, float]


class MoodListener:
    """Keeps the latest mood per voice and per person from `topic` (ser_node_interfaces/Mood)."""

    def __init__(self, node: Any, topic: str = "/ser_node/mood", expiry_s: float = 60.0) -> None:
        from ser_node_interfaces.msg import Mood

        self.expiry_s = expiry_s
        self._lock = threading.Lock()
        self._voices: dict[str, tuple[Any, float]] = {}
        self._persons: dict[str, tuple[Any, float]] = {}
        self.subscription = node.create_subscription(Mood, topic, self._on_mood, 50)

    def _on_mood(self, msg: Any) -> None:
        entry = (msg, time.monotonic())
        with self._lock:
            if msg.person_id:
                self._persons[msg.person_id] = entry
            else:
                self._voices[msg.voice_id] = entry

    def _state(self, entry: tuple[Any, float] | None) -> MoodState | None:
        if entry is None:
            return None
        msg, received = entry
        age = float(msg.age) + (time.monotonic() - received)
        known = bool(msg.known) and age <= self.expiry_s
        return MoodState(msg.voice_id, msg.person_id, known, msg.expression if known else "unknown",
                         float(msg.valence) if known else 0.0, float(msg.arousal) if known else 0.0,
                         float(msg.confidence) if known else 0.0, age, int(msg.utterances),
                         dict(zip(msg.classes, map(float, msg.distribution))) if known else {})

    def voice(self, voice_id: str) -> MoodState | None:
        with self._lock:
            return self._state(self._voices.get(voice_id))

    def person(self, person_id: str) -> MoodState | None:
        with self._lock:
            return self._state(self._persons.get(person_id))

    def persons(self) -> dict[str, MoodState]:
        with self._lock:
            return {p: s for p, e in self._persons.items() if (s := self._state(e)) is not None}

    def voices(self) -> dict[str, MoodState]:
        with self._lock:
            return {v: s for v, e in self._voices.items() if (s := self._state(e)) is not None}
