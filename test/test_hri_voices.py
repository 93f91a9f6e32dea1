"""ROS4HRI voices through a real node and real rclpy: an upstream voice module's tracked list and per-voice audio
topics in, per-voice expressions out; released subscriptions; the forget service; a hostile upstream."""
from __future__ import annotations

import itertools
import threading
import time

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="needs the ROS 2 wheels")

VOICES = "/humans/voices"


_RUNS = itertools.count(1)


def voice_audio_subscriptions(harness) -> list[str]:
    """The voices whose /humans/voices/<id>/audio the node under test subscribes to (from the ROS graph), by the
    names the test gave them."""
    topics = harness.tester.get_subscriber_names_and_types_by_node("ser_node", harness.namespace)
    return sorted(harness.names.get(t.split("/")[3], "?") for t, _ in topics
                  if t.startswith(VOICES + "/") and t.endswith("/audio"))


def wait_until(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


class Upstream:
    """A fake upstream voice module on the tester node: the tracked list and per-voice audio publishers."""

    def __init__(self, harness) -> None:
        from audio_common_msgs.msg import AudioStamped
        from hri_msgs.msg import Expression, IdsList
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        self.harness, self.IdsList, self.AudioStamped = harness, IdsList, AudioStamped
        # Each test's voice ids are its own: a node of an earlier test may linger in the graph for a moment.
        self.suffix = harness.namespace.strip("/")
        harness.names = {}
        self.tracked = harness.tester.create_publisher(IdsList, f"{VOICES}/tracked", 1)
        self.audio: dict[str, object] = {}
        self.expressions: dict[str, list] = {}
        self._lock = threading.Lock()
        self._Expression, self._qos = Expression, QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE)
        assert wait_until(lambda: self.tracked.get_subscription_count() > 0)

    def id(self, name: str) -> str:
        """The wire id of the voice this test calls `name` (malformed names are sent as they are)."""
        if not name or not name.isidentifier() or len(name) > 30:
            return name
        self.harness.names[f"{name}_{self.suffix}"] = name
        return f"{name}_{self.suffix}"

    def track(self, names: list[str], until=None, timeout: float = 10.0) -> bool:
        """Publishes the list (again every 0.2 s, as a voice module does, until `until()` holds)."""
        ids = [self.id(n) for n in names]
        deadline = time.monotonic() + timeout
        while True:
            self.tracked.publish(self.IdsList(ids=ids))
            if until is None or until():
                return True
            if time.monotonic() > deadline:
                return False
            for _ in range(4):
                time.sleep(0.05)
                if until():
                    return True

    def audio_pub(self, name: str):
        if name not in self.audio:
            self.audio[name] = self.harness.tester.create_publisher(self.AudioStamped,
                                                                    f"{VOICES}/{self.id(name)}/audio", self._qos)
            self.expressions[name] = []
            self.harness.tester.create_subscription(
                self._Expression, f"{VOICES}/{self.id(name)}/expression", lambda m, v=name: self._collect(v, m), 50)
        return self.audio[name]

    def _collect(self, voice_id: str, msg) -> None:
        with self._lock:
            self.expressions[voice_id].append(msg)

    def speak(self, voice_id: str, messages: list, speed: float = 8.0) -> None:
        self.harness.publish(messages, speed, publisher=self.audio_pub(voice_id))


def follow_harness(voice_model, **parameters):
    from ros_harness import Harness

    namespace = f"/hri{next(_RUNS)}"
    harness = Harness({"model_path": str(voice_model["path"]), "reliability": "reliable", "vad_backend": "webrtc",
                    "adaptation_warmup": 2, "publish_utterance": True, **parameters}, namespace=namespace)
    harness.namespace = namespace
    return harness


