"""Metrics and report files: accuracy, UA (balanced accuracy), macro-F1, per-class P/R/F1, confusion matrices."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Sequence

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from ..files import save_bytes_atomic


def compute_metrics(y_true: Sequence[str], y_pred: Sequence[str], classes: Sequence[str]) -> dict:
    """Accuracy, UA (unweighted average recall over classes present), macro-F1, per-class scores, confusion."""
    classes = list(classes)
    y_true, y_pred = list(y_true), list(y_pred)
    if not y_true:
        raise ValueError("no predictions to score")
    present = [c for c in classes if c in set(y_true)]
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=classes, zero_division=0)
    matrix = confusion_matrix(y_true, y_pred, labels=classes)
    per_class = {
        c: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]), "support": int(support[i])}
        for i, c in enumerate(classes)
    }
    return {
        "n": len(y_true),
        "accuracy": float(np.mean(np.array(y_true) == np.array(y_pred))),
        "ua": float(np.mean([per_class[c]["recall"] for c in present])),
        "macro_f1": float(np.mean([per_class[c]["f1"] for c in present])),
        "per_class": per_class,
        "classes": classes,
        "confusion": matrix.tolist(),
    }


def unweighted_average_recall(y_true: Sequence[str], y_pred: Sequence[str]) -> float:
    """UA alone, as compute_metrics gives it, in numpy: calibration loops score thousands of subsets, and
    scikit-learn's argument checks made the conversations benchmark's calibration take ~20 minutes."""
    truth, guess = np.asarray(y_true), np.asarray(y_pred)
    if not truth.size:
        raise ValueError("no predictions to score")
    return float(np.mean([np.mean(guess[truth == c] == c) for c in np.unique(truth)]))


def per_speaker_accuracy(speakers: Sequence[str], y_true: Sequence[str], y_pred: Sequence[str]) -> dict[str, float]:
    result: dict[str, list[bool]] = {}
    for speaker, truth, guess in zip(speakers, y_true, y_pred):
        result.setdefault(speaker, []).append(truth == guess)
    return {s: float(np.mean(v)) for s, v in sorted(result.items())}


def summarise_folds(fold_metrics: Sequence[dict]) -> dict:
    """Mean and standard deviation over folds of accuracy, UA and macro-F1."""
    summary = {}
    for key in ("accuracy", "ua", "macro_f1"):
        values = np.array([m[key] for m in fold_metrics], dtype=float)
        summary[key] = {"mean": float(values.mean()), "std": float(values.std(ddof=0)), "folds": values.tolist()}
    return summary


def plot_confusion(matrix: Sequence[Sequence[int]], classes: Sequence[str], path: str | Path, title: str) -> None:
    """Row-normalised confusion matrix (recall per true class) with counts, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(matrix, dtype=float)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.4, 5.4), dpi=110)
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{rates[i, j]:.2f}\n({int(counts[i, j])})", ha="center", va="center", fontsize=7,
                    color="white" if rates[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, label="recall")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_confusion_csv(matrix: Sequence[Sequence[int]], classes: Sequence[str], path: str | Path) -> None:
    with Path(path).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["true\\predicted", *classes])
        for name, row in zip(classes, matrix):
            writer.writerow([name, *row])


def write_per_class_csv(metrics: dict, path: str | Path) -> None:
    with Path(path).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["class", "precision", "recall", "f1", "support"])
        for name, scores in metrics["per_class"].items():
            writer.writerow([name, f"{scores['precision']:.4f}", f"{scores['recall']:.4f}", f"{scores['f1']:.4f}",
                             scores["support"]])


def format_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """A Markdown table from dicts (missing values as '-')."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(str(row.get(c, "-")) for c in columns) + " |")
    return "\n".join(lines)


def write_json(path: str | Path, data: object) -> None:
    """JSON written whole or not at all, its folder made if missing (files.save_bytes_atomic)."""
    save_bytes_atomic(json.dumps(data, indent=1, sort_keys=True).encode(), Path(path))
