"""The data side of DeepSpectrum training: decoded audio, augmentation, feature images (cached in memory and
on disk), the corpus mix of multi-corpus runs, the teacher's targets, and the clips of a run by role."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from tqdm import tqdm

from ..files import atomic_path
from ..audio.decode import AudioError, load_audio, resample
from ..inference.features import FeatureConfig, FeatureExtractor
from ..labels import EMOTIONS
from .acoustics import Augmenter
from .config import TrainConfig
from .corpora import Clip, Corpus, CorpusEntry, LoadProblem, load_corpus, load_corpus_entry

# ---------------------------------------------------------------- data

class AudioBank:
    """Decoded 16 kHz waveforms of clips, loaded once. Files that fail to decode are reported, not fatal."""

    def __init__(self) -> None:
        self.waveforms: dict[Path, np.ndarray] = {}
        self.problems: list[LoadProblem] = []

    def load(self, clips: Sequence[Clip], desc: str = "decoding audio") -> list[Clip]:
        usable = []
        for clip in tqdm(clips, desc=desc, unit="clip", leave=False, disable=None):
            if clip.path not in self.waveforms:
                try:
                    self.waveforms[clip.path] = load_audio(clip.path)
                except AudioError as error:
                    self.problems.append(LoadProblem(str(clip.path), str(error)))
                    continue
            usable.append(clip)
        return usable

    def __getitem__(self, clip: Clip) -> np.ndarray:
        return self.waveforms[clip.path]


def speed_perturb(audio: np.ndarray, factor: float) -> np.ndarray:
    """Plays the clip `factor` times faster (pitch shifts with it, as in Kaldi-style speed perturbation)."""
    if abs(factor - 1.0) < 1e-3:
        return audio
    return resample(audio, int(round(16000 * factor)), 16000)


def spec_augment(image: np.ndarray, rng: np.random.Generator, fill: np.ndarray,
                 max_time: float = 0.15, max_freq: float = 0.15) -> np.ndarray:
    """One time mask and one frequency mask (SpecAugment), filled with the colour of silence."""
    image = image.copy()
    _, height, width = image.shape
    t = int(rng.integers(0, int(width * max_time) + 1))
    f = int(rng.integers(0, int(height * max_freq) + 1))
    if t:
        start = int(rng.integers(0, width - t + 1))
        image[:, :, start : start + t] = fill[:, None, None]
    if f:
        start = int(rng.integers(0, height - f + 1))
        image[:, start : start + f, :] = fill[:, None, None]
    return image


class ImageCache:
    """Clean feature images on disk, one .npy per (clip content, feature settings): folds and later runs reuse
    them, and a renamed corpus or changed settings can never return a stale image."""

    def __init__(self, root: Path, features: FeatureConfig) -> None:
        settings = json.dumps(features.to_dict(), sort_keys=True).encode()
        self.folder = root / "images" / hashlib.sha1(settings).hexdigest()[:16]
        self._digests: dict[Path, str] = {}

    def path(self, clip: Clip) -> Path:
        from ..files import file_digest

        if clip.path not in self._digests:
            self._digests[clip.path] = file_digest(clip.path)
        return self.folder / f"{self._digests[clip.path]}.npy"

    def get(self, clip: Clip, compute: Callable[[], np.ndarray]) -> np.ndarray:
        path = self.path(clip)
        if path.exists():
            try:
                return np.load(path)
            except (OSError, ValueError):  # a damaged cache file is recomputed, never trusted
                pass
        image = compute()
        with atomic_path(path) as tmp:
            np.save(tmp, image)
        return image


class ImageMaker:
    """Feature images for training: cached (in memory, and on disk with `disk`) when there is no augmentation,
    fresh per epoch when there is."""

    def __init__(self, extractor: FeatureExtractor, bank: AudioBank, config: TrainConfig, seed: int,
                 disk: ImageCache | None = None, babble_clips: Sequence[Clip] = ()) -> None:
        self.extractor, self.bank, self.config, self.disk = extractor, bank, config, disk
        self.acoustics = (Augmenter(config.augment_ranges(), babble_clips) if config.acoustic_augment > 0
                          else None)
        self.rng = np.random.default_rng(seed)
        self._cache: dict[Path, np.ndarray] = {}
        lut_zero = extractor._normalised_lut[0]  # the colour of the quietest bin
        self._fill = lut_zero.astype(np.float32)

    def clean(self, clip: Clip) -> np.ndarray:
        if clip.path not in self._cache:
            compute = lambda: self.extractor(self.bank[clip])  # noqa: E731
            self._cache[clip.path] = self.disk.get(clip, compute) if self.disk else compute()
        return self._cache[clip.path]

    def augmented(self, clip: Clip) -> np.ndarray:
        cfg = self.config
        if cfg.speed_perturb > 0 or self.acoustics:
            audio = self.bank[clip]
            if cfg.speed_perturb > 0:
                audio = speed_perturb(audio, float(self.rng.uniform(1 - cfg.speed_perturb, 1 + cfg.speed_perturb)))
            if self.acoustics:
                audio = self.acoustics(audio, clip, self.rng)
            image = self.extractor(audio)
        else:
            image = self.clean(clip)
        if cfg.spec_augment:
            image = spec_augment(image, self.rng, self._fill)
        return image

    def batch(self, clips: Sequence[Clip], augment: bool) -> np.ndarray:
        return np.stack([self.augmented(c) if augment else self.clean(c) for c in clips])


@dataclass
class CorpusMix:
    """What each corpus of a run may say (its label mask) and how much of every epoch it gets (its weight)."""

    labels: dict[str, set[str]]
    weights: dict[str, float]

    @classmethod
    def of(cls, clips: Sequence[Clip], weights: dict[str, float] | None = None) -> "CorpusMix":
        labels: dict[str, set[str]] = {}
        for clip in clips:
            labels.setdefault(clip.corpus, set()).add(clip.label)
        return cls(labels, {name: (weights or {}).get(name, 1.0) for name in labels})

    def mask(self, clips: Sequence[Clip]) -> np.ndarray:
        """(clips, classes) booleans: True where the clip's corpus can express the class."""
        return np.array([[e in self.labels.get(c.corpus, EMOTIONS) for e in EMOTIONS] for c in clips], dtype=bool)

    def sampling_probabilities(self, clips: Sequence[Clip]) -> np.ndarray:
        """Each corpus gets its weight's share of an epoch, split equally among the classes it has."""
        counts: dict[tuple[str, str], int] = {}
        for clip in clips:
            counts[(clip.corpus, clip.label)] = counts.get((clip.corpus, clip.label), 0) + 1
        classes = {name: sum(1 for (n, _) in counts if n == name) for name in {c.corpus for c in clips}}
        p = np.array([self.weights.get(c.corpus, 1.0) / classes[c.corpus] / counts[(c.corpus, c.label)]
                      for c in clips])
        return p / p.sum()