def test_two_upstream_voices_get_separate_states_and_outputs(voice_model, real_waveforms):
    """alice (one speaker) and bob (another) on their own topics, interleaved: each voice's expressions come on its
    own topic, and every published score is what that voice's own adapter gives offline (the third utterance of
    each is normalised by its own two earlier ones only)."""
    from ros_harness import speech_stream, stamp_seconds, typed_chunks

    from ser_node.inference.classifier import Classifier

    harness = follow_harness(voice_model)
    try:
        upstream = Upstream(harness)
        assert upstream.track(["alice", "bob"], until=lambda: voice_audio_subscriptions(harness) == ["alice", "bob"])
        utterances = {}
        harness.tester.create_subscription(
            __import__("audio_common_msgs.msg", fromlist=["AudioStamped"]).AudioStamped, f"{harness.namespace}/ser_node/utterance",
            lambda m: utterances.__setitem__(stamp_seconds(m.header.stamp),
                                             np.array(m.audio.audio_data.float32_data, np.float32)), 50)
        for voice_id in ("alice", "bob"):
            pub = upstream.audio_pub(voice_id)
            assert wait_until(lambda: pub.get_subscription_count() > 0)
        time.sleep(0.3)
        speakers = {"alice": (real_waveforms[0:3], 1000.0), "bob": (real_waveforms[7:10], 5000.0)}
        streams = {v: typed_chunks(speech_stream(w, 1.0)[0], 16000, 1, "int16", 0.05, t0, frame_id=f"mic_{v}")
                   for v, (w, t0) in speakers.items()}
        for k in range(0, max(len(m) for m in streams.values()), 40):  # the two voices take turns
            for voice_id, messages in streams.items():
                upstream.speak(voice_id, messages[k:k + 40])
        classifications = harness.wait_for("classification", 6)
        assert wait_until(lambda: all(len(upstream.expressions[v]) == 3 for v in ("alice", "bob")))
        assert len(classifications) == 6 and len(harness.received["expression"]) == 6  # the node's own topics too
        assert {m.header.frame_id for m in upstream.expressions["alice"]} == {"mic_alice"}
        assert {m.header.frame_id for m in upstream.expressions["bob"]} == {"mic_bob"}

        classifier = Classifier(voice_model["path"])
        from test_voice import node_adapter

        for voice_id, (_, t0) in speakers.items():
            adapter = node_adapter(voice_model, warmup=2)
            mine = sorted((stamp_seconds(m.header.stamp), m) for m in classifications
                          if m.header.frame_id == f"mic_{voice_id}")
            assert len(mine) == 3
            for stamp, msg in mine:
                result = classifier.infer_adapted(classifier.prepare([utterances[stamp]])[0], adapter)
                np.testing.assert_allclose([r.score for r in msg.results], result.probabilities, atol=1e-4)
        held = harness.node.voice_state.voices.tracker.voices
        assert held[upstream.id("alice")].utterances == 3 and held[upstream.id("bob")].utterances == 3
        # each voice's own stream stepped its own encoder while it spoke (the scores above came from those states)
        encoders = [v.stream.segmenter.listener for v in harness.node.hri.held.values()]
        assert len({id(e) for e in encoders}) == 2 and all(e.steps > 0 and e.errors == 0 for e in encoders)
        values = harness.node.diagnostic_values()[2]
        assert values["stream_encoder_errors"] == "0"
        # /diagnostics counts the ends of every stream's encoder: all 6 encoded while spoken, and as many prepared
        # at the pause as the two encoders counted
        assert values["stream_ends"] == "6"
        assert values["stream_ends_prepared"] == str(sum(e.prepared_ends for e in encoders))
        assert values["hri_voices_held"] == "2" and values["hri_held_ids"] == f"{upstream.id('alice')},{upstream.id('bob')}"
    finally:
        harness.close()


def test_a_voice_that_leaves_is_released_and_forget_service(voice_model, real_waveforms):
    """bob leaves the tracked list: his subscription and expression publisher go, his state is forgotten; alice's
    stays. ~/forget_voices forgets one voice by id, says when an id is not held, and forgets all."""
    from ros_harness import speech_stream, typed_chunks
    from ser_node_interfaces.srv import ForgetVoices

    harness = follow_harness(voice_model)
    try:
        upstream = Upstream(harness)
        assert upstream.track(["alice", "bob"], until=lambda: len(voice_audio_subscriptions(harness)) == 2)
        for voice_id, clip in (("alice", real_waveforms[0]), ("bob", real_waveforms[7])):
            pub = upstream.audio_pub(voice_id)
            assert wait_until(lambda: pub.get_subscription_count() > 0)
            time.sleep(0.2)
            upstream.speak(voice_id, typed_chunks(speech_stream([clip], 1.0)[0], 16000, 1, "int16", 0.05, 100.0))
        assert wait_until(lambda: all(len(upstream.expressions[v]) == 1 for v in ("alice", "bob")), 20.0)
        assert set(harness.node.voice_state.voices.tracker.voices) == {upstream.id("alice"), upstream.id("bob")}

        assert upstream.track(["alice"], until=lambda: voice_audio_subscriptions(harness) == ["alice"])
        assert upstream.audio["bob"].get_subscription_count() == 0
        assert wait_until(lambda: harness.tester.count_publishers(f"{VOICES}/{upstream.id('bob')}/expression") == 0)
        assert list(harness.node.voice_state.voices.tracker.voices) == [upstream.id("alice")]
        assert harness.node.diagnostic_values()[2]["hri_voices_released"] == "1"

        client = harness.tester.create_client(ForgetVoices, f"{harness.namespace}/ser_node/forget_voices")
        assert client.wait_for_service(timeout_sec=5.0)
        response = client.call(ForgetVoices.Request(voice_ids=[upstream.id("alice"), "nobody"]), timeout_sec=10.0)
        assert list(response.forgotten) == [upstream.id("alice")] and not response.success and "nobody" in response.message
        assert not harness.node.voice_state.voices.tracker.voices
        assert voice_audio_subscriptions(harness) == ["alice"]  # still tracked upstream: kept
        upstream.speak("alice", typed_chunks(speech_stream([real_waveforms[1]], 1.0)[0], 16000, 1, "int16", 0.05,
                                             200.0))
        assert wait_until(lambda: len(upstream.expressions["alice"]) == 2, 20.0)
        response = client.call(ForgetVoices.Request(all_voices=True), timeout_sec=10.0)
        assert response.success and list(response.forgotten) == [upstream.id("alice")]
    finally:
        harness.close()


