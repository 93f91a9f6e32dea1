"""ROS4HRI voices (REP 155): per-voice audio in, per-voice expression out.

`follow` (default): an upstream voice module (speaker diarisation, a microphone array's beamformer) lists the
voices it tracks on /humans/voices/tracked (hri_msgs/IdsList) and streams each one's audio on
/humans/voices/<id>/audio. The node holds up to `max_voices` of them: for each, a subscription, its own
segmenter (its own VAD state: two people may talk at once), a normalisation state keyed by the id, and a
publisher of /humans/voices/<id>/expression (hri_msgs/Expression) and of REP 155's /humans/voices/<id>/is_speaking
(std_msgs/Bool, from the voice's own segmenter). A voice that leaves the list is released
(subscription, publisher, segmenter and statistics). Without an upstream module nothing is subscribed but the
list, and the node's own audio topic works as before.

`publish`: no upstream module; the node's own voice tracker (voices.py) names voices and publishes them the
same way (tracked list and expressions). Off by default: those ids are estimates (a voice can split or two
people merge; bench/results/conversations.md measures how often), and another node may own the namespace.

The upstream list is hostile input: hundreds of ids, ids that churn every second, ids that are no valid topic
name token. The node keeps the voices it already holds, fills free places in list order, and counts what it
dropped (diagnostics). Audio on a voice topic that is not tracked is never subscribed to.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Bool

from ..audio.stream import StreamProcessor

VOICES_NS = "/humans/voices"
MODES = ("follow", "publish", "off")
MAX_ID_CHARS = 64
# libhri subscribes to the tracked lists with depth 1, reliable, volatile; transient_local on the publishing side
# also serves that (and gives a late subscriber the current list).
TRACKED_SUB_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.VOLATILE)
# A consumer learns a voice's id from the tracked list and only then subscribes to its expressions: transient-local
# keeps the voice's last results for it (their stamps say how old they are); volatile subscribers are served too.
EXPRESSION_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE,
                            durability=DurabilityPolicy.TRANSIENT_LOCAL)
TRACKED_PUB_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)


def id_problem(voice_id: str) -> str:
    """Why `voice_id` cannot name a voice namespace ('' if it can): it must be one valid topic name token."""
    from rclpy.validate_topic_name import validate_topic_name

    if not voice_id:
        return "empty"
    if len(voice_id) > MAX_ID_CHARS:
        return f"longer than {MAX_ID_CHARS} characters"
    if "/" in voice_id or "~" in voice_id or "{" in voice_id:
        return "not a single topic name token"
    try:
        validate_topic_name(f"{VOICES_NS}/{voice_id}/audio")
    except Exception as error:  # rclpy's InvalidTopicNameException, with the reason
        reason = str(error).splitlines()[0].rstrip(": ")
        return (reason.split(": ", 1)[-1] or "invalid topic name")[:80]
    return ""


@dataclass
class HeldVoice:
    """One upstream voice the node holds."""

    id: str
    stream: StreamProcessor
    subscription: Any
    publisher: Any
    speaking: Any = None  # /humans/voices/<id>/is_speaking (std_msgs/Bool, REP 155), from the voice's segmenter


@dataclass
class HriStats:
    tracked_lists: int = 0
    ids_malformed: int = 0  # over all lists (an id counted once per list it came in)
    ids_over_limit: int = 0
    voices_opened: int = 0
    voices_released: int = 0
    errors: int = 0  # lists that could not be followed (logged)
    last_dropped: list[str] = field(default_factory=list)  # what the last list lost, with an example and why


class HriVoices:
    """The ROS4HRI side of the node: `follow` upstream voices or `publish` its own (see the module docstring).

    `make_stream(vad)` gives a fresh StreamProcessor around a VAD (`vad` None: a new one); `on_audio(voice_id,
    msg)` is what each voice's subscription calls; `forget(ids)` drops the normalisation state of released voices.

    Released voices' VADs are kept (reset) for the next voices: creating and dropping an ONNX Runtime session per
    voice costs ~20 KB of RSS that never comes back (measured: 2,000 Silero sessions, +40 MB), and under an id
    churning every second that is a leak."""

    def __init__(self, node: Any, mode: str, max_voices: int, audio_class: Any, audio_qos: QoSProfile,
                 make_stream: Callable[[Any], StreamProcessor], on_audio: Callable[[str, Any], None],
                 forget: Callable[[list[str]], None]) -> None:
        from hri_msgs.msg import IdsList

        if mode not in MODES:
            raise ValueError(f"hri_voices must be one of {MODES}, got {mode!r}")
        self.node, self.mode, self.max_voices = node, mode, max_voices
        self._audio_class, self._audio_qos = audio_class, audio_qos
        self._make_stream, self._on_audio, self._forget = make_stream, on_audio, forget
        self.held: dict[str, HeldVoice] = {}
        self._spare_vads: list[Any] = []  # at most max_voices, from released voices
        self.own_publishers: dict[str, Any] = {}  # publish mode: the node's own voices
        self._published_ids: list[str] | None = None  # the tracked list last published (publish mode)
        self.stats = HriStats()
        self._lock = threading.Lock()  # the executor opens and releases, the worker publishes
        self._ids_list = IdsList
        self.tracked_sub = self.tracked_pub = None
        if mode == "follow":
            self.tracked_sub = node.create_subscription(IdsList, f"{VOICES_NS}/tracked", self.on_tracked,
                                                        TRACKED_SUB_QOS)
        elif mode == "publish":
            self.tracked_pub = node.create_publisher(IdsList, f"{VOICES_NS}/tracked", TRACKED_PUB_QOS)

    # ------------------------------------------------------------ follow
    def on_tracked(self, msg: Any) -> None:
        """Holds the listed voices (up to max_voices, those already held first), releases the others. Nothing
        may escape: an exception here would stop the executor that serves the whole node."""
        try:
            self._follow(msg)
        except Exception as error:
            self.stats.errors += 1
            self.node.get_logger().error(f"/humans/voices/tracked: {type(error).__name__}: {error}",
                                         throttle_duration_sec=5.0)

    def _follow(self, msg: Any) -> None:
        self.stats.tracked_lists += 1
        wanted, malformed = [], []
        for voice_id in dict.fromkeys(msg.ids):  # unique, in list order
            problem = id_problem(voice_id)
            if problem:
                malformed.append((voice_id, problem))
            else:
                wanted.append(voice_id)
        keep = [v for v in wanted if v in self.held][: self.max_voices]
        new = [v for v in wanted if v not in self.held]
        room = max(self.max_voices - len(keep), 0)
        over = new[room:]
        self.stats.ids_malformed += len(malformed)
        self.stats.ids_over_limit += len(over)
        dropped = []
        if malformed:
            dropped.append(f"{len(malformed)} malformed, e.g. {malformed[0][0][:20]!r} ({malformed[0][1]})")
        if over:
            dropped.append(f"{len(over)} over max_voices ({self.max_voices}), e.g. {over[0][:20]!r}")
        self.stats.last_dropped = dropped
        if dropped:
            self.node.get_logger().warning(f"/humans/voices/tracked: dropped {'; '.join(dropped)}",
                                           throttle_duration_sec=5.0)
        self.release([v for v in self.held if v not in keep])
        for voice_id in new[:room]:
            self._open(voice_id)

    def _open(self, voice_id: str) -> None:
        from hri_msgs.msg import Expression

        topic = f"{VOICES_NS}/{voice_id}"
        subscription = self.node.create_subscription(self._audio_class, f"{topic}/audio",
                                                     lambda msg, v=voice_id: self._on_audio(v, msg), self._audio_qos)
        publisher = self.node.create_publisher(Expression, f"{topic}/expression", EXPRESSION_QOS)
        speaking = self.node.create_publisher(Bool, f"{topic}/is_speaking", TRACKED_PUB_QOS)  # latched state
        with self._lock:
            vad = self._spare_vads.pop() if self._spare_vads else None
            stream = self._make_stream(vad)
            stream.segmenter.on_speaking = lambda now, _t, pub=speaking: pub.publish(Bool(data=now))
            self.held[voice_id] = HeldVoice(voice_id, stream, subscription, publisher, speaking)
        self.stats.voices_opened += 1

    def release(self, voice_ids: list[str]) -> None:
        """Unsubscribes and forgets voices that left the tracked list (or all, on deactivate)."""
        for voice_id in voice_ids:
            with self._lock:
                voice = self.held.pop(voice_id, None)
            if voice is None:
                continue
            self.node.destroy_subscription(voice.subscription)
            self.node.destroy_publisher(voice.publisher)
            self.node.destroy_publisher(voice.speaking)
            if len(self._spare_vads) < self.max_voices:
                voice.stream.segmenter.vad.reset()
                self._spare_vads.append(voice.stream.segmenter.vad)
            self.stats.voices_released += 1
        if voice_ids:
            self._forget(list(voice_ids))

    def stream(self, voice_id: str) -> StreamProcessor | None:
        voice = self.held.get(voice_id)
        return voice.stream if voice is not None else None

    # ------------------------------------------------------------ results
    def publish_expression(self, voice_id: str, expression: Any) -> None:
        """The expression of one voice's utterance on its own topic (if the voice is still held)."""
        with self._lock:
            if self.mode == "follow":
                voice = self.held.get(voice_id)
                if voice is not None:
                    voice.publisher.publish(expression)
                return
        if self.mode == "publish":
            self._publish_own(voice_id, expression)

    def _publish_own(self, voice_id: str, expression: Any) -> None:
        from hri_msgs.msg import Expression

        with self._lock:
            publisher = self.own_publishers.get(voice_id)
        if publisher is None:
            publisher = self.node.create_publisher(Expression, f"{VOICES_NS}/{voice_id}/expression", EXPRESSION_QOS)
            with self._lock:
                self.own_publishers[voice_id] = publisher
        publisher.publish(expression)

    def own_voices_changed(self, voice_ids: list[str]) -> None:
        """publish mode: the tracked list (on every change) and no publisher for a voice that was forgotten."""
        if self.mode != "publish" or self.tracked_pub is None:
            return
        voice_ids = sorted(voice_ids)  # the tracker keeps them in order of last use: compare as a set
        if voice_ids == self._published_ids:
            return
        self._published_ids = voice_ids
        with self._lock:
            gone = [v for v in self.own_publishers if v not in voice_ids]
            publishers = [self.own_publishers.pop(v) for v in gone]
        for publisher in publishers:
            self.node.destroy_publisher(publisher)
        msg = self._ids_list(ids=voice_ids)
        msg.header.stamp = self.node.get_clock().now().to_msg()
        self.tracked_pub.publish(msg)

    # ------------------------------------------------------------ teardown and health
    def close(self) -> None:
        """Releases every upstream voice; in publish mode, an empty tracked list and no own publisher left."""
        self.release(list(self.held))
        if self.tracked_sub is not None:
            self.node.destroy_subscription(self.tracked_sub)
        if self.tracked_pub is not None:
            self.own_voices_changed([])  # destroys the own voices' publishers (they are all listed ones)
            self.node.destroy_publisher(self.tracked_pub)
        self.tracked_sub = self.tracked_pub = None

    def values(self) -> dict[str, str]:
        """Diagnostics key/values."""
        s = self.stats
        out = {"hri_voices": self.mode}
        if self.mode == "follow":
            dropped_chunks = sum(v.stream.stats.dropped for v in list(self.held.values()))
            out.update(hri_voices_held=str(len(self.held)), hri_held_ids=",".join(list(self.held)[:16]),
                       hri_tracked_lists=str(s.tracked_lists), hri_ids_malformed=str(s.ids_malformed),
                       hri_ids_over_limit=str(s.ids_over_limit), hri_voices_opened=str(s.voices_opened),
                       hri_voices_released=str(s.voices_released), hri_errors=str(s.errors),
                       hri_chunks_dropped=str(dropped_chunks), hri_last_dropped="; ".join(s.last_dropped) or "none")
        elif self.mode == "publish":
            out["hri_voices_published"] = str(len(self.own_publishers))
        return out
