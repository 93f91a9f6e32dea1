"""The live node over real rclpy: real Spanish speech in, one expression per utterance out."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="needs the ROS 2 wheels (scripts/setup.sh installs them)")
pytest.importorskip("hri_msgs", reason="needs the interface packages built by scripts/setup.sh")

from ros_harness import Harness, assert_same_classifications, speech_stream, stamp_seconds, typed_chunks  # noqa: E402

T0 = 1_700_000_000.0  # a robot-like epoch time in the headers: stamps must come from them, not from arrival
# README, "The node": the ROS4HRI word and the circumplex point of each class, in the model's class order
README_WORDS = ["angry", "disgusted", "scared", "happy", "neutral", "sad", "surprised"]
README_VALENCE_AROUSAL = [(-0.6, 0.8), (-0.7, 0.3), (-0.6, 0.7), (0.8, 0.5), (0.0, 0.0), (-0.7, -0.5), (0.3, 0.8)]


@pytest.fixture(scope="module")
def three_utterances(real_waveforms):
    return speech_stream([real_waveforms[0], real_waveforms[8], real_waveforms[5]], silence_s=1.0)


def node_params(models, **extra):
    return {"model_path": str(models["fp32"]), "reliability": "reliable", "diagnostics_period_s": 0.2, **extra}


def check_one_expression_per_utterance(expressions, bounds, t0=T0):
    assert len(expressions) == len(bounds), [stamp_seconds(e.header.stamp) - t0 for e in expressions]
    starts = sorted(stamp_seconds(e.header.stamp) - t0 for e in expressions)
    for start, (clip_start, _clip_end) in zip(starts, bounds):
        # Pre-roll (0.2 s) and the clip's own leading silence bound the onset error.
        assert clip_start - 0.45 <= start <= clip_start + 0.6, (start, clip_start)


@pytest.mark.parametrize("rate,channels,fmt,chunk_s", [
    (16000, 1, "int16", 0.02),
    (44100, 2, "float32", 0.05),
    (48000, 2, "int16", 0.1),
    (48000, 1, "float32", 0.032),
])
def test_stream_gives_one_expression_per_utterance(exported_models, three_utterances, rate, channels, fmt, chunk_s):
    stream, bounds = three_utterances
    harness = Harness(node_params(exported_models))
    try:
        harness.publish(typed_chunks(stream, rate, channels, fmt, chunk_s, T0), speed=8.0)
        expressions = harness.wait_for("expression", len(bounds))
        classifications = harness.wait_for("classification", len(bounds))
        check_one_expression_per_utterance(expressions, bounds)
        for expression, classification in zip(expressions, classifications):
            assert expression.header == classification.header
            assert expression.header.frame_id == "mic"
            scores = [r.score for r in classification.results]
            # the README's table: the top class's ROS4HRI word, and the score-weighted circumplex point
            assert expression.expression == README_WORDS[int(np.argmax(scores))]
            valence, arousal = np.asarray(scores) @ np.array(README_VALENCE_AROUSAL)
            assert expression.valence == pytest.approx(valence, abs=1e-5)
            assert expression.arousal == pytest.approx(arousal, abs=1e-5)
            assert [r.class_id for r in classification.results][0] == "anger" and len(scores) == 7
            assert abs(sum(scores) - 1) < 1e-4 and abs(max(scores) - expression.confidence) < 1e-6
        speaking = [m.data for m in harness.wait_for("is_speaking", 2 * len(bounds))]
        assert speaking == [True, False] * len(bounds)
    finally:
        harness.close()


def test_batched_intake_and_executor_callbacks_give_the_same_results(exported_models, three_utterances):
    """The idle-time batching (idle_batch_s > 0) only changes when messages are taken, never what comes out."""
    stream, bounds = three_utterances
    chunks = typed_chunks(stream, 16000, 1, "int16", 0.02, T0)
    outcomes = {}
    for idle_batch_s in (0.0, 0.25):
        harness = Harness(node_params(exported_models, idle_batch_s=idle_batch_s))
        try:
            intake = harness.node.intake.batched
            assert (intake is None) == (idle_batch_s == 0.0)
            harness.publish(chunks, speed=8.0)
            outcomes[idle_batch_s] = harness.wait_for("classification", len(bounds))
            if intake is not None:
                # Far fewer wake-ups than messages: the point of batching (the speech parts are taken one by one).
                assert 0 < intake.wakeups < 0.8 * len(chunks), (intake.wakeups, len(chunks))
                assert intake.lost == 0
                assert harness.node.diagnostic_values()[2]["audio_messages_lost"] == "0"
        finally:
            harness.close()
    assert len(outcomes[0.0]) == len(outcomes[0.25]) == len(bounds)
    for a, b in zip(outcomes[0.0], outcomes[0.25]):
        assert a.header.stamp == b.header.stamp
        np.testing.assert_allclose([r.score for r in a.results], [r.score for r in b.results], atol=1e-6)


def test_intake_pause_is_zero_while_speaking_and_fits_the_history(exported_models, real_waveforms):
    from ser_node.audio.stream import AudioChunk

    harness = Harness(node_params(exported_models, idle_batch_s=0.5, qos_depth=40))
    try:
        node, intake = harness.node, harness.node.intake.batched
        assert node.intake.pause() == 0.5
        speech = real_waveforms[0][: int(0.5 * len(real_waveforms[0]))]  # stops mid-utterance
        node.intake.feed(lambda _now: AudioChunk(speech[:, None], 16000, T0), "mic")
        assert node.intake.stream.segmenter.speaking
        assert node.intake.pause() == 0.0
        assert intake.depth == 40
        assert intake.safe_pause(0.5, 0, 0.25) == 0.5  # nothing streaming
        assert intake.safe_pause(0.5, 1, 0.25) == pytest.approx(0.05)  # a stream starting: probe its rate
        assert intake.safe_pause(0.5, 10, 0.2) == pytest.approx(0.2)  # 50 msgs/s: a quarter of 40 takes 0.2 s
        assert intake.safe_pause(0.5, 50, 0.05) == pytest.approx(0.01)  # a fast replay: 1000 msgs/s
        assert intake.safe_pause(0.0, 10, 0.2) == 0.0
    finally:
        harness.close()


def test_audio_lost_to_a_full_history_is_counted_and_reported(exported_models, real_waveforms):
    """A burst far larger than the history, sent while the intake idles: it sees the publisher's sequence gaps."""
    import time

    from diagnostic_msgs.msg import DiagnosticStatus

    harness = Harness(node_params(exported_models, qos_depth=3, reliability="best_effort", idle_batch_s=1.0))
    try:
        harness.wait_for_subscriber()
        chunks = typed_chunks(real_waveforms[0][:16000], 16000, 1, "int16", 0.01, T0)  # 100 messages
        harness.publish(chunks[:1])  # the intake learns this publisher's sequence number...
        deadline = time.monotonic() + 5.0
        while harness.node.diagnostic_values()[2]["chunks_received"] == "0" and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.5)  # ...then its wait times out on silence and it pauses for idle_batch_s (1 s)
        harness.publish(chunks[1:], speed=1e6)  # back to back, into a history of 3
        while harness.node.diagnostic_values()[2]["chunks_received"] == "1" and time.monotonic() < deadline + 5:
            time.sleep(0.01)  # the intake drains after its pause
        harness.wait_idle()
        level, message, values = harness.node.diagnostic_values()
        lost = int(values["audio_messages_lost"])
        assert 0 < lost <= len(chunks) - 1
        assert int(values["chunks_received"]) + lost == len(chunks)  # every message: either seen or counted lost
        assert level == DiagnosticStatus.WARN and "lost" in message
        assert harness.node.state_label() == "active"
    finally:
        harness.close()