def test_hostile_upstream_stays_bounded_and_keeps_classifying(voice_model, real_waveforms):
    """Hundreds of ids, malformed ids, ids that churn on every list, audio on a topic nobody tracks, a NaN chunk on
    a held voice's topic: the node holds at most max_voices, says what it dropped, keeps the voice it holds through
    the churn and still classifies it; subscriptions and threads end where they started."""
    from ros_harness import speech_stream, typed_chunks

    harness = follow_harness(voice_model, max_voices=4)
    try:
        upstream = Upstream(harness)
        threads_before = threading.active_count()
        malformed = ["", "has space", "a/b", "9starts_with_digit", "x" * 100, "tilde~"]
        crowd = [f"p{k:03d}" for k in range(300)]
        assert upstream.track(["alice"] + malformed + crowd, until=lambda: len(voice_audio_subscriptions(harness)) == 4)
        assert "alice" in voice_audio_subscriptions(harness)
        level, _, values = harness.node.diagnostic_values()
        lists = int(values["hri_tracked_lists"])  # each list counts its dropped ids again
        assert values["hri_ids_malformed"] == str(lists * len(malformed))
        assert values["hri_ids_over_limit"] == str(lists * 297)
        from diagnostic_msgs.msg import DiagnosticStatus

        assert "over max_voices" in values["hri_last_dropped"] and level == DiagnosticStatus.WARN

        rng = np.random.default_rng(0)
        held = harness.node.hri.held[upstream.id("alice")]
        for cycle in range(30):  # churn: alice stays, the rest is new every list; alice keeps the same state
            ids = ["alice"] + [f"c{cycle}_{k}" for k in range(int(rng.integers(0, 12)))] + malformed[:2]
            lists = int(harness.node.diagnostic_values()[2]["hri_tracked_lists"])
            upstream.track(list(rng.permutation(ids)),
                           until=lambda: int(harness.node.diagnostic_values()[2]["hri_tracked_lists"]) > lists)
            assert harness.node.hri.held.get(upstream.id("alice")) is held, cycle
        assert upstream.track(["alice"], until=lambda: voice_audio_subscriptions(harness) == ["alice"])

        ghost = upstream.audio_pub("ghost")  # nobody tracks it: never subscribed
        clip = typed_chunks(speech_stream([real_waveforms[2]], 1.0)[0], 16000, 1, "int16", 0.05, 300.0)
        upstream.speak("ghost", clip)
        broken = typed_chunks(np.full(1600, np.nan, np.float32), 16000, 1, "float32", 0.1, 299.0)
        upstream.speak("alice", broken + clip)  # a NaN chunk on a voice's topic first: dropped, counted, no harm
        assert wait_until(lambda: len(upstream.expressions["alice"]) == 1, 20.0)
        assert harness.node.diagnostic_values()[2]["hri_chunks_dropped"] == "1"
        assert ghost.get_subscription_count() == 0 and not upstream.expressions["ghost"]
        values = harness.node.diagnostic_values()[2]
        assert values["hri_voices_held"] == "1" and int(values["hri_voices_released"]) >= 3
        assert int(values["hri_voices_opened"]) == int(values["hri_voices_released"]) + 1
        assert values["utterances_classified"] == "1"
        assert len(harness.node.voice_state.voices.tracker.voices) <= 4
        assert len(harness.node.hri._spare_vads) <= 4  # released voices' VADs are reused, never piled up
        assert threading.active_count() == threads_before
    finally:
        harness.close()


