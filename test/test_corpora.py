"""Corpus loaders and protocols on real files: both EmoMatch layouts, ELRA by pattern, manifests, broken files."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile

from ser_node.train.corpora import (
    load_corpus,
    load_elra,
    load_emomatch,
    load_manifest,
    only_normal_neutral,
)
from ser_node.train.protocols import make_folds, read_folds, write_folds


def copy_as_wav(source: Path, target: Path, rate: int = 48000) -> None:
    """Writes a real clip as the original campaign did: WAV, here upsampled to 48 kHz."""
    from ser_node.audio.decode import load_audio

    target.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(target), load_audio(source, rate), rate, subtype="PCM_16", format="WAV")


def test_emomatch_per_speaker_layout_on_the_real_corpus(corpus_dir):
    corpus = load_emomatch(corpus_dir)
    assert len(corpus.speakers) == 12 and set(corpus.labels) == {
        "anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"}
    assert len(corpus.clips) == 986 and corpus.problems == []
    s02 = [c for c in corpus.clips if c.speaker == "s02" and c.label == "neutral"]
    assert len(s02) == 5  # as the corpus README says


def test_emomatch_flat_layout_with_upper_case_extensions(corpus_dir, tmp_path):
    for speaker, code in (("s00", "01"), ("s01", "02")):
        for emotion in ("Ira", "Alegria", "Tristeza"):
            copy_as_wav(corpus_dir / speaker / f"{emotion}_01.flac", tmp_path / f"{code}_{emotion}_01.WAV")
    (tmp_path / "README.txt").write_text("not audio")
    (tmp_path / "03_Enfurruñado_01.wav").write_bytes(b"RIFF")  # unknown label and broken
    corpus = load_emomatch(tmp_path)
    assert sorted(corpus.speakers) == ["01", "02"] and len(corpus.clips) == 6
    assert {c.label for c in corpus.clips} == {"anger", "joy", "sadness"}
    assert len(corpus.problems) == 1 and "03_Enfurru" in corpus.problems[0].path


def make_elra_like(corpus_dir: Path, root: Path) -> None:
    """An ELRA-S0329-like tree (two speakers, five neutral styles) from real clips."""
    names = {"ang": "Ira", "joy": "Alegria", "sad": "Tristeza"}
    for speaker, source in (("M", "s06"), ("F", "s08")):
        for code, emotion in names.items():
            copy_as_wav(corpus_dir / source / f"{emotion}_03.flac", root / speaker / f"{code}_003.wav", 16000)
        for number, style in enumerate(("normal", "fast", "slow", "soft", "loud"), start=1):
            copy_as_wav(corpus_dir / source / f"Neutro_0{number}.flac", root / speaker / f"neu_{style}_00{number}.wav",
                        16000)


ELRA_PATTERN = r"^(?P<speaker>[MF])/(?P<emotion>[a-z]+)(?:_(?P<style>[a-z]+))?_\d+\.wav$"
ELRA_LABELS = {"ang": "anger", "joy": "joy", "sad": "sadness", "neu": "neutral"}


def test_elra_pattern_merges_neutral_styles(corpus_dir, tmp_path):
    make_elra_like(corpus_dir, tmp_path)
    corpus = load_elra(tmp_path, ELRA_PATTERN, ELRA_LABELS)
    assert corpus.problems == [] and len(corpus.clips) == 16
    neutral = [c for c in corpus.clips if c.label == "neutral"]
    assert len(neutral) == 10 and {c.style for c in neutral} == {"normal", "fast", "slow", "soft", "loud"}
    test_side = only_normal_neutral(corpus.clips)
    assert len([c for c in test_side if c.label == "neutral"]) == 2 and len(test_side) == 8
    only_two = load_elra(tmp_path, ELRA_PATTERN, ELRA_LABELS, neutral_styles=["normal", "fast"])
    assert len([c for c in only_two.clips if c.label == "neutral"]) == 4
    assert sum("not selected" in p.reason for p in only_two.problems) == 6
    with pytest.raises(ValueError, match="named groups"):
        load_elra(tmp_path, r"(?P<emotion>\w+)", ELRA_LABELS)


def test_manifest_and_class_folders(corpus_dir, tmp_path):
    rows = [("s00/Ira_01.flac", "Ira", "s00", "train"), ("s01/Asco_01.flac", "disgust", "s01", "test"),
            ("s01/Missing_99.flac", "joy", "s01", "")]
    manifest = tmp_path / "list.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "speaker", "split"])
        for path, label, speaker, split in rows:
            writer.writerow([str(corpus_dir / path), label, speaker, split])
    corpus = load_manifest(manifest)
    assert [(c.label, c.split) for c in corpus.clips] == [("anger", "train"), ("disgust", "test")]
    assert len(corpus.problems) == 1 and "missing" in corpus.problems[0].reason
    folds = make_folds(corpus.clips, "fixed")
    assert len(folds) == 1 and folds[0].test == [1]

    for label, speaker in (("anger", "s04"), ("joy", "s04"), ("joy", "s06")):
        target = tmp_path / "tree" / label / speaker
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(corpus_dir / speaker / f"{'Ira' if label == 'anger' else 'Alegria'}_02.flac", target)
    tree = load_corpus({"kind": "folders", "path": str(tmp_path / "tree")})
    assert sorted((c.label, c.speaker) for c in tree.clips) == [("anger", "s04"), ("joy", "s04"), ("joy", "s06")]


def test_broken_files_are_reported_and_the_rest_loads(corpus_dir, tmp_path):
    (tmp_path / "s08").mkdir()
    for name in ("Ira_01", "Alegria_01", "Miedo_01"):
        shutil.copy(corpus_dir / "s08" / f"{name}.flac", tmp_path / "s08" / f"{name}.flac")
    (tmp_path / "s08" / "Tristeza_01.flac").write_bytes(b"")  # empty file
    (tmp_path / "s08" / "Asco_01.flac").write_bytes(np.random.default_rng(0).bytes(4000))  # garbage
    soundfile.write(str(tmp_path / "s08" / "Neutro_01.wav"), np.zeros(0, np.float32), 16000)  # no samples
    (tmp_path / "s08" / "Bostezo_01.flac").write_bytes((corpus_dir / "s08" / "Ira_02.flac").read_bytes())
    corpus = load_emomatch(tmp_path)
    assert sorted(c.path.name for c in corpus.clips) == ["Alegria_01.flac", "Ira_01.flac", "Miedo_01.flac"]
    reasons = {Path(p.path).name: p.reason for p in corpus.problems}
    assert set(reasons) == {"Tristeza_01.flac", "Asco_01.flac", "Neutro_01.wav", "Bostezo_01.flac"}
    assert "unknown emotion label" in reasons["Bostezo_01.flac"]
    assert "no samples" in reasons["Neutro_01.wav"]


@pytest.mark.parametrize("protocol", ["speaker_kfold", "loso"])
def test_speaker_grouped_protocols_are_speaker_disjoint(corpus_dir, protocol, tmp_path):
    corpus = load_emomatch(corpus_dir, check_audio=False)
    folds = make_folds(corpus.clips, protocol, folds=4, seed=3)
    assert len(folds) == (4 if protocol == "speaker_kfold" else 12)
    tested = []
    for fold in folds:
        sides = [{corpus.clips[i].speaker for i in part} for part in (fold.train, fold.validation, fold.test)]
        assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])
        assert fold.speaker_disjoint and sides[1]  # a speaker-disjoint validation split exists
        tested += fold.test
    assert sorted(tested) == list(range(len(corpus.clips)))  # every clip tested exactly once
    write_folds(tmp_path / "folds.json", folds, corpus.clips)
    assert [f.test for f in read_folds(tmp_path / "folds.json")] == [f.test for f in folds]
    again = make_folds(corpus.clips, protocol, folds=4, seed=3)
    assert [f.test for f in again] == [f.test for f in folds]  # seeded: re-runnable exactly


def test_cross_corpus_and_stratified_protocols(corpus_dir, tmp_path):
    make_elra_like(corpus_dir, tmp_path / "elra")
    elra = load_elra(tmp_path / "elra", ELRA_PATTERN, ELRA_LABELS)
    emo = load_emomatch(corpus_dir, check_audio=False)
    train = [c for c in emo.clips if c.speaker in ("s00", "s01", "s02")]
    folds = make_folds(train, "cross_corpus", test_clips=elra.clips)
    assert len(folds) == 1 and len(folds[0].test) == len(elra.clips)
    assert folds[0].speaker_disjoint
    stratified = make_folds(train, "stratified_kfold", folds=5)
    assert len(stratified) == 5 and not all(f.speaker_disjoint for f in stratified)  # honest flag
