"""The ser_node lifecycle node: audio topic -> VAD utterances -> emotion messages.

Its life in order: parameters (table in parameters.py), configure (load and probe the model, build the stream),
activate (subscribe; audio intake in intake.py), intake (StreamProcessor), work (classification thread),
publish (expression, classification), and diagnostics (rules in diagnostics.py).

Thin ROS shell over the core: StreamProcessor (decode, resample, segment) runs in the subscription callback,
which only does cheap work; classification runs on a worker thread fed by a bounded queue, so audio intake never
waits for the network. When the worker falls behind, the oldest queued utterance is dropped and counted.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy: BLAS threads would fight ONNX Runtime's
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray
from hri_msgs.msg import Expression
from rcl_interfaces.msg import SetParametersResult
from rclpy.exceptions import InvalidParameterValueException, ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleState, TransitionCallbackReturn
from rclpy.lifecycle import Node as LifecycleNode
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from std_msgs.msg import Bool, Header
from std_srvs.srv import Trigger
from vision_msgs.msg import Classification, LabelInfo, ObjectHypothesis, VisionClass

from ..audio.segmenter import Segmenter, SegmenterConfig, Utterance
from ..audio.stream import ChunkError, StreamConfig, StreamProcessor
from ..audio.vad import VadError, make_vad
from ..audio.wire import TYPED, RawFormat, raw_to_chunk, seconds_to_stamp, typed_audio_message, typed_to_chunk
from ..inference.adaptation import SpeakerAdapter, adapt_log_probabilities, starts_new_speaker
from ..inference.classifier import Classifier, Inference
from ..inference.model_file import ModelFileError, default_model_path
from ..inference.voices import VoiceNormaliser, VoiceSettings, VoiceTracker, load_voices, save_voices
from . import diagnostics, intake
from .hri_voices import MODES as HRI_MODES
from .hri_voices import HriVoices
from .messages import detect_audio_variant, interpret
from .parameters import PARAMETERS, SNR_GATE_OFF

NODE_NAME = "ser_node"


@dataclass
class Pending:
    utterance: Utterance
    frame_id: str
    queued_at: float
    taken_at: float = 0.0  # when the intake took the audio message that closed the utterance
    voice_id: str = ""  # the upstream (ROS4HRI) voice whose topic it came from; "" for the node's own audio topic
    heard_as: str = ""  # the voice it was judged as (upstream id or the node's own tracker's)


STAGES = ("intake", "wake", "features", "inference", "build", "publish")


class StageWindow:
    """Per-utterance time of each stage of the pipeline, from the audio message that closed the utterance to its
    messages being handed to the middleware (monotonic timestamps inside the node; reported with stage_timing):
    intake (segmenter and queueing), wake (queue to worker), features, inference, build (messages), publish."""

    def __init__(self, size: int = 500) -> None:
        self.ms: dict[str, deque[float]] = {stage: deque(maxlen=size) for stage in STAGES}

    def add(self, marks: list[float]) -> None:
        """`marks`: the len(STAGES) + 1 timestamps that bound the stages, in order."""
        for stage, begin, end in zip(STAGES, marks, marks[1:]):
            self.ms[stage].append((end - begin) * 1000.0)

    def percentiles(self) -> dict[str, float]:
        out = {}
        for stage, values in self.ms.items():
            if values:
                array = np.array(values)
                out.update({f"stage_ms_{stage}_p50": float(np.percentile(array, 50)),
                            f"stage_ms_{stage}_p95": float(np.percentile(array, 95))})
        return out


class LatencyWindow:
    """Recent per-utterance latencies and real-time factors, for diagnostics percentiles."""

    def __init__(self, size: int = 200) -> None:
        self.latency_ms: deque[float] = deque(maxlen=size)
        self.rtf: deque[float] = deque(maxlen=size)

    def add(self, latency_s: float, audio_s: float) -> None:
        self.latency_ms.append(latency_s * 1000.0)
        self.rtf.append(latency_s / max(audio_s, 1e-6))

    def percentiles(self) -> dict[str, float]:
        if not self.latency_ms:
            return {}
        values = np.array(self.latency_ms)
        return {"p50": float(np.percentile(values, 50)), "p95": float(np.percentile(values, 95)),
                "p99": float(np.percentile(values, 99)), "rtf_mean": float(np.mean(self.rtf))}


class SerNode(LifecycleNode):
    """Speech emotion recognition lifecycle node."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self.live_names = {name for name, (_, _, live) in PARAMETERS.items() if live}
        for name, (default, descriptor, _) in PARAMETERS.items():
            self.declare_parameter(name, default, descriptor)
        self.add_on_set_parameters_callback(self._on_parameters)
        self.variant, self.audio_class, self.info_class = detect_audio_variant()
        self.get_logger().info(f"audio_common_msgs variant: {self.variant} "
                               f"({self.audio_class.__module__}.{self.audio_class.__name__})")
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.classifier: Classifier | None = None
        self.model_error = ""
        self.stream: StreamProcessor | None = None
        self.raw_format = RawFormat()
        self._audio_subscriptions: list[Any] = []
        self._intake: intake.BatchedIntake | None = None
        self._warned_executor_took_audio = False
        self._feed_lock = threading.Lock()  # the intake thread and (see _subscribe_audio) an executor
        self._lock = threading.Condition()
        self._queue: deque[Pending] = deque()
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()
        self._active = False
        self.counts = {"utterances_classified": 0, "utterances_dropped": 0, "utterances_too_short": 0,
                       "inference_errors": 0, "result_errors": 0}
        self.error_kinds: dict[str, int] = {}  # e.g. result_errors_IndexError: 3
        self._worker_beat = time.monotonic()  # the worker's last sign of life (watchdog)
        self._adapter = SpeakerAdapter(warmup=int(self.p("adaptation_warmup")))
        self._adapter_lock = threading.Lock()  # the worker adapts, a service call resets
        self._voices: VoiceNormaliser | None = None  # the voices heard (memory only)
        self._hri: HriVoices | None = None  # ROS4HRI voices (hri_voices.py), while active
        self.voices_file_error = ""
        self._last_voice = ""
        self._last_utterance_end = -float("inf")
        self.latency = LatencyWindow()
        self.stages = StageWindow()
        self._last_frame_id = ""
        self._last_bad_log = 0.0
        self._started = time.monotonic()
        self._diag_timer = self.create_timer(float(self.p("diagnostics_period_s")), self._publish_diagnostics)

    # ------------------------------------------------------------ parameters
    def state_label(self) -> str:
        return self._state_machine.current_state[1]

    def p(self, name: str) -> Any:
        return self.get_parameter(name).value

    def _on_parameters(self, changes: list[Any]) -> SetParametersResult:
        values = {c.name: c.value for c in changes}
        for name in values:
            if name in PARAMETERS and name not in self.live_names and self.state_label() == "active":
                return SetParametersResult(successful=False,
                                           reason=f"{name} can only change while the node is not active")
        if values.get("hri_voices", "follow") not in HRI_MODES:
            return SetParametersResult(successful=False, reason=f"hri_voices must be one of {', '.join(HRI_MODES)}")
        try:  # the segmenter settings must stay consistent with each other, not only within their ranges
            self._segmenter_config(values).validate()
        except ValueError as error:
            return SetParametersResult(successful=False, reason=str(error))
        if "model_path" in values and self.classifier is not None:
            try:
                self._swap_model(values["model_path"])
            except (ModelFileError, ValueError) as error:
                return SetParametersResult(successful=False, reason=str(error))
        if self.stream is not None:
            self._apply_live(values)
        return SetParametersResult(successful=True)

    def _segmenter_config(self, overrides: dict[str, Any] | None = None) -> SegmenterConfig:
        get = (lambda n: (overrides or {}).get(n, self.p(n)))
        gate = get("min_snr_db")
        return SegmenterConfig(threshold=get("vad_threshold"), negative_threshold=get("vad_negative_threshold"),
                               min_speech_s=get("min_speech_s"), min_silence_s=get("min_silence_s"),
                               pre_roll_s=get("pre_roll_s"), post_roll_s=get("post_roll_s"),
                               max_utterance_s=get("max_utterance_s"),
                               min_snr_db=None if gate <= SNR_GATE_OFF else gate)

    def _apply_live(self, values: dict[str, Any]) -> None:
        """Segmenter thresholds are read frame by frame, so replacing the config object is safe."""
        assert self.stream is not None
        self.stream.segmenter.config = self._segmenter_config(values)
        self.stream.config = StreamConfig(channel=values.get("channel", self.p("channel")),
                                          max_chunk_s=values.get("max_chunk_s", self.p("max_chunk_s")),
                                          gap_tolerance_s=values.get("gap_tolerance_s", self.p("gap_tolerance_s")))
        if any(k.startswith("raw_") for k in values):
            self.raw_format = RawFormat(values.get("raw_channels", self.p("raw_channels")),
                                        values.get("raw_sample_rate", self.p("raw_sample_rate")),
                                        values.get("raw_sample_format", self.p("raw_sample_format")))

    # ------------------------------------------------------------ model
    def _load_classifier(self, path: str) -> Classifier:
        classifier = Classifier(path or default_model_path(), device=self.p("device"), threads=self.p("threads"),
                                warn=self.get_logger().warning)
        self.get_logger().info(f"model {classifier.model_id} ({classifier.metadata.variant}, "
                               f"{classifier.metadata.precision}) from {classifier.path} on {classifier.providers[0]}")
        return classifier

    def _swap_model(self, path: str) -> None:
        new = self._load_classifier(path)
        with self._lock:
            self.classifier = new
        with self._adapter_lock:  # what the adapter averaged belongs to the old model's feature space
            self._adapter = self._new_adapter()
            self._voices = None
        self.model_error = ""
        self._ensure_worker()

    def _reload_service(self, _request: Any, response: Any) -> Any:
        try:
            self._swap_model(self.p("model_path"))
            response.success = True
            response.message = f"loaded {self.classifier.model_id}"  # type: ignore[union-attr]
        except (ModelFileError, ValueError) as error:
            self.model_error = str(error)
            self.get_logger().error(f"reload failed, keeping the current model: {error}")
            response.success = False
            response.message = str(error)
        return response

    # ------------------------------------------------------------ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self.classifier = self._load_classifier(self.p("model_path"))
            vad = make_vad(self.p("vad_backend"), webrtc_aggressiveness=self.p("webrtc_aggressiveness"))
            if self.p("hri_voices") not in HRI_MODES:
                raise ValueError(f"hri_voices must be one of {', '.join(HRI_MODES)}, got {self.p('hri_voices')!r}")
        except (ModelFileError, VadError, ValueError) as error:
            self.model_error = str(error)
            self.get_logger().error(f"configure failed: {error}")
            self._publish_diagnostics()
            return TransitionCallbackReturn.FAILURE
        self.model_error = ""
        self._load_voices()
        segmenter = Segmenter(vad, self._segmenter_config(), on_speaking=self._on_speaking)
        self.stream = StreamProcessor(segmenter, StreamConfig(self.p("channel"), self.p("max_chunk_s"),
                                                              self.p("gap_tolerance_s")))
        self.raw_format = RawFormat(self.p("raw_channels"), self.p("raw_sample_rate"), self.p("raw_sample_format"))
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.expression_pub = self.create_lifecycle_publisher(Expression, "~/expression", 10)
        self.classification_pub = self.create_lifecycle_publisher(Classification, "~/classification", 10)
        self.label_info_pub = self.create_lifecycle_publisher(LabelInfo, "~/label_info", latched)
        self.speaking_pub = self.create_lifecycle_publisher(Bool, "~/is_speaking", 10)
        self.utterance_pub = None
        if self.p("publish_utterance"):
            if self.variant == TYPED:
                self.utterance_pub = self.create_lifecycle_publisher(self.audio_class, "~/utterance", 10)
            else:
                self.get_logger().warning("publish_utterance needs the typed audio_common_msgs; not publishing")
        self.reload_srv = self.create_service(Trigger, "~/reload_model", self._reload_service)
        self.reset_adaptation_srv = self.create_service(Trigger, "~/reset_adaptation", self._reset_adaptation)
        self.forget_voices_srv = self._create_forget_service()
        self.get_logger().info("configured")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = super().on_activate(state)
        self._publish_label_info()
        reliability = (ReliabilityPolicy.RELIABLE if self.p("reliability") == "reliable"
                       else ReliabilityPolicy.BEST_EFFORT)
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=self.p("qos_depth"), reliability=reliability,
                         durability=DurabilityPolicy.VOLATILE)
        if self.variant == TYPED:
            self._subscribe_audio(self.audio_class, self._on_typed, qos)
        else:
            from audio_common_msgs.msg import AudioData  # raw variant only

            self._subscribe_audio(self.audio_class if self.p("raw_stamped") else AudioData, self._on_raw, qos)
            if self.info_class is not None:
                self._audio_subscriptions.append(self.create_subscription(self.info_class, "audio_info",
                                                                    self._on_info, 10))
        self._hri = HriVoices(self, str(self.p("hri_voices")), int(self.p("max_voices")),
                              self.audio_class if self.variant == TYPED else self._raw_voice_class(), qos,
                              self._voice_stream, self._on_voice_audio, self._forget_voices)
        self._active = True
        self._ensure_worker()
        if self._intake is not None:
            self._intake.start()
        self.get_logger().info(f"active: listening on {self.resolve_topic_name('audio')}"
                               f"{' (batched intake)' if self._intake is not None else ''}")
        return result

    def _subscribe_audio(self, msg_class: Any, callback: Any, qos: Any) -> None:
        """Audio goes through the batched intake thread (see intake.py) unless idle_batch_s is 0."""
        if self.p("idle_batch_s") <= 0 or not intake.available():
            self._audio_subscriptions.append(self.create_subscription(msg_class, "audio", callback, qos))
            return
        def executor_took(msg: Any) -> None:
            # Only an executor that ignores callback groups (rclpy's experimental EventsExecutor) gets here.
            if not self._warned_executor_took_audio:
                self._warned_executor_took_audio = True
                self.get_logger().error("this executor ignores callback groups and takes audio messages "
                                        "too; set idle_batch_s: 0 with it")
            callback(msg)

        sub = self.create_subscription(msg_class, "audio", executor_took, qos,
                                       callback_group=intake.never_executed_group())
        self._audio_subscriptions.append(sub)
        self._intake = intake.BatchedIntake(sub, self.context, callback, self._intake_pause,
                                            on_error=lambda e: self.get_logger().error(f"audio intake: {e!r}"))

    def _intake_pause(self) -> float:
        """No pause while speech may be going on; else idle_batch_s (the intake caps it to the history)."""
        stream = self.stream
        return 0.0 if stream is not None and stream.segmenter.speaking else float(self.p("idle_batch_s"))

    def stop_threads(self) -> None:
        """Stops and joins the intake and worker threads (before the node and rclpy are torn down)."""
        if self._active or self._intake is not None or self._worker is not None:
            self._stop_listening()

    def _stop_listening(self) -> None:
        """Unsubscribes from audio, stops the inference worker and, if it was listening, saves the voices to
        voices_file (deactivate, shutdown, and a signal, which ends the process without the lifecycle)."""
        was_active, self._active = self._active, False
        if self._hri is not None:
            self._hri.close()
            self._hri = None
        if self._intake is not None:
            self._intake.stop()
            self._intake = None
        for sub in self._audio_subscriptions:
            self.destroy_subscription(sub)
        self._audio_subscriptions.clear()
        self._stop_worker()
        if was_active:
            self._save_voices()

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_listening()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_listening()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _release(self) -> None:
        for name in ("expression_pub", "classification_pub", "label_info_pub", "speaking_pub", "utterance_pub"):
            pub = getattr(self, name, None)
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
                setattr(self, name, None)
        for name in ("reload_srv", "reset_adaptation_srv", "forget_voices_srv"):
            srv = getattr(self, name, None)
            if srv is not None:
                self.destroy_service(srv)
                setattr(self, name, None)
        self.classifier = None
        self.stream = None
        with self._lock:
            self._queue.clear()

    def _stop_worker(self) -> None:
        self._stop.set()
        with self._lock:
            self._lock.notify_all()
        if self._worker is not None:
            self._worker.join(timeout=5.0)
            self._worker = None

    # ------------------------------------------------------------ audio intake
    def _on_typed(self, msg: Any, stream: StreamProcessor | None = None, voice_id: str = "") -> None:
        self._last_frame_id = msg.header.frame_id
        self._feed(lambda now: typed_to_chunk(msg, now), msg.header.frame_id, stream, voice_id)

    def _on_raw(self, msg: Any, stream: StreamProcessor | None = None, voice_id: str = "") -> None:
        frame_id = msg.header.frame_id if hasattr(msg, "header") else ""
        self._feed(lambda now: raw_to_chunk(msg, self.raw_format, now), frame_id, stream, voice_id)

    def _on_info(self, msg: Any) -> None:
        fmt = RawFormat.from_info(msg)
        if fmt != self.raw_format:
            self.get_logger().info(f"audio format from audio_info: {fmt}")
            self.raw_format = fmt

    def _feed(self, make_chunk: Any, frame_id: str, stream: StreamProcessor | None = None, voice_id: str = "") -> None:
        """Decodes one audio message into `stream` (the node's own, or an upstream voice's) and queues what it
        closes."""
        stream = stream or self.stream
        if not self._active or stream is None:
            return
        taken_at = time.monotonic()
        now = self.get_clock().now().nanoseconds * 1e-9
        with self._feed_lock:
            try:
                chunk = make_chunk(now)
            except ChunkError as error:
                stream.stats.bad_chunks[error.reason] += 1  # feed() counts its own refusals
                self._warn_bad_chunk(error)
                return
            try:
                utterances = stream.feed(chunk)
            except ChunkError as error:
                self._warn_bad_chunk(error)
                return
        for utterance in utterances:
            self._enqueue(utterance, frame_id, taken_at, voice_id)

    def _warn_bad_chunk(self, error: ChunkError) -> None:
        """Logs at most every 5 s; every drop is counted in diagnostics."""
        if time.monotonic() - self._last_bad_log > 5.0:
            self._last_bad_log = time.monotonic()
            self.get_logger().warning(f"dropped audio chunk ({error}); "
                                      f"{self.stream.stats.dropped if self.stream else '?'} dropped so far")

    def _on_speaking(self, speaking: bool, _time: float) -> None:
        pub = getattr(self, "speaking_pub", None)
        if pub is not None:
            pub.publish(Bool(data=speaking))

    def _enqueue(self, utterance: Utterance, frame_id: str, taken_at: float = 0.0, voice_id: str = "") -> None:
        with self._lock:
            limit = int(self.p("queue_size"))
            while len(self._queue) >= limit:
                self._queue.popleft()
                self.counts["utterances_dropped"] += 1
            now = time.monotonic()
            self._queue.append(Pending(utterance, frame_id, now, taken_at or now, voice_id))
            self._lock.notify()

    # ------------------------------------------------------------ inference
    def _work(self) -> None:
        """Classifies queued utterances until stopped. No error of one utterance may end it: each is counted
        by kind, logged (rate-limited) and the loop goes on; the watchdog in diagnostics covers the rest."""
        while not self._stop.is_set():
            self._worker_beat = time.monotonic()
            with self._lock:
                while not self._queue and not self._stop.is_set():
                    self._lock.wait(timeout=0.5)
                    self._worker_beat = time.monotonic()
                if self._stop.is_set():
                    return
                batch = [self._queue.popleft() for _ in range(min(len(self._queue), int(self.p("max_batch"))))]
                classifier = self.classifier
            if classifier is None:
                continue
            woke = time.monotonic()
            if classifier.is_voice_model:
                for item in batch:  # in order: each utterance's normalisation rests on the ones before it
                    self._classify([item], classifier, woke)
                    woke = time.monotonic()
            else:
                self._classify(batch, classifier, woke)

    def _classify(self, batch: list[Pending], classifier: Classifier, woke: float) -> None:
        """Features, inference, messages and publishing for a batch; every error is counted, none escapes."""
        try:
            prepared = classifier.prepare([item.utterance.audio for item in batch])
            featured = time.monotonic()
            results = ([self._judge_voice(classifier, frames, item) for frames, item in zip(prepared, batch)]
                       if classifier.is_voice_model else classifier.infer(prepared))
        except Exception as error:  # a broken model must not kill the worker: report and go on
            self._count_error("inference_errors", error, len(batch))
            return
        done = time.monotonic()
        for item, result in zip(batch, results):
            try:
                probabilities = (result.probabilities if classifier.is_voice_model
                                 else self._adapt(item, result.probabilities))
                messages = self._result_messages(item, probabilities, classifier.classes)
                built = time.monotonic()
                self._send(messages, item.voice_id or item.heard_as)
            except Exception as error:  # scores it cannot interpret, a publisher torn down, ...
                self._count_error("result_errors", error, 1)
                continue
            self.stages.add([item.taken_at, item.queued_at, woke, featured, done, built, time.monotonic()])
            self.latency.add(done - item.queued_at, item.utterance.duration)
            self.counts["utterances_classified"] += 1

    def _current_adapter(self, item: Pending) -> SpeakerAdapter:
        """The current speaker's adapter (call with _adapter_lock held): a fresh one after `adaptation_reset_s`
        without an utterance (a new speaker is likely), or when its settings changed."""
        if self._adapter.warmup != int(self.p("adaptation_warmup")) or starts_new_speaker(
                item.utterance.start, self._last_utterance_end, float(self.p("adaptation_reset_s"))):
            self._adapter = self._new_adapter()
        self._last_utterance_end = item.utterance.end
        return self._adapter

    def _new_adapter(self) -> SpeakerAdapter:
        """Warm-up from the parameter; history and shrinkage from a voice model's metadata (what its LOSO figures
        were measured with), the log-probability adapter's own defaults otherwise."""
        return SpeakerAdapter(warmup=int(self.p("adaptation_warmup")),
                              **(self.classifier.adapter_settings if self.classifier else {}))

    def _judge_voice(self, classifier: Classifier, frames: np.ndarray, item: Pending) -> Inference:
        """Voice models: the probabilities to publish under the node's speaker normalisation: per tracked voice
        (voice_tracking), one state reset after silence, or none (speaker_adaptation off)."""
        if not self.p("speaker_adaptation"):
            item.heard_as = item.voice_id
            return classifier.infer([frames])[0]
        with self._adapter_lock:
            if item.voice_id:
                result, voice = self._voice_normaliser().judge_named(classifier, frames, item.voice_id,
                                                                     item.utterance.end)
            elif self.p("voice_tracking"):
                result, voice = self._voice_normaliser().judge(classifier, frames, item.utterance.start,
                                                               item.utterance.end)
            else:
                return classifier.infer_adapted(frames, self._current_adapter(item))
            item.heard_as = self._last_voice = voice.id
            held = list(self._voices.tracker.voices) if self._voices is not None else []
        if self._hri is not None and not item.voice_id:
            self._hri.own_voices_changed(held)
        return result

    def _voice_settings(self) -> VoiceSettings:
        return VoiceSettings(threshold=float(self.p("voice_threshold")),
                             same_turn_threshold=min(float(self.p("voice_same_turn_threshold")),
                                                     float(self.p("voice_threshold"))),
                             confident_similarity=float(self.p("voice_confident_similarity")),
                             merge_threshold=float(self.p("voice_merge_threshold")),
                             max_voices=int(self.p("max_voices")), warmup=int(self.p("adaptation_warmup")),
                             **(self.classifier.adapter_settings if self.classifier else {}))

    def _voice_normaliser(self) -> VoiceNormaliser:
        """The voices heard so far (call with _adapter_lock held); forgotten when their settings change."""
        settings = self._voice_settings()
        if self._voices is None or self._voices.tracker.settings != settings:
            self._voices = VoiceNormaliser(settings)
        return self._voices

    def _adapt(self, item: Pending, probabilities: np.ndarray) -> np.ndarray:
        """DeepSpectrum models: the same SpeakerAdapter over log-probabilities that bench/accuracy.py
        --methods adaptation measured."""
        if not self.p("speaker_adaptation"):
            return probabilities
        with self._adapter_lock:
            if item.voice_id:  # an upstream voice: its own state
                item.heard_as = item.voice_id
                voice = self._voice_normaliser().tracker.named(item.voice_id, item.utterance.end)
                return adapt_log_probabilities(voice.adapter, probabilities)
            return adapt_log_probabilities(self._current_adapter(item), probabilities)

    def _reset_adaptation(self, _request: Any, response: Any) -> Any:
        """Forgets the speaker state: the single adapter and every tracked voice (embeddings and statistics)."""
        with self._adapter_lock:
            heard = self._adapter.count + (self._voices.utterances if self._voices else 0)
            voices = len(self._voices.tracker.voices) if self._voices else 0
        self._forget_voices(None)
        response.success = True
        response.message = (f"forgot {heard} utterance(s) of the previous speaker"
                            + (f" ({voices} voice(s))" if voices else ""))
        return response

    def _create_forget_service(self) -> Any:
        """~/forget_voices (ser_node_interfaces/ForgetVoices), if that package is installed (see interfaces/)."""
        try:
            from ser_node_interfaces.srv import ForgetVoices
        except ImportError:
            self.get_logger().warning("ser_node_interfaces is not installed: no ~/forget_voices service "
                                      "(~/reset_adaptation still forgets every voice)")
            return None
        return self.create_service(ForgetVoices, "~/forget_voices", self._forget_voices_service)

    def _forget_voices(self, voice_ids: list[str] | None) -> list[str]:
        """Drops voices' embeddings and statistics; None: every voice and the single adapter too (a fresh start,
        ~/reset_adaptation). Returns the ids that were held."""
        with self._adapter_lock:
            gone = self._voices.tracker.forget(voice_ids) if self._voices is not None else []
            if voice_ids is None:
                self._adapter = self._new_adapter()
                self._voices = None
            held = list(self._voices.tracker.voices) if self._voices is not None else []
        if gone or voice_ids is None:
            if self._hri is not None:
                self._hri.own_voices_changed(held)
            self._save_voices()  # forgotten means forgotten on disk too
        return gone

    def _forget_voices_service(self, request: Any, response: Any) -> Any:
        wanted = None if request.all_voices else list(request.voice_ids)
        response.forgotten = self._forget_voices(wanted)
        missing = [] if wanted is None else [v for v in wanted if v not in response.forgotten]
        response.success = not missing
        response.message = (f"forgot {len(response.forgotten)} voice(s)"
                            + (f"; not held: {', '.join(missing[:10])}" if missing else ""))
        return response

    def _load_voices(self) -> None:
        """The voices saved in voices_file for this model (configure); none, with a warning, if it cannot be read."""
        path, self.voices_file_error = str(self.p("voices_file")), ""
        if not path or self.classifier is None or not os.path.exists(path):
            return
        try:
            with self._adapter_lock:
                count = load_voices(self._voice_normaliser().tracker, Path(path), self.classifier.model_id)
            self.get_logger().info(f"remembered {count} voice(s) from {path}")
        except ValueError as error:
            self.voices_file_error = str(error)
            self._voices = None
            self.get_logger().warning(f"voices_file: {error}; starting with no voice")

    def _save_voices(self) -> None:
        """Writes the voices to voices_file, if one is named (deactivate, shutdown, and every forget)."""
        path = str(self.p("voices_file"))
        if not path or self.classifier is None:
            return
        try:
            with self._adapter_lock:
                save_voices(self._voices.tracker if self._voices is not None else VoiceTracker(), Path(path),
                            self.classifier.model_id)
            self.voices_file_error = ""
        except OSError as error:
            self.voices_file_error = f"{path}: cannot write ({error})"
            self.get_logger().error(f"voices_file: {self.voices_file_error}")

    def _voice_stream(self, vad: Any = None) -> StreamProcessor:
        """A fresh segmenter for one upstream voice, with the node's current settings, around `vad` (a released
        voice's, reset) or a new VAD."""
        vad = vad or make_vad(self.p("vad_backend"), webrtc_aggressiveness=self.p("webrtc_aggressiveness"))
        return StreamProcessor(Segmenter(vad, self._segmenter_config()),
                               StreamConfig(self.p("channel"), self.p("max_chunk_s"), self.p("gap_tolerance_s")))

    def _raw_voice_class(self) -> Any:
        from audio_common_msgs.msg import AudioData  # raw variant: REP 155's per-voice audio type

        return AudioData

    def _on_voice_audio(self, voice_id: str, msg: Any) -> None:
        """One upstream voice's audio message (executor thread, as are opening and releasing voices)."""
        hri = self._hri
        stream = hri.stream(voice_id) if hri is not None else None
        if stream is not None:
            (self._on_typed if self.variant == TYPED else self._on_raw)(msg, stream, voice_id)

    def _count_error(self, counter: str, error: Exception, utterances: int) -> None:
        self.counts[counter] += utterances
        kind = f"{counter}_{type(error).__name__}"
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + utterances
        self.get_logger().error(f"{counter.replace('_', ' ')[:-1]} for {utterances} utterance(s): "
                                f"{type(error).__name__}: {error}", throttle_duration_sec=5.0)

    def _ensure_worker(self) -> None:
        """Starts the classification worker when the node is active and it is not running (first activation,
        or a worker that died anyway); called on activate and on every model (re)load."""
        if not self._active or (self._worker is not None and self._worker.is_alive()):
            return
        self._stop.clear()
        self._worker_beat = time.monotonic()
        self._worker = threading.Thread(target=self._work, name="ser_inference", daemon=True)
        self._worker.start()

    def _result_messages(self, item: Pending, probabilities: np.ndarray, classes: list[str]) -> tuple[Any, ...]:
        """(classification, expression, utterance audio or None) for one classified utterance."""
        u = item.utterance
        result = interpret(probabilities, classes, u.start, u.end, float(self.p("min_confidence")),
                           str(self.p("low_confidence_expression")))
        header = Header(stamp=seconds_to_stamp(u.start, Time), frame_id=item.frame_id)
        expression = Expression(header=header, expression=result.expression, valence=result.valence,
                                arousal=result.arousal, confidence=result.confidence)
        classification = Classification(header=header, results=[
            ObjectHypothesis(class_id=name, score=float(score)) for name, score in zip(classes, probabilities)])
        audio = (typed_audio_message(self.audio_class, u.audio, 16000, u.start, item.frame_id, Header, Time)
                 if self.utterance_pub is not None else None)
        return classification, expression, audio

    def _send(self, messages: tuple[Any, ...], voice_id: str = "") -> None:
        classification, expression, audio = messages
        if self.expression_pub is not None:
            self.classification_pub.publish(classification)  # scores first: a listener of both can join them
            self.expression_pub.publish(expression)
        hri = self._hri
        if hri is not None and voice_id:
            hri.publish_expression(voice_id, expression)
        if audio is not None and self.utterance_pub is not None:
            self.utterance_pub.publish(audio)

    def _publish_label_info(self) -> None:
        if self.classifier is None:
            return
        msg = LabelInfo(header=Header(stamp=self.get_clock().now().to_msg()),
                        class_map=[VisionClass(class_id=i, class_name=name)
                                   for i, name in enumerate(self.classifier.classes)],
                        threshold=float(self.p("min_confidence")))
        self.label_info_pub.publish(msg)

    # ------------------------------------------------------------ diagnostics
    def diagnostic_values(self) -> tuple[int, str, dict[str, str]]:
        """Level, message and key/values of the node's health (see diagnostics.py; also used by tests)."""
        return diagnostics.health(self)

    def _publish_diagnostics(self) -> None:
        diagnostics.publish(self)


