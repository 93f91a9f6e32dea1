"""The trainer end to end on real speech: folds -> DS-SVC / DS-FC / DS-AM -> reports -> export -> Classifier."""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="training needs the train extra (torch)")

from ser_node.inference.classifier import Classifier  # noqa: E402
from ser_node.train.experiment import TrainConfig, run_experiment  # noqa: E402
from ser_node.train.export import export_run  # noqa: E402

SPEAKERS = ["s00", "s01", "s03", "s04", "s05", "s06"]


def tiny_config(corpus_dir: Path, variant: str, **extra) -> TrainConfig:
    values = dict(corpus={"kind": "emomatch", "path": str(corpus_dir)}, speakers=SPEAKERS, variant=variant,
                  protocol="speaker_kfold", folds=3, max_folds=2, image_size=64, width=0.125, epochs=2,
                  batch_size=16, svc_c_grid=[0.01, 1.0], seed=1)
    values.update(extra)
    return TrainConfig(**values)


def check_report(run_dir: Path, folds: int) -> dict:
    report = json.loads((run_dir / "report.json").read_text())
    for name in ("summary.md", "confusion.png", "confusion.csv", "per_class.csv", "predictions.csv", "folds.json",
                 "config.yaml"):
        assert (run_dir / name).stat().st_size > 0, name
    assert report["speaker_independent"] is True and len(report["folds"]) == folds
    with (run_dir / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == sum(f["n_test"] for f in report["folds"]) == report["pooled"]["n"]
    accuracy = np.mean([r["label"] == r["predicted"] for r in rows])
    assert abs(accuracy - report["pooled"]["accuracy"]) < 1e-9
    assert np.sum(report["pooled"]["confusion"]) == len(rows)
    recalls = [v["recall"] for v in report["pooled"]["per_class"].values() if v["support"] > 0]
    assert abs(np.mean(recalls) - report["pooled"]["ua"]) < 1e-9
    fold_ua = [f["metrics"]["ua"] for f in report["folds"]]
    assert abs(np.mean(fold_ua) - report["summary"]["ua"]["mean"]) < 1e-9
    # Test speakers of the folds never trained the fold's model.
    for fold in json.loads((run_dir / "folds.json").read_text()):
        train = {Path(p).parent.name for p in fold["train_files"] + fold["validation_files"]}
        assert not train & {Path(p).parent.name for p in fold["test_files"]}
    return report


@pytest.mark.parametrize("variant", ["ds_svc", "ds_fc", "ds_am"])
def test_whole_path_for_each_variant(corpus_dir, tmp_path, variant):
    run_dir = tmp_path / variant
    result = run_experiment(tiny_config(corpus_dir, variant), run_dir)
    report = check_report(run_dir, folds=2)
    assert result.summary["ua"]["mean"] == pytest.approx(np.mean([f["metrics"]["ua"] for f in report["folds"]]))
    if variant == "ds_svc":
        assert all(f["svc_c"] in (0.01, 1.0) for f in report["folds"])
        assert (run_dir / "svc_features" / "pool5.npz").exists()  # cached backbone features
        with pytest.raises(ValueError, match="DS-SVC"):
            export_run(run_dir, tmp_path / "svc.onnx", fold="fold00")
    else:
        for fold in ("fold00", "fold01"):
            assert (run_dir / fold / "metrics.csv").read_text().count("\n") >= 2
        paths = export_run(run_dir, tmp_path / f"{variant}.onnx", int8=False, fold="fold00")
        classifier = Classifier(paths["fp32"])
        assert classifier.metadata.variant == variant
        assert classifier.metadata.features.image_height == 64
        scores = classifier.predict([np.zeros(8000, np.float32), np.ones(4000, np.float32) * 0.1])
        assert scores.shape == (2, 7)


def test_corpus_with_broken_files_still_trains(corpus_dir, tmp_path):
    root = tmp_path / "corpus"
    for speaker in ("s04", "s05", "s06"):
        shutil.copytree(corpus_dir / speaker, root / speaker)
    (root / "s05" / "Ira_01.flac").write_bytes(b"fLaC" + bytes(100))  # corrupt after a valid magic
    (root / "s06" / "Alegria_02.flac").write_bytes(b"")
    (root / "s06" / "Risa_01.flac").write_bytes((corpus_dir / "s06" / "Ira_01.flac").read_bytes())
    config = tiny_config(root, "ds_svc", speakers=[], folds=3, max_folds=1)
    result = run_experiment(config, tmp_path / "run")
    reported = {Path(p.path).name for p in result.problems}
    assert {"Ira_01.flac", "Alegria_02.flac", "Risa_01.flac"} <= reported
    summary = (tmp_path / "run" / "summary.md").read_text()
    assert "Risa_01.flac" in summary and "unknown emotion label" in summary


def test_resume_after_an_interrupted_run(corpus_dir, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "ser_node.cli.train", "--out", str(out),
               "--set", f"corpus.path={corpus_dir}", "--set", "speakers=[s04, s05, s06, s08, s09, s10]",
               "--set", "variant=ds_am", "--set", "protocol=speaker_kfold", "--set", "folds=2",
               "--set", "image_size=64", "--set", "width=0.125", "--set", "epochs=4", "--set", "threads=1"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                       os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    checkpoint = out / "fold00" / "checkpoint.pt"
    deadline = time.monotonic() + 240
    while not checkpoint.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    assert checkpoint.exists(), process.stderr.read().decode()[-2000:] if process.poll() is not None else "timeout"
    process.send_signal(signal.SIGKILL)  # a crash, not a polite stop
    process.wait()
    done_before = (out / "fold00" / "metrics.csv").read_text().strip().splitlines()
    assert not (out / "report.json").exists()

    finished = subprocess.run(command + ["--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert "report:" in finished.stdout and "| ua |" in finished.stdout
    epochs = [int(line.split(",")[0]) for line in (out / "fold00" / "metrics.csv").read_text().splitlines()[1:]]
    assert epochs == sorted(set(epochs)) and epochs[: len(done_before) - 1] == list(range(1, len(done_before)))
    assert max(epochs) <= 4
    check_report(out, folds=2)

    refused = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "--resume" in refused.stderr  # finished work is never overwritten


def test_cli_help_and_config_resolution(tmp_path):
    from ser_node.train.config import build_config

    help_text = subprocess.run([sys.executable, "-m", "ser_node.cli.train", "--help"], capture_output=True,
                               text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert help_text.returncode == 0 and "--resume" in help_text.stdout
    config_file = tmp_path / "c.yaml"
    config_file.write_text("variant: ds_fc\nepochs: 3\ncorpus: {kind: manifest, path: list.csv}\n")
    config = build_config(config_file, ["epochs=5", "svc_c_grid=[1, 2]"])
    assert config.variant == "ds_fc" and config.epochs == 5 and config.svc_c_grid == [1, 2]
    assert config.corpus == {"kind": "manifest", "path": "list.csv"}
    cross = build_config(None, ["protocol=cross_corpus", "test_corpus.kind=manifest", "test_corpus.path=b.csv"])
    assert cross.test_corpus == {"kind": "manifest", "path": "b.csv"}
    with pytest.raises(ValueError, match="unknown training settings"):
        build_config(None, ["epoch=5"])
    with pytest.raises(ValueError, match="variant"):
        build_config(None, ["variant=ds_xx"])


def test_cross_corpus_run_with_normal_neutral_test_side(corpus_dir, tmp_path):
    from test_corpora import ELRA_LABELS, ELRA_PATTERN, make_elra_like

    make_elra_like(corpus_dir, tmp_path / "elra")
    config = tiny_config(corpus_dir, "ds_svc", speakers=["s04", "s05", "s09"], protocol="cross_corpus",
                         max_folds=0, elra_test_normal_neutral=True,
                         test_corpus={"kind": "elra", "path": str(tmp_path / "elra"), "pattern": ELRA_PATTERN,
                                      "label_map": ELRA_LABELS})
    result = run_experiment(config, tmp_path / "run")
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert len(report["folds"]) == 1 and report["speaker_independent"]
    # Only the labels both corpora share, and only normal-style neutral on the ELRA test side (2 of 10).
    assert report["folds"][0]["n_test"] == 8 and result.pooled["n"] == 8
    assert {c for c, v in result.pooled["per_class"].items() if v["support"]} == {"anger", "joy", "sadness", "neutral"}


def test_one_run_split_over_processes_by_only_folds(corpus_dir, tmp_path):
    """Two passes with disjoint only_folds train each fold once; a last resume without it reports all folds."""
    run_dir = tmp_path / "split"
    base = dict(epochs=1, max_folds=0, folds=3, speakers=SPEAKERS[:3], protocol="loso", threads=1)
    with pytest.raises(ValueError, match="does not have"):
        run_experiment(tiny_config(corpus_dir, "ds_fc", **base, only_folds=["speaker_zz"]), tmp_path / "bad")
    run_experiment(tiny_config(corpus_dir, "ds_fc", **base, only_folds=["speaker_s00"]), run_dir, resume=True)
    assert sorted(p.name for p in run_dir.glob("speaker_*")) == ["speaker_s00"]
    first = (run_dir / "speaker_s00" / "result.json").stat().st_mtime_ns
    run_experiment(tiny_config(corpus_dir, "ds_fc", **base, only_folds=["speaker_s01", "speaker_s03"]), run_dir,
                   resume=True)
    run_experiment(tiny_config(corpus_dir, "ds_fc", **base), run_dir, resume=True)
    assert (run_dir / "speaker_s00" / "result.json").stat().st_mtime_ns == first  # never trained twice
    report = json.loads((run_dir / "report.json").read_text())
    assert [f["fold"] for f in report["folds"]] == ["speaker_s00", "speaker_s01", "speaker_s03"]


def test_fast_ua_equals_the_full_metrics():
    """The numpy UA that calibration loops use is compute_metrics' UA: recall averaged over the classes present,
    however many are present and whatever is predicted."""
    from ser_node.labels import EMOTIONS
    from ser_node.train.reports import compute_metrics, unweighted_average_recall

    rng = np.random.default_rng(0)
    for n in (1, 7, 300):
        for present in (1, 3, 7):
            truth = list(rng.choice(EMOTIONS[:present], n))
            guess = list(rng.choice(EMOTIONS, n))
            assert unweighted_average_recall(truth, guess) == pytest.approx(compute_metrics(truth, guess, EMOTIONS)["ua"])
    assert unweighted_average_recall(["joy", "joy", "fear"], ["joy", "anger", "anger"]) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        unweighted_average_recall([], [])


def test_write_json_makes_its_folder(tmp_path):
    """A benchmark's results reach the disk even when --out names a folder that does not exist yet."""
    from ser_node.train.reports import write_json

    path = tmp_path / "new" / "deeper" / "result.json"
    write_json(path, {"ua": 0.5})
    assert json.loads(path.read_text()) == {"ua": 0.5} and not list(path.parent.glob("*.tmp*"))


def test_atomic_path_leaves_the_previous_file_when_a_write_fails(tmp_path):
    """A write that dies half way (here an exception after part of the data) keeps the previous file whole and
    leaves no temporary behind; numpy's suffix rule does not rename the temporary away from the target."""
    from ser_node.files import atomic_path, save_npz_atomic

    path = tmp_path / "cache.npz"
    save_npz_atomic({"x": np.arange(3)}, path)
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_bytes(b"PK half an archive")
            raise RuntimeError("killed mid-write")
    assert np.load(path)["x"].tolist() == [0, 1, 2]
    save_npz_atomic({"x": np.arange(5)}, path)
    assert np.load(path)["x"].tolist() == [0, 1, 2, 3, 4]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache.npz"]