def bad_chunks(t: float):
    """One of each kind of broken message the node must survive."""
    from audio_common_msgs.msg import AudioStamped

    def make(fmt_code, channels, rate, field, data):
        msg = AudioStamped()
        msg.header.stamp.sec, msg.header.stamp.nanosec = int(t), int((t - int(t)) * 1e9)
        msg.audio.info.format, msg.audio.info.channels, msg.audio.info.rate = fmt_code, channels, rate
        setattr(msg.audio.audio_data, field, data)
        return msg

    return [
        make(1, 1, 16000, "float32_data", [float("nan")] * 320),  # NaN
        make(8, 1, 16000, "int16_data", []),  # empty
        make(8, 2, 16000, "int16_data", [1, 2, 3]),  # odd length for stereo
        make(99, 1, 16000, "int16_data", [0] * 320),  # unknown format code
        make(8, 1, 16000, "int16_data", [0] * 16000 * 6),  # absurd: 6 s in one message
        make(8, 1, 0, "int16_data", [0] * 320),  # zero sample rate
        make(8, 0, 16000, "int16_data", [0] * 320),  # zero channels
    ]


def test_bad_chunks_change_nothing_for_good_ones(exported_models, three_utterances):
    stream, bounds = three_utterances
    good = typed_chunks(stream, 16000, 1, "int16", 0.05, T0)
    clean = Harness(node_params(exported_models))
    try:
        clean.publish(good, speed=8.0)
        expected = clean.wait_for("classification", len(bounds))
    finally:
        clean.close()

    mixed = []
    for index, msg in enumerate(good):
        mixed.append(msg)
        if index % 25 == 3:
            mixed += bad_chunks(T0 + index * 0.05)
    harness = Harness(node_params(exported_models))
    try:
        harness.publish(mixed, speed=8.0)
        assert_same_classifications(expected, harness.wait_for("classification", len(bounds)), len(bounds))
        level, _message, values = harness.node.diagnostic_values()
        inserted = sum(1 for i in range(len(good)) if i % 25 == 3)
        assert int(values["chunks_dropped"]) == 7 * inserted
        for reason in ("non_finite", "empty", "bad_length", "unknown_format", "too_large", "bad_rate",
                       "bad_channels"):
            assert int(values[f"chunks_dropped_{reason}"]) == inserted, reason
        from diagnostic_msgs.msg import DiagnosticStatus

        assert level == DiagnosticStatus.WARN
        diagnostics = harness.wait_for("diagnostics", 1)
        keys = {kv.key: kv.value for kv in diagnostics[-1].status[0].values}
        assert keys["chunks_dropped"] == str(7 * inserted)
        assert harness.node.state_label() == "active"
    finally:
        harness.close()


