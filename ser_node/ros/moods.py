"""What a behaviour reads: a steady mood per voice and per person (ser_node/inference/mood.py), published.

Per utterance the node publishes an event (~/expression). Behaviours poll the current state of a person at a few
hertz; this room turns the events into that state:
  ~/mood                        ser_node_interfaces/Mood, every reading (voice and person ids inside)
  /humans/voices/<id>/mood      the voice's mood, latched, at mood_rate_hz and on every utterance
  /humans/persons/<id>/mood     the person's mood, the same (ROS4HRI persons followed: follow_persons)
REP 155 defines no emotion topic for voices or persons; `mood` sits in their namespaces beside the ones it defines,
with our own message type since no standard one carries a smoothed distribution, a confidence and an age.

Persons: /humans/persons/tracked (hri_msgs/IdsList) and each person's /humans/persons/<id>/voice_id (std_msgs/String,
latched). A person's mood is fed by the utterances of whichever voice is matched to them, so it survives the person
manager re-matching them to a new voice id, and a voice matched to another person feeds that person from then on.
The person list is hostile input too: at most max_persons followed, malformed ids refused, both counted.
"""
from __future__ import annotations

import threading
from typing import Any, Callable

import numpy as np

from ..inference.mood import MoodBook, MoodReading, MoodSettings
from .hri_voices import TRACKED_PUB_QOS as LATCHED  # depth 1, reliable, transient-local: the last value latched
from .hri_voices import TRACKED_SUB_QOS, VOICES_NS, id_problem

PERSONS_NS = "/humans/persons"
ENGAGED = 3  # hri_msgs/EngagementLevel.ENGAGED
OWN_STREAM = ""  # the voice key of the node's own stream when voices are not told apart


