"""Training of DS-SVC, DS-FC and DS-AM over a protocol's folds, with resumable checkpoints and reports.

A run folder holds: config.yaml (the exact settings), folds.json, one folder per fold (metrics.csv per epoch,
checkpoint.pt, result.json once the fold is done) and the report (report.json, summary.md, confusion matrix PNG
and CSV, per-class and per-speaker tables). Re-running the same command with --resume skips finished folds and
continues an interrupted fold from its last epoch checkpoint.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import yaml
from torch import nn
from tqdm import tqdm

from ..files import sha256_of
from ..inference.features import FeatureExtractor
from ..labels import EMOTIONS
from .config import TrainConfig  # also the settings' public home for `run_experiment(TrainConfig(...))`
from .corpora import Clip, LoadProblem, only_normal_neutral
from .data import AudioBank, CorpusMix, ImageCache, ImageMaker, RunData, prepare_clips
from .loop import predict_network, predict_svc, train_network, train_svc
from .networks import save_backbone, save_checkpoint
from .protocols import Fold, leave_one_corpus_out, make_folds, validation_split, write_folds
from .reports import (
    compute_metrics,
    format_table,
    per_speaker_accuracy,
    plot_confusion,
    summarise_folds,
    write_confusion_csv,
    write_json,
    write_per_class_csv,
)

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- experiments

@dataclass
class RunResult:
    run_dir: Path
    summary: dict
    pooled: dict
    problems: list[LoadProblem]


def backbone_provenance(path: str | Path) -> dict[str, Any]:
    """Hash of a backbone weights file and, for a stage=pretrain backbone, what it was trained on (backbone.json)."""
    path = Path(path)
    info: dict[str, Any] = {"path": str(path), "sha256": sha256_of(path)}
    sidecar = path.with_suffix(".json")
    if sidecar.is_file():
        info["provenance"] = json.loads(sidecar.read_text())
    else:
        info["provenance"] = None  # e.g. ImageNet weights: trained on no speech at all
    return info


def check_unseen_by_backbone(backbone: dict[str, Any], folds: Sequence[Fold], clips: Sequence[Clip]) -> None:
    """Raises if any fold's test speaker or test file helped train the pretrained backbone."""
    provenance = backbone.get("provenance") or {}
    seen_files, seen_speakers = set(provenance.get("files", [])), set(provenance.get("speakers", []))
    for fold in folds:
        test = [clips[i] for i in fold.test]
        files = {str(Path(c.path).resolve()) for c in test} & seen_files
        speakers = {c.speaker for c in test} & seen_speakers
        if files or speakers:
            raise ValueError(f"fold {fold.name}: the backbone {backbone['path']} was pretrained on test "
                             f"{'speakers ' + str(sorted(speakers)[:5]) if speakers else ''}"
                             f"{' files ' + str(sorted(files)[:3]) if files else ''}: its scores would not be "
                             "speaker-independent. Pretrain on other corpora only.")


def make_run_folds(config: TrainConfig, data: RunData) -> tuple[list[Fold], list[Clip]]:
    """The protocol's folds over the run's clips, and the clip list their indexes point into."""
    if config.stage == "pretrain":
        clips = data.pretrain
        train, validation, _ = validation_split(clips, list(range(len(clips))), config.seed,
                                                config.validation_fraction)
        return [Fold("pretrain", train, validation, test=[], speaker_disjoint=True)], clips
    if config.protocol == "loco":
        clips = data.target + data.extra
        return leave_one_corpus_out(clips, config.seed, config.validation_fraction), clips
    if config.protocol == "all":
        # Validation speakers (who pick the epoch) come from the target corpus only.
        train, validation, _ = validation_split(data.target, list(range(len(data.target))), config.seed,
                                                config.validation_fraction)
        folds = [Fold("all", train, validation, test=[], speaker_disjoint=True)]
        clips = list(data.target)
    else:
        folds = make_folds(data.target, config.protocol, config.folds, config.seed, config.validation_fraction,
                           data.test)
        clips = data.target + data.test
    if data.extra:  # other train corpora join every fold's training part
        extra = list(range(len(clips), len(clips) + len(data.extra)))
        clips = clips + data.extra
        for fold in folds:
            fold.train = fold.train + extra
    return folds, clips