def test_dropped_chunks_warn_on_the_executor_path_too(exported_models):
    """Diagnostics do not depend on how audio is taken (idle_batch_s: 0 = executor callbacks)."""
    from diagnostic_msgs.msg import DiagnosticStatus

    harness = Harness(node_params(exported_models, idle_batch_s=0.0))
    try:
        assert harness.node.intake.batched is None
        harness.publish(bad_chunks(T0), speed=8.0)
        harness.wait_idle()
        level, _message, values = harness.node.diagnostic_values()
        assert int(values["chunks_dropped"]) == 7
        assert level == DiagnosticStatus.WARN
        assert "audio_messages_lost" not in values
    finally:
        harness.close()


def test_burst_at_ten_times_real_time_is_absorbed_or_counted(exported_models, real_waveforms):
    stream, bounds = speech_stream(real_waveforms[:10], silence_s=0.6)
    harness = Harness(node_params(exported_models, queue_size=2, max_batch=1))
    try:
        harness.publish(typed_chunks(stream, 48000, 2, "int16", 0.02, T0), speed=10.0)
        harness.wait_idle()
        expressions = harness.wait_for("expression", len(bounds), timeout=10.0)
        _, _, values = harness.node.diagnostic_values()
        segmented = harness.node.intake.stream.segmenter.stats.utterances
        dropped = int(values["utterances_dropped"])
        assert segmented == len(bounds)
        assert len(expressions) + dropped == segmented
        assert int(values["utterances_classified"]) == len(expressions)
        assert values["queue_depth"] == "0"  # idle: everything was classified or counted as dropped
        assert float(values["latency_ms_p50"]) > 0
    finally:
        harness.close()


