"""Who is speaking: utterances assigned to voices by their GE2E speaker embedding, each voice with its own
speaker-normalisation state.

Speaker normalisation is worth 10-15 UA points, but only with the right speaker's history. Resetting it after a
silence mixes two people taking turns and forgets one person who pauses. The tracker compares each utterance's
speaker embedding (an output of the default model's graph, so it costs nothing extra) with the centroids of the
voices heard so far: above `threshold` it joins the most similar voice, else it opens a new one. Turns help: an
utterance that follows the last one within `turn_gap_s` is likelier the same person, so the last voice is kept at
the lower `same_turn_threshold`. The set is bounded (`max_voices`; the least recently heard voice is forgotten).
A doubtful assignment must not judge somebody by another person's mean: an utterance whose cosine to its voice's
centroid is below `confident_similarity` still joins the voice, but the plain head answers for it. Calibrated this
way the tracker would rather split a person in two than mix two people; two voices whose centroids (each over at
least MERGE_MIN utterances) come closer than `merge_threshold` are joined again. Merging stays off by default: it
mixes people (identity is what behaviours see); instead, voices whose centroids agree within `pool_threshold`
pool their histories for normalisation only, so a person split in two is still judged by one mean while the two
ids stay apart.

Everything lives in memory: embeddings and statistics are written nowhere unless the node's voices_file parameter
names a file (save_voices / load_voices, for a robot that should remember its people across restarts).
"""
from __future__ import annotations

import random
import string
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..files import save_npz_atomic
from .adaptation import SpeakerAdapter

EMBEDDING_SIZE = 256  # GE2E speaker embeddings
MERGE_MIN = 3  # utterances each voice needs before two may be merged (a centroid over fewer is too noisy)


@dataclass(frozen=True)
class VoiceSettings:
    """Decision settings; the defaults are calibrated on uem-es conversations (bench/conversations.py)."""

    # cosine to a voice's centroid to join it: 0.8 on v0.6's embedding scores the same UA as 0.75 in the
    # conversations bench and mixes fewer people (purity 0.96 against 0.86, bench/conversations.py --identity)
    threshold: float = 0.8
    same_turn_threshold: float = 0.65  # for the voice just heard, within turn_gap_s
    confident_similarity: float = 0.75  # below this cosine to its voice, an utterance is judged by the plain head
    merge_threshold: float = 1.0  # two voices' centroids this similar are one voice (1.0: never)
    # voices whose centroids are this similar share their histories for normalisation, ids untouched (1.0: never).
    # 0.9: +0.65 UA in the conversations bench at the node's other defaults, first five unchanged; merging at 0.9
    # gains as much but mixes people (purity 0.915 against 0.961)
    pool_threshold: float = 0.9
    turn_gap_s: float = 1.0
    max_voices: int = 8
    warmup: int = 5
    history: int = 50
    shrinkage: float = 0.0
    balance: float = 0.0  # class-balanced history mean (SpeakerAdapter); 0: the plain mean
    spread_shrinkage: float = 0.0  # a voice's spread pulled towards 1 while it rests on few utterances (SpeakerAdapter)

    def adapter(self) -> SpeakerAdapter:
        """A fresh normalisation state with these warm-up, history, shrinkage, balance and spread settings."""
        return SpeakerAdapter(self.warmup, self.history, self.shrinkage, self.balance, self.spread_shrinkage)

    def __post_init__(self) -> None:
        if (not (-1 <= self.same_turn_threshold <= self.threshold <= 1) or not -1 <= self.merge_threshold <= 1
                or not -1 <= self.pool_threshold <= 1 or self.max_voices < 1 or self.turn_gap_s < 0):
            raise ValueError(f"need -1 <= same_turn_threshold <= threshold <= 1, -1 <= merge_threshold <= 1, "
                             f"-1 <= pool_threshold <= 1, "
                             f"max_voices >= 1, turn_gap_s >= 0: "
                             f"{self}")


@dataclass
class Voice:
    """One voice heard: its id, the running sum of its embeddings (the centroid's direction) and its adapter."""

    id: str
    adapter: SpeakerAdapter
    embedding_sum: np.ndarray
    utterances: int = 0
    last_heard: float = -np.inf
    similarity: float = np.nan  # the last utterance's cosine to the centroid before it joined (NaN: it opened it)

    @property
    def centroid(self) -> np.ndarray:
        return self.embedding_sum / max(float(np.linalg.norm(self.embedding_sum)), 1e-12)