def main(argv: list[str] | None = None) -> int:
    """Console script: runs the node, configured and activated unless --no-autostart."""

    parser = argparse.ArgumentParser(
        prog="ser_node",
        description="Speech emotion recognition node: subscribes to `audio` (audio_common_msgs), publishes "
                    "~/expression (hri_msgs/Expression), ~/classification (vision_msgs), ~/is_speaking and "
                    "/diagnostics; follows ROS4HRI voices (/humans/voices/tracked, per-voice audio in and "
                    "expression out; hri_voices parameter). ROS arguments follow --ros-args (e.g. --ros-args "
                    "--params-file config/ser_node.yaml -r audio:=/robot/mic).")
    parser.add_argument("--no-autostart", action="store_true",
                        help="stay unconfigured; drive the lifecycle with the usual lifecycle services")
    parser.add_argument("--wait-for-model", action="store_true",
                        help="if configure fails (missing or broken model), stay up and retry every 5 s until the "
                             "model_path file is fixed; without it the process exits with status 1 and the reason, "
                             "so systemd, a supervisor or a launch file's respawn can see the failure")
    args = parser.parse_args(rclpy.utilities.remove_ros_args(argv if argv is not None else sys.argv)[1:])
    stop = init_rclpy_with_ordered_shutdown(argv)

    try:
        node = SerNode()
    except (InvalidParameterValueException, ParameterException) as error:  # one line, not a traceback
        print(f"ser_node: {str(error).split('Reason: ')[-1]}", file=sys.stderr)
        rclpy.shutdown()
        return 2
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    if not args.no_autostart and not start_node(node):
        if not args.wait_for_model:
            node.get_logger().error(f"exiting: configure failed ({node.model_error}); fix model_path, or run with "
                                    "--wait-for-model to stay up and retry")
            node.destroy_node()
            rclpy.shutdown()
            return 1
        node.get_logger().error("configure failed; retrying every 5 s (--wait-for-model)")
        node.create_timer(5.0, lambda: node.state_label() == "unconfigured" and start_node(node))
    spin_until_done(node, executor, stop)
    return 0


