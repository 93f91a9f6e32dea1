"""Live bag replay: publish a bag's audio (raw serialized messages) into a running ser_node over DDS, collect what
it publishes, and measure end-to-end latency (utterance end, in bag time, to message arrival)."""
from __future__ import annotations

import importlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..audio.wire import stamp_to_seconds
from ..bags.evaluate import DetectedUtterance, score_against_reference
from ..bags.io import BagError, Segment, audio_variant_of, find_audio_topic, read_bag, reference_from_bag
from .messages import detect_audio_variant


@dataclass
class LiveResult:
    utterances: list[DetectedUtterance]  # end is the offline end where known (the node publishes start only)
    latencies_ms: list[float]
    published: int
    metrics: dict | None = None
    segmentation: dict | None = None
    arrivals: list[float] = field(default_factory=list)

    def latency_percentiles(self) -> dict[str, float]:
        if not self.latencies_ms:
            return {}
        values = np.array(self.latencies_ms)
        return {f"p{q}": float(np.percentile(values, q)) for q in (50, 95, 99)}


def message_class(msgtype: str) -> Any:
    """The installed rclpy class of a type name such as audio_common_msgs/msg/AudioStamped."""
    package, _, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{package}.msg"), name)


def replay_bag(path: str | Path, node: Any, executor_running: bool, *, topic: str | None = None,
               target_topic: str = "audio", ser_namespace: str = "/ser_node", speed: float = 1.0,
               offline: list[DetectedUtterance] | None = None, settle_s: float = 3.0,
               reference: list[Segment] | None = None, classes: list[str] | None = None) -> LiveResult:
    """Plays the bag into `target_topic` from `node` (an rclpy node whose executor spins elsewhere when
    executor_running, else this function spins it) and collects `<ser_namespace>/classification`."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from vision_msgs.msg import Classification

    contents = read_bag(path)
    audio_topic = find_audio_topic(contents, topic)
    variant = audio_variant_of(contents.topics[audio_topic], contents.msgdefs.get(audio_topic))
    installed, _cls, _info = detect_audio_variant()
    if variant != installed:
        raise BagError(f"the bag carries the {variant} audio_common_msgs generation, this install has the "
                       f"{installed} one: re-record or evaluate it offline (ser_bag evaluate)")
    audio_class = message_class(contents.topics[audio_topic])
    publisher = node.create_publisher(audio_class, target_topic, QoSProfile(depth=200,
                                                                           reliability=ReliabilityPolicy.RELIABLE))
    received: list[tuple[float, Any]] = []
    lock = threading.Lock()

    def on_classification(msg: Any) -> None:
        with lock:
            received.append((time.monotonic(), msg))

    subscription = node.create_subscription(Classification, f"{ser_namespace}/classification", on_classification, 50)
    messages = [m for m in contents.messages if m.topic == audio_topic]
    if not messages:
        raise BagError(f"{audio_topic} holds no messages")

    def spin(seconds: float) -> None:
        if executor_running:
            time.sleep(seconds)
        else:
            import rclpy

            rclpy.spin_once(node, timeout_sec=seconds)

    deadline = time.monotonic() + 10
    while publisher.get_subscription_count() == 0 and time.monotonic() < deadline:
        spin(0.05)
    if publisher.get_subscription_count() == 0:
        raise BagError(f"no ser_node subscribes to {publisher.topic_name}: start it first")
    spin(0.2)
    store_first = messages[0].timestamp_ns
    wall0 = time.monotonic()
    first_header: float | None = None
    for message in messages:
        due = wall0 + (message.timestamp_ns - store_first) * 1e-9 / speed
        while (ahead := due - time.monotonic()) > 0:
            spin(min(ahead, 0.01))
        publisher.publish(message.rawdata)
        if first_header is None:
            first_header = _header_time(message.rawdata, audio_class)
    expected = len(offline) if offline is not None else None
    quiet_since = time.monotonic()
    count = 0
    while time.monotonic() - quiet_since < settle_s:
        spin(0.05)
        with lock:
            if len(received) != count:
                count, quiet_since = len(received), time.monotonic()
        if expected is not None and count >= expected:
            spin(0.3)
            break
    node.destroy_subscription(subscription)
    node.destroy_publisher(publisher)

    offline_by_start = {round(u.start, 6): u for u in offline or []}
    utterances, latencies, arrivals = [], [], []
    header0 = first_header if first_header is not None else 0.0
    for arrival, msg in received:
        start = stamp_to_seconds(msg.header.stamp)
        scores = [r.score for r in msg.results]
        names = [r.class_id for r in msg.results]
        twin = offline_by_start.get(round(start, 6))
        end = twin.end if twin else start
        utterances.append(DetectedUtterance(start, end, names[int(np.argmax(scores))], scores))
        arrivals.append(arrival)
        if twin:
            # When the utterance's last sample was published, in wall time (bag time runs `speed` x faster).
            published_end = wall0 + (end - header0) / speed
            latencies.append((arrival - published_end) * 1000.0)
    result = LiveResult(utterances, latencies, len(messages), arrivals=arrivals)
    refs = reference if reference is not None else reference_from_bag(contents)
    if refs and classes:
        result.metrics, result.segmentation = score_against_reference(utterances, refs, classes)
    return result


def _header_time(rawdata: bytes, msg_class: Any) -> float:
    from rclpy.serialization import deserialize_message

    return stamp_to_seconds(deserialize_message(rawdata, msg_class).header.stamp)
