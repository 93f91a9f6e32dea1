"""Real rclpy plumbing for node tests: an isolated context, the node under test, a tester node, a spinning executor."""
from __future__ import annotations

import threading
import time
import traceback
from typing import Any, Callable

import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

from ser_node.audio.decode import resample

FORMAT_CODES = {"float32": 1, "int32": 2, "int16": 8, "int8": 16, "uint8": 32}


def speech_stream(waveforms: list[np.ndarray], silence_s: float = 1.0) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Clips separated (and surrounded) by silence; returns the 16 kHz stream and each clip's (start, end) offset."""
    gap = np.zeros(int(silence_s * 16000), np.float32)
    parts, bounds, t = [gap], [], silence_s
    for clip in waveforms:
        parts += [clip, gap]
        bounds.append((t, t + clip.size / 16000))
        t += clip.size / 16000 + silence_s
    return np.concatenate(parts), bounds


def encode(samples: np.ndarray, fmt: str) -> np.ndarray:
    """Float [-1, 1] interleaved samples -> the typed AudioData array for a format."""
    if fmt == "float32":
        return samples.astype(np.float32)
    if fmt == "uint8":
        return np.clip(np.round(samples * 127 + 128), 0, 255).astype(np.uint8)
    bits = {"int32": 31, "int16": 15, "int8": 7}[fmt]
    return np.clip(np.round(samples * (2**bits - 1)), -(2**bits), 2**bits - 1).astype(
        {"int32": np.int32, "int16": np.int16, "int8": np.int8}[fmt])


def typed_chunks(stream16k: np.ndarray, rate: int, channels: int, fmt: str, chunk_s: float, t0: float,
                 frame_id: str = "mic") -> list[Any]:
    """AudioStamped messages carrying the stream at `rate` with `channels` (channel k scaled by 1/(k+1))."""
    from audio_common_msgs.msg import AudioStamped

    audio = resample(stream16k, 16000, rate)
    frames = np.stack([audio / (k + 1) for k in range(channels)], axis=1)
    per_chunk = max(1, int(round(chunk_s * rate)))
    messages = []
    for start in range(0, frames.shape[0], per_chunk):
        block = frames[start : start + per_chunk]
        msg = AudioStamped()
        t = t0 + start / rate
        msg.header.stamp.sec = int(t)
        msg.header.stamp.nanosec = int(round((t - int(t)) * 1e9))
        msg.header.frame_id = frame_id
        msg.audio.info.format = FORMAT_CODES[fmt]
        msg.audio.info.channels = channels
        msg.audio.info.rate = rate
        msg.audio.info.chunk = block.shape[0]
        setattr(msg.audio.audio_data, f"{fmt}_data", encode(block.reshape(-1), fmt).tolist())
        messages.append(msg)
    return messages


