"""The training loops: DS-FC / DS-AM networks (AdamW, cosine LR, early stopping, resumable epochs) and DS-SVC
(frozen backbone embeddings + SVM); loading a finished fold's network."""
from __future__ import annotations

import csv
import logging
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..files import atomic_path, save_npz_atomic
from ..labels import EMOTIONS
from .config import TrainConfig
from .corpora import Clip
from .data import CorpusMix, ImageMaker, describe_mix, teacher_matrix
from .networks import build_model, load_backbone_weights

log = logging.getLogger(__name__)


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
        with atomic_path(checkpoint_path) as tmp:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "epoch": epoch + 1, "best_ua": best_ua, "stale": stale,
                        "best_model": best_state}, tmp)
        if progress:
            progress({"fold": fold_dir.name, **row})
    if best_state is not None:
        model.load_state_dict(best_state)
    if teacher_head is not None:
        del model._teacher  # the teacher head never leaves training: not saved, not exported
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
        save_npz_atomic(stored, path)
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


def load_trained_network(fold_dir: str | Path, config: TrainConfig) -> nn.Module:
    """The best weights of a finished fold (or of the `all` run), for export."""
    model = build_model(config.model_config())
    state = torch.load(Path(fold_dir) / "model.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()
