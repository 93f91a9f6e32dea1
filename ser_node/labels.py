"""The canonical seven emotions, their names in the corpora, and their ROS4HRI and valence/arousal mappings."""
from __future__ import annotations

from typing import Sequence

import numpy as np

# Canonical class order of every model this package trains or loads.
EMOTIONS: tuple[str, ...] = ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise")

# hri_msgs/Expression vocabulary (ROS4HRI, REP-155).
ROS4HRI_EXPRESSION: dict[str, str] = {
    "anger": "angry",
    "disgust": "disgusted",
    "fear": "scared",
    "joy": "happy",
    "neutral": "neutral",
    "sadness": "sad",
    "surprise": "surprised",
}

# Position of each emotion on Russell's circumplex, (valence, arousal) in [-1, 1]. Values follow the placement of
# the categories in Russell (1980) and the NRC VAD lexicon, rounded; published valence/arousal of an utterance is
# the probability-weighted mean of these points, so a confident "joy" reads (0.8, 0.5) and an unsure mix sits
# near the origin.
VALENCE_AROUSAL: dict[str, tuple[float, float]] = {
    "anger": (-0.6, 0.8),
    "disgust": (-0.7, 0.3),
    "fear": (-0.6, 0.7),
    "joy": (0.8, 0.5),
    "neutral": (0.0, 0.0),
    "sadness": (-0.7, -0.5),
    "surprise": (0.3, 0.8),
}

# Names found in corpora (Spanish as in EmoMatchSpanishDB and ELRA-S0329, English, ROS4HRI), lower-case, no accents.
LABEL_ALIASES: dict[str, str] = {
    **{name: name for name in EMOTIONS},
    **{v: k for k, v in ROS4HRI_EXPRESSION.items()},
    "alegria": "joy", "asco": "disgust", "ira": "anger", "enfado": "anger", "miedo": "fear", "neutro": "neutral",
    "neutral": "neutral", "sorpresa": "surprise", "tristeza": "sadness", "felicidad": "joy",
    "happiness": "joy", "happy": "joy", "angry": "anger", "sad": "sadness", "surprised": "surprise",
    "fearful": "fear", "disgusted": "disgust",
}


def canonical_label(name: str) -> str | None:
    """Canonical emotion for a corpus label (case and accents ignored), or None when unknown."""
    key = name.strip().lower()
    for accented, plain in (("á", "a"), ("é", "e"), ("í", "i"), ("ó", "o"), ("ú", "u")):
        key = key.replace(accented, plain)
    return LABEL_ALIASES.get(key)


def valence_arousal(probabilities: np.ndarray, classes: Sequence[str]) -> tuple[float, float]:
    """Probability-weighted (valence, arousal) over the circumplex table; classes outside it count as neutral."""
    points = np.array([VALENCE_AROUSAL.get(c, (0.0, 0.0)) for c in classes], dtype=np.float64)
    p = np.asarray(probabilities, dtype=np.float64)
    total = p.sum()
    if total <= 0:
        return 0.0, 0.0
    valence, arousal = (p / total) @ points
    return float(valence), float(arousal)