def test_drop_oldest_policy_when_the_worker_falls_behind(exported_models, real_waveforms):
    from ser_node.audio.segmenter import Utterance

    harness = Harness(node_params(exported_models, queue_size=2), autostart=False)
    try:
        harness.node.trigger_configure()  # configured, not active: no worker drains the queue
        for i in range(5):
            harness.node.worker.enqueue(Utterance(real_waveforms[i], float(i), float(i) + 1, "silence"), "mic")
        _, _, values = harness.node.diagnostic_values()
        assert values["queue_depth"] == "2" and values["utterances_dropped"] == "3"
        assert [p.utterance.start for p in harness.node.worker.queue] == [3.0, 4.0]  # the newest are kept
    finally:
        harness.close()


def test_lifecycle_transitions_and_bad_model(exported_models, three_utterances, tmp_path):
    stream, bounds = three_utterances
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    harness = Harness(node_params(exported_models, model_path=str(broken)), autostart=False)
    try:
        node = harness.node
        assert node.state_label() == "unconfigured"
        node.trigger_configure()
        assert node.state_label() == "unconfigured"  # failed cleanly, still alive
        level, message, _ = node.diagnostic_values()
        from diagnostic_msgs.msg import DiagnosticStatus

        assert level == DiagnosticStatus.ERROR and "broken.onnx" in message
        statuses = harness.wait_for("diagnostics", 1)
        assert any(s.level == DiagnosticStatus.ERROR and "broken.onnx" in s.message for m in statuses for s in m.status)

        from rclpy.parameter import Parameter

        node.set_parameters([Parameter("model_path", value=str(exported_models["fp32"]))])
        assert harness.configure_and_activate()
        label_info = harness.wait_for("label_info", 1)
        assert [c.class_name for c in label_info[-1].class_map][:2] == ["anger", "disgust"]

        node.trigger_deactivate()
        assert node.state_label() == "inactive"
        harness.publish(typed_chunks(stream, 16000, 1, "int16", 0.05, T0), speed=8.0)
        assert harness.wait_for("expression", 1, timeout=2.0) == []  # inactive: nothing published

        node.trigger_activate()
        harness.wait_for_subscriber()
        harness.publish(typed_chunks(stream, 16000, 1, "int16", 0.05, T0 + 100), speed=8.0)
        check_one_expression_per_utterance(harness.wait_for("expression", len(bounds)), bounds, T0 + 100)

        node.trigger_deactivate()
        node.trigger_cleanup()
        assert node.state_label() == "unconfigured" and node.classifier is None
        node.trigger_shutdown()
        assert node.state_label() == "finalized"
    finally:
        harness.close()


def test_late_subscriber_gets_latched_label_info(exported_models):
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from vision_msgs.msg import LabelInfo

    harness = Harness(node_params(exported_models, min_confidence=0.3))
    try:
        got = []
        qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        harness.tester.create_subscription(LabelInfo, "/ser_node/label_info", got.append, qos)
        import time

        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
        assert got and len(got[0].class_map) == 7 and abs(got[0].threshold - 0.3) < 1e-6
    finally:
        harness.close()


def test_reload_model_service_and_parameter(exported_models, three_utterances, tmp_path):
    from rclpy.parameter import Parameter
    from std_srvs.srv import Trigger

    stream, bounds = three_utterances
    harness = Harness(node_params(exported_models))
    try:
        node = harness.node
        assert node.classifier.metadata.precision == "fp32"
        client = harness.tester.create_client(Trigger, "/ser_node/reload_model")
        assert client.wait_for_service(timeout_sec=5.0)

        result = node.set_parameters([Parameter("model_path", value=str(tmp_path / "missing.onnx"))])[0]
        assert not result.successful and "missing.onnx" in result.reason
        assert node.classifier.metadata.precision == "fp32"  # kept

        result = node.set_parameters([Parameter("model_path", value=str(exported_models["int8"]))])[0]
        assert result.successful and node.classifier.metadata.precision == "int8"

        response = client.call(Trigger.Request(), timeout_sec=10.0)
        assert response.success and "test-tiny-ds-am" in response.message

        harness.publish(typed_chunks(stream, 16000, 1, "int16", 0.05, T0), speed=8.0)
        check_one_expression_per_utterance(harness.wait_for("expression", len(bounds)), bounds)
        assert node.diagnostic_values()[2]["backend"] == "onnxruntime int8"
    finally:
        harness.close()


