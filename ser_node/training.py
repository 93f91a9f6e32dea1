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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import yaml
from torch import nn
from tqdm import tqdm

from .audio import AudioError, load_audio, resample
from .corpora import Clip, Corpus, LoadProblem, load_corpus, only_normal_neutral
from .features import FeatureConfig, FeatureExtractor
from .labels import EMOTIONS
from .models import ModelConfig, build_model, load_imagenet_backbone, save_checkpoint
from .protocols import Fold, make_folds, validation_split, write_folds
from .settings import check_known_fields
from .reports import (compute_metrics, format_table, per_speaker_accuracy, plot_confusion, summarise_folds,
                      write_confusion_csv, write_json, write_per_class_csv)

log = logging.getLogger(__name__)
VARIANTS = ("ds_svc", "ds_fc", "ds_am")


@dataclass
class TrainConfig:
    """Every setting of a training run. Saved as config.yaml in the run folder."""

    corpus: dict = field(default_factory=lambda: {"kind": "emomatch", "path": "../shared/data/uem-es"})
    test_corpus: dict | None = None  # cross-corpus experiments
    variant: str = "ds_am"
    protocol: str = "speaker_kfold"  # speaker_kfold | loso | stratified_kfold | fixed | cross_corpus | all
    folds: int = 10
    max_folds: int = 0  # run only the first N folds (0 = all), for quick checks
    seed: int = 0
    speakers: list[str] = field(default_factory=list)  # restrict the corpus to these speakers
    elra_test_normal_neutral: bool = False  # ELRA: keep only normal-style neutral on the test side
    # features and network
    image_size: int = 224
    n_mels: int = 128
    width: float = 1.0
    hidden: int = 256
    dropout: float = 0.5
    vgg_classifier: bool = False
    batch_norm: bool = False  # VGG16-BN backbone (from-scratch training converges far more easily)
    imagenet_weights: str | None = None  # path to torchvision vgg16-397923af.pth
    # optimisation (DS-FC, DS-AM)
    epochs: int = 30
    batch_size: int = 16
    lr: float = 1e-3  # new heads
    backbone_lr: float = 1e-4  # pretrained (or from-scratch) convolutions: lower, as the paper fine-tunes
    weight_decay: float = 1e-2
    patience: int = 8  # early stopping on validation UA
    validation_fraction: float = 0.15
    balance: str = "loss"  # loss (class-weighted cross-entropy) | sampler | none
    spec_augment: bool = True  # time and frequency masks on the image
    speed_perturb: float = 0.1  # random speed factor in [1-x, 1+x] (0 = off)
    threads: int = 0  # torch CPU threads (0 = all cores)
    # DS-SVC
    svc_layer: str = "pool5"  # pool4 | pool5 (global-average-pooled) | pool45 (both)
    svc_c_grid: list[float] = field(default_factory=lambda: [0.001, 0.01, 0.1, 1.0, 10.0])

    def feature_config(self) -> FeatureConfig:
        return FeatureConfig(image_height=self.image_size, image_width=self.image_size, n_mels=self.n_mels)

    def model_config(self) -> ModelConfig:
        variant = "ds_fc" if self.variant == "ds_svc" else self.variant
        return ModelConfig(variant=variant, width=self.width, image_height=self.image_size,
                           image_width=self.image_size, hidden=self.hidden, dropout=self.dropout,
                           vgg_classifier=self.vgg_classifier, batch_norm=self.batch_norm)

    def validate(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.balance not in ("loss", "sampler", "none"):
            raise ValueError(f"balance must be loss, sampler or none, got {self.balance!r}")

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> "TrainConfig":
        check_known_fields(cls, values, "training settings")
        config = cls(**values)
        config.validate()
        return config

    def to_mapping(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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


class ImageMaker:
    """Feature images for training: cached when there is no augmentation, fresh per epoch when there is."""

    def __init__(self, extractor: FeatureExtractor, bank: AudioBank, config: TrainConfig, seed: int) -> None:
        self.extractor, self.bank, self.config = extractor, bank, config
        self.rng = np.random.default_rng(seed)
        self._cache: dict[Path, np.ndarray] = {}
        lut_zero = extractor._normalised_lut[0]  # the colour of the quietest bin
        self._fill = lut_zero.astype(np.float32)

    def clean(self, clip: Clip) -> np.ndarray:
        if clip.path not in self._cache:
            self._cache[clip.path] = self.extractor(self.bank[clip])
        return self._cache[clip.path]

    def augmented(self, clip: Clip) -> np.ndarray:
        cfg = self.config
        if cfg.speed_perturb > 0:
            factor = float(self.rng.uniform(1 - cfg.speed_perturb, 1 + cfg.speed_perturb))
            image = self.extractor(speed_perturb(self.bank[clip], factor))
        else:
            image = self.clean(clip)
        if cfg.spec_augment:
            image = spec_augment(image, self.rng, self._fill)
        return image

    def batch(self, clips: Sequence[Clip], augment: bool) -> np.ndarray:
        return np.stack([self.augmented(c) if augment else self.clean(c) for c in clips])


# ---------------------------------------------------------------- networks (DS-FC, DS-AM)

def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _param_groups(model: nn.Module, config: TrainConfig) -> list[dict]:
    backbone = [p for n, p in model.named_parameters() if n.startswith("backbone.")]
    heads = [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
    return [{"params": backbone, "lr": config.backbone_lr}, {"params": heads, "lr": config.lr}]


def predict_network(model: nn.Module, images: ImageMaker, clips: Sequence[Clip], batch_size: int = 32) -> np.ndarray:
    device = next(model.parameters()).device
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(clips), batch_size):
            batch = torch.from_numpy(images.batch(clips[start : start + batch_size], augment=False)).to(device)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits = model(batch)
            out.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, len(EMOTIONS)), np.float32)