def describe_mix(clips: Sequence[Clip]) -> str:
    """`uem-es 0.50 emovo 0.17 ...`: the share of each corpus among the clips an epoch actually drew."""
    names = [c.corpus for c in clips]
    return " ".join(f"{name} {names.count(name) / len(names):.2f}" for name in sorted(set(names)))


def teacher_matrix(config: TrainConfig, clips: Sequence[Clip]) -> np.ndarray:
    """The teacher's regression targets for `clips`, z-scored (and ComParE PCA-reduced) on these same clips."""
    from .teacher import TeacherTargets, opensmile_functionals

    cache = Path(config.cache_dir).expanduser() / "opensmile"
    raw = {name: opensmile_functionals([c.path for c in clips], name, cache) for name in config.teacher_sets}
    return TeacherTargets(tuple(config.teacher_sets), config.teacher_pca).fit(raw).transform(raw)


@dataclass
class RunData:
    """The clips of a run by role. Folds run over `target`; `extra` clips join every fold's training part."""

    target: list[Clip]
    extra: list[Clip] = field(default_factory=list)  # other train corpora (multi-corpus runs)
    test: list[Clip] = field(default_factory=list)  # cross-corpus test corpus / role: test
    pretrain: list[Clip] = field(default_factory=list)
    weights: dict[str, float] = field(default_factory=dict)
    entries: list[dict] = field(default_factory=list)  # what each corpus contributed, for the report
    problems: list[LoadProblem] = field(default_factory=list)


def prepare_clips(config: TrainConfig) -> RunData:
    """The run's corpora, loaded and filtered: one corpus (+ a test corpus) or a `corpora:` list."""
    if config.corpora:
        return _prepare_corpora(config)
    corpus: Corpus = load_corpus(config.corpus)
    problems = list(corpus.problems)
    clips = corpus.clips
    if config.speakers:
        clips = [c for c in clips if c.speaker in set(config.speakers)]
    test_clips: list[Clip] = []
    if config.test_corpus:
        test_corpus = load_corpus(config.test_corpus)
        problems += test_corpus.problems
        shared = set(c.label for c in clips) & set(c.label for c in test_corpus.clips)
        test_clips = [c for c in test_corpus.clips if c.label in shared]
        clips = [c for c in clips if c.label in shared]
    if not clips:
        raise ValueError(f"no usable clips in corpus {config.corpus}")
    return RunData(clips, test=test_clips, problems=problems)


def _prepare_corpora(config: TrainConfig) -> RunData:
    entries: list[CorpusEntry] = [load_corpus_entry(spec) for spec in config.corpora]
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise ValueError(f"corpus names must be unique, got {names}: give each entry a `name`")
    data = RunData(target=[], weights={e.name: e.weight for e in entries})
    train_entries = [e for e in entries if e.role == "train"]
    target = config.target_corpus or (train_entries[0].name if train_entries else None)
    if config.stage == "train" and target not in [e.name for e in train_entries]:
        raise ValueError(f"target_corpus {target!r} is not among the train corpora {[e.name for e in train_entries]}")
    for spec, entry in zip(config.corpora, entries):
        clips = entry.corpus.clips
        if config.speakers:  # namespaced (`uem-es/s01`) or plain ids of the target corpus
            wanted = set(config.speakers)
            clips = [c for c in clips if c.speaker in wanted or (entry.name == target and
                                                                 c.speaker.split("/", 1)[1] in wanted)]
        data.problems += entry.corpus.problems
        if entry.role == "pretrain":
            data.pretrain += clips
        elif entry.role == "test":
            data.test += clips
        elif entry.name == target:
            data.target = clips
        else:
            data.extra += clips
        data.entries.append({"name": entry.name, "role": entry.role, "weight": entry.weight, "clips": len(clips),
                             "speakers": len({c.speaker for c in clips}), "labels": entry.labels,
                             "spec": dict(spec)})
    if config.stage == "pretrain":
        if not data.pretrain:
            raise ValueError("stage=pretrain needs at least one corpus with role: pretrain")
    elif not data.target:
        raise ValueError(f"no usable clips in the target corpus {target!r}")
    if data.test:
        shared = {c.label for c in data.target + data.extra}
        data.test = [c for c in data.test if c.label in shared]
    return data