def test_min_confidence_publishes_the_documented_fallback(exported_models, three_utterances):
    stream, bounds = three_utterances
    harness = Harness(node_params(exported_models, min_confidence=0.999, low_confidence_expression="neutral"))
    try:
        harness.publish(typed_chunks(stream, 16000, 1, "int16", 0.05, T0), speed=8.0)
        expressions = harness.wait_for("expression", len(bounds))
        assert len(expressions) == len(bounds)
        for expression in expressions:
            assert expression.confidence < 0.999 and expression.expression == "neutral"
    finally:
        harness.close()


def test_runtime_parameter_limits(exported_models):
    from rclpy.parameter import Parameter

    harness = Harness(node_params(exported_models))
    try:
        node = harness.node
        assert node.set_parameters([Parameter("vad_threshold", value=0.7)])[0].successful
        assert node.intake.stream.segmenter.config.threshold == 0.7
        assert not node.set_parameters([Parameter("vad_threshold", value=1.5)])[0].successful  # out of range
        assert not node.set_parameters([Parameter("vad_negative_threshold", value=0.9)])[0].successful
        assert node.set_parameters([Parameter("max_utterance_s", value=1.0)])[0].successful
        refused = node.set_parameters([Parameter("min_speech_s", value=2.0)])[0]  # in range, but > max_utterance_s
        assert not refused.successful and "max_utterance_s" in refused.reason
        assert node.intake.stream.segmenter.config.max_utterance_s == 1.0 and node.intake.stream.segmenter.config.min_speech_s == 0.25
        assert not node.set_parameters([Parameter("vad_backend", value="webrtc")])[0].successful  # while active
        descriptor = node.describe_parameter("min_silence_s")
        assert descriptor.description and descriptor.floating_point_range[0].to_value == 5.0
        assert node.set_parameters([Parameter("short_speech_s", value=1.2),
                                    Parameter("short_silence_s", value=0.9)])[0].successful
        config = node.intake.stream.segmenter.config
        assert (config.short_speech_s, config.short_silence_s) == (1.2, 0.9)
        assert not node.set_parameters([Parameter("short_silence_s", value=9.0)])[0].successful  # out of range
        assert node.intake.stream.segmenter.config.short_silence_s == 0.9
    finally:
        harness.close()


def test_webrtc_backend_segments_the_same_stream(exported_models, three_utterances):
    stream, bounds = three_utterances
    harness = Harness(node_params(exported_models, vad_backend="webrtc"))
    try:
        harness.publish(typed_chunks(stream, 16000, 1, "int16", 0.03, T0), speed=8.0)
        check_one_expression_per_utterance(harness.wait_for("expression", len(bounds)), bounds)
    finally:
        harness.close()


def test_utterance_audio_is_published_for_asr(exported_models, three_utterances):
    from audio_common_msgs.msg import AudioStamped

    stream, bounds = three_utterances
    harness = Harness(node_params(exported_models, publish_utterance=True))
    try:
        got = []
        harness.tester.create_subscription(AudioStamped, "/ser_node/utterance", got.append, 10)
        harness.publish(typed_chunks(stream, 48000, 1, "float32", 0.05, T0), speed=8.0)
        expressions = harness.wait_for("expression", len(bounds))
        assert len(expressions) == len(bounds)
        import time

        deadline = time.monotonic() + 5
        while len(got) < len(bounds) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(got) == len(bounds)
        for audio, expression, (start, end) in zip(got, expressions, bounds):
            assert audio.header.stamp == expression.header.stamp
            assert audio.audio.info.rate == 16000 and audio.audio.info.format == 1 and audio.audio.info.channels == 1
            duration = len(audio.audio.audio_data.float32_data) / 16000
            assert end - start - 0.5 <= duration <= end - start + 0.8
    finally:
        harness.close()


