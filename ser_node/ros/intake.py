"""Audio intake that takes messages off the subscription in batches while nobody speaks.

Why not a plain subscription callback: rclpy's executor spends about 1 ms of Python per message rebuilding its
wait set, so a 50 msgs/s audio topic alone costs ~5 % of a core with a callback that does nothing (measured
here, see bench/results/performance.md). A robot's microphone streams all day, mostly silence, so that cost is
paid all day. This thread waits on the one audio subscription directly and, while the segmenter hears no
speech, lets messages pile up in the subscription's history for `batch_s` before draining them in one go
(~1.2 % of a core for the same stream). While somebody speaks it takes every message at once, so the latency
from the end of an utterance is unchanged; only the detection of speech onset waits up to `batch_s`, and the
onset is not lost (the pre-roll comes from the batched audio).

rclpy has no public call to take one message from a subscription, so this uses the same two calls that rclpy's
own `wait_for_message` and executors use (`WaitSet` and `Subscription.handle.take_message`). `available()`
says whether they are there; if a future rclpy drops them, the node falls back to executor callbacks.
rclpy's wait-set executors (single- and multi-threaded) honour the callback group below; the experimental
EventsExecutor does not, so with it set idle_batch_s: 0 (the node logs an error if it sees this happen).
"""
from __future__ import annotations

import math
import threading
import time
from typing import Any, Callable

from ..audio.stream import ChunkError
from ..audio.wire import TYPED, RawFormat, raw_to_chunk, typed_to_chunk

WAIT_TIMEOUT_NS = 250_000_000  # how often the thread checks for stop while no message comes
HISTORY_SHARE = 0.25  # a pause may let the subscription's history fill this far at the rate last seen
PROBE_S = 0.05  # the pause after a lone message, long enough to measure the stream's rate


def available() -> bool:
    try:
        from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy

        return hasattr(_rclpy, "WaitSet")
    except ImportError:
        return False


def never_executed_group() -> Any:
    """A callback group the executor never runs: it keeps the intake's subscription out of the executor's wait
    set, while the subscription still belongs to the node (remapping, `ros2 topic info`, destroy)."""
    from rclpy.callback_groups import CallbackGroup

    class NeverExecuted(CallbackGroup):
        def can_execute(self, entity: Any) -> bool:
            return False

        def beginning_execution(self, entity: Any) -> bool:
            return False

        def ending_execution(self, entity: Any) -> None:
            pass

    return NeverExecuted()


class BatchedIntake:
    """Drains one subscription in a thread: `deliver(msg)` for every message, in arrival order.

    `batch_s()` is asked after each drain: how long the caller would like messages to accumulate (0 = take each
    message as it arrives). The pause is capped so that, at the message rate seen in the last drain, the history
    fills at most a quarter (4x headroom for a sudden burst, e.g. a bag replayed fast); until a rate is known
    the pause is short (PROBE_S). Messages lost anyway (history overflow, network) are counted in `lost` from
    gaps in each publisher's sequence numbers, where the RMW provides them (Fast DDS and Cyclone do).
    """

    def __init__(self, subscription: Any, context: Any, deliver: Callable[[Any], None],
                 batch_s: Callable[[], float], on_error: Callable[[BaseException], None]) -> None:
        self.subscription = subscription
        self.context = context
        self.deliver = deliver
        self.batch_s = batch_s
        self.on_error = on_error
        self.wakeups = 0
        self.lost = 0
        self._last_sequence: dict[bytes, int] = {}
        self.depth = int(getattr(subscription.qos_profile, "depth", 0) or 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ser_audio_intake", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Returns once the thread has ended, so the subscription can be destroyed safely."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)

    def _run(self) -> None:
        from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy

        sub = self.subscription
        wait_set = _rclpy.WaitSet(1, 0, 0, 0, 0, 0, self.context.handle)
        last_drain = time.monotonic()
        while not self._stop.is_set():
            count = 0
            try:
                with sub.handle:
                    wait_set.clear_entities()
                    wait_set.add_subscription(sub.handle)
                    wait_set.wait(WAIT_TIMEOUT_NS)
                    self.wakeups += 1
                    while not self._stop.is_set():
                        taken = sub.handle.take_message(sub.msg_type, sub.raw)
                        if taken is None:
                            break
                        count += 1
                        self._count_gap(taken[1])
                        self.deliver(taken[0])
            except Exception as error:  # the context went down under us, or a callback bug: report, go on
                if self._stop.is_set() or not self.context.ok():
                    return
                self.on_error(error)
                self._stop.wait(0.1)
                continue
            now = time.monotonic()
            pause = self.safe_pause(self.batch_s(), count, now - last_drain)
            last_drain = now
            if pause > 0:
                self._stop.wait(pause)

    def _count_gap(self, info: Any) -> None:
        sequence = info.get("publication_sequence_number") if isinstance(info, dict) else None
        if not isinstance(sequence, int) or sequence <= 0 or sequence >= 2**64 - 1:  # unsupported by the RMW
            return
        writer = bytes(info.get("publisher_gid", {}).get("data", b""))
        previous = self._last_sequence.get(writer)
        if previous is not None and sequence > previous + 1:
            self.lost += sequence - previous - 1
        self._last_sequence[writer] = sequence

    def safe_pause(self, wanted: float, count: int, elapsed: float) -> float:
        """`wanted`, capped by what the history holds at the rate of the last drain (`count` in `elapsed` s)."""
        if wanted <= 0 or not self.depth:
            return max(0.0, wanted)
        if count == 0:
            return wanted  # nothing is streaming
        if count == 1 or elapsed <= 0:
            return min(wanted, PROBE_S)  # a stream (re)starting: measure its rate over a short pause first
        return min(wanted, HISTORY_SHARE * self.depth * elapsed / count)


