"""Node paths no other test reached: the raw-bytes audio variant and its AudioInfo, --wait-for-model, the reset after
a long pause, the stalled-worker watchdog and inference errors, voices forgotten on a model reload or a settings
change, the voices file at SIGINT, and the channel parameter. Real rclpy, real models, real speech."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="needs the ROS 2 wheels")

from conftest import ROOT, child_env  # noqa: E402
from ros_harness import Harness, speech_stream, stamp_seconds, typed_chunks  # noqa: E402

DEFAULT = ROOT / "models" / "ser_default.onnx"


def raw_messages(stream16k: np.ndarray, rate: int, channels: int, chunk_s: float, t0: float) -> tuple[list, object]:
    """The raw-bytes generation (audio_common_msgs as released in the distros): AudioDataStamped messages of
    S16LE interleaved samples and their AudioInfo, built with the bag tools' typestore."""
    pytest.importorskip("rosbags", reason="the raw message classes come from the bag tools (rosbags)")
    from ser_node.audio.decode import resample
    from ser_node.bags.io import audio_typestore

    store = audio_typestore("raw")
    audio = resample(stream16k, 16000, rate)
    frames = np.stack([audio * (0.5 if k else 1.0) for k in range(channels)], axis=1)
    pcm = (np.clip(frames, -1, 1) * 32767).astype("<i2")
    per = int(rate * chunk_s)
    Stamped, Data = store.types["audio_common_msgs/msg/AudioDataStamped"], store.types["audio_common_msgs/msg/AudioData"]
    Header, Time = store.types["std_msgs/msg/Header"], store.types["builtin_interfaces/msg/Time"]
    out = []
    for start in range(0, len(pcm), per):
        t = t0 + start / rate
        header = Header(stamp=Time(sec=int(t), nanosec=int(round((t - int(t)) * 1e9))), frame_id="raw_mic")
        out.append(Stamped(header=header, audio=Data(data=np.frombuffer(pcm[start:start + per].tobytes(), np.uint8))))
    info = store.types["audio_common_msgs/msg/AudioInfo"](channels=channels, sample_rate=rate, sample_format="S16LE",
                                                         bitrate=0, coding_format="wave")
    return out, info


def test_raw_bytes_variant_and_audio_info_through_the_node(real_waveforms):
    """The node's raw path (AudioIntake.on_info, on_raw) on a live node: the stream format comes from AudioInfo,
    not from the raw_* parameters, and every utterance is classified as the typed path classifies it."""
    stream, bounds = speech_stream(real_waveforms[:2], silence_s=1.0)
    messages, info = raw_messages(stream, 48000, 2, 0.02, 500.0)
    harness = Harness({"model_path": str(DEFAULT), "reliability": "reliable", "speaker_adaptation": False,
                       "raw_sample_rate": 16000, "raw_channels": 1})  # wrong on purpose: AudioInfo must win
    try:
        intake = harness.node.intake
        intake.on_info(info)
        assert (intake.raw_format.sample_rate, intake.raw_format.channels) == (48000, 2)
        for msg in messages:
            intake.on_raw(msg)
        raw = harness.wait_for("classification", len(bounds))
        assert len(raw) == len(bounds) and all(m.header.frame_id == "raw_mic" for m in raw)
        assert abs(stamp_seconds(raw[0].header.stamp) - 500.0 - bounds[0][0]) < 0.6
        harness.publish(typed_chunks(stream, 48000, 2, "int16", 0.02, 900.0), speed=8.0)
        typed = harness.wait_for("classification", 2 * len(bounds))[len(bounds):]
        for a, b in zip(raw, typed):  # channel 1 at half level in both: the same mono mix, the same scores
            np.testing.assert_allclose([r.score for r in a.results], [r.score for r in b.results], atol=2e-3)
    finally:
        harness.close()


