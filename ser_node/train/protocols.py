"""Evaluation protocols: which clips train and which test, fold by fold, with a validation split for early stopping.

Speaker-grouped protocols never put one speaker on both sides. Seeds are fixed and folds are written to disk so
a result can be re-run exactly.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from sklearn.model_selection import KFold, LeaveOneGroupOut, StratifiedGroupKFold, StratifiedKFold

from .corpora import Clip

PROTOCOLS = ("speaker_kfold", "loso", "stratified_kfold", "fixed", "cross_corpus", "loco")


@dataclass
class Fold:
    name: str
    train: list[int]  # indexes into the protocol's clip list
    validation: list[int]
    test: list[int]
    speaker_disjoint: bool  # train/validation/test share no speaker

    def to_dict(self) -> dict:
        return asdict(self)


def validation_split(clips: Sequence[Clip], train: list[int], seed: int, fraction: float) -> tuple[list[int], list[int], bool]:
    """Carves a validation part from `train`: whole speakers when there are at least 3, else stratified clips."""
    rng = np.random.default_rng(seed)
    speakers = sorted({clips[i].speaker for i in train})
    if fraction <= 0:
        return train, [], True
    if len(speakers) >= 3:
        count = max(1, int(round(len(speakers) * fraction)))
        held = set(rng.permutation(speakers)[:count].tolist())
        return ([i for i in train if clips[i].speaker not in held], [i for i in train if clips[i].speaker in held], True)
    splits = max(2, int(round(1 / fraction)))
    if len(train) < 2 * splits:
        return train, [], False  # too few clips to hold any out: train on all, no early stopping
    labels = [clips[i].label for i in train]
    try:
        inner = StratifiedKFold(n_splits=splits, shuffle=True, random_state=seed)
        keep, held_idx = next(inner.split(np.zeros(len(train)), labels))
    except ValueError:  # a class with fewer clips than splits: plain shuffled split
        inner = KFold(n_splits=splits, shuffle=True, random_state=seed)
        keep, held_idx = next(inner.split(np.zeros(len(train))))
    return [train[i] for i in keep], [train[i] for i in held_idx], False


def _disjoint(clips: Sequence[Clip], *parts: list[int]) -> bool:
    groups = [{clips[i].speaker for i in part} for part in parts if part]
    return all(not (a & b) for n, a in enumerate(groups) for b in groups[n + 1 :])


def make_folds(clips: Sequence[Clip], protocol: str, folds: int = 10, seed: int = 0,
               validation_fraction: float = 0.15, test_clips: Sequence[Clip] = ()) -> list[Fold]:
    """Folds over `clips` (and, for cross_corpus, `test_clips` appended after them)."""
    labels = [c.label for c in clips]
    speakers = [c.speaker for c in clips]
    x = np.zeros(len(clips))
    if protocol == "speaker_kfold":
        n_speakers = len(set(speakers))
        if n_speakers < 2:
            raise ValueError("speaker-grouped folds need at least two speakers")
        splitter = StratifiedGroupKFold(n_splits=min(folds, n_speakers), shuffle=True, random_state=seed)
        pairs = list(splitter.split(x, labels, speakers))
    elif protocol == "loso":
        pairs = list(LeaveOneGroupOut().split(x, labels, speakers))
    elif protocol == "stratified_kfold":
        pairs = list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(x, labels))
    elif protocol == "fixed":
        train = [i for i, c in enumerate(clips) if c.split == "train"]
        test = [i for i, c in enumerate(clips) if c.split == "test"]
        if not train or not test:
            raise ValueError("the fixed protocol needs clips marked split=train and split=test")
        pairs = [(np.array(train), np.array(test))]
    elif protocol == "cross_corpus":
        if not test_clips:
            raise ValueError("cross_corpus needs a test corpus")
        pairs = [(np.arange(len(clips)), np.arange(len(clips), len(clips) + len(test_clips)))]
    else:
        raise ValueError(f"unknown protocol {protocol!r}; known: {PROTOCOLS}")

    everything = list(clips) + list(test_clips)
    result = []
    for number, (train_idx, test_idx) in enumerate(pairs):
        train, validation, _ = validation_split(everything, sorted(int(i) for i in train_idx), seed + number,
                                                 validation_fraction)
        test = sorted(int(i) for i in test_idx)
        name = f"fold{number:02d}"
        if protocol == "loso":
            name = f"speaker_{everything[test[0]].speaker}"
        result.append(Fold(name, train, validation, test, _disjoint(everything, train, validation, test)))
    return result


def leave_one_corpus_out(clips: Sequence[Clip], seed: int = 0, validation_fraction: float = 0.15) -> list[Fold]:
    """One fold per corpus: train on every other corpus, test on this one's clips whose labels training has.

    The paper's cross-corpus experiment, generalised: our in-the-wild check while no natural corpus exists.
    Validation speakers (early stopping) come from the training corpora, never from the held-out one.
    """
    names = sorted({c.corpus for c in clips})
    if len(names) < 2:
        raise ValueError(f"leave-one-corpus-out needs at least two corpora, got {names}")
    folds = []
    for number, held_out in enumerate(names):
        rest = [i for i, c in enumerate(clips) if c.corpus != held_out]
        known = {clips[i].label for i in rest}
        test = [i for i, c in enumerate(clips) if c.corpus == held_out and c.label in known]
        train, validation, _ = validation_split(clips, rest, seed + number, validation_fraction)
        folds.append(Fold(f"corpus_{held_out}", train, validation, test, _disjoint(clips, train, validation, test)))
    return folds


def write_folds(path: str | Path, folds: Sequence[Fold], clips: Sequence[Clip]) -> None:
    """Folds as JSON with file paths, so the exact split can be inspected and re-run."""
    records = [
        {
            **fold.to_dict(),
            "train_files": [str(clips[i].path) for i in fold.train],
            "validation_files": [str(clips[i].path) for i in fold.validation],
            "test_files": [str(clips[i].path) for i in fold.test],
        }
        for fold in folds
    ]
    Path(path).write_text(json.dumps(records, indent=1))


def read_folds(path: str | Path) -> list[Fold]:
    return [Fold(r["name"], r["train"], r["validation"], r["test"], r["speaker_disjoint"])
            for r in json.loads(Path(path).read_text())]
