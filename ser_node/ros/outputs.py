"""What the node publishes per utterance and about itself: expression, classification, label info, is_speaking and
the optional utterance audio. Created on configure (lifecycle publishers), destroyed on cleanup."""
from __future__ import annotations

from typing import Any

import numpy as np
from builtin_interfaces.msg import Time
from hri_msgs.msg import Expression
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Bool, Header
from vision_msgs.msg import Classification, LabelInfo, ObjectHypothesis, VisionClass

from ..audio.wire import seconds_to_stamp, typed_audio_message
from .messages import interpret
from .worker import Pending


class Outputs:
    """The node's result publishers. `node` is the lifecycle node that owns them."""

    def __init__(self, node: Any) -> None:
        self.node = node
        self.expression = self.classification = self.label_info = self.speaking = self.utterance = None
        self.audio_class: Any = None

    def create(self, audio_class: Any | None) -> None:
        """`audio_class`: the typed AudioStamped class for ~/utterance (publish_utterance), or None."""
        node = self.node
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.expression = node.create_lifecycle_publisher(Expression, "~/expression", 10)
        self.classification = node.create_lifecycle_publisher(Classification, "~/classification", 10)
        self.label_info = node.create_lifecycle_publisher(LabelInfo, "~/label_info", latched)
        self.speaking = node.create_lifecycle_publisher(Bool, "~/is_speaking", 10)
        self.audio_class = audio_class
        self.utterance = node.create_lifecycle_publisher(audio_class, "~/utterance", 10) if audio_class else None

    def destroy(self) -> None:
        for name in ("expression", "classification", "label_info", "speaking", "utterance"):
            publisher = getattr(self, name)
            if publisher is not None:
                self.node.destroy_lifecycle_publisher(publisher)
                setattr(self, name, None)

    def build(self, item: Pending, probabilities: np.ndarray, classes: list[str]) -> tuple[Any, ...]:
        """(classification, expression, utterance audio or None) for one classified utterance."""
        u = item.utterance
        result = interpret(probabilities, classes, u.start, u.end, float(self.node.p("min_confidence")),
                           str(self.node.p("low_confidence_expression")))
        header = Header(stamp=seconds_to_stamp(u.start, Time), frame_id=item.frame_id)
        expression = Expression(header=header, expression=result.expression, valence=result.valence,
                                arousal=result.arousal, confidence=result.confidence)
        classification = Classification(header=header, results=[
            ObjectHypothesis(class_id=name, score=float(score)) for name, score in zip(classes, probabilities)])
        audio = (typed_audio_message(self.audio_class, u.audio, 16000, u.start, item.frame_id, Header, Time)
                 if self.utterance is not None else None)
        return classification, expression, audio

    def send(self, messages: tuple[Any, ...]) -> None:
        classification, expression, audio = messages
        if self.expression is not None:
            self.classification.publish(classification)  # scores first: a listener of both can join them
            self.expression.publish(expression)
        if audio is not None and self.utterance is not None:
            self.utterance.publish(audio)

    def publish_label_info(self, classes: list[str]) -> None:
        msg = LabelInfo(header=Header(stamp=self.node.get_clock().now().to_msg()),
                        class_map=[VisionClass(class_id=i, class_name=name) for i, name in enumerate(classes)],
                        threshold=float(self.node.p("min_confidence")))
        self.label_info.publish(msg)

    def on_speaking(self, speaking: bool, _time: float) -> None:
        """The segmenter's speech state changes (REP-155 is_speaking)."""
        if self.speaking is not None:
            self.speaking.publish(Bool(data=speaking))
