"""Listening to people, not the robot, through a real node and real rclpy on real speech: the robot_speaking gate
(with its echo tail, a stuck true and 100 Hz flapping), the enrolled self voice (checked against similarities
computed by hand from the graph, and refused files), and listen_to: engaged."""
from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="needs the ROS 2 wheels")

from conftest import child_env, voice_graph_by_hand  # noqa: E402
from ros_harness import Harness, speech_stream, typed_chunks  # noqa: E402
from test_hri_voices import Upstream, follow_harness, wait_until  # noqa: E402


def voice_harness(voice_model, **parameters) -> Harness:
    return Harness({"model_path": str(voice_model["path"]), "reliability": "reliable", "vad_backend": "webrtc",
                    "diagnostics_period_s": 0.2, **parameters})


def speak(harness, clip: np.ndarray, t0: float) -> None:
    stream, _ = speech_stream([clip], silence_s=0.8)
    harness.publish(typed_chunks(stream, 16000, 1, "int16", 0.02, t0), speed=4.0)


def test_nothing_heard_while_the_robot_speaks_is_classified_or_joins_a_voice(voice_model, real_waveforms):
    from std_msgs.msg import Bool

    harness = voice_harness(voice_model, robot_speaking_hangover_s=0.3)
    try:
        robot = harness.tester.create_publisher(Bool, "/robot_speaking", 10)
        assert wait_until(lambda: robot.get_subscription_count() > 0)
        speak(harness, real_waveforms[0], 100.0)
        assert len(harness.wait_for("expression", 1)) == 1
        robot.publish(Bool(data=True))
        time.sleep(0.2)
        speak(harness, real_waveforms[1], 200.0)  # the robot's sentence, as the microphone hears it
        robot.publish(Bool(data=False))
        time.sleep(0.3)  # the hangover is wall time: at 4x the 0.8 s lead-in alone lasts only 0.2 s of it
        speak(harness, real_waveforms[2], 300.0)  # speech starts ~0.5 s after: past the 0.3 s echo tail
        expressions = harness.wait_for("expression", 2)
        values = harness.node.diagnostic_values()[2]
        assert len(expressions) == 2 and values["utterances_not_a_person_robot_speaking"] == "1"
        assert [round(e.header.stamp.sec / 100) for e in expressions] == [1, 3]  # the first and the third
        assert harness.node.voice_state.voices.utterances == 2  # the robot's never reached a voice
        assert values["robot_speaking_transitions"] == "2"
    finally:
        harness.close()


def test_a_stuck_robot_speaking_is_distrusted_and_flapping_is_harmless(voice_model, real_waveforms):
    from diagnostic_msgs.msg import DiagnosticStatus
    from std_msgs.msg import Bool

    harness = voice_harness(voice_model, robot_speaking_timeout_s=1.0)
    try:
        robot = harness.tester.create_publisher(Bool, "/robot_speaking", 10)
        assert wait_until(lambda: robot.get_subscription_count() > 0)
        began = time.monotonic()
        state = True
        while time.monotonic() - began < 2.0:  # flapping at 100 Hz
            robot.publish(Bool(data=state))
            state = not state
            time.sleep(0.01)
        assert wait_until(lambda: int(harness.node.diagnostic_values()[2]["robot_speaking_transitions"]) >= 150)
        robot.publish(Bool(data=True))  # and then stuck at true
        time.sleep(1.5)
        level, message, values = harness.node.diagnostic_values()
        assert level == DiagnosticStatus.WARN and "robot_speaking true for" in message
        assert "robot_speaking_stuck_s" in values
        speak(harness, real_waveforms[0], 100.0)  # stuck: not trusted, the person is heard
        assert len(harness.wait_for("expression", 1)) == 1
        assert harness.node.state_label() == "active"
    finally:
        harness.close()


