"""Training of DS-SVC, DS-FC and DS-AM over a protocol's folds, with resumable checkpoints and reports.

A run folder holds: config.yaml (the exact settings), folds.json, one folder per fold (metrics.csv per epoch,
checkpoint.pt, result.json once the fold is done) and the report (report.json, summary.md, confusion matrix PNG
and CSV, per-class and per-speaker tables). Re-running the same command with --resume skips finished folds and
continues an interrupted fold from its last epoch checkpoint.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import yaml
from torch import nn
from tqdm import tqdm

from .acoustics import NOISE_KINDS, AugmentRanges, Augmenter
from .audio import AudioError, load_audio, resample
from .corpora import Clip, Corpus, CorpusEntry, LoadProblem, load_corpus, load_corpus_entry, only_normal_neutral
from .features import FeatureConfig, FeatureExtractor
from .labels import EMOTIONS
from .models import ModelConfig, build_model, load_backbone_weights, save_backbone, save_checkpoint
from .protocols import Fold, leave_one_corpus_out, make_folds, validation_split, write_folds
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
    # Several corpora in one run (replaces corpus/test_corpus when given): each a corpus spec plus optional
    # name, weight (share of the sampled batches) and role (train | pretrain | test).
    corpora: list[dict] = field(default_factory=list)
    target_corpus: str | None = None  # the corpus folds run over (default: the first with role train)
    stage: str = "train"  # train | pretrain (trains on the pretrain corpora, writes backbone.pt)
    variant: str = "ds_am"
    protocol: str = "speaker_kfold"  # speaker_kfold | loso | stratified_kfold | fixed | cross_corpus | loco | all
    folds: int = 10
    max_folds: int = 0  # run only the first N folds (0 = all), for quick checks
    # Run only these folds (by name, e.g. speaker_s03): splits one run over processes on the same folder; a last
    # resume without it writes the report of all folds.
    only_folds: list[str] = field(default_factory=list)
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
    imagenet_weights: str | None = None  # path to torchvision vgg16-397923af.pth (kept: one case of the next)
    backbone_weights: str | None = None  # torchvision-named backbone: ImageNet's or a stage=pretrain backbone.pt
    # openSMILE teacher: an auxiliary head regresses z-scored functionals from the pooled features (0 = off)
    teacher_weight: float = 0.0
    teacher_sets: list[str] = field(default_factory=lambda: ["eGeMAPSv02", "ComParE_2016"])
    teacher_pca: int = 64  # ComParE_2016 components kept
    cache_dir: str = "~/.cache/ser_node"  # openSMILE functionals, keyed by clip content
    # optimisation (DS-FC, DS-AM)
    epochs: int = 30
    batch_size: int = 16
    lr: float = 1e-3  # new heads
    backbone_lr: float = 1e-4  # pretrained (or from-scratch) convolutions: lower, as the paper fine-tunes
    weight_decay: float = 1e-2
    patience: int = 8  # early stopping on validation UA
    validation_fraction: float = 0.15
    balance: str = "loss"  # loss (class-weighted cross-entropy) | sampler (by corpus weight and class) | none
    spec_augment: bool = True  # time and frequency masks on the image
    speed_perturb: float = 0.1  # random speed factor in [1-x, 1+x] (0 = off)
    # Acoustic augmentation (ser_node/acoustics.py, the robustness benchmark's conditions): this share of the
    # training clips goes through a random room and/or noise; babble is cut from the fold's other training speakers.
    acoustic_augment: float = 0.0
    acoustic_snr_db: list[float] = field(default_factory=lambda: [0.0, 30.0])
    acoustic_noises: list[str] = field(default_factory=lambda: ["robot", "babble", "events"])
    threads: int = 0  # torch CPU threads (0 = all cores)
    # DS-SVC
    svc_layer: str = "pool5"  # pool4 | pool5 (global-average-pooled) | pool45 (both)
    svc_c_grid: list[float] = field(default_factory=lambda: [0.001, 0.01, 0.1, 1.0, 10.0])

    def augment_ranges(self) -> AugmentRanges:
        return AugmentRanges(probability=self.acoustic_augment, snr_db=tuple(self.acoustic_snr_db),
                             noises=tuple(self.acoustic_noises))

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
        if self.stage not in ("train", "pretrain"):
            raise ValueError(f"stage must be train or pretrain, got {self.stage!r}")
        if self.stage == "pretrain" and self.variant == "ds_svc":
            raise ValueError("pretraining trains a network: use variant ds_am or ds_fc")
        if self.teacher_weight < 0:
            raise ValueError(f"teacher_weight must be >= 0, got {self.teacher_weight}")
        if not 0 <= self.acoustic_augment <= 1:
            raise ValueError(f"acoustic_augment is a probability, got {self.acoustic_augment}")
        unknown = set(self.acoustic_noises) - set(NOISE_KINDS)
        if unknown or len(self.acoustic_snr_db) != 2:
            raise ValueError(f"acoustic_noises must be among {NOISE_KINDS} and acoustic_snr_db [low, high]")
        if self.imagenet_weights and self.backbone_weights:
            raise ValueError("give backbone_weights or imagenet_weights, not both")

    @property
    def weights_path(self) -> str | None:
        """The backbone weights to start from, if any (imagenet_weights is the older name of the same thing)."""
        return self.backbone_weights or self.imagenet_weights

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


class ImageCache:
    """Clean feature images on disk, one .npy per (clip content, feature settings): folds and later runs reuse
    them, and a renamed corpus or changed settings can never return a stale image."""

    def __init__(self, root: Path, features: FeatureConfig) -> None:
        settings = json.dumps(features.to_dict(), sort_keys=True).encode()
        self.folder = root / "images" / hashlib.sha1(settings).hexdigest()[:16]
        self._digests: dict[Path, str] = {}

    def path(self, clip: Clip) -> Path:
        from .teacher import file_digest

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
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + f".{os.getpid()}.tmp.npy")
        np.save(tmp, image)
        tmp.replace(path)
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


def masked_logits(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Classes a clip's corpus cannot express leave the softmax: they get no probability and no gradient."""
    return logits.masked_fill(~mask, float("-inf"))