def test_wait_for_model_retries_until_the_model_appears(tmp_path):
    model = tmp_path / "later.onnx"
    process = subprocess.Popen([sys.executable, "-m", "ser_node.ros.node", "--wait-for-model", "--ros-args", "-p",
                                f"model_path:={model}", "-p", "vad_backend:=webrtc"], env=child_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(3.0)
        assert process.poll() is None  # still up, waiting
        shutil.copyfile(DEFAULT, model)
        time.sleep(11.0)  # a retry every 5 s: time enough for two
        assert process.poll() is None
    finally:
        process.send_signal(signal.SIGINT)
        output = process.communicate(timeout=30)[0]
    assert "retrying every 5 s" in output and "model file not found" in output
    assert "active: listening" in output and output.index("active: listening") > output.index("retrying"), output


def test_the_first_utterance_after_a_long_pause_is_judged_plain(voice_model, real_waveforms):
    """voice_tracking off: one state, reset after adaptation_reset_s without speech. The third utterance is
    normalised by the two before it; after a 20 s pause (reset_s 5) the next one is the plain head's again."""
    from ser_node.inference.classifier import Classifier

    harness = Harness({"model_path": str(voice_model["path"]), "reliability": "reliable", "vad_backend": "webrtc",
                       "adaptation_warmup": 2, "voice_tracking": False, "adaptation_reset_s": 5.0,
                       "publish_utterance": True})
    try:
        from test_voice import collect_utterances

        utterances = collect_utterances(harness)
        first, _ = speech_stream(real_waveforms[:3], silence_s=1.0)
        later, _ = speech_stream(real_waveforms[3:4], silence_s=1.0)
        harness.publish(typed_chunks(first, 16000, 1, "int16", 0.05, 100.0), speed=8.0)
        harness.wait_for("classification", 3)
        harness.publish(typed_chunks(later, 16000, 1, "int16", 0.05, 100.0 + first.size / 16000 + 20.0), speed=8.0)
        got = [np.array([r.score for r in m.results]) for m in harness.wait_for("classification", 4)]
        assert len(got) == 4 == len(utterances)
        plain = Classifier(voice_model["path"]).predict([audio for _start, audio in utterances])
        assert np.abs(got[2] - plain[2]).max() > 1e-3  # normalised before the pause
        np.testing.assert_allclose(got[3], plain[3], atol=1e-4)  # plain after it
        np.testing.assert_allclose(got[:2], plain[:2], atol=1e-4)  # warm-up
    finally:
        harness.close()


def test_watchdog_sees_a_stalled_worker_and_inference_errors_are_counted(exported_models, real_waveforms,
                                                                          monkeypatch):
    from diagnostic_msgs.msg import DiagnosticStatus

    import ser_node.ros.worker as worker_module

    import threading

    stream, bounds = speech_stream(real_waveforms[:2], silence_s=1.0)
    release = threading.Event()
    harness = Harness({"model_path": str(exported_models["fp32"]), "reliability": "reliable"})
    try:
        node = harness.node
        prepare = node.classifier.prepare
        monkeypatch.setattr(node.classifier, "prepare", lambda waves: (_ for _ in ()).throw(RuntimeError("broken")))
        harness.publish(typed_chunks(stream, 16000, 1, "int16", 0.05, 100.0), speed=8.0)
        harness.wait_idle()
        level, message, values = node.diagnostic_values()
        assert values["inference_errors"] == str(len(bounds)) and values["inference_errors_RuntimeError"] == "2"
        assert level == DiagnosticStatus.WARN and "failed to classify" in message and node.worker.thread.is_alive()

        monkeypatch.setattr(node.classifier, "prepare", lambda waves: (release.wait(30), prepare(waves))[1])
        monkeypatch.setattr(worker_module, "WORKER_STALL_S", 1.0)
        harness.publish(typed_chunks(stream, 16000, 1, "int16", 0.05, 200.0), speed=8.0)  # one stuck, one queued
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and node.diagnostic_values()[0] != DiagnosticStatus.ERROR:
            time.sleep(0.2)
        level, message, values = node.diagnostic_values()
        assert level == DiagnosticStatus.ERROR and "no progress" in message and values["queue_depth"] != "0"
        release.set()
        assert len(harness.wait_for("expression", len(bounds))) == len(bounds)  # it recovers
        assert node.diagnostic_values()[0] != DiagnosticStatus.ERROR
    finally:
        release.set()
        harness.close()


def test_voices_are_forgotten_on_reload_and_on_a_settings_change(voice_model, real_waveforms):
    harness = Harness({"model_path": str(voice_model["path"]), "reliability": "reliable", "vad_backend": "webrtc",
                       "adaptation_warmup": 2})
    try:
        from rclpy.parameter import Parameter

        node = harness.node
        stream, _ = speech_stream(real_waveforms[:2], silence_s=1.0)
        harness.publish(typed_chunks(stream, 16000, 1, "int16", 0.05, 100.0), speed=8.0)
        harness.wait_for("expression", 2)
        assert node.voice_state.voices.utterances == 2
        assert node._reload_service(None, type("R", (), {})()).success
        assert node.voice_state.voices is None  # statistics of the old model's feature space are gone
        harness.publish(typed_chunks(stream, 16000, 1, "int16", 0.05, 200.0), speed=8.0)
        harness.wait_for("expression", 4)
        before = node.voice_state.voices
        assert before.utterances == 2
        assert node.set_parameters([Parameter("voice_threshold", value=0.9)])[0].successful
        one, _ = speech_stream(real_waveforms[2:3], silence_s=1.0)
        harness.publish(typed_chunks(one, 16000, 1, "int16", 0.05, 300.0), speed=8.0)
        harness.wait_for("expression", 5)
        assert node.voice_state.voices is not before and node.voice_state.voices.utterances == 1
    finally:
        harness.close()


def test_the_voices_file_is_written_at_sigint(voice_model, real_waveforms, tmp_path):
    from ros_harness import expressions_from_process

    from ser_node.inference.classifier import Classifier
    from ser_node.inference.voices import VoiceTracker, load_voices

    path = tmp_path / "voices.npz"
    env = child_env()
    command = [sys.executable, "-m", "ser_node.ros.node", "--ros-args", "-p", f"model_path:={voice_model['path']}",
               "-p", f"voices_file:={path}", "-p", "reliability:=reliable", "-p", "vad_backend:=webrtc",
               "-r", "audio:=/sigint_mic"]
    received, sent, output = expressions_from_process(command, env, "/sigint_mic", "/ser_node/expression",
                                                      real_waveforms[:3], stop=signal.SIGINT)
    assert len(received) == sent == 3, output[-2000:]
    saved = VoiceTracker()
    assert load_voices(saved, path, Classifier(voice_model["path"]).model_id) >= 1, output[-2000:]
    assert sum(v.utterances for v in saved.voices.values()) == 3
    assert os.path.getsize(path) > 0


def test_the_channel_parameter_picks_one_channel(exported_models, real_waveforms):
    """Stereo with speech on channel 0 only: channel 1 yields nothing, channel 0 every utterance, -1 (the mix)
    every utterance too."""
    from audio_common_msgs.msg import AudioStamped

    stream, bounds = speech_stream(real_waveforms[:2], silence_s=1.0)

    def stereo(t0: float) -> list:
        out = []
        for start in range(0, stream.size, 800):
            block = stream[start:start + 800]
            msg = AudioStamped()
            t = t0 + start / 16000
            msg.header.stamp.sec, msg.header.stamp.nanosec = int(t), int(round((t - int(t)) * 1e9))
            msg.audio.info.format, msg.audio.info.channels, msg.audio.info.rate = 8, 2, 16000
            msg.audio.info.chunk = block.size
            pcm = np.stack([block, np.zeros_like(block)], axis=1)  # speech left, silence right
            msg.audio.audio_data.int16_data = (pcm.reshape(-1) * 32767).astype(np.int16).tolist()
            out.append(msg)
        return out

    from rclpy.parameter import Parameter

    harness = Harness({"model_path": str(exported_models["fp32"]), "reliability": "reliable", "channel": 1})
    try:
        harness.publish(stereo(100.0), speed=8.0)
        harness.wait_idle()
        time.sleep(0.5)
        assert harness.received["expression"] == []
        assert harness.node.set_parameters([Parameter("channel", value=0)])[0].successful  # live
        harness.publish(stereo(200.0), speed=8.0)
        assert len(harness.wait_for("expression", len(bounds))) == len(bounds)
    finally:
        harness.close()
