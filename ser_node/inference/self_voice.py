"""The robot's own voice, known by its speaker embedding: utterances that sound like it are not a person to read.

For robots whose text-to-speech state is not published (else the node's `robot_speaking` input is exact), a few
of the robot's own TTS sentences are enrolled (`ser_enroll_voice`): their speaker embeddings, from the same model
graph the node runs, are written with the model's id. An utterance whose embedding is at least `threshold` similar
(cosine) to the nearest enrolled one is dropped before it is judged or joins a voice. The nearest, not a centroid:
a robot may speak with several TTS voices (languages), and one centroid of unlike voices resembles none of them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..files import save_npz_atomic


@dataclass
class SelfVoice:
    model_id: str
    units: np.ndarray  # (sentences, size) unit speaker embeddings
    within: float  # the lowest cosine of an enrolled sentence to its nearest other one (how alike they are)

    @property
    def sentences(self) -> int:
        return len(self.units)

    @classmethod
    def enrol(cls, embeddings: np.ndarray, model_id: str) -> "SelfVoice":
        units = np.asarray(embeddings, np.float64)
        units = units / np.linalg.norm(units, axis=1, keepdims=True)
        similarity = units @ units.T
        np.fill_diagonal(similarity, -1.0)
        within = float(similarity.max(axis=1).min()) if len(units) > 1 else 1.0
        return cls(model_id, units, within)

    def similarity(self, embedding: np.ndarray) -> float:
        """Cosine of `embedding` to the nearest enrolled sentence."""
        embedding = np.asarray(embedding, np.float64)
        return float((self.units @ embedding).max() / max(float(np.linalg.norm(embedding)), 1e-12))

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_npz_atomic({"kind": np.array("ser_node self voice"), "model_id": np.array(self.model_id),
                         "units": self.units, "within": np.array(self.within)}, path)

    @classmethod
    def load(cls, path: Path, model_id: str, size: int) -> "SelfVoice":
        """Raises ValueError naming the file for a corrupt file, another kind of file or another model's."""
        try:
            with np.load(path, allow_pickle=False) as saved:
                kind, saved_model = str(saved["kind"]), str(saved["model_id"])
                units, within = saved["units"], float(saved["within"])
        except Exception as error:  # truncated, corrupt, or another kind of file: numpy's errors vary
            raise ValueError(f"{path}: not a self-voice enrolment ({type(error).__name__}: {error})") from error
        if kind != "ser_node self voice":
            raise ValueError(f"{path}: not a self-voice enrolment ({kind!r})")
        if saved_model != model_id:
            raise ValueError(f"{path}: enrolled with model {saved_model}, not {model_id}: enrol again")
        if units.ndim != 2 or units.shape[1] != size or not len(units) or not np.isfinite(units).all():
            raise ValueError(f"{path}: embeddings of shape {units.shape}, expected (n, {size})")
        return cls(saved_model, units / np.linalg.norm(units, axis=1, keepdims=True), within)