class Moods:
    """`param` reads the node's parameters; `classes` gives the model's class names. Call `create` on activate and
    `destroy` on deactivate; `observe` from the worker thread after each published result."""

    def __init__(self, node: Any, param: Callable[[str], Any]) -> None:
        self.node, self.p = node, param
        self.lock = threading.Lock()  # the moods: the worker observes, the executor publishes and follows persons
        self._pub_lock = threading.Lock()  # the per-topic publishers, created from both threads
        self.enabled = False
        self.voices: MoodBook | None = None
        self.persons: MoodBook | None = None
        self.person_voice: dict[str, str] = {}  # person id -> voice id ("" until the person's voice_id is heard)
        self.engagement: dict[str, int] = {}  # person id -> hri_msgs/EngagementLevel level (0 unknown)
        self._person_subs: dict[str, list[Any]] = {}
        self._publishers: dict[str, Any] = {}  # topic -> latched publisher
        self._all: Any = None
        self._tracked_sub: Any = None
        self._timer: Any = None
        self._mood_class: Any = None
        self.counts = {"persons_malformed": 0, "persons_over_limit": 0, "mood_topics_over_limit": 0}

    # ------------------------------------------------------------ life
    def create(self, classes: list[str]) -> None:
        try:
            from ser_node_interfaces.msg import Mood
        except ImportError:
            self.node.get_logger().warning("ser_node_interfaces (with Mood) is not installed: no mood topics")
            return
        settings = MoodSettings(float(self.p("mood_time_constant_s")), float(self.p("mood_expiry_s")),
                                float(self.p("mood_evidence")))
        limit = int(self.p("max_voices")) + int(self.p("max_persons")) + 1
        with self.lock:
            self.voices = MoodBook(classes, settings, limit)
            self.persons = MoodBook(classes, settings, int(self.p("max_persons")))
        self._mood_class = Mood
        self._all = self.node.create_publisher(Mood, "~/mood", 50)
        if self.p("follow_persons"):
            from hri_msgs.msg import IdsList

            self._tracked_sub = self.node.create_subscription(IdsList, f"{PERSONS_NS}/tracked", self._on_persons,
                                                              TRACKED_SUB_QOS)
        self._timer = self.node.create_timer(1.0 / float(self.p("mood_rate_hz")), self.publish_all)
        self.enabled = True

    def destroy(self) -> None:
        self.enabled = False
        if self._timer is not None:
            self.node.destroy_timer(self._timer)
        if self._tracked_sub is not None:
            self.node.destroy_subscription(self._tracked_sub)
        for subs in self._person_subs.values():
            for sub in subs:
                self.node.destroy_subscription(sub)
        for topic in list(self._publishers):
            self._drop_topic(topic)
        if self._all is not None:
            self.node.destroy_publisher(self._all)
        self._timer = self._tracked_sub = self._all = None
        self._person_subs.clear()
        with self.lock:
            self.person_voice.clear()
            self.engagement.clear()

    # ------------------------------------------------------------ persons (executor thread)
    def _on_persons(self, msg: Any) -> None:
        try:
            self._follow_persons(list(dict.fromkeys(msg.ids)))
        except Exception as error:  # never into the executor
            self.node.get_logger().error(f"{PERSONS_NS}/tracked: {type(error).__name__}: {error}",
                                         throttle_duration_sec=5.0)

    def _follow_persons(self, ids: list[str]) -> None:
        from hri_msgs.msg import EngagementLevel
        from std_msgs.msg import String

        valid = [i for i in ids if not id_problem(i)]
        self.counts["persons_malformed"] += len(ids) - len(valid)
        limit = int(self.p("max_persons"))
        keep = [i for i in valid if i in self._person_subs][:limit]
        new = [i for i in valid if i not in self._person_subs][: max(0, limit - len(keep))]
        self.counts["persons_over_limit"] += len(valid) - len(keep) - len(new)
        for person in [p for p in self._person_subs if p not in keep]:
            for sub in self._person_subs.pop(person):
                self.node.destroy_subscription(sub)
            self._drop_topic(f"{PERSONS_NS}/{person}/mood")
            with self.lock:
                self.person_voice.pop(person, None)
                self.engagement.pop(person, None)
                if self.persons is not None:
                    self.persons.forget(person)
        for person in new:
            with self.lock:
                self.person_voice[person] = ""
                self.engagement[person] = 0
            self._person_subs[person] = [
                self.node.create_subscription(String, f"{PERSONS_NS}/{person}/voice_id",
                                              lambda msg, p=person: self._on_voice_id(p, msg.data), LATCHED),
                self.node.create_subscription(EngagementLevel, f"{PERSONS_NS}/{person}/engagement_status",
                                              lambda msg, p=person: self._on_engagement(p, msg.level), 10)]

    def _on_voice_id(self, person: str, voice_id: str) -> None:
        with self.lock:
            if person in self.person_voice:
                self.person_voice[person] = voice_id

    def _on_engagement(self, person: str, level: int) -> None:
        with self.lock:
            if person in self.engagement:
                self.engagement[person] = int(level)

    def engaged(self, voice_id: str) -> bool:
        """Whether `voice_id` is matched to a followed person whose engagement is ENGAGED (hri_msgs level 3)."""
        with self.lock:
            return bool(voice_id) and any(v == voice_id and self.engagement.get(p) == ENGAGED
                                          for p, v in self.person_voice.items())

    # ------------------------------------------------------------ results (worker thread)
    def observe(self, voice_id: str, probabilities: np.ndarray) -> None:
        """One utterance of `voice_id` (OWN_STREAM when voices are not told apart), published now. Moods run on the
        node's clock (sim time in a bag replay), not on audio stamps, so a reading's age is what a behaviour sees."""
        if not self.enabled:
            return
        end = self._now()
        with self.lock:
            self.voices.observe(voice_id, probabilities, end)
            persons = [p for p, v in self.person_voice.items() if v and v == voice_id]
            for person in persons:
                self.persons.observe(person, probabilities, end)
        self._publish(voice_id, "", end)
        for person in persons:
            self._publish(voice_id, person, end)

    # ------------------------------------------------------------ publishing
    def _now(self) -> float:
        return self.node.get_clock().now().nanoseconds * 1e-9

    def publish_all(self) -> None:
        """The steady rate: every voice's and person's reading (unknown ones too, so a stale value is replaced)."""
        if not self.enabled:
            return
        now = self._now()
        with self.lock:
            voices = list(self.voices.moods)
            persons = dict(self.person_voice)
        for voice_id in voices:
            self._publish(voice_id, "", now)
        for person, voice_id in persons.items():
            self._publish(voice_id, person, now)

    def reading(self, voice_id: str, person: str, now: float) -> MoodReading:
        with self.lock:
            return self.persons.reading(person, now) if person else self.voices.reading(voice_id, now)

    def _publish(self, voice_id: str, person: str, now: float) -> None:
        reading = self.reading(voice_id, person, now)
        msg = self._mood_class(voice_id=voice_id, person_id=person, known=reading.known,
                               expression=reading.expression, valence=reading.valence, arousal=reading.arousal,
                               confidence=reading.confidence, age=min(reading.age_s, 3.0e38),
                               utterances=reading.utterances, classes=list(self.voices.classes),
                               distribution=reading.distribution)
        msg.header.stamp = self.node.get_clock().now().to_msg()
        publisher = self._all
        if publisher is not None:
            publisher.publish(msg)
        topic = f"{PERSONS_NS}/{person}/mood" if person else (f"{VOICES_NS}/{voice_id}/mood" if voice_id else "")
        publisher = self._topic(topic) if topic else None
        if publisher is not None:
            publisher.publish(msg)

    def _topic(self, topic: str) -> Any:
        """The latched publisher of a voice's or person's mood topic, created on first use (bounded)."""
        with self._pub_lock:
            publisher = self._publishers.get(topic)
            if publisher is None:
                if len(self._publishers) >= int(self.p("max_voices")) + int(self.p("max_persons")):
                    self.counts["mood_topics_over_limit"] += 1
                    return None
                publisher = self._publishers[topic] = self.node.create_publisher(self._mood_class, topic, LATCHED)
            return publisher

    def _drop_topic(self, topic: str) -> None:
        with self._pub_lock:
            publisher = self._publishers.pop(topic, None)
        if publisher is not None:
            self.node.destroy_publisher(publisher)

    def forget_voices(self, voice_ids: list[str] | None) -> None:
        """Voices forgotten (~/forget_voices, a released upstream voice): their moods and topics go too."""
        with self.lock:
            if self.voices is None:
                return
            gone = list(self.voices.moods) if voice_ids is None else [v for v in voice_ids if v in self.voices.moods]
            for voice_id in gone:
                self.voices.forget(voice_id)
        for voice_id in gone:
            self._drop_topic(f"{VOICES_NS}/{voice_id}/mood")

    def values(self) -> dict[str, str]:
        if not self.enabled:
            return {}
        with self.lock:
            values = {"mood_voices": str(len(self.voices.moods)), "persons_followed": str(len(self.person_voice)),
                      "persons_with_voice": str(sum(1 for v in self.person_voice.values() if v))}
        values.update({k: str(v) for k, v in self.counts.items()})
        return values