def _ua(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float(np.mean([np.mean(y_pred[y_true == c] == c) for c in np.unique(y_true)]))


def train_network(config: TrainConfig, images: ImageMaker, train: Sequence[Clip], validation: Sequence[Clip],
                  fold_dir: Path, progress: Callable[[dict], None] | None = None) -> nn.Module:
    """Fine-tunes DS-FC or DS-AM with AdamW and cosine LR; early stopping on validation UA; resumable."""
    device = _device()
    torch.manual_seed(config.seed)
    model = build_model(config.model_config())
    if config.imagenet_weights:
        load_imagenet_backbone(model, config.imagenet_weights)
    model.to(device)
    optimizer = torch.optim.AdamW(_param_groups(model, config), weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, config.epochs))
    class_index = {c: i for i, c in enumerate(EMOTIONS)}
    y_train = np.array([class_index[c.label] for c in train])
    counts = np.bincount(y_train, minlength=len(EMOTIONS)).astype(float)
    weights = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / max(1, (counts > 0).sum()), 0.0)
    loss_fn = nn.CrossEntropyLoss(weight=torch.tensor(weights, dtype=torch.float32, device=device)
                                  if config.balance == "loss" else None)

    checkpoint_path = fold_dir / "checkpoint.pt"
    metrics_path = fold_dir / "metrics.csv"
    start_epoch, best_ua, best_state, stale = 0, -1.0, None, 0
    if checkpoint_path.exists():
        state = torch.load(checkpoint_path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, best_ua, stale = int(state["epoch"]), float(state["best_ua"]), int(state["stale"])
        best_state = state["best_model"]
        log.info("resuming %s at epoch %d", fold_dir.name, start_epoch + 1)
    rng = np.random.default_rng(config.seed + start_epoch)

    for epoch in range(start_epoch, config.epochs):
        if stale >= config.patience:
            break
        began = time.perf_counter()
        model.train()
        if config.balance == "sampler":
            p = 1.0 / counts[y_train]
            order = rng.choice(len(train), size=len(train), p=p / p.sum())
        else:
            order = rng.permutation(len(train))
        total_loss, seen = 0.0, 0
        bar = tqdm(range(0, len(order), config.batch_size), desc=f"{fold_dir.name} epoch {epoch + 1}/{config.epochs}",
                   unit="batch", leave=False, disable=None)
        for start in bar:
            chosen = order[start : start + config.batch_size]
            if len(chosen) < 2 and len(order) > 2:
                continue  # a batch of one breaks BatchNorm statistics
            x = torch.from_numpy(images.batch([train[i] for i in chosen], augment=True)).to(device)
            y = torch.from_numpy(y_train[chosen]).to(device)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = loss_fn(model(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += float(loss.detach()) * len(chosen)
            seen += len(chosen)
            bar.set_postfix(loss=f"{total_loss / max(seen, 1):.3f}")
        scheduler.step()
        row = {"epoch": epoch + 1, "train_loss": total_loss / max(seen, 1), "seconds": 0.0}
        if validation:
            probabilities = predict_network(model, images, validation)
            y_val = [class_index[c.label] for c in validation]
            row["val_ua"] = _ua(y_val, probabilities.argmax(1))
            row["val_accuracy"] = float(np.mean(np.array(y_val) == probabilities.argmax(1)))
        else:
            row["val_ua"] = -row["train_loss"]  # no validation: keep the last epoch
        row["seconds"] = time.perf_counter() - began
        if row["val_ua"] > best_ua:
            best_ua, stale = row["val_ua"], 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
        _append_csv(metrics_path, row)
        tmp = checkpoint_path.with_name("checkpoint.pt.tmp")
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "epoch": epoch + 1, "best_ua": best_ua, "stale": stale,
                    "best_model": best_state}, tmp)
        tmp.replace(checkpoint_path)
        if progress:
            progress({"fold": fold_dir.name, **row})
    if best_state is not None:
        model.load_state_dict(best_state)
    return model.cpu().eval()


def _append_csv(path: Path, row: dict) -> None:
    new = not path.exists()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow({k: (f"{v:.5f}" if isinstance(v, float) else v) for k, v in row.items()})


# ---------------------------------------------------------------- DS-SVC

def backbone_embeddings(backbone_model: nn.Module, images: ImageMaker, clips: Sequence[Clip], layer: str,
                        batch_size: int = 32) -> np.ndarray:
    """Global-average-pooled activations of pool4, pool5 or both, from a frozen backbone."""
    backbone = backbone_model.backbone  # type: ignore[attr-defined]
    backbone.eval()
    out = []
    with torch.no_grad():
        for start in tqdm(range(0, len(clips), batch_size), desc="backbone features", unit="batch", leave=False,
                          disable=None):
            x = torch.from_numpy(images.batch(clips[start : start + batch_size], augment=False))
            pool4, pool5 = backbone.forward_pools(x)
            parts = {"pool4": [pool4], "pool5": [pool5], "pool45": [pool4, pool5]}[layer]
            out.append(torch.cat([p.mean(dim=(2, 3)) for p in parts], dim=1).numpy())
    return np.concatenate(out)


def train_svc(config: TrainConfig, images: ImageMaker, train: Sequence[Clip], fold_dir: Path):
    """DS-SVC: frozen VGG16 features + StandardScaler + linear SVM, C chosen by inner speaker-grouped CV."""
    from sklearn.model_selection import GridSearchCV, GroupKFold, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    torch.manual_seed(config.seed)
    backbone_model = build_model(config.model_config())
    if config.imagenet_weights:
        load_imagenet_backbone(backbone_model, config.imagenet_weights)
    cache = fold_dir.parent / "svc_features"
    cache.mkdir(exist_ok=True)
    x = _cached_embeddings(cache, backbone_model, images, train, config.svc_layer)
    y = [c.label for c in train]
    groups = [c.speaker for c in train]
    n_groups = len(set(groups))
    cv = GroupKFold(n_splits=min(5, n_groups)) if n_groups >= 3 else StratifiedKFold(3, shuffle=True,
                                                                                     random_state=config.seed)
    search = GridSearchCV(make_pipeline(StandardScaler(), SVC(kernel="linear", class_weight="balanced",
                                                              decision_function_shape="ovr")),
                          {"svc__C": list(config.svc_c_grid)}, cv=cv, scoring="balanced_accuracy", n_jobs=1)
    search.fit(x, y, groups=groups if n_groups >= 3 else None)
    return backbone_model, search.best_estimator_, float(search.best_params_["svc__C"])


def _cached_embeddings(cache: Path, backbone_model: nn.Module, images: ImageMaker, clips: Sequence[Clip],
                       layer: str) -> np.ndarray:
    """Backbone features are the slow part of DS-SVC; they are computed once per clip and kept on disk."""
    path = cache / f"{layer}.npz"
    stored: dict[str, np.ndarray] = dict(np.load(path)) if path.exists() else {}
    missing = [c for c in clips if str(c.path) not in stored]
    if missing:
        for clip, row in zip(missing, backbone_embeddings(backbone_model, images, missing, layer)):
            stored[str(clip.path)] = row
        tmp = path.with_name(path.stem + ".tmp.npz")
        np.savez(tmp, **stored)
        tmp.replace(path)
    return np.stack([stored[str(c.path)] for c in clips])


def predict_svc(backbone_model: nn.Module, pipeline, images: ImageMaker, clips: Sequence[Clip], layer: str,
                cache: Path) -> np.ndarray:
    x = _cached_embeddings(cache, backbone_model, images, clips, layer)
    # Scores are a softmax over the one-vs-rest margins: a ranking, not calibrated probabilities.
    margins = np.asarray(pipeline.decision_function(x), dtype=np.float64)
    if margins.ndim == 1:  # two classes: one margin for the second class
        margins = np.stack([-margins, margins], axis=1)
    margins -= margins.max(axis=1, keepdims=True)
    probabilities = np.exp(margins) / np.exp(margins).sum(axis=1, keepdims=True)
    out = np.zeros((len(clips), len(EMOTIONS)), dtype=np.float32)
    for column, name in enumerate(pipeline.classes_):
        out[:, EMOTIONS.index(name)] = probabilities[:, column]
    return out


# ---------------------------------------------------------------- experiments

@dataclass
class RunResult:
    run_dir: Path
    summary: dict
    pooled: dict
    problems: list[LoadProblem]


def prepare_clips(config: TrainConfig) -> tuple[list[Clip], list[Clip], list[LoadProblem]]:
    """The corpus (and cross-corpus test corpus) with the speaker filter applied."""
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
    return clips, test_clips, problems


def run_experiment(config: TrainConfig, run_dir: str | Path, resume: bool = False,
                   progress: Callable[[dict], None] | None = None) -> RunResult:
    """Trains and evaluates every fold of the protocol, then writes the report. Finished folds are kept."""
    config.validate()
    run_dir = Path(run_dir)
    if run_dir.exists() and any(run_dir.iterdir()) and not resume:
        raise FileExistsError(f"{run_dir} is not empty: pass --resume to continue it, or choose another folder")
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "config.yaml"
    if resume and config_path.exists():
        saved = yaml.safe_load(config_path.read_text())
        runtime_only = {"threads"}  # how fast, not what: may change between a crash and its resume
        if {k: v for k, v in saved.items() if k not in runtime_only} != {
                k: v for k, v in config.to_mapping().items() if k not in runtime_only}:
            raise ValueError(f"{config_path} differs from the requested settings: resume needs the same config")
    config_path.write_text(yaml.safe_dump(config.to_mapping(), sort_keys=True))
    if config.threads:
        torch.set_num_threads(config.threads)

    clips, test_clips, problems = prepare_clips(config)
    bank = AudioBank()
    clips = bank.load(clips)
    test_clips = bank.load(test_clips, "decoding test corpus")
    problems += bank.problems
    everything = clips + test_clips
    if config.protocol == "all":
        folds = [Fold("all", *_all_split(clips, config), test=[], speaker_disjoint=True)]
    else:
        folds = make_folds(clips, config.protocol, config.folds, config.seed, config.validation_fraction, test_clips)
    if config.max_folds:
        folds = folds[: config.max_folds]
    write_folds(run_dir / "folds.json", folds, everything)

    extractor = FeatureExtractor(config.feature_config())
    fold_results = []
    for number, fold in enumerate(tqdm(folds, desc="folds", unit="fold", disable=None)):
        fold_dir = run_dir / fold.name
        fold_dir.mkdir(exist_ok=True)
        result_path = fold_dir / "result.json"
        if result_path.exists():
            fold_results.append(json.loads(result_path.read_text()))
            continue
        images = ImageMaker(extractor, bank, config, config.seed + number)
        train = [everything[i] for i in fold.train]
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
            model = train_network(config, images, train, validation, fold_dir, progress)
            save_checkpoint(fold_dir / "model.pt", model)
            probabilities = predict_network(model, images, test) if test else None
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
    return _write_report(config, run_dir, fold_results, problems)


def _all_split(clips: Sequence[Clip], config: TrainConfig) -> tuple[list[int], list[int]]:
    """Protocol `all` (the deployable model): every clip trains, but a few held-out speakers pick the epoch."""
    train, validation, _ = validation_split(clips, list(range(len(clips))), config.seed, config.validation_fraction)
    return train, validation


def _write_report(config: TrainConfig, run_dir: Path, fold_results: list[dict],
                  problems: list[LoadProblem]) -> RunResult:
    scored = [r for r in fold_results if "metrics" in r]
    report: dict[str, Any] = {
        "variant": config.variant,
        "protocol": config.protocol,
        "corpus": config.corpus,
        "test_corpus": config.test_corpus,
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


def load_trained_network(fold_dir: str | Path, config: TrainConfig) -> nn.Module:
    """The best weights of a finished fold (or of the `all` run), for export."""
    model = build_model(config.model_config())
    state = torch.load(Path(fold_dir) / "model.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()