def test_the_enrolled_robot_voice_is_dropped_and_nobody_else(voice_model, corpus_dir, real_waveforms, tmp_path):
    """ser_enroll_voice on three s11 clips (our "robot"); the node drops exactly the utterances whose embedding is
    at least self_voice_threshold similar to the nearest enrolled one, computed here from the graph by hand, and
    classifies the rest; s04 (another voice) is never dropped."""
    import onnxruntime as ort

    from ser_node.audio.decode import load_audio

    enrol = [corpus_dir / "s11" / f"{n}.flac" for n in ("Neutro_01", "Neutro_02", "Alegria_01")]
    path = tmp_path / "self.npz"
    done = subprocess.run([sys.executable, "-m", "ser_node.cli.enroll_voice", *map(str, enrol), "--out", str(path),
                           "--model", str(voice_model["path"])], capture_output=True, text=True, env=child_env(),
                          timeout=120)
    assert done.returncode == 0 and "3 utterance(s)" in done.stdout, done.stderr
    session = ort.InferenceSession(str(voice_model["path"]), providers=["CPUExecutionProvider"])

    def embedding(audio: np.ndarray) -> np.ndarray:
        out = voice_graph_by_hand(session, audio, np.zeros((1, 1536)), ("speaker_embedding",))[0][0]
        return out / np.linalg.norm(out)

    enrolled = np.array([embedding(load_audio(p)) for p in enrol])
    robot = [load_audio(corpus_dir / "s11" / f"{n}.flac") for n in ("Neutro_03", "Neutro_04", "Tristeza_01")]
    harness = voice_harness(voice_model, self_voice_file=str(path), self_voice_threshold=0.75)
    try:
        stream, _ = speech_stream([robot[0], real_waveforms[0], robot[1], real_waveforms[1], robot[2]], 1.0)
        harness.publish(typed_chunks(stream, 16000, 1, "int16", 0.05, 100.0), speed=8.0)
        harness.wait_idle()
        time.sleep(0.5)
        values = harness.node.diagnostic_values()[2]
        classified = int(values["utterances_classified"])
        dropped = int(values.get("utterances_rejected_self_voice", 0))
        assert classified + dropped == 5 and values["self_voice_sentences"] == "3"
        expected_drops = sum(float((enrolled @ embedding(a)).max()) >= 0.75 for a in (robot[0], robot[1], robot[2]))
        assert dropped == expected_drops >= 2  # s11's own clips, by the by-hand similarity
        assert len(harness.received["expression"]) == classified and classified >= 2  # s04 always heard
        assert values["utterances_not_a_person_self_voice"] == str(dropped)
        assert sum(v.utterances for v in harness.node.voice_state.voices.tracker.voices.values()) == classified
    finally:
        harness.close()


@pytest.mark.parametrize("content", [b"not an npz", "other_model"])
def test_a_bad_enrolment_file_is_refused_and_the_node_keeps_running(voice_model, real_waveforms, tmp_path, content):
    from diagnostic_msgs.msg import DiagnosticStatus

    from ser_node.inference.self_voice import SelfVoice

    path = tmp_path / "self.npz"
    if content == "other_model":
        SelfVoice.enrol(np.eye(2, 256), "some-other-model").save(path)
    else:
        path.write_bytes(content)
    harness = voice_harness(voice_model, self_voice_file=str(path))
    try:
        level, message, values = harness.node.diagnostic_values()
        assert level == DiagnosticStatus.WARN and "self_voice_file refused" in message
        expected = "enrolled with model some-other-model" if content == "other_model" else "not a self-voice enrolment"
        assert expected in values["self_voice_error"]
        speak(harness, real_waveforms[0], 100.0)
        assert len(harness.wait_for("expression", 1)) == 1
    finally:
        harness.close()


def test_listen_to_engaged_publishes_only_for_engaged_persons_voices(voice_model, real_waveforms):
    from hri_msgs.msg import EngagementLevel
    from test_moods import Persons

    harness = follow_harness(voice_model, listen_to="engaged")
    try:
        upstream, persons = Upstream(harness), Persons(harness)
        upstream.audio_pub("alice")
        assert upstream.track(["alice"], until=lambda: upstream.audio["alice"].get_subscription_count() > 0)
        carla = f"carla_{upstream.suffix}"
        persons.track([carla, f"ghost_{upstream.suffix}"])  # a person with no voice, never heard
        persons.set_voice(carla, upstream.id("alice"))
        engagement = harness.tester.create_publisher(EngagementLevel, f"/humans/persons/{carla}/engagement_status",
                                                     10)
        assert wait_until(lambda: engagement.get_subscription_count() > 0)
        clip = speech_stream([real_waveforms[0]], 1.0)[0]
        engagement.publish(EngagementLevel(level=EngagementLevel.DISENGAGED))
        upstream.speak("alice", typed_chunks(clip, 16000, 1, "int16", 0.05, 100.0))
        assert wait_until(lambda: harness.node.diagnostic_values()[2].get("utterances_not_a_person_not_engaged")
                          == "1", 15)
        assert upstream.expressions["alice"] == [] and harness.received["expression"] == []
        engagement.publish(EngagementLevel(level=EngagementLevel.ENGAGED))
        assert wait_until(lambda: harness.node.moods.engaged(upstream.id("alice")))
        upstream.speak("alice", typed_chunks(clip, 16000, 1, "int16", 0.05, 200.0))
        assert wait_until(lambda: len(upstream.expressions["alice"]) == 1, 15)
        assert len(harness.wait_for("expression", 1)) == 1
    finally:
        harness.close()
