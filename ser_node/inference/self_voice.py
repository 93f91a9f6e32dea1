"""The robot's own voice, known by its speaker embedding: utterances that sound like it are not a person to read.

For robots whose text-to-speech state is not published (else the node's `robot_speaking` input is exact), a few
of the robot's own TTS sentences are enrolled (`ser_enroll_voice`): the centroid of their speaker embeddings, from
the same model graph the node runs, is written with the model's id. An utterance whose embedding is at least
`threshold` similar (cosine) to that centroid is dropped before it is judged or joins a voice.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..files import save_npz_atomic


@dataclass
class SelfVoice:
    model_id: str
    centroid: np.ndarray  # unit vector
    sentences: int
    within: float  # the lowest cosine of an enrolled sentence to the centroid (how tight the enrolment is)

    @classmethod
    def enrol(cls, embeddings: np.ndarray, model_id: str) -> "SelfVoice":
        units = np.asarray(embeddings, np.float64)
        units = units / np.linalg.norm(units, axis=1, keepdims=True)
        centroid = units.sum(axis=0)
        centroid /= np.linalg.norm(centroid)
        return cls(model_id, centroid, len(units), float((units @ centroid).min()))

    def similarity(self, embedding: np.ndarray) -> float:
        embedding = np.asarray(embedding, np.float64)
        return float(self.centroid @ embedding / max(float(np.linalg.norm(embedding)), 1e-12))

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_npz_atomic({"kind": np.array("ser_node self voice"), "model_id": np.array(self.model_id),
                         "centroid": self.centroid, "sentences": np.array(self.sentences),
                         "within": np.array(self.within)}, path)

    @classmethod
    def load(cls, path: Path, model_id: str, size: int) -> "SelfVoice":
        """Raises ValueError naming the file for a corrupt file, another kind of file or another model's."""
        try:
            with np.load(path, allow_pickle=False) as saved:
                kind, saved_model = str(saved["kind"]), str(saved["model_id"])
                centroid, sentences, within = saved["centroid"], int(saved["sentences"]), float(saved["within"])
        except Exception as error:  # truncated, corrupt, or another kind of file: numpy's errors vary
            raise ValueError(f"{path}: not a self-voice enrolment ({type(error).__name__}: {error})") from error
        if kind != "ser_node self voice":
            raise ValueError(f"{path}: not a self-voice enrolment ({kind!r})")
        if saved_model != model_id:
            raise ValueError(f"{path}: enrolled with model {saved_model}, not {model_id}: enrol again")
        if centroid.shape != (size,) or not np.isfinite(centroid).all():
            raise ValueError(f"{path}: centroid of shape {centroid.shape}, expected ({size},)")
        return cls(saved_model, centroid / np.linalg.norm(centroid), sentences, within)
