"""Corpus loaders: EmoMatchSpanishDB (both layouts), ELRA-S0329 (pattern or manifest), CSV manifests, class folders.

Every loader returns a Corpus: the usable clips with canonical labels and speakers, and a list of problems (file
and reason) for everything it could not use. Nothing is dropped silently.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable

import soundfile

from ..labels import canonical_label

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif"}

# ELRA-S0329 records neutral in five styles; the paper merges them into one neutral class for training and keeps
# only the normal style for testing.
ELRA_NEUTRAL_STYLES = ("normal", "fast", "slow", "soft", "loud")


@dataclass(frozen=True)
class Clip:
    path: Path
    label: str  # canonical emotion
    speaker: str
    corpus: str
    split: str | None = None  # train | test, when the corpus fixes one
    style: str | None = None  # e.g. the ELRA neutral style


@dataclass(frozen=True)
class LoadProblem:
    path: str
    reason: str


@dataclass
class Corpus:
    name: str
    clips: list[Clip] = field(default_factory=list)
    problems: list[LoadProblem] = field(default_factory=list)

    @property
    def speakers(self) -> list[str]:
        return sorted({c.speaker for c in self.clips})

    @property
    def labels(self) -> list[str]:
        return sorted({c.label for c in self.clips})


def _audio_files(root: Path) -> Iterable[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)


def check_readable(path: Path) -> str | None:
    """Why a file cannot be used (unreadable header, no samples), or None. Cheap: reads the header only."""
    try:
        info = soundfile.info(str(path))
    except Exception as error:  # libsndfile raises several types for broken files
        return f"cannot decode audio ({error})"
    if info.frames <= 0:
        return "the file holds no samples"
    return None


def _add(corpus: Corpus, path: Path, raw_label: str, speaker: str, check_audio: bool, **extra: str | None) -> None:
    label = canonical_label(raw_label)
    if label is None:
        corpus.problems.append(LoadProblem(str(path), f"unknown emotion label {raw_label!r}"))
        return
    if check_audio and (reason := check_readable(path)):
        corpus.problems.append(LoadProblem(str(path), reason))
        return
    corpus.clips.append(Clip(path=path, label=label, speaker=speaker, corpus=corpus.name, **extra))  # type: ignore[arg-type]


_EMOMATCH_FLAT = re.compile(r"^(?P<speaker>[^_]+)_(?P<emotion>[A-Za-zÁÉÍÓÚáéíóú]+)_(?P<take>\d+)$")
_EMOMATCH_NESTED = re.compile(r"^(?P<emotion>[A-Za-zÁÉÍÓÚáéíóú]+)_(?P<take>\d+)$")


def load_emomatch(root: str | Path, name: str = "emomatch", check_audio: bool = True) -> Corpus:
    """EmoMatchSpanishDB: flat `{SS}_{Emocion}_{NN}.WAV` or `<speaker>/<Emocion>_<NN>.<ext>` (any case)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: corpus folder not found")
    corpus = Corpus(name)
    for path in _audio_files(root):
        stem = path.stem
        if match := _EMOMATCH_FLAT.match(stem):
            _add(corpus, path, match["emotion"], match["speaker"], check_audio)
        elif (match := _EMOMATCH_NESTED.match(stem)) and path.parent != root:
            _add(corpus, path, match["emotion"], path.parent.name, check_audio)
        else:
            corpus.problems.append(LoadProblem(str(path), "name matches neither EmoMatch layout"))
    return corpus


def load_pattern(root: str | Path, pattern: str, name: str, label_map: dict[str, str] | None = None,
                 check_audio: bool = True) -> Corpus:
    """Files whose path relative to root matches a regex with named groups `speaker` and `emotion`
    (optional `style`). label_map maps corpus label codes to emotion names before canonicalisation.

    This is how ELRA-S0329 is read: its naming is not public, so the user gives the pattern of their copy.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: corpus folder not found")
    regex = re.compile(pattern)
    missing = {"speaker", "emotion"} - set(regex.groupindex)
    if missing:
        raise ValueError(f"pattern {pattern!r} needs named groups {sorted(missing)}")
    label_map = {k.lower(): v for k, v in (label_map or {}).items()}
    corpus = Corpus(name)
    for path in _audio_files(root):
        relative = path.relative_to(root).as_posix()
        match = regex.search(relative)
        if not match:
            corpus.problems.append(LoadProblem(str(path), f"path does not match pattern {pattern!r}"))
            continue
        raw = match["emotion"]
        raw = label_map.get(raw.lower(), raw)
        style = match.groupdict().get("style")
        _add(corpus, path, raw, match["speaker"], check_audio, style=style.lower() if style else None)
    return corpus


def load_elra(root: str | Path, pattern: str, label_map: dict[str, str] | None = None,
              neutral_styles: Iterable[str] = ELRA_NEUTRAL_STYLES, check_audio: bool = True) -> Corpus:
    """ELRA-S0329 through a user pattern. Neutral styles listed in `neutral_styles` become `neutral`; labels
    naming a style (e.g. `neutral_fast` via label_map to 'neutral' plus a `style` group) keep it in Clip.style."""
    corpus = load_pattern(root, pattern, "elra", label_map, check_audio)
    allowed = {s.lower() for s in neutral_styles}
    kept = []
    for clip in corpus.clips:
        if clip.label == "neutral" and clip.style and clip.style not in allowed:
            corpus.problems.append(LoadProblem(str(clip.path), f"neutral style {clip.style!r} not selected"))
            continue
        kept.append(clip)
    corpus.clips = kept
    return corpus


def only_normal_neutral(clips: Iterable[Clip]) -> list[Clip]:
    """The paper's ELRA test side: neutral clips only in the normal style, every other emotion unchanged."""
    return [c for c in clips if c.label != "neutral" or c.style in (None, "normal")]


