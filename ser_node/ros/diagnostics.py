"""The node's /diagnostics: one DiagnosticStatus with its health, and the rules for OK / WARN / ERROR.

ERROR: no model (configure failed), a dead or stuck classification worker. WARN: a failed reload while the old
model serves, dropped chunks or utterances, audio lost before intake, utterances that failed to classify.
"""
from __future__ import annotations

import math
import time
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from std_msgs.msg import Header

WORKER_STALL_S = 10.0  # queued work untouched this long means the worker is stuck (a batch takes milliseconds)


def health(node: Any) -> tuple[int, str, dict[str, str]]:
    """Level, message and key/values of the node's health: model, queue, drops by reason, lost audio, errors by
    kind, the worker watchdog and latency percentiles."""
    values: dict[str, str] = {"state": node.state_label(), "audio_variant": node.variant}
    level, message = DiagnosticStatus.OK, "ok"
    classifier = node.classifier
    if classifier is not None:
        values.update(model_id=classifier.model_id, model_path=str(classifier.path),
                      backend=f"onnxruntime {classifier.metadata.precision}", provider=classifier.providers[0])
    if node.model_error:
        values["model_error"] = node.model_error
        if classifier is not None:  # a failed reload: the previous model still serves
            level = DiagnosticStatus.WARN
            message = f"model reload failed, still serving {classifier.model_id}: {node.model_error}"
        else:
            level, message = DiagnosticStatus.ERROR, node.model_error
    with node._lock:
        values["queue_depth"] = str(len(node._queue))
    values.update({k: str(v) for k, v in node.counts.items()})
    values.update({k: str(v) for k, v in sorted(node.error_kinds.items())})
    if node.p("speaker_adaptation"):
        voices = node._voices if node.p("voice_tracking") else None
        if voices is not None:
            values["adaptation_utterances"] = str(voices.utterances)
            values["voices_tracked"] = str(len(voices.tracker.voices))
            values["voices_forgotten"] = str(voices.tracker.forgotten)
            values["voices_merged"] = str(voices.tracker.merged)
            values["last_voice"] = node._last_voice
        else:
            values["adaptation_utterances"] = str(node._adapter.count)
        values["adaptation_active"] = str(node._adapter.active)
        if classifier is not None:
            values["adaptation_space"] = "features" if classifier.is_voice_model else "log-probabilities"
    if node._active:  # watchdog: the worker must be alive, and busy whenever work is queued
        worker = node._worker
        silent_s = time.monotonic() - node._worker_beat
        if worker is None or not worker.is_alive():
            level, message = DiagnosticStatus.ERROR, "classification worker is not running"
        elif values["queue_depth"] != "0" and silent_s > WORKER_STALL_S:
            level = DiagnosticStatus.ERROR
            message = f"classification worker made no progress for {silent_s:.0f} s with work queued"
    if level == DiagnosticStatus.OK and (node.counts["inference_errors"] or node.counts["result_errors"]):
        level, message = DiagnosticStatus.WARN, "utterances failed to classify (see *_errors values)"
    if node.stream is not None:
        stats = node.stream.stats
        values["chunks_received"] = str(stats.chunks + stats.dropped)
        values["chunks_dropped"] = str(stats.dropped)
        values["chunks_clipped"] = str(stats.chunks_clipped)
        values.update({f"chunks_dropped_{k}": str(v) for k, v in sorted(stats.bad_chunks.items())})
        values["audio_seconds"] = f"{stats.seconds:.1f}"
        segmenter = node.stream.segmenter
        values["utterances_too_short"] = str(segmenter.stats.too_short)
        values["utterances_low_snr"] = str(segmenter.stats.low_snr)
        floor = segmenter.noise_floor()
        values["noise_floor_dbfs"] = "unknown" if floor is None else f"{10 * math.log10(max(floor, 1e-12)):.1f}"
        if segmenter.last_quality is not None:
            snr, clipped = segmenter.last_quality
            values["last_utterance_snr_db"] = "unknown" if snr is None else f"{snr:.1f}"
            values["last_utterance_clipped_percent"] = f"{100 * clipped:.2f}"
        values["speaking"] = str(node.stream.segmenter.speaking)
        if level == DiagnosticStatus.OK and (stats.dropped or node.counts["utterances_dropped"]):
            level, message = DiagnosticStatus.WARN, "audio chunks or utterances dropped (see values)"
    if node.voices_file_error:
        values["voices_file_error"] = node.voices_file_error
        if level == DiagnosticStatus.OK:
            level, message = DiagnosticStatus.WARN, f"voices_file: {node.voices_file_error}"
    hri = node._hri
    if hri is not None:
        values.update(hri.values())
        if level == DiagnosticStatus.OK and hri.stats.last_dropped:
            level, message = DiagnosticStatus.WARN, "voice ids dropped from /humans/voices/tracked (see hri_*)"
    if node._intake is not None:
        values["audio_messages_lost"] = str(node._intake.lost)
        if level == DiagnosticStatus.OK and node._intake.lost:
            level = DiagnosticStatus.WARN
            message = "audio messages lost before intake: raise qos_depth or lower idle_batch_s"
    for key, value in node.latency.percentiles().items():
        values[f"latency_ms_{key}" if key.startswith("p") else key] = f"{value:.2f}"
    if node.p("stage_timing"):
        values.update({key: f"{value:.3f}" for key, value in node.stages.percentiles().items()})
    return level, message, values


def publish(node: Any) -> None:
    level, message, values = health(node)
    status = DiagnosticStatus(level=level, name=f"{node.get_fully_qualified_name()}: speech emotion recognition",
                              message=message, hardware_id=values.get("model_id", "none"),
                              values=[KeyValue(key=k, value=v) for k, v in values.items()])
    node.diagnostics_pub.publish(DiagnosticArray(header=Header(stamp=node.get_clock().now().to_msg()),
                                                 status=[status]))
