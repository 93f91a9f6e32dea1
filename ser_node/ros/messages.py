"""ROS-side message facts: which audio_common_msgs generation is installed, and what the node publishes for an
utterance. The wire formats themselves (both generations, without ROS) live in ser_node.audio.wire."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..audio.wire import RAW, TYPED
from ..labels import ROS4HRI_EXPRESSION, valence_arousal


def detect_audio_variant() -> tuple[str, Any, Any]:
    """Which audio_common_msgs generation is installed: (variant, stamped message class, info class or None)."""
    module = importlib.import_module("audio_common_msgs.msg")
    if hasattr(module, "AudioStamped") and hasattr(module, "Audio"):
        return TYPED, module.AudioStamped, None
    if hasattr(module, "AudioDataStamped"):
        return RAW, module.AudioDataStamped, getattr(module, "AudioInfo", None)
    raise ImportError("audio_common_msgs has neither AudioStamped (typed) nor AudioDataStamped (raw bytes)")


@dataclass
class EmotionResult:
    """What the node publishes for one utterance."""

    start: float
    end: float
    classes: Sequence[str]
    probabilities: np.ndarray
    expression: str  # ROS4HRI vocabulary (or the low-confidence label)
    confidence: float
    valence: float
    arousal: float


def interpret(probabilities: np.ndarray, classes: Sequence[str], start: float, end: float,
              min_confidence: float, low_confidence_expression: str) -> EmotionResult:
    """Top class in ROS4HRI words, valence/arousal from the circumplex table, and the low-confidence rule:
    below min_confidence the expression is `low_confidence_expression` (default neutral), with the true
    (low) confidence, so consumers can tell an unsure neutral from a sure one."""
    top = int(np.argmax(probabilities))
    confidence = float(probabilities[top])
    expression = ROS4HRI_EXPRESSION.get(classes[top], classes[top])
    if confidence < min_confidence:
        expression = low_confidence_expression
    valence, arousal = valence_arousal(probabilities, classes)
    return EmotionResult(start, end, classes, probabilities, expression, confidence, valence, arousal)


