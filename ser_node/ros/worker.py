"""The classification worker: a bounded queue of closed utterances and the thread that classifies them.

For voice models the encoder has already run while the utterance was spoken (inference/voice_stream.py, in the
intake): what is left here is the heads under the speaker normalisation, the messages and publishing.

Audio intake never waits for inference: utterances are queued here and classified on a thread of their own. When
the worker falls behind, the oldest queued utterance is dropped and counted. No error of one utterance may end the
thread: each is counted by kind, logged (rate-limited), and the loop goes on; a watchdog in diagnostics covers the
rest. The worker knows nothing of ROS: the node hands it the classifier, the judging and the publishing.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..audio.segmenter import Utterance
from ..inference.classifier import Classifier, Inference

WORKER_STALL_S = 10.0  # queued work untouched this long means the worker is stuck (a batch takes milliseconds)
STAGES = ("intake", "wake", "features", "inference", "build", "publish")


@dataclass
class Pending:
    utterance: Utterance
    frame_id: str
    queued_at: float
    taken_at: float = 0.0  # when the intake took the audio message that closed the utterance
    voice_id: str = ""  # the upstream (ROS4HRI) voice whose topic it came from; "" for the node's own audio topic
    heard_as: str = ""  # the voice it was judged as (upstream id or the node's own tracker's)


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


class Worker:
    """The queue and the classification thread. `judge(classifier, encoded, item)` gives a voice model's result
    under the speaker normalisation, `adapt(item, probabilities)` a DeepSpectrum model's; `build(item,
    probabilities, classes)` makes the messages and `send(item, probabilities, messages)` publishes them."""

    def __init__(self, param: Callable[[str], Any], judge: Callable[[Classifier, Any, Pending], Inference],
                 adapt: Callable[[Pending, np.ndarray], np.ndarray], build: Callable[..., tuple[Any, ...]],
                 send: Callable[[Pending, np.ndarray, tuple[Any, ...]], None], log_error: Callable[..., None]) -> None:
        self.p, self._judge, self._adapt, self._build, self._send = param, judge, adapt, build, send
        self._log_error = log_error
        self.classifier: Classifier | None = None  # set by the node (configure, model swap, cleanup)
        self.lock = threading.Condition()
        self.queue: deque[Pending] = deque()
        self.thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.counts = {"utterances_classified": 0, "utterances_dropped": 0, "utterances_too_short": 0,
                       "utterances_rejected": 0, "inference_errors": 0, "result_errors": 0}
        self.rejected_kinds: dict[str, int] = {}  # e.g. utterances_rejected_self_voice: 3
        self.on_rejected: Callable[[Pending, str], None] = lambda _item, _reason: None
        self.error_kinds: dict[str, int] = {}  # e.g. result_errors_IndexError: 3
        self.beat = time.monotonic()  # the thread's last sign of life (watchdog)
        self.latency = LatencyWindow()
        self.stages = StageWindow()

    def set_classifier(self, classifier: Classifier | None) -> None:
        with self.lock:
            self.classifier = classifier

    def ensure_running(self) -> None:
        """Starts the thread if it is not running (first activation, or a thread that died anyway)."""
        if self.thread is not None and self.thread.is_alive():
            return
        self._stop.clear()
        self.beat = time.monotonic()
        self.thread = threading.Thread(target=self._work, name="ser_inference", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self.lock:
            self.lock.notify_all()
        if self.thread is not None:
            self.thread.join(timeout=5.0)
            self.thread = None

    def clear(self) -> None:
        with self.lock:
            self.queue.clear()

    def enqueue(self, utterance: Utterance, frame_id: str, taken_at: float = 0.0, voice_id: str = "") -> None:
        with self.lock:
            limit = int(self.p("queue_size"))
            while len(self.queue) >= limit:
                self.queue.popleft()
                self.counts["utterances_dropped"] += 1
            now = time.monotonic()
            self.queue.append(Pending(utterance, frame_id, now, taken_at or now, voice_id))
            self.lock.notify()

    def _work(self) -> None:
        while not self._stop.is_set():
            self.beat = time.monotonic()
            with self.lock:
                while not self.queue and not self._stop.is_set():
                    self.lock.wait(timeout=0.5)
                    self.beat = time.monotonic()
                if self._stop.is_set():
                    return
                batch = [self.queue.popleft() for _ in range(min(len(self.queue), int(self.p("max_batch"))))]
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
            prepared = ([self._encoded(item, classifier) for item in batch] if classifier.is_voice_model
                        else classifier.prepare([item.utterance.audio for item in batch]))
            featured = time.monotonic()
            results = ([self._judge(classifier, encoded, item) for encoded, item in zip(prepared, batch)]
                       if classifier.is_voice_model else classifier.infer(prepared))
        except Exception as error:  # a broken model must not kill the worker: report and go on
            self._count_error("inference_errors", error, len(batch))
            return
        done = time.monotonic()
        for item, result in zip(batch, results):
            if result.rejected:  # not a person to read (the robot's own voice): counted, not published
                self.counts["utterances_rejected"] += 1
                kind = f"utterances_rejected_{result.rejected}"
                self.rejected_kinds[kind] = self.rejected_kinds.get(kind, 0) + 1
                self.on_rejected(item, result.rejected)
                continue
            try:
                probabilities = (result.probabilities if classifier.is_voice_model
                                 else self._adapt(item, result.probabilities))
                messages = self._build(item, probabilities, classifier.classes)
                built = time.monotonic()
                self._send(item, probabilities, messages)
            except Exception as error:  # scores it cannot interpret, a publisher torn down, ...
                self._count_error("result_errors", error, 1)
                continue
            self.stages.add([item.taken_at, item.queued_at, woke, featured, done, built, time.monotonic()])
            self.latency.add(done - item.queued_at, item.utterance.duration)
            self.counts["utterances_classified"] += 1

    @staticmethod
    def _encoded(item: Pending, classifier: Classifier) -> Any:
        """A voice model's encoder state: the one computed while the utterance was spoken, or (the model was
        swapped meanwhile, streaming is off or failed) the same computed now from the audio."""
        state = item.utterance.encoded
        if state is not None and state.model is classifier:
            return state
        return classifier.prepare([item.utterance.audio])[0]

    def _count_error(self, counter: str, error: Exception, utterances: int) -> None:
        self.counts[counter] += utterances
        kind = f"{counter}_{type(error).__name__}"
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + utterances
        self._log_error(f"{counter.replace('_', ' ')[:-1]} for {utterances} utterance(s): "
                        f"{type(error).__name__}: {error}")

    def stalled(self, active: bool) -> str:
        """Why the worker is unhealthy while the node is active ("" when it is fine): dead, or no progress with
        work queued."""
        if not active:
            return ""
        if self.thread is None or not self.thread.is_alive():
            return "classification worker is not running"
        silent_s = time.monotonic() - self.beat
        with self.lock:
            queued = len(self.queue)
        if queued and silent_s > WORKER_STALL_S:
            return f"classification worker made no progress for {silent_s:.0f} s with work queued"
        return ""

    def values(self, stage_timing: bool) -> dict[str, str]:
        with self.lock:
            values = {"queue_depth": str(len(self.queue))}
        values.update({k: str(v) for k, v in self.counts.items()})
        values.update({k: str(v) for k, v in sorted(self.error_kinds.items())})
        values.update({k: str(v) for k, v in sorted(self.rejected_kinds.items())})
        for key, value in self.latency.percentiles().items():
            values[f"latency_ms_{key}" if key.startswith("p") else key] = f"{value:.2f}"
        if stage_timing:
            values.update({key: f"{value:.3f}" for key, value in self.stages.percentiles().items()})
        return values
