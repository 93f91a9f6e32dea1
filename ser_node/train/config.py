"""Every setting of a DeepSpectrum training run (TrainConfig), saved as config.yaml in the run folder."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..inference.features import FeatureConfig
from ..settings import check_known_fields
from .acoustics import NOISE_KINDS, AugmentRanges
from .networks import ModelConfig

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
    # Acoustic augmentation (ser_node/train/acoustics.py, the robustness benchmark's conditions): this share of the
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


def apply_override(values: dict[str, Any], assignment: str) -> None:
    """`a.b=value` sets values['a']['b'] to the YAML reading of value (numbers, booleans, lists work)."""
    if "=" not in assignment:
        raise ValueError(f"override {assignment!r} must look like key=value")
    key, raw = assignment.split("=", 1)
    target = values
    parts = key.strip().split(".")
    for part in parts[:-1]:
        if not isinstance(target.get(part), dict):  # absent or None (e.g. test_corpus): start a mapping
            target[part] = {}
        target = target[part]
    target[parts[-1]] = yaml.safe_load(raw)


def build_config(config_path: Path | None, overrides: list[str]) -> TrainConfig:
    """TrainConfig from defaults, then a YAML file's settings, then `a.b=value` overrides (ser_train --set)."""
    values: dict[str, Any] = TrainConfig().to_mapping()
    if config_path:
        loaded = yaml.safe_load(config_path.read_text()) or {}
        for key, value in loaded.items():
            if isinstance(value, dict) and isinstance(values.get(key), dict) and key != "corpus":
                values[key].update(value)
            else:
                values[key] = value
    for assignment in overrides:
        apply_override(values, assignment)
    return TrainConfig.from_mapping(values)