def test_publish_mode_names_the_nodes_own_voices(voice_model, real_waveforms):
    """hri_voices: publish (no upstream module): the node's own voice ids appear on /humans/voices/tracked
    (latched) and each utterance's expression on its voice's topic; forgetting all clears the list."""
    from hri_msgs.msg import Expression, IdsList
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from ros_harness import speech_stream, typed_chunks
    from ser_node_interfaces.srv import ForgetVoices

    harness = follow_harness(voice_model, hri_voices="publish")
    try:
        latched = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        lists, per_voice = [], {}
        harness.tester.create_subscription(IdsList, f"{VOICES}/tracked", lists.append, latched)
        harness.publish(typed_chunks(speech_stream(real_waveforms[:2], 1.0)[0], 16000, 1, "int16", 0.05, 10.0))
        assert len(harness.wait_for("expression", 2)) == 2
        assert wait_until(lambda: lists and lists[-1].ids)
        ids = list(lists[-1].ids)
        assert all(i.startswith("voice") for i in ids) and set(ids) == set(harness.node.voice_state.voices.tracker.voices)
        # A consumer that subscribes on seeing the ids still gets each voice's results (transient-local).
        for voice_id in ids:
            per_voice[voice_id] = []
            harness.tester.create_subscription(Expression, f"{VOICES}/{voice_id}/expression",
                                               per_voice[voice_id].append, latched)
        assert wait_until(lambda: sum(len(v) for v in per_voice.values()) == 2)
        voice_id = ids[0]
        client = harness.tester.create_client(ForgetVoices, f"{harness.namespace}/ser_node/forget_voices")
        assert client.wait_for_service(timeout_sec=5.0)
        assert client.call(ForgetVoices.Request(all_voices=True), timeout_sec=10.0).success
        assert wait_until(lambda: list(lists[-1].ids) == [])
        assert wait_until(lambda: harness.tester.count_publishers(f"{VOICES}/{voice_id}/expression") == 0)
    finally:
        harness.close()


def test_voices_file_only_when_named_remembered_and_forgotten(voice_model, real_waveforms, tmp_path, monkeypatch):
    """Privacy: with voices_file empty nothing is written; with a path, the voices heard are saved at deactivate
    and come back at the next configure; forgetting them empties the file too; a corrupt file is reported in
    diagnostics and the node still classifies."""
    from ros_harness import speech_stream, typed_chunks
    from ser_node_interfaces.srv import ForgetVoices

    from ser_node.inference.voices import VoiceTracker, load_voices

    import ser_node.files
    import ser_node.inference.voices

    path = tmp_path / "voices.npz"
    messages = typed_chunks(speech_stream(real_waveforms[:3], 1.0)[0], 16000, 1, "int16", 0.05, 10.0)
    writes: list[str] = []  # every .npz the package writes goes through save_npz_atomic: record where
    original = ser_node.files.save_npz_atomic
    monkeypatch.setattr(ser_node.inference.voices, "save_npz_atomic",
                        lambda arrays, where: (writes.append(str(where)), original(arrays, where))[1])
    cwd, home = tmp_path / "cwd", tmp_path / "home"
    cwd.mkdir(), home.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("HOME", str(home))
    harness = follow_harness(voice_model, hri_voices="off")
    try:
        harness.publish(messages)
        harness.wait_for("expression", 3)
        assert harness.node.voice_state.voices.utterances == 3  # voices were heard, and could have been saved
        harness.node.trigger_deactivate()
    finally:
        harness.close()  # shutdown saves too, where a file is named
    assert writes == [] and not list(cwd.iterdir()) and not list(home.iterdir())  # no file named: none written

    harness = follow_harness(voice_model, hri_voices="off", voices_file=str(path))
    try:
        harness.publish(messages)
        harness.wait_for("expression", 3)
        heard = dict(harness.node.voice_state.voices.tracker.voices)
        harness.node.trigger_deactivate()
        assert writes == [str(path)]  # the spy sees the real writes: its silence above means something
        saved = VoiceTracker()
        assert load_voices(saved, path, harness.node.classifier.model_id) == len(heard) >= 1
        assert sum(v.utterances for v in saved.voices.values()) == 3
        harness.node.trigger_cleanup()
        assert harness.configure_and_activate()  # remembered at configure
        assert list(harness.node.voice_state.voices.tracker.voices) == list(heard)
        client = harness.tester.create_client(ForgetVoices, f"{harness.namespace}/ser_node/forget_voices")
        assert client.wait_for_service(timeout_sec=5.0)
        assert client.call(ForgetVoices.Request(all_voices=True), timeout_sec=10.0).success
        assert load_voices(VoiceTracker(), path, harness.node.classifier.model_id) == 0
    finally:
        harness.close()

    path.write_bytes(b"not a voices file")
    harness = follow_harness(voice_model, hri_voices="off", voices_file=str(path))
    try:
        level, message, values = harness.node.diagnostic_values()
        assert "not a voices file" in values["voices_file_error"] and "voices_file" in message
        harness.publish(messages)
        assert len(harness.wait_for("expression", 3)) == 3
    finally:
        harness.close()
