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

import threading
import time
from typing import Any, Callable

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