def test_snr_gate_and_quality_diagnostics(exported_models, three_utterances):
    """min_snr_db (live) drops utterances below the gate, counts them and publishes nothing for them; the noise
    floor and the last utterance's SNR and clipped share are in diagnostics, the drops on ~/rejected; switching the
    gate off restores the expressions; the background gate (foreground_db: live, range-checked) keeps them all in a
    quiet room."""
    from rclpy.parameter import Parameter

    stream, bounds = three_utterances
    rng = np.random.default_rng(0)
    noisy = (stream + 0.003 * rng.standard_normal(stream.size)).astype(np.float32)  # a floor to measure
    harness = Harness(node_params(exported_models, min_snr_db=60.0, publish_rejected=True))
    try:
        harness.publish(typed_chunks(noisy, 16000, 1, "int16", 0.02, T0), speed=8.0)
        harness.wait_idle()
        assert harness.wait_for("expression", 1, timeout=3.0) == []
        _level, _message, values = harness.node.diagnostic_values()
        assert values["utterances_low_snr"] == values["utterances_not_a_person_low_snr"] == str(len(bounds))
        rejected = [json.loads(m.data) for m in harness.wait_for("rejected", len(bounds))]  # ~/rejected, JSON
        assert [r["reason"] for r in rejected] == ["low_snr"] * len(bounds)
        for r, (start, end) in zip(rejected, bounds):
            assert start - 0.45 <= r["start"] - T0 <= start + 0.6 and end - 0.6 <= r["end"] - T0 <= end + 0.45
        assert -60 < float(values["noise_floor_dbfs"]) < -40  # 0.003 RMS is -50.5 dBFS
        assert 10 < float(values["last_utterance_snr_db"]) < 60
        assert float(values["last_utterance_clipped_percent"]) == 0.0
        assert harness.node.set_parameters([Parameter("min_snr_db", value=-100.0)])[0].successful
        harness.publish(typed_chunks(noisy, 16000, 1, "int16", 0.02, T0 + 100.0), speed=8.0)
        check_one_expression_per_utterance(harness.wait_for("expression", len(bounds)), bounds, T0 + 100.0)
        assert harness.node.diagnostic_values()[2]["utterances_low_snr"] == str(len(bounds))
        # foreground_db (live): in a quiet room the background is the floor, and every utterance still comes out
        assert not harness.node.set_parameters([Parameter("foreground_db", value=50.0)])[0].successful
        assert harness.node.set_parameters([Parameter("foreground_db", value=6.0)])[0].successful
        harness.publish(typed_chunks(noisy, 16000, 1, "int16", 0.02, T0 + 200.0), speed=8.0)
        check_one_expression_per_utterance(harness.wait_for("expression", 2 * len(bounds))[len(bounds):], bounds,
                                           T0 + 200.0)
        values = harness.node.diagnostic_values()[2]
        assert -60 < float(values["background_level_dbfs"]) < -40  # the floor: 0.003 RMS is -50.5 dBFS
        assert int(values["background_speech_frames"]) < 0.1 * noisy.size / 512  # word edges near the floor only
    finally:
        harness.close()


def test_stage_timing_in_diagnostics(exported_models, three_utterances):
    """With stage_timing, diagnostics break each utterance's time in the node into its stages, inference takes
    real time, and the stages agree with the latency window measured apart from them: per utterance, wake +
    features + inference is the latency (queued to inferred) that diagnostics report."""
    stream, bounds = three_utterances
    harness = Harness(node_params(exported_models, stage_timing=True))
    try:
        harness.publish(typed_chunks(stream, 16000, 1, "int16", 0.02, T0), speed=4.0)
        harness.wait_for("expression", len(bounds))
        values = harness.node.diagnostic_values()[2]
        stages = ("intake", "wake", "features", "inference", "build", "publish")
        for stage in stages:
            assert 0.0 <= float(values[f"stage_ms_{stage}_p50"]) <= float(values[f"stage_ms_{stage}_p95"])
        assert float(values["stage_ms_inference_p50"]) > 0.05 and float(values["stage_ms_features_p50"]) > 0.05
        worker = harness.node.worker
        assert len(worker.stages.ms["publish"]) == len(bounds) == len(worker.latency.latency_ms)
        for k, latency_ms in enumerate(worker.latency.latency_ms):
            staged = sum(worker.stages.ms[stage][k] for stage in ("wake", "features", "inference"))
            assert staged == pytest.approx(latency_ms, abs=0.01)
    finally:
        harness.close()
    quiet = Harness(node_params(exported_models))
    try:
        assert not any(k.startswith("stage_ms_") for k in quiet.node.diagnostic_values()[2])
    finally:
        quiet.close()
