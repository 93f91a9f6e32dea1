"""Moods through a real node and real rclpy, on real speech: a person's mood follows a change from joy to anger,
expires after silence, moves with the person's /voice_id; is_speaking per voice; hostile person lists; and the
example empathic behaviour driven by real Mood and EngagementLevel messages."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="needs the ROS 2 wheels")

from conftest import ROOT  # noqa: E402
from test_hri_voices import Upstream, follow_harness, wait_until  # noqa: E402

PERSONS = "/humans/persons"
DEFAULT_MODEL = {"path": ROOT / "models" / "ser_default.onnx"}


def right_clips(corpus_dir, speaker: str, label: str, stem: str, count: int) -> list[np.ndarray]:
    """Clips of `speaker` that the shipped model's plain head labels `label` (the node runs it plain here): the
    test is about moods, not about the model's accuracy."""
    from ser_node.audio.decode import load_audio
    from ser_node.inference.classifier import Classifier
    from ser_node.labels import EMOTIONS

    classifier = Classifier(DEFAULT_MODEL["path"])
    out = []
    for k in range(1, 11):
        path = corpus_dir / speaker / f"{stem}_{k:02d}.flac"
        if path.is_file():
            audio = load_audio(path)
            if EMOTIONS[int(np.argmax(classifier.predict([audio])[0]))] == label:
                out.append(audio)
        if len(out) == count:
            return out
    pytest.skip(f"fewer than {count} {label} clips of {speaker} classified as {label}")


class Persons:
    """A fake ROS4HRI person manager on the tester node: the tracked persons and each one's latched voice_id."""

    def __init__(self, harness) -> None:
        from hri_msgs.msg import IdsList
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from std_msgs.msg import String

        from ser_node_interfaces.msg import Mood

        self.harness, self.IdsList, self.String = harness, IdsList, String
        self.latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                                  durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.tracked = harness.tester.create_publisher(IdsList, f"{PERSONS}/tracked", 1)
        self.voice_pubs: dict[str, object] = {}
        self.moods: dict[str, list] = {}
        self._lock = threading.Lock()
        self._mood = Mood
        assert wait_until(lambda: self.tracked.get_subscription_count() > 0)

    def track(self, ids: list[str]) -> None:
        self.tracked.publish(self.IdsList(ids=ids))

    def set_voice(self, person: str, voice_id: str) -> None:
        if person not in self.voice_pubs:
            self.voice_pubs[person] = self.harness.tester.create_publisher(self.String, f"{PERSONS}/{person}/voice_id",
                                                                           self.latched)
            self.moods[person] = []
            self.harness.tester.create_subscription(self._mood, f"{PERSONS}/{person}/mood",
                                                    lambda m, p=person: self._collect(p, m), self.latched)
        assert wait_until(lambda: self.voice_pubs[person].get_subscription_count() > 0)
        self.voice_pubs[person].publish(self.String(data=voice_id))

    def _collect(self, person: str, msg) -> None:
        with self._lock:
            self.moods[person].append(msg)

    def latest(self, person: str):
        with self._lock:
            return self.moods[person][-1] if self.moods[person] else None


def mood_harness(**parameters):
    return follow_harness(DEFAULT_MODEL, speaker_adaptation=False, mood_time_constant_s=3.0, mood_expiry_s=4.0,
                          mood_rate_hz=5.0, **parameters)


def test_a_persons_mood_follows_joy_to_anger_expires_and_moves_with_the_voice_id(corpus_dir):
    from ros_harness import speech_stream, typed_chunks
    from std_msgs.msg import Bool

    joy = right_clips(corpus_dir, "s04", "joy", "Alegria", 3)
    anger = right_clips(corpus_dir, "s04", "anger", "Ira", 4)
    harness = mood_harness()
    try:
        upstream, persons = Upstream(harness), Persons(harness)
        anna, ben = f"anna_{upstream.suffix}", f"ben_{upstream.suffix}"
        voice = upstream.id("alice")
        speaking: list[bool] = []
        harness.tester.create_subscription(Bool, f"/humans/voices/{voice}/is_speaking",
                                           lambda m: speaking.append(m.data), persons.latched)
        upstream.audio_pub("alice")
        assert upstream.track(["alice"], until=lambda: upstream.audio["alice"].get_subscription_count() > 0)
        persons.track([anna, ben])
        assert wait_until(lambda: harness.node.moods.values().get("persons_followed") == "2")
        persons.set_voice(anna, voice)
        assert wait_until(lambda: harness.node.moods.person_voice.get(anna) == voice)

        def speak(clips):
            stream, bounds = speech_stream(clips, silence_s=0.8)
            before = len(upstream.expressions["alice"])
            upstream.speak("alice", typed_chunks(stream, 16000, 1, "int16", 0.02, 2000.0), speed=4.0)
            assert wait_until(lambda: len(upstream.expressions["alice"]) >= before + len(bounds), 20)

        speak(joy)
        assert wait_until(lambda: persons.latest(anna) is not None and persons.latest(anna).utterances == 3)
        happy = persons.latest(anna)
        assert happy.known and happy.expression == "happy" and happy.valence > 0.2 and happy.voice_id == voice
        assert True in speaking and speaking[-1] is False  # REP 155 is_speaking from the voice's own segmenter
        speak(anger)
        angry = persons.latest(anna)
        assert angry.utterances == 7 and angry.expression == "angry" and angry.valence < 0, angry
        assert angry.confidence > 0.3
        # silence: the published mood goes unknown after mood_expiry_s (4 s), at the steady rate
        assert wait_until(lambda: not persons.latest(anna).known, 8.0)
        assert persons.latest(anna).expression == "unknown" and persons.latest(anna).age > 4.0
        # the person manager re-matches: alice's voice is ben's now; anna keeps her (expired) mood
        persons.set_voice(anna, upstream.id("bob"))  # a voice that never speaks
        persons.set_voice(ben, voice)
        assert wait_until(lambda: harness.node.moods.person_voice.get(ben) == voice)
        speak(joy[:2])
        assert wait_until(lambda: persons.latest(ben) is not None and persons.latest(ben).utterances == 2)
        assert persons.latest(ben).known and persons.latest(ben).expression == "happy"
        assert persons.latest(anna).utterances == 7 and not persons.latest(anna).known
    finally:
        harness.close()