def load_manifest(path: str | Path, name: str | None = None, check_audio: bool = True,
                  label_map: dict[str, str | None] | None = None) -> Corpus:
    """CSV with columns path, label, speaker and optionally split (train/test) and style; paths relative to it.

    label_map renames corpus labels before canonicalisation (e.g. {boredom: neutral}); a label mapped to null is
    left out and listed among the problems, like any label outside the seven emotions.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.csv"
    corpus = Corpus(name or path.parent.name)
    label_map = {k.lower(): v for k, v in (label_map or {}).items()}
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        needed = {"path", "label", "speaker"}
        if not reader.fieldnames or not needed <= set(reader.fieldnames):
            raise ValueError(f"{path}: manifest needs columns {sorted(needed)}, has {reader.fieldnames}")
        for row_number, row in enumerate(reader, start=2):
            audio_path = Path(row["path"])
            if not audio_path.is_absolute():
                audio_path = path.parent / audio_path
            if not audio_path.is_file():
                corpus.problems.append(LoadProblem(str(audio_path), f"listed on line {row_number} but missing"))
                continue
            split = (row.get("split") or "").strip().lower() or None
            if split not in (None, "train", "test"):
                corpus.problems.append(LoadProblem(str(audio_path), f"unknown split {split!r} (train or test)"))
                continue
            style = (row.get("style") or "").strip().lower() or None
            raw = row["label"].strip()
            if raw.lower() in label_map and not label_map[raw.lower()]:
                corpus.problems.append(LoadProblem(str(audio_path), f"label {raw!r} left out by label_map"))
                continue
            raw = label_map.get(raw.lower()) or raw
            _add(corpus, audio_path, raw, row["speaker"].strip(), check_audio, split=split, style=style)
    return corpus


def load_class_folders(root: str | Path, name: str | None = None, check_audio: bool = True) -> Corpus:
    """`<label>/<file>` or `<label>/<speaker>/<file>`; without speaker folders every file is its own speaker
    (speaker-grouped protocols then degrade to clip-level splits, which the report states)."""
    root = Path(root)
    corpus = Corpus(name or root.name)
    for path in _audio_files(root):
        parts = path.relative_to(root).parts
        if len(parts) == 2:
            _add(corpus, path, parts[0], f"clip:{path.stem}", check_audio)
        elif len(parts) == 3:
            _add(corpus, path, parts[0], parts[1], check_audio)
        else:
            corpus.problems.append(LoadProblem(str(path), "expected <label>/<file> or <label>/<speaker>/<file>"))
    return corpus


def load_corpus(spec: dict) -> Corpus:
    """A corpus from a config entry: {kind: emomatch|elra|manifest|folders|pattern, path: ..., ...}."""
    spec = dict(spec)
    kind = spec.pop("kind", "emomatch")
    path = spec.pop("path")
    if kind == "emomatch":
        return load_emomatch(path, **spec)
    if kind == "elra":
        return load_elra(path, **spec)
    if kind == "pattern":
        return load_pattern(path, **spec)
    if kind == "manifest":
        return load_manifest(path, **spec)
    if kind == "folders":
        return load_class_folders(path, **spec)
    raise ValueError(f"unknown corpus kind {kind!r}: emomatch, elra, pattern, manifest or folders")


# ---------------------------------------------------------------- several corpora in one run

ROLES = ("train", "pretrain", "test")


@dataclass
class CorpusEntry:
    """One item of a run's `corpora:` list: a loaded corpus, its role in the run and its sampling weight."""

    name: str
    role: str
    weight: float
    corpus: Corpus

    @property
    def labels(self) -> list[str]:
        """The emotions this corpus can express: its clips' loss covers only these."""
        return self.corpus.labels


def load_corpus_entry(spec: dict) -> CorpusEntry:
    """A `corpora:` item: a corpus spec as for load_corpus plus optional `name`, `weight` and `role`.

    Speakers are namespaced by the corpus name (`ased/spk01`), since speaker ids are unique only within a corpus.
    """
    spec = dict(spec)
    role = spec.pop("role", "train")
    if role not in ROLES:
        raise ValueError(f"corpus role must be one of {ROLES}, got {role!r}")
    weight = float(spec.pop("weight", 1.0))
    if weight <= 0:
        raise ValueError(f"corpus weight must be positive, got {weight}")
    name = spec.pop("name", None) or Path(spec["path"]).name
    if "/" in name:
        raise ValueError(f"corpus name {name!r} must not contain '/': it prefixes speaker ids")
    if spec.get("kind", "emomatch") in ("emomatch", "manifest", "folders", "pattern"):
        spec["name"] = name
    corpus = load_corpus(spec)
    corpus.name = name
    corpus.clips = [replace(c, speaker=f"{name}/{c.speaker}", corpus=name) for c in corpus.clips]
    return CorpusEntry(name, role, weight, corpus)