def run_experiment(config: TrainConfig, run_dir: str | Path, resume: bool = False,
                   progress: Callable[[dict], None] | None = None) -> RunResult:
    """Trains and evaluates every fold of the protocol, then writes the report. Finished folds are kept.

    With stage=pretrain it trains one network on the pretrain corpora and writes its backbone (backbone.pt, in
    torchvision naming) with backbone.json: hash, corpora, speakers and files it saw.
    """
    config.validate()
    run_dir = Path(run_dir)
    if run_dir.exists() and any(run_dir.iterdir()) and not resume:
        raise FileExistsError(f"{run_dir} is not empty: pass --resume to continue it, or choose another folder")
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "config.yaml"
    if resume and config_path.exists():
        saved = yaml.safe_load(config_path.read_text())
        runtime_only = {"threads", "cache_dir", "only_folds"}  # how fast / which part now, not what
        if {k: v for k, v in saved.items() if k not in runtime_only} != {
                k: v for k, v in config.to_mapping().items() if k not in runtime_only}:
            raise ValueError(f"{config_path} differs from the requested settings: resume needs the same config")
    config_path.write_text(yaml.safe_dump(config.to_mapping(), sort_keys=True))
    if config.threads:
        torch.set_num_threads(config.threads)

    data = prepare_clips(config)
    bank = AudioBank()
    data.target, data.extra = bank.load(data.target), bank.load(data.extra, "decoding other train corpora")
    data.test = bank.load(data.test, "decoding test corpus")
    data.pretrain = bank.load(data.pretrain, "decoding pretraining corpora")
    data.problems += bank.problems
    folds, everything = make_run_folds(config, data)
    if config.max_folds:
        folds = folds[: config.max_folds]
    write_folds(run_dir / "folds.json", folds, everything)
    if config.only_folds:
        unknown = set(config.only_folds) - {f.name for f in folds}
        if unknown:
            raise ValueError(f"only_folds names folds this protocol does not have: {sorted(unknown)}")
        folds = [f for f in folds if f.name in config.only_folds]
    backbone = backbone_provenance(config.weights_path) if config.weights_path else None
    if backbone:
        check_unseen_by_backbone(backbone, folds, everything)
    mix = CorpusMix.of(everything, data.weights)

    extractor = FeatureExtractor(config.feature_config())
    disk = ImageCache(Path(config.cache_dir).expanduser(), config.feature_config())
    fold_results = []
    for number, fold in enumerate(tqdm(folds, desc="folds", unit="fold", disable=None)):
        fold_dir = run_dir / fold.name
        fold_dir.mkdir(exist_ok=True)
        result_path = fold_dir / "result.json"
        if result_path.exists():
            fold_results.append(json.loads(result_path.read_text()))
            continue
        train = [everything[i] for i in fold.train]
        images = ImageMaker(extractor, bank, config, config.seed + number, disk, babble_clips=train)
        validation = [everything[i] for i in fold.validation]
        test = [everything[i] for i in fold.test]
        if config.elra_test_normal_neutral:
            test = only_normal_neutral(test)
        began = time.perf_counter()
        extra: dict[str, Any] = {}
        if config.variant == "ds_svc":
            backbone_model, pipeline, c_value = train_svc(config, images, train, fold_dir)
            extra["svc_c"] = c_value
            probabilities = predict_svc(backbone_model, pipeline, images, test, config.svc_layer,
                                        run_dir / "svc_features") if test else None
        else:
            model = train_network(config, images, train, validation, fold_dir, progress, mix)
            save_checkpoint(fold_dir / "model.pt", model)
            # LOCO scores a held-out corpus on the labels it has (an ASED clip is never called surprise).
            mask = mix.mask(test) if config.protocol == "loco" else None
            probabilities = predict_network(model, images, test, mask=mask) if test else None
            if config.stage == "pretrain":
                extra["backbone"] = _write_backbone(run_dir, model, config, train, validation, data)
        result = {"fold": fold.name, "train_seconds": time.perf_counter() - began, "n_train": len(train),
                  "n_validation": len(validation), "n_test": len(test), "speaker_disjoint": fold.speaker_disjoint,
                  **extra}
        if probabilities is not None:
            predicted = [EMOTIONS[i] for i in probabilities.argmax(1)]
            truth = [c.label for c in test]
            result["metrics"] = compute_metrics(truth, predicted, EMOTIONS)
            result["per_speaker"] = per_speaker_accuracy([c.speaker for c in test], truth, predicted)
            result["predictions"] = [{"path": str(c.path), "speaker": c.speaker, "label": c.label, "predicted": p,
                                      "scores": [round(float(v), 5) for v in row]}
                                     for c, p, row in zip(test, predicted, probabilities)]
        write_json(result_path, result)
        fold_results.append(result)
    return _write_report(config, run_dir, fold_results, data.problems,
                         {"corpora": data.entries, "backbone": _backbone_summary(backbone)})