# ---------------------------------------------------------------- networks (DS-FC, DS-AM)

def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _param_groups(model: nn.Module, config: TrainConfig) -> list[dict]:
    backbone = [p for n, p in model.named_parameters() if n.startswith("backbone.")]
    heads = [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
    return [{"params": backbone, "lr": config.backbone_lr}, {"params": heads, "lr": config.lr}]


def predict_network(model: nn.Module, images: ImageMaker, clips: Sequence[Clip], batch_size: int = 32,
                    mask: np.ndarray | None = None) -> np.ndarray:
    """Class probabilities per clip; with `mask`, only the classes each clip's corpus can express (renormalised)."""
    device = next(model.parameters()).device
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(clips), batch_size):
            batch = torch.from_numpy(images.batch(clips[start : start + batch_size], augment=False)).to(device)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits = model(batch)
            out.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
    probabilities = np.concatenate(out) if out else np.zeros((0, len(EMOTIONS)), np.float32)
    if mask is not None and len(probabilities):
        probabilities = np.where(mask, probabilities, 0.0)
        probabilities /= np.maximum(probabilities.sum(axis=1, keepdims=True), 1e-12)
    return probabilities


def _ua(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float(np.mean([np.mean(y_pred[y_true == c] == c) for c in np.unique(y_true)]))


def train_network(config: TrainConfig, images: ImageMaker, train: Sequence[Clip], validation: Sequence[Clip],
                  fold_dir: Path, progress: Callable[[dict], None] | None = None,
                  mix: CorpusMix | None = None) -> nn.Module:
    """Fine-tunes DS-FC or DS-AM with AdamW and cosine LR; early stopping on validation UA; resumable.

    A clip's loss covers only the classes its corpus can express (`mix`); with the openSMILE teacher on, an
    auxiliary head regresses the clip's functionals from the pooled features (it is not part of the model).
    """
    device = _device()
    torch.manual_seed(config.seed)
    mix = mix or CorpusMix.of(train)
    model = build_model(config.model_config())
    if config.weights_path:
        load_backbone_weights(model, config.weights_path)
    teacher_head, teacher_targets = None, None
    if config.teacher_weight > 0:
        teacher_targets = torch.from_numpy(teacher_matrix(config, train))
        teacher_head = nn.Linear(model.embedding_size, teacher_targets.shape[1])  # type: ignore[arg-type]
        model.add_module("_teacher", teacher_head)  # trained with the model; removed before it is returned
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
    train_mask = torch.from_numpy(mix.mask(train)).to(device)
    validation_mask = mix.mask(validation)
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
            order = rng.choice(len(train), size=len(train), p=mix.sampling_probabilities(train))
        else:
            order = rng.permutation(len(train))
        epoch_mix = describe_mix([train[i] for i in order])
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
                embedding = model.embed(x)  # type: ignore[operator]
                loss = loss_fn(masked_logits(model.classify(embedding).float(), train_mask[chosen]), y)  # type: ignore[operator]
                if teacher_head is not None and teacher_targets is not None:
                    target = teacher_targets[chosen].to(device)
                    loss = loss + config.teacher_weight * nn.functional.mse_loss(teacher_head(embedding).float(),
                                                                                 target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += float(loss.detach()) * len(chosen)
            seen += len(chosen)
            bar.set_postfix(loss=f"{total_loss / max(seen, 1):.3f}", mix=epoch_mix)
        scheduler.step()
        row = {"epoch": epoch + 1, "train_loss": total_loss / max(seen, 1), "seconds": 0.0}
        if validation:
            probabilities = predict_network(model, images, validation, mask=validation_mask)
            y_val = [class_index[c.label] for c in validation]
            row["val_ua"] = _ua(y_val, probabilities.argmax(1))
            row["val_accuracy"] = float(np.mean(np.array(y_val) == probabilities.argmax(1)))
        else:
            row["val_ua"] = -row["train_loss"]  # no validation: keep the last epoch
        row["seconds"] = time.perf_counter() - began
        row["mix"] = epoch_mix
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
    if teacher_head is not None:
        del model._teacher  # the teacher head never leaves training: not saved, not exported
    return model.cpu().eval()


def teacher_matrix(config: TrainConfig, clips: Sequence[Clip]) -> np.ndarray:
    """The teacher's regression targets for `clips`, z-scored (and ComParE PCA-reduced) on these same clips."""
    from .teacher import TeacherTargets, opensmile_functionals

    cache = Path(config.cache_dir).expanduser() / "opensmile"
    raw = {name: opensmile_functionals([c.path for c in clips], name, cache) for name in config.teacher_sets}
    return TeacherTargets(tuple(config.teacher_sets), config.teacher_pca).fit(raw).transform(raw)


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
    if config.weights_path:
        load_backbone_weights(backbone_model, config.weights_path)
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


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def backbone_provenance(path: str | Path) -> dict[str, Any]:
    """Hash of a backbone weights file and, for a stage=pretrain backbone, what it was trained on (backbone.json)."""
    path = Path(path)
    info: dict[str, Any] = {"path": str(path), "sha256": _sha256(path)}
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
        "sha256": _sha256(run_dir / "backbone.pt"),
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


def load_trained_network(fold_dir: str | Path, config: TrainConfig) -> nn.Module:
    """The best weights of a finished fold (or of the `all` run), for export."""
    model = build_model(config.model_config())
    state = torch.load(Path(fold_dir) / "model.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()