class Harness:
    """Node under test plus a tester node in one private rclpy context, spun by a background executor."""

    def __init__(self, parameters: dict[str, Any] | None = None, namespace: str = "", autostart: bool = True) -> None:
        from ser_node.ros.node import SerNode

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        overrides = [Parameter(k, value=v) for k, v in (parameters or {}).items()]
        self.node = SerNode(context=self.context, parameter_overrides=overrides, namespace=namespace)
        self.tester = rclpy.create_node("tester", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.executor.add_node(self.tester)
        self.received: dict[str, list[Any]] = {"expression": [], "classification": [], "is_speaking": [],
                                               "diagnostics": [], "label_info": [], "rejected": []}
        self._lock = threading.Lock()
        from audio_common_msgs.msg import AudioStamped

        self.audio_pub = self.tester.create_publisher(
            AudioStamped, f"{namespace}/audio" if namespace else "audio",
            QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE))
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()
        self.subscribe_outputs(namespace)
        if autostart:
            assert self.configure_and_activate()

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except Exception:  # the context shut down while spinning, or a callback raised: show which
            traceback.print_exc()

    def subscribe_outputs(self, namespace: str = "") -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from hri_msgs.msg import Expression
        from std_msgs.msg import Bool, String
        from vision_msgs.msg import Classification, LabelInfo

        base = f"{namespace}/ser_node" if namespace else "/ser_node"
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        for key, cls, topic, qos in (("expression", Expression, f"{base}/expression", 50),
                                     ("classification", Classification, f"{base}/classification", 50),
                                     ("is_speaking", Bool, f"{base}/is_speaking", 50),
                                     ("label_info", LabelInfo, f"{base}/label_info", latched),
                                     ("rejected", String, f"{base}/rejected", 50),
                                     ("diagnostics", DiagnosticArray, "/diagnostics", 50)):
            self.tester.create_subscription(cls, topic, self._collector(key), qos)

    def _collector(self, key: str) -> Callable[[Any], None]:
        def collect(msg: Any) -> None:
            with self._lock:
                self.received[key].append(msg)
        return collect

    def configure_and_activate(self) -> bool:
        self.node.trigger_configure()
        if self.node.state_label() != "inactive":
            return False
        self.node.trigger_activate()
        self.wait_for_subscriber()
        return self.node.state_label() == "active"

    def wait_for_subscriber(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while self.audio_pub.get_subscription_count() == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)  # let the reverse discovery settle

    def publish(self, messages: list[Any], speed: float = 10.0, chunk_s: float | None = None,
                publisher: Any = None) -> None:
        """Publishes at `speed` x real time (paced by each message's audio duration), on the node's audio topic
        or on `publisher`."""
        publisher = publisher or self.audio_pub
        began = time.monotonic()
        audio_time = 0.0
        for msg in messages:
            publisher.publish(msg)
            info = getattr(getattr(msg, "audio", None), "info", None)
            if info is not None and info.rate > 0 and info.channels > 0:
                audio_time += info.chunk / info.rate if info.chunk else (chunk_s or 0.0)
            ahead = audio_time / speed - (time.monotonic() - began)
            if ahead > 0:
                time.sleep(ahead)

    def wait_for(self, key: str, count: int, timeout: float = 20.0) -> list[Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.received[key]) >= count:
                    break
            time.sleep(0.02)
        time.sleep(0.3)  # anything extra that would be a bug arrives now
        with self._lock:
            return list(self.received[key])

    def wait_idle(self, timeout: float = 20.0) -> None:
        """Until the worker queue is empty and nothing is being classified."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.node.diagnostic_values()[2].get("queue_depth") == "0":
                time.sleep(0.3)
                if self.node.diagnostic_values()[2].get("queue_depth") == "0":
                    return
            time.sleep(0.05)

    def close(self) -> None:
        try:
            if self.node.state_label() == "active":
                self.node.trigger_deactivate()
            self.executor.shutdown(timeout_sec=2.0)
            self.node.destroy_node()
            self.tester.destroy_node()
        finally:
            rclpy.shutdown(context=self.context)
            self._thread.join(timeout=5.0)


def stamp_seconds(stamp: Any) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


class SideNode:
    """A plain node in its own context, spun by the caller (executor.spin_once), for talking to other processes."""

    def __init__(self, name: str) -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def wait_for_subscriber(self, publisher: Any, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while publisher.get_subscription_count() == 0 and time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=0.05)
        return publisher.get_subscription_count() > 0

    def wait_for_publisher(self, subscription: Any, timeout: float = 30.0, settle: float = 2.0) -> bool:
        """Until `subscription` sees a publisher, then `settle` s more: the count is this side's view, and the
        other process's writer learns of this reader separately (late while it loads its models; CI runs lost
        first results to it)."""
        deadline = time.monotonic() + timeout
        while subscription.get_publisher_count() == 0 and time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=0.05)
        settled = time.monotonic() + settle
        while time.monotonic() < settled:
            self.executor.spin_once(timeout_sec=0.05)
        return subscription.get_publisher_count() > 0

    def close(self) -> None:
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


def expressions_from_process(command: list[str], env: dict[str, str], mic: str, expressions: str,
                             waveforms: list[np.ndarray], timeout: float = 20.0,
                             expected: int | None = None, stop: int = 15) -> tuple[list[Any], int, str]:
    """Starts a node process, streams `waveforms` (separated by silence, int16 in 50 ms messages, reliable) to
    `mic` once it subscribes, collects `expressions` until `expected` (default one per clip) arrived or `timeout`
    passed, then ends it with signal `stop` (SIGTERM). Returns (expressions, clips sent, the process's output)."""
    import subprocess

    from audio_common_msgs.msg import AudioStamped
    from hri_msgs.msg import Expression

    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    side = SideNode("process_tester")
    received: list[Any] = []
    try:
        subscription = side.node.create_subscription(Expression, expressions, received.append, 10)
        publisher = side.node.create_publisher(AudioStamped, mic,
                                               QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE))
        assert side.wait_for_subscriber(publisher), f"the node process never subscribed to {mic}"
        # The node's expression publisher must be matched too, or the first result can be lost to discovery.
        side.wait_for_publisher(subscription, timeout)
        stream, bounds = speech_stream(waveforms)
        for msg in typed_chunks(stream, 16000, 1, "int16", 0.05, 1000.0):
            publisher.publish(msg)
            side.executor.spin_once(timeout_sec=0.005)
        deadline = time.monotonic() + timeout
        while len(received) < (expected or len(bounds)) and time.monotonic() < deadline:
            side.executor.spin_once(timeout_sec=0.1)
    finally:
        side.close()
        process.send_signal(stop)
        output = process.communicate(timeout=20)[0]
    return received, len(bounds), output


def assert_same_classifications(expected: list[Any], got: list[Any], count: int) -> None:
    """The same utterances (stamps) with the same scores: what a disturbed run must give against a clean one."""
    assert len(got) == len(expected) == count, (len(got), len(expected), count)
    for a, b in zip(expected, got):
        assert a.header.stamp == b.header.stamp
        np.testing.assert_allclose([r.score for r in a.results], [r.score for r in b.results], atol=1e-6)
