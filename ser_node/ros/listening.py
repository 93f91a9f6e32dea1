"""Whom the node listens to: people, not the robot itself, and with `listen_to: engaged` only engaged people.

- **The robot's own speech** (`robot_speaking`, std_msgs/Bool, true while the robot's text-to-speech plays): an
  utterance during which the robot spoke, or within `robot_speaking_hangover_s` after (the echo tail), is dropped
  before it is classified, so it is never published and never opens or changes a voice. Judged on arrival time (the
  node's monotonic clock), so no clock needs to match the audio stamps. A `robot_speaking` stuck at true for more
  than `robot_speaking_timeout_s` is not trusted any longer (the node listens again and diagnostics warn), so one
  lost `false` cannot deafen the robot for good.
- **The robot's voice** (`self_voice_file`, written by `ser_enroll_voice`): for robots whose TTS state is not
  published; an utterance at least `self_voice_threshold` similar to the enrolled voice is dropped the same way
  (voice-encoder models; utterances of upstream ROS4HRI voices are left to robot_speaking).
- **Engagement** (`listen_to: engaged`): results are published only for voices matched to a ROS4HRI person whose
  engagement is ENGAGED (moods.py follows the persons); the others are counted.
Every drop is counted by reason in diagnostics and, with `publish_rejected`, published on `~/rejected`; so are the
segmenter's (`low_snr`: below `min_snr_db`, the SNR over the floor or, with `foreground_db`, over the background).
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, Callable

from ..inference.classifier import Inference
from ..inference.self_voice import SelfVoice
from ..inference.voices import EMBEDDING_SIZE

LISTEN_TO = ("everyone", "engaged")


class Listening:
    def __init__(self, node: Any, param: Callable[[str], Any]) -> None:
        self.node, self.p = node, param
        self.lock = threading.Lock()
        self.self_voice: SelfVoice | None = None
        self.self_voice_error = ""
        self._speaking = False
        self._since = 0.0  # monotonic time robot_speaking turned true
        self._last_off = -float("inf")  # monotonic time it last turned false
        self.transitions = 0
        self.dropped: dict[str, int] = {}
        self._sub: Any = None
        self._rejected_pub: Any = None

    # ------------------------------------------------------------ life
    def create(self, model_id: str) -> None:
        from std_msgs.msg import Bool, String

        self._sub = self.node.create_subscription(Bool, str(self.p("robot_speaking_topic")), self._on_robot_speaking,
                                                  10)
        if self.p("publish_rejected"):
            self._rejected_pub = self.node.create_publisher(String, "~/rejected", 10)
        self.self_voice, self.self_voice_error = None, ""
        path = str(self.p("self_voice_file"))
        if path:
            try:
                self.self_voice = SelfVoice.load(Path(path), model_id, EMBEDDING_SIZE)
                self.node.get_logger().info(f"self voice: {self.self_voice.sentences} enrolled utterance(s), {path}")
            except (ValueError, OSError) as error:  # the node keeps running, without the self-voice check
                self.self_voice_error = str(error)
                self.node.get_logger().error(f"self_voice_file refused: {error}")

    def destroy(self) -> None:
        if self._sub is not None:
            self.node.destroy_subscription(self._sub)
        if self._rejected_pub is not None:
            self.node.destroy_publisher(self._rejected_pub)
        self._sub = self._rejected_pub = None
        with self.lock:
            self._speaking = False

    # ------------------------------------------------------------ the robot's speech (executor thread)
    def _on_robot_speaking(self, msg: Any) -> None:
        now = time.monotonic()
        with self.lock:
            if bool(msg.data) != self._speaking:
                self.transitions += 1
                if msg.data:
                    self._since = now
                else:
                    self._last_off = now
            self._speaking = bool(msg.data)

    def stuck_s(self, now: float | None = None) -> float:
        """How long robot_speaking has been true beyond its timeout (0 if it is not stuck)."""
        now = time.monotonic() if now is None else now
        with self.lock:
            over = now - self._since - float(self.p("robot_speaking_timeout_s"))
            return max(0.0, over) if self._speaking else 0.0

    def robot_speaking(self, now: float | None = None) -> bool:
        """The robot is speaking, or stopped less than the hangover ago (and robot_speaking is not stuck)."""
        now = time.monotonic() if now is None else now
        with self.lock:
            if self._speaking:
                return now - self._since <= float(self.p("robot_speaking_timeout_s"))
            return now - self._last_off <= float(self.p("robot_speaking_hangover_s"))

    # ------------------------------------------------------------ drops
    def reject(self, result: Inference) -> str:
        """The self-voice check on a judged utterance (VoiceState.reject): a reason to drop it, or ""."""
        voice = self.self_voice
        if voice is None or result.speaker_embedding is None:
            return ""
        return "self_voice" if voice.similarity(result.speaker_embedding) >= float(self.p("self_voice_threshold")) \
            else ""

    def count(self, reason: str, start: float = 0.0, end: float = 0.0, voice_id: str = "") -> None:
        with self.lock:
            self.dropped[reason] = self.dropped.get(reason, 0) + 1
        publisher = self._rejected_pub
        if publisher is not None:
            from std_msgs.msg import String

            publisher.publish(String(data=json.dumps({"reason": reason, "start": start, "end": end,
                                                      "voice_id": voice_id})))

    def values(self) -> dict[str, str]:
        stuck = self.stuck_s()
        with self.lock:
            values = {"listen_to": str(self.p("listen_to")), "robot_speaking": str(self._speaking),
                      "robot_speaking_transitions": str(self.transitions),
                      **{f"utterances_not_a_person_{k}": str(v) for k, v in sorted(self.dropped.items())}}
        if stuck > 0:
            values["robot_speaking_stuck_s"] = f"{stuck + float(self.p('robot_speaking_timeout_s')):.0f}"
        if self.self_voice is not None:
            values["self_voice_sentences"] = str(self.self_voice.sentences)
        if self.self_voice_error:
            values["self_voice_error"] = self.self_voice_error
        return values