@dataclass
class VoiceTracker:
    """Assigns utterances to voices; `voices` in order of last use (least recent first)."""

    settings: VoiceSettings = field(default_factory=VoiceSettings)
    voices: OrderedDict[str, Voice] = field(default_factory=OrderedDict)
    forgotten: int = 0  # voices dropped to stay within max_voices
    merged: int = 0  # voices joined to another (merge_threshold)
    _last: str | None = None
    _last_end: float = -np.inf
    _random: random.Random = field(default_factory=random.Random)

    def assign(self, embedding: np.ndarray, start: float, end: float) -> Voice:
        """The voice of an utterance (speaker embedding, L2-normalised by the encoder), updated with it."""
        embedding = np.asarray(embedding, dtype=np.float64)
        embedding = embedding / max(float(np.linalg.norm(embedding)), 1e-12)
        chosen, similarity = None, {}
        if self.voices:
            similarity = {vid: float(v.centroid @ embedding) for vid, v in self.voices.items()}
            best = max(similarity, key=similarity.get)
            same_turn = self._last in self.voices and 0 <= start - self._last_end <= self.settings.turn_gap_s
            if same_turn and similarity[self._last] >= self.settings.same_turn_threshold:
                chosen = self.voices[self._last]
            elif similarity[best] >= self.settings.threshold:
                chosen = self.voices[best]
        if chosen is None:
            chosen = self._open()
        chosen.similarity = similarity.get(chosen.id, np.nan)
        chosen.embedding_sum = chosen.embedding_sum + embedding
        chosen.utterances += 1
        chosen.last_heard = end
        chosen = self._merge_into(chosen)
        self.voices.move_to_end(chosen.id)
        self._last, self._last_end = chosen.id, end
        return chosen

    def _merge_into(self, voice: Voice) -> Voice:
        """`voice` and the first other voice whose centroid is within merge_threshold, as one (the one heard more
        keeps its id); `voice` itself if there is none."""
        if voice.utterances < MERGE_MIN or self.settings.merge_threshold >= 1.0:
            return voice
        for other in list(self.voices.values()):
            if (other is not voice and other.utterances >= MERGE_MIN
                    and float(other.centroid @ voice.centroid) >= self.settings.merge_threshold):
                keep, gone = (voice, other) if voice.utterances >= other.utterances else (other, voice)
                keep.similarity = voice.similarity  # the utterance's, whichever voice keeps it
                keep.embedding_sum = keep.embedding_sum + gone.embedding_sum
                keep.utterances += gone.utterances
                for vector, probabilities in gone.adapter.history():
                    keep.adapter.remember(vector, probabilities)
                del self.voices[gone.id]
                self.merged += 1
                return keep
        return voice

    def offset(self, voice: Voice) -> np.ndarray | None:
        """What `voice`'s next utterance is normalised by: the shrunk mean of its history and of the histories of
        voices (each over MERGE_MIN utterances or more) whose centroids are within pool_threshold of its own. A
        person the tracker split keeps one mean, and a new voice of a known person skips its warm-up."""
        return voice.adapter.offset(self._borrowed(voice))

    def spread(self, voice: Voice) -> np.ndarray | None:
        """The spread of the same pooled history (models with speaker_scale divide by it)."""
        return voice.adapter.spread(self._borrowed(voice))

    def _borrowed(self, voice: Voice) -> list:
        """The histories `voice` shares (pool_threshold)."""
        borrowed: list = []
        if self.settings.pool_threshold < 1.0 and voice.utterances:
            for other in self.voices.values():
                if (other is not voice and other.utterances >= MERGE_MIN
                        and float(other.centroid @ voice.centroid) >= self.settings.pool_threshold):
                    borrowed += other.adapter.history()
        return borrowed

    def confident(self, voice: Voice) -> bool:
        """Whether the utterance just assigned to `voice` may be judged by the voice's normalisation state."""
        return bool(voice.similarity >= self.settings.confident_similarity)

    def named(self, voice_id: str, end: float) -> Voice:
        """The voice an upstream voice module (ROS4HRI) named, opened on first use: no embedding decides."""
        voice = self.voices.get(voice_id) or self._open(voice_id)
        voice.utterances += 1
        voice.last_heard = end
        self.voices.move_to_end(voice_id)
        return voice

    def _open(self, voice_id: str | None = None) -> Voice:
        while len(self.voices) >= self.settings.max_voices:
            self.voices.popitem(last=False)
            self.forgotten += 1
        voice = Voice(voice_id or self._new_id(), self.settings.adapter(), np.zeros(EMBEDDING_SIZE))
        self.voices[voice.id] = voice
        return voice

    def _new_id(self) -> str:
        """A fresh id, ROS4HRI style (random letters, a valid topic name token): never one held now, and, unlike a
        counter, not the id some other person had before a restart or in a loaded voices file."""
        while True:
            voice_id = "voice_" + "".join(self._random.choices(string.ascii_lowercase, k=5))
            if voice_id not in self.voices:
                return voice_id

    def forget(self, voice_ids: list[str] | None = None) -> list[str]:
        """Forgets these voices (every voice with None): embeddings and statistics; returns the ids forgotten."""
        gone = [v for v in (list(self.voices) if voice_ids is None else voice_ids) if self.voices.pop(v, None)]
        if self._last in gone:
            self._last = None
        return gone