def start_node(node: Any) -> bool:
    """configure + activate (what the console script does unless --no-autostart)."""
    node.trigger_configure()
    if node.state_label() != "inactive":
        return False
    node.trigger_activate()
    return node.state_label() == "active"


def init_rclpy_with_ordered_shutdown(argv: list[str] | None) -> threading.Event:
    """rclpy.init without rclpy's own SIGINT/SIGTERM handling, which shuts the context down at once, under the
    node's threads still waiting on it (the cause of rare 'terminate called without an active exception'
    aborts). A signal only sets the returned event; spin_until_done then tears down in a defined order."""

    stop = threading.Event()
    rclpy.init(args=argv if argv is not None else sys.argv, signal_handler_options=SignalHandlerOptions.NO)
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, lambda *_: stop.set())
    return stop


def spin_until_done(node: Any, executor: Any, *events: threading.Event | None) -> None:
    """Spins until one of `events` is set (a signal, work done) or rclpy stops, then shuts down in order:
    the node's own threads (audio intake, classification worker) joined, the executor, the node, rclpy."""

    try:
        while rclpy.ok() and not any(e is not None and e.is_set() for e in events):
            executor.spin_once(timeout_sec=0.2)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        stop_threads = getattr(node, "stop_threads", None)
        if stop_threads is not None:
            stop_threads()
        executor.shutdown(timeout_sec=2.0)
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()


if __name__ == "__main__":
    sys.exit(main())