class AudioIntake:
    """The node's audio in: the subscriptions (QoS from the parameters, typed or raw variant, `audio_info`),
    decoding each message into a stream (the node's own, or an upstream voice's) and handing what the segmenter
    closes to `enqueue(utterance, frame_id, taken_at, voice_id)`. Owns the stream and its lock (the intake thread
    and, with idle_batch_s 0, the executor feed it)."""

    def __init__(self, node: Any, variant: str, audio_class: Any, info_class: Any,
                 enqueue: Callable[..., None], robot_speaking: Callable[[], bool] = lambda: False,
                 on_robot_speech: Callable[[Any, str], None] = lambda _u, _v: None) -> None:
        """`robot_speaking()` says whether the robot speaks now (or its echo tail lasts): an utterance heard while
        it did goes to `on_robot_speech(utterance, voice_id)` instead of `enqueue`."""
        self.node, self.variant, self.audio_class, self.info_class = node, variant, audio_class, info_class
        self._enqueue = enqueue
        self._robot_speaking, self._on_robot_speech = robot_speaking, on_robot_speech
        self._heard_robot: dict[int, bool] = {}  # per stream: the robot spoke during the utterance in progress
        self.stream: Any = None  # StreamProcessor, from configure to cleanup
        self.raw_format = RawFormat()
        self.batched: BatchedIntake | None = None
        self.active = False
        self._subscriptions: list[Any] = []
        self._lock = threading.Lock()
        self._last_bad_log = 0.0
        self._warned_executor_took_audio = False

    def qos(self) -> Any:
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

        reliability = (ReliabilityPolicy.RELIABLE if self.node.p("reliability") == "reliable"
                       else ReliabilityPolicy.BEST_EFFORT)
        return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=self.node.p("qos_depth"), reliability=reliability,
                          durability=DurabilityPolicy.VOLATILE)

    def voice_audio_class(self) -> Any:
        """The per-voice audio type: the typed AudioStamped, or REP 155's raw AudioData."""
        if self.variant == TYPED:
            return self.audio_class
        from audio_common_msgs.msg import AudioData

        return AudioData

    def subscribe(self) -> None:
        """Subscribes to `audio` (and `audio_info` for the raw variant) and starts the batched intake thread."""
        if self.variant == TYPED:
            self._subscribe(self.audio_class, self.on_typed)
        else:
            raw_class = self.audio_class if self.node.p("raw_stamped") else self.voice_audio_class()
            self._subscribe(raw_class, self.on_raw)
            if self.info_class is not None:
                self._subscriptions.append(self.node.create_subscription(self.info_class, "audio_info",
                                                                         self.on_info, 10))
        self.active = True
        if self.batched is not None:
            self.batched.start()

    def _subscribe(self, msg_class: Any, callback: Callable[[Any], None]) -> None:
        """Audio goes through the batched intake thread (see BatchedIntake) unless idle_batch_s is 0."""
        node = self.node
        if node.p("idle_batch_s") <= 0 or not available():
            self._subscriptions.append(node.create_subscription(msg_class, "audio", callback, self.qos()))
            return

        def executor_took(msg: Any) -> None:
            # Only an executor that ignores callback groups (rclpy's experimental EventsExecutor) gets here.
            if not self._warned_executor_took_audio:
                self._warned_executor_took_audio = True
                node.get_logger().error("this executor ignores callback groups and takes audio messages too; "
                                        "set idle_batch_s: 0 with it")
            callback(msg)

        sub = node.create_subscription(msg_class, "audio", executor_took, self.qos(),
                                       callback_group=never_executed_group())
        self._subscriptions.append(sub)
        self.batched = BatchedIntake(sub, node.context, callback, self.pause,
                                     on_error=lambda e: node.get_logger().error(f"audio intake: {e!r}"))

    def unsubscribe(self) -> None:
        self.active = False
        if self.batched is not None:
            self.batched.stop()
            self.batched = None
        for sub in self._subscriptions:
            self.node.destroy_subscription(sub)
        self._subscriptions.clear()

    def pause(self) -> float:
        """No pause while speech may be going on; else idle_batch_s (the intake caps it to the history)."""
        stream = self.stream
        return 0.0 if stream is not None and stream.segmenter.speaking else float(self.node.p("idle_batch_s"))

    def on_typed(self, msg: Any, stream: Any = None, voice_id: str = "") -> None:
        self.feed(lambda now: typed_to_chunk(msg, now), msg.header.frame_id, stream, voice_id)

    def on_raw(self, msg: Any, stream: Any = None, voice_id: str = "") -> None:
        frame_id = msg.header.frame_id if hasattr(msg, "header") else ""
        self.feed(lambda now: raw_to_chunk(msg, self.raw_format, now), frame_id, stream, voice_id)

    def on_info(self, msg: Any) -> None:
        fmt = RawFormat.from_info(msg)
        if fmt != self.raw_format:
            self.node.get_logger().info(f"audio format from audio_info: {fmt}")
            self.raw_format = fmt

    def on_voice_audio(self, voice_id: str, msg: Any, stream: Any) -> None:
        """One upstream voice's audio message into that voice's own stream."""
        (self.on_typed if self.variant == TYPED else self.on_raw)(msg, stream, voice_id)

    def feed(self, make_chunk: Callable[[float], Any], frame_id: str, stream: Any = None, voice_id: str = "") -> None:
        """Decodes one audio message into `stream` (default: the node's own) and queues what it closes."""
        stream = stream or self.stream
        if not self.active or stream is None:
            return
        taken_at = time.monotonic()
        now = self.node.get_clock().now().nanoseconds * 1e-9
        with self._lock:
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
            key, robot_now = id(stream), self._robot_speaking()
            if robot_now:
                self._heard_robot[key] = True
            robot = self._heard_robot.get(key, False)
            if utterances or not stream.segmenter.speaking:  # an utterance closed, or none goes on: start afresh
                self._heard_robot.pop(key, None)
                if robot_now and stream.segmenter.speaking:  # cut at max length while the robot still speaks
                    self._heard_robot[key] = True
        for utterance in utterances:
            if robot:  # the robot's own speech (or its echo): never classified, never a voice
                self._on_robot_speech(utterance, voice_id)
            else:
                self._enqueue(utterance, frame_id, taken_at, voice_id)

    def _warn_bad_chunk(self, error: ChunkError) -> None:
        """Logs at most every 5 s; every drop is counted in diagnostics."""
        if time.monotonic() - self._last_bad_log > 5.0:
            self._last_bad_log = time.monotonic()
            self.node.get_logger().warning(f"dropped audio chunk ({error}); "
                                           f"{self.stream.stats.dropped if self.stream else '?'} dropped so far")

    def values(self) -> dict[str, str]:
        """The stream's and the segmenter's counters, and audio lost before intake."""
        values: dict[str, str] = {}
        if self.stream is not None:
            stats, segmenter = self.stream.stats, self.stream.segmenter
            values.update(chunks_received=str(stats.chunks + stats.dropped), chunks_dropped=str(stats.dropped),
                          chunks_clipped=str(stats.chunks_clipped))
            values.update({f"chunks_dropped_{k}": str(v) for k, v in sorted(stats.bad_chunks.items())})
            values["audio_seconds"] = f"{stats.seconds:.1f}"
            values["utterances_too_short"] = str(segmenter.stats.too_short)
            values["utterances_low_snr"] = str(segmenter.stats.low_snr)
            values["background_speech_frames"] = str(segmenter.stats.background_frames)
            background = segmenter.background_level()
            values["background_level_dbfs"] = "unknown" if background is None else f"{background:.1f}"
            floor = segmenter.noise_floor()
            values["noise_floor_dbfs"] = "unknown" if floor is None else f"{10 * math.log10(max(floor, 1e-12)):.1f}"
            if segmenter.last_quality is not None:
                snr, clipped = segmenter.last_quality
                values["last_utterance_snr_db"] = "unknown" if snr is None else f"{snr:.1f}"
                values["last_utterance_clipped_percent"] = f"{100 * clipped:.2f}"
            values["speaking"] = str(segmenter.speaking)
        if self.batched is not None:
            values["audio_messages_lost"] = str(self.batched.lost)
        return values