class VoiceNormaliser:
    """Speaker normalisation by voice for a voice-encoder model: one graph run per utterance judges it against
    the offset of every voice that is past warm-up, the speaker embedding from the same run picks the voice, and
    that voice's row is kept (the plain head while the voice is new). What the node and the bag evaluator run."""

    def __init__(self, settings: VoiceSettings | None = None) -> None:
        self.tracker = VoiceTracker(settings or VoiceSettings())

    def judge(self, classifier, encoded: Any, start: float, end: float, reject=None):
        """(Inference with the probabilities to publish, the Voice it was assigned to). `reject(inference)` may
        name a reason to drop the utterance (the robot's own voice): then it joins no voice (Voice None)."""
        candidates = [(v, self.tracker.offset(v)) for v in self.tracker.voices.values()]
        candidates = [(v, o) for v, o in candidates if o is not None]
        offsets = (np.stack([o for _, o in candidates]) if candidates
                   else np.zeros((1, classifier.feature_size), np.float32))
        spreads = (np.stack([self.tracker.spread(v) for v, _ in candidates])
                   if candidates and classifier.uses_spread else None)
        normalised, result = classifier.infer_candidates(encoded, offsets, spreads)
        result.rejected = reject(result) if reject is not None else ""
        if result.rejected:
            return result, None
        voice = self.tracker.assign(result.speaker_embedding, start, end)
        row = next((i for i, (v, _) in enumerate(candidates) if v is voice), None)
        if row is not None and self.tracker.confident(voice):
            result.probabilities = normalised[row]
        voice.adapter.remember(result.features, result.plain)
        return result, voice

    def judge_named(self, classifier, encoded: Any, voice_id: str, end: float):
        """The same for an utterance whose voice an upstream module named: (inference, Voice)."""
        voice = self.tracker.named(voice_id, end)
        return classifier.infer_adapted(encoded, voice.adapter), voice

    @property
    def utterances(self) -> int:
        """Utterances the voices' current estimates rest on."""
        return sum(v.adapter.count for v in self.tracker.voices.values())


def save_voices(tracker: VoiceTracker, path: Path, model_id: str) -> None:
    """Writes the voices (ids, embedding sums, normalisation histories with the plain head's probabilities, NaN
    where an utterance has none) to `path` atomically; only where the voices_file parameter names a file. The
    statistics belong to one model's feature space, so its id goes too."""
    voices = list(tracker.voices.values())
    remembered = [v.adapter.history() for v in voices]
    classes = next((len(p) for h in remembered for _, p in h if p is not None), 0)
    histories = [np.array([vector for vector, _ in h], dtype=np.float64) for h in remembered if h]
    probabilities = [np.array([np.full(classes, np.nan) if p is None else p for _, p in h], dtype=np.float64
                              ).reshape(len(h), classes) for h in remembered if h]
    path.parent.mkdir(parents=True, exist_ok=True)
    save_npz_atomic(dict(
        model_id=np.array(model_id), ids=np.array([v.id for v in voices], dtype=str),
        embedding_sums=np.array([v.embedding_sum for v in voices]).reshape(len(voices), EMBEDDING_SIZE),
        utterances=np.array([v.utterances for v in voices]), last_heard=np.array([v.last_heard for v in voices]),
        lengths=np.array([len(h) for h in remembered], dtype=np.int64),
        histories=np.concatenate(histories) if histories else np.zeros((0, 0)),
        probabilities=np.concatenate(probabilities) if probabilities else np.zeros((0, 0))), path)


def load_voices(tracker: VoiceTracker, path: Path, model_id: str) -> int:
    """Voices saved by save_voices for the same model, added to `tracker` (within max_voices); returns how many.
    Raises ValueError for a file of another model or one that is not a voices file."""
    try:
        with np.load(path, allow_pickle=False) as saved:
            keys = ["model_id", "ids", "embedding_sums", "utterances", "last_heard", "lengths", "histories"]
            keys += ["probabilities"] if "probabilities" in saved else []  # files from before 2026-12-06 have none
            saved = {key: saved[key] for key in keys}
        cuts = np.cumsum(saved["lengths"])[:-1]
        rows = np.split(saved["histories"], cuts) if len(saved["lengths"]) else []
        probabilities = (np.split(saved["probabilities"], cuts) if "probabilities" in saved and len(saved["lengths"])
                         else [[None] * len(r) for r in rows])
    except Exception as error:  # truncated, corrupt, or another kind of file: numpy's errors vary by damage
        raise ValueError(f"{path}: not a voices file ({type(error).__name__}: {error})") from error
    if str(saved["model_id"]) != model_id:
        raise ValueError(f"{path}: voices of model {saved['model_id']}, not of {model_id}")
    for k, voice_id in enumerate(saved["ids"]):
        voice = tracker._open(str(voice_id))
        voice.embedding_sum = saved["embedding_sums"][k].astype(np.float64)
        voice.utterances, voice.last_heard = int(saved["utterances"][k]), float(saved["last_heard"][k])
        for vector, p in zip(rows[k], probabilities[k]):
            voice.adapter.remember(vector, None if p is None or not np.size(p) or np.isnan(p).any() else p)
    return len(saved["ids"])