def _write_backbone(run_dir: Path, model: nn.Module, config: TrainConfig, train: Sequence[Clip],
                    validation: Sequence[Clip], data: RunData) -> dict[str, Any]:
    """backbone.pt plus backbone.json: everything a fine-tuning run must know to stay speaker-independent."""
    save_backbone(run_dir / "backbone.pt", model)
    seen = list(train) + list(validation)  # validation speakers steered early stopping: they count as seen
    provenance = {
        "kind": "ser_train stage=pretrain",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "sha256": sha256_of(run_dir / "backbone.pt"),
        "variant": config.variant, "width": config.width, "batch_norm": config.batch_norm,
        "image_size": config.image_size, "epochs": config.epochs, "teacher_weight": config.teacher_weight,
        "teacher_sets": config.teacher_sets if config.teacher_weight > 0 else [],
        "corpora": [e for e in data.entries if e["role"] == "pretrain"],
        "speakers": sorted({c.speaker for c in seen}),
        "files": sorted(str(Path(c.path).resolve()) for c in seen),
    }
    write_json(run_dir / "backbone.json", provenance)
    return {k: v for k, v in provenance.items() if k not in ("speakers", "files")}


def _backbone_summary(backbone: dict[str, Any] | None) -> dict[str, Any] | None:
    """What a report and an exported model say about the starting weights (not the long speaker/file lists)."""
    if backbone is None:
        return None
    provenance = backbone.get("provenance") or {}
    return {"path": backbone["path"], "sha256": backbone["sha256"],
            "pretrained_on": [f"{e['name']} ({e['clips']} clips, {e['speakers']} speakers)"
                              for e in provenance.get("corpora", [])] or "unknown (no backbone.json beside it)",
            "teacher_sets": provenance.get("teacher_sets", []),
            "speaker_check": "no test speaker or file of any fold is among the backbone's training data"}


def _write_report(config: TrainConfig, run_dir: Path, fold_results: list[dict],
                  problems: list[LoadProblem], extra: dict[str, Any]) -> RunResult:
    scored = [r for r in fold_results if "metrics" in r]
    report: dict[str, Any] = {
        "variant": config.variant,
        "stage": config.stage,
        "protocol": "pretrain" if config.stage == "pretrain" else config.protocol,
        "corpus": None if config.corpora else config.corpus,
        "test_corpus": config.test_corpus,
        **extra,
        "speaker_independent": all(r["speaker_disjoint"] for r in fold_results),
        "folds": [{k: v for k, v in r.items() if k != "predictions"} for r in fold_results],
        "problems": [dataclasses.asdict(p) for p in problems],
        "train_seconds": sum(r["train_seconds"] for r in fold_results),
    }
    pooled: dict = {}
    summary: dict = {}
    if scored:
        summary = summarise_folds([r["metrics"] for r in scored])
        predictions = [p for r in scored for p in r["predictions"]]
        pooled = compute_metrics([p["label"] for p in predictions], [p["predicted"] for p in predictions], EMOTIONS)
        report["summary"] = summary
        report["pooled"] = pooled
        report["per_speaker"] = per_speaker_accuracy([p["speaker"] for p in predictions],
                                                     [p["label"] for p in predictions],
                                                     [p["predicted"] for p in predictions])
        title = f"{config.variant} · {config.protocol} · pooled over {len(scored)} fold(s)"
        plot_confusion(pooled["confusion"], EMOTIONS, run_dir / "confusion.png", title)
        write_confusion_csv(pooled["confusion"], EMOTIONS, run_dir / "confusion.csv")
        write_per_class_csv(pooled, run_dir / "per_class.csv")
        with (run_dir / "predictions.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "speaker", "label", "predicted", *EMOTIONS])
            for p in predictions:
                writer.writerow([p["path"], p["speaker"], p["label"], p["predicted"], *p["scores"]])
    write_json(run_dir / "report.json", report)
    (run_dir / "summary.md").write_text(summary_markdown(report))
    return RunResult(run_dir, summary, pooled, problems)


def summary_markdown(report: dict) -> str:
    lines = [f"# {report['variant']} — protocol {report['protocol']}", ""]
    lines.append(f"Speaker-independent: {'yes' if report['speaker_independent'] else 'NO'}; "
                 f"training time {report['train_seconds']:.0f} s.")
    if "summary" in report:
        s = report["summary"]
        lines += ["", format_table([{
            "metric": k, "mean": f"{v['mean']:.3f}", "std": f"{v['std']:.3f}", "folds": len(v["folds"])}
            for k, v in s.items()], ["metric", "mean", "std", "folds"])]
        lines += ["", "Per class (pooled):", "", format_table([
            {"class": c, "precision": f"{v['precision']:.3f}", "recall": f"{v['recall']:.3f}", "f1": f"{v['f1']:.3f}",
             "support": v["support"]} for c, v in report["pooled"]["per_class"].items()],
            ["class", "precision", "recall", "f1", "support"])]
    if report["problems"]:
        lines += ["", f"{len(report['problems'])} file(s) not used:"]
        lines += [f"- {p['path']}: {p['reason']}" for p in report["problems"][:50]]
    return "\n".join(lines) + "\n"