def test_hostile_person_lists_are_bounded_and_reported():
    harness = mood_harness(max_persons=4)
    try:
        persons = Persons(harness)
        suffix = harness.namespace.strip("/")
        malformed = ["", "has space", "a/b", "9starts_with_digit"]
        for round_ in range(15):  # churning lists of 30 valid ids and malformed ones
            persons.track([f"p{round_}_{k}_{suffix}" for k in range(30)] + malformed)
            time.sleep(0.05)
        persons.track([f"p14_{k}_{suffix}" for k in range(30)] + malformed)
        assert wait_until(lambda: int(harness.node.moods.values().get("persons_malformed", 0)) >= 4)
        values = harness.node.diagnostic_values()[2]
        assert values["persons_followed"] == "4" and int(values["persons_over_limit"]) >= 26
        topics = harness.tester.get_subscriber_names_and_types_by_node("ser_node", harness.namespace)
        voice_id_subs = [t for t, _ in topics if t.startswith(PERSONS) and t.endswith("/voice_id")]
        assert len(voice_id_subs) == 4  # persons without voices: followed (bounded), never heard
        assert harness.node.state_label() == "active"
    finally:
        harness.close()


def test_the_empathic_behaviour_responds_once_to_an_engaged_persons_lasting_negative_mood():
    import rclpy
    from hri_msgs.msg import EngagementLevel, Expression
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from std_msgs.msg import String

    from ser_node.ros.empathy import make_behaviour_class
    from ser_node_interfaces.msg import Mood

    context = rclpy.Context()
    rclpy.init(context=context)
    behaviour = make_behaviour_class()(context=context, parameter_overrides=[
        Parameter("mood_topic", value="/empathy_test/mood"), Parameter("hold_s", value=1.0),
        Parameter("cooldown_s", value=30.0), Parameter("face_topic", value="/empathy_test/face")])
    tester = rclpy.create_node("empathy_tester", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(behaviour)
    executor.add_node(tester)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        moods = tester.create_publisher(Mood, "/empathy_test/mood", 10)
        responses, faces = [], []
        tester.create_subscription(String, "/ser_empathy/suggested_response", lambda m: responses.append(m.data), 10)
        tester.create_subscription(Expression, "/empathy_test/face", lambda m: faces.append(m), 10)
        engagement = {p: tester.create_publisher(EngagementLevel, f"{PERSONS}/{p}/engagement_status", 10)
                      for p in ("carla", "dani")}

        def mood(person: str, valence: float, confidence: float) -> Mood:
            return Mood(person_id=person, voice_id="v", known=True, expression="sad", valence=valence,
                        arousal=-0.4, confidence=confidence, age=1.0, utterances=5)

        assert wait_until(lambda: moods.get_subscription_count() > 0)
        began = time.monotonic()
        while time.monotonic() - began < 3.0:  # carla engaged and sad, dani sad but not engaged, 3 s
            engagement["carla"].publish(EngagementLevel(level=EngagementLevel.ENGAGED))
            engagement["dani"].publish(EngagementLevel(level=EngagementLevel.DISENGAGED))
            moods.publish(mood("carla", -0.6, 0.7))
            moods.publish(mood("dani", -0.6, 0.7))
            time.sleep(0.1)
        assert wait_until(lambda: len(responses) >= 1, 3.0)
        assert responses == ["You sound a little down. Would you like to tell me about it?"]  # once: cooldown
        assert behaviour.responses == [("carla", responses[0])] and faces and faces[0].expression == "sad"
        count = len(behaviour.responses)
        for _ in range(20):  # an unsure negative mood (confidence below 0.25) does not count
            moods.publish(mood("dani", -0.6, 0.15))
            engagement["dani"].publish(EngagementLevel(level=EngagementLevel.ENGAGED))
            time.sleep(0.1)
        assert len(behaviour.responses) == count
    finally:
        executor.shutdown(timeout_sec=2.0)
        behaviour.destroy_node()
        tester.destroy_node()
        rclpy.shutdown(context=context)
        spinner.join(timeout=5.0)
