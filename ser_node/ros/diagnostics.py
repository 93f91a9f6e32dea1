"""The node's /diagnostics: one DiagnosticStatus with its health, and the rules for OK / WARN / ERROR.

ERROR: no model (configure failed), a dead or stuck classification worker. WARN: a failed reload while the old
model serves, dropped chunks or utterances, audio lost before intake, utterances that failed to classify, a voices
file that cannot be read or written, voice ids dropped from an upstream list. The values come from each room of the
node (intake, worker, voice state, ROS4HRI voices); the rules are here.
"""
from __future__ import annotations

from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from std_msgs.msg import Header


def health(node: Any) -> tuple[int, str, dict[str, str]]:
    """Level, message and key/values of the node's health: model, queue, drops by reason, lost audio, errors by
    kind, the worker watchdog and latency percentiles."""
    values: dict[str, str] = {"state": node.state_label(), "audio_variant": node.variant}
    level, message = DiagnosticStatus.OK, "ok"
    classifier = node.classifier
    if classifier is not None:
        values.update(model_id=classifier.model_id, model_path=str(classifier.path),
                      backend=f"onnxruntime {classifier.metadata.precision}", provider=classifier.providers[0],
                      provider_requested=classifier.requested_providers[0])
    values["stream_encoder_errors"] = str(node.encoder_errors)
    values["stream_ends"] = str(node.stream_ends)
    values["stream_ends_prepared"] = str(node.stream_ends_prepared)
    if node.model_error:
        values["model_error"] = node.model_error
        if classifier is not None:  # a failed reload: the previous model still serves
            level = DiagnosticStatus.WARN
            message = f"model reload failed, still serving {classifier.model_id}: {node.model_error}"
        else:
            level, message = DiagnosticStatus.ERROR, node.model_error
    worker, intake, voices, hri = node.worker, node.intake, node.voice_state, node.hri
    values.update(worker.values(bool(node.p("stage_timing"))))
    values.update(voices.values())
    values.update(intake.values())
    values.update(node.moods.values())
    values.update(node.listening.values())
    stalled = worker.stalled(intake.active)
    if stalled:
        level, message = DiagnosticStatus.ERROR, stalled
    counts = worker.counts
    if level == DiagnosticStatus.OK and (counts["inference_errors"] or counts["result_errors"]):
        level, message = DiagnosticStatus.WARN, "utterances failed to classify (see *_errors values)"
    if level == DiagnosticStatus.OK and (values.get("chunks_dropped", "0") != "0" or counts["utterances_dropped"]):
        level, message = DiagnosticStatus.WARN, "audio chunks or utterances dropped (see values)"
    if level == DiagnosticStatus.OK and voices.voices_file_error:
        level, message = DiagnosticStatus.WARN, f"voices_file: {voices.voices_file_error}"
    if level == DiagnosticStatus.OK and "robot_speaking_stuck_s" in values:
        level = DiagnosticStatus.WARN
        message = (f"robot_speaking true for {values['robot_speaking_stuck_s']} s: not trusted, listening again "
                   "(a lost false from the TTS?)")
    if level == DiagnosticStatus.OK and "self_voice_error" in values:
        level, message = DiagnosticStatus.WARN, f"self_voice_file refused: {values['self_voice_error']}"
    if hri is not None:
        values.update(hri.values())
        if level == DiagnosticStatus.OK and hri.stats.last_dropped:
            level, message = DiagnosticStatus.WARN, "voice ids dropped from /humans/voices/tracked (see hri_*)"
    if level == DiagnosticStatus.OK and values.get("audio_messages_lost", "0") != "0":
        level = DiagnosticStatus.WARN
        message = "audio messages lost before intake: raise qos_depth or lower idle_batch_s"
    return level, message, values


def publish(node: Any) -> None:
    level, message, values = health(node)
    status = DiagnosticStatus(level=level, name=f"{node.get_fully_qualified_name()}: speech emotion recognition",
                              message=message, hardware_id=values.get("model_id", "none"),
                              values=[KeyValue(key=k, value=v) for k, v in values.items()])
    node.diagnostics_pub.publish(DiagnosticArray(header=Header(stamp=node.get_clock().now().to_msg()),
                                                 status=[status]))
