"""Robustness benchmark: the default recipe and ComParE + SVM under the acoustic conditions a robot meets.

Every uem-es clip is degraded (ser_node/acoustics.py, seeded per clip and condition) and scored by the model of its
own LOSO fold, so every figure is speaker-independent and on the same 12 folds as bench/accuracy.py:
  - network: the default recipe (config/train_default.yaml) trained per fold on clean audio with 12 epochs instead
    of 30 (bench/work/runs/default_12ep; ~75 min on one core, trained here if missing): the 30-epoch LOSO run costs
    ~3 h on this machine. Its clean UA is in the table, so every degraded row compares with its own clean row;
  - ComParE + SVM: refitted per fold on clean ComParE_2016 functionals with the C that the accuracy bench chose
    for that fold (bench/results/accuracy.json).
Conditions: clean; robot / babble / events noise at SNR 20, 10, 5, 0 dB; each dry and in a room with RT60 0.6 s at
1, 2 and 4 m from the microphone, and the rooms without noise. Babble comes from emovo, emodb and ased (81
speakers): never the speaker under test, never a speaker the fold models trained on.

Parts (--parts, default all):
  compare       ComParE functionals of every degraded clip (cached under bench/work/robustness; ~50 min)
  offline       UA of both systems per condition -> robustness.json / robustness.md / robustness.png
  node          degraded streams through a running ser_node (Silero and WebRTC VADs): segmentation
                precision/recall against the clean reference and UA of what the node published
  false_alarms  noise-only input (an hour per noise type, faster than real time): expressions published per hour

  .venv/bin/python bench/robustness.py --parts compare,offline
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from ser_node.acoustics import NOISE_KINDS, AcousticSimulator, Condition, stable_seed, talker  # noqa: E402
from ser_node.audio import load_audio  # noqa: E402
from ser_node.corpora import load_corpus_entry, load_emomatch  # noqa: E402
from ser_node.labels import EMOTIONS  # noqa: E402
from ser_node.reports import compute_metrics, summarise_folds, write_json  # noqa: E402

SNRS = (20.0, 10.0, 5.0, 0.0)
RT60 = 0.6
DISTANCES = (1.0, 2.0, 4.0)
DATA = ROOT.parent / "shared" / "data"
NETWORK_RUN, NETWORK_BUDGET = "default_12ep", {"epochs": 12, "patience": 12}


def conditions() -> list[Condition]:
    """The grid: clean, rooms alone, and every noise x SNR dry and in each room."""
    grid = [Condition()] + [Condition(rt60_s=RT60, distance_m=d) for d in DISTANCES]
    for rt60, distance in [(0.0, 1.0)] + [(RT60, d) for d in DISTANCES]:
        grid += [Condition(noise=n, snr_db=s, rt60_s=rt60, distance_m=distance) for n in NOISE_KINDS for s in SNRS]
    return grid


def slug(condition: Condition) -> str:
    return (condition.name.replace(" ", "_").replace(",", "").replace("%", "pct")) or "clean"


def babble_pool() -> list:
    clips = []
    for name, extra in (("emovo", {}), ("emodb", {"label_map": {"boredom": None}}), ("ased", {})):
        clips += load_corpus_entry({"name": name, "kind": "manifest", "path": str(DATA / name), **extra}).corpus.clips
    return clips


class Degrader:
    """Clips of uem-es under a condition, the same samples in every part and process."""

    def __init__(self, clips) -> None:
        self.clips = clips
        self.clean = [load_audio(c.path) for c in clips]
        self.simulator = AcousticSimulator(babble_pool())

    def __call__(self, index: int, condition: Condition) -> np.ndarray:
        if condition == Condition():
            return self.clean[index]
        clip = self.clips[index]
        return self.simulator(self.clean[index], condition, seed=stable_seed(clip.path.name, condition.name),
                              exclude_speakers=[talker(clip)])


# ------------------------------------------------------------------ ComParE + SVM


def compare_features(degrader: Degrader, condition: Condition, work: Path) -> np.ndarray:
    """ComParE_2016 functionals of every clip under the condition (cached per condition)."""
    import opensmile

    path = work / f"compare_{slug(condition)}.npy"
    if path.exists():
        return np.load(path)
    smile = opensmile.Smile(feature_set=opensmile.FeatureSet.ComParE_2016,
                            feature_level=opensmile.FeatureLevel.Functionals)
    rows = [smile.process_signal(degrader(i, condition), 16000).to_numpy()[0] for i in range(len(degrader.clips))]
    features = np.nan_to_num(np.stack(rows).astype(np.float32))
    np.save(path.with_suffix(".tmp.npy"), features)
    path.with_suffix(".tmp.npy").replace(path)
    return features


def svm_fold_models(clean: np.ndarray, clips, accuracy_json: Path) -> dict:
    """One StandardScaler + LinearSVC per LOSO fold, C as the accuracy bench chose it for that fold."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    chosen = {f["fold"]: f["c"] for f in json.loads(accuracy_json.read_text())["compare_svm"]["folds"]}
    speakers = np.array([c.speaker for c in clips])
    labels = np.array([c.label for c in clips])
    models = {}
    for speaker in sorted(set(speakers)):
        train = speakers != speaker
        models[speaker] = make_pipeline(StandardScaler(), LinearSVC(
            C=chosen[f"speaker_{speaker}"], class_weight="balanced", max_iter=20000)).fit(clean[train], labels[train])
    return models


# ------------------------------------------------------------------ the network


def fold_networks(runs: Path, corpus: Path):
    """(config, {speaker: model}) of the default recipe's LOSO run; trains it first if it is not there."""
    import torch
    import yaml

    from accuracy import default_recipe, run_ds
    from ser_node.training import TrainConfig, load_trained_network

    run_dir = runs / NETWORK_RUN
    if not (run_dir / "report.json").exists():
        print("training the default recipe's LOSO fold models (resumable) ...", flush=True)
        run_ds(NETWORK_RUN, {**default_recipe(), **NETWORK_BUDGET}, runs, corpus, threads=1)
    torch.set_num_threads(1)
    config = TrainConfig.from_mapping(yaml.safe_load((run_dir / "config.yaml").read_text()))
    return config, {d.name.removeprefix("speaker_"): load_trained_network(d, config)
                    for d in sorted(run_dir.glob("speaker_*"))}


def network_predictions(config, models: dict, degrader: Degrader, condition: Condition) -> list[str]:
    import torch

    from ser_node.features import FeatureExtractor

    extractor = FeatureExtractor(config.feature_config())
    predicted = [""] * len(degrader.clips)
    for speaker, model in models.items():
        indices = [i for i, c in enumerate(degrader.clips) if c.speaker == speaker]
        images = torch.from_numpy(np.stack([extractor(degrader(i, condition)) for i in indices]))
        with torch.no_grad():
            best = model(images).argmax(dim=1).numpy()
        for i, b in zip(indices, best):
            predicted[i] = EMOTIONS[int(b)]
    return predicted


def fold_summary(clips, predicted: list[str]) -> dict:
    speakers = sorted({c.speaker for c in clips})
    folds = [compute_metrics([c.label for c in clips if c.speaker == s],
                             [p for c, p in zip(clips, predicted) if c.speaker == s], EMOTIONS) for s in speakers]
    summary = summarise_folds(folds)
    return {"ua": summary["ua"]["mean"], "ua_std": summary["ua"]["std"], "ua_folds": summary["ua"]["folds"]}


def run_offline(degrader: Degrader, args) -> dict:
    clips = degrader.clips
    clean = compare_features(degrader, Condition(), args.work)
    svms = svm_fold_models(clean, clips, args.out / "accuracy.json")
    config, networks = fold_networks(args.work.parent / "runs", args.corpus)
    rows = []
    for condition in conditions():
        began = time.perf_counter()
        features = compare_features(degrader, condition, args.work)
        svm_predicted = [""] * len(clips)
        for speaker, svm in svms.items():
            indices = [i for i, c in enumerate(clips) if c.speaker == speaker]
            for i, p in zip(indices, svm.predict(features[indices])):
                svm_predicted[i] = str(p)
        row = {"condition": condition.name, "noise": condition.noise,
               "snr_db": condition.snr_db if math.isfinite(condition.snr_db) else None,
               "rt60_s": condition.rt60_s, "distance_m": condition.distance_m if condition.rt60_s else None,
               "network": fold_summary(clips, network_predictions(config, networks, degrader, condition)),
               "compare_svm": fold_summary(clips, svm_predicted)}
        rows.append(row)
        print(f"{condition.name:45s} network UA {row['network']['ua']:.3f}  ComParE+SVM UA "
              f"{row['compare_svm']['ua']:.3f}  ({time.perf_counter() - began:.0f} s)", flush=True)
    return {"protocol": "LOSO, 12 speakers of uem-es; each clip scored by its own fold's model",
            "date": time.strftime("%Y-%m-%d"), "rt60_s": RT60, "rows": rows,
            "network_recipe": f"config/train_default.yaml (DS-AM w0.25, 128 px) with {NETWORK_BUDGET}, clean audio",
            "compare_svm": "ComParE_2016 + LinearSVC, C per fold from accuracy.json, trained on clean audio"}


def offline_table(result: dict) -> str:
    lines = [f"## Offline: UA under acoustic conditions ({result['date']}, {result['protocol']})", "",
             "| condition | default recipe UA | ComParE + SVM UA |", "|---|---|---|"]
    for row in result["rows"]:
        n, c = row["network"], row["compare_svm"]
        lines.append(f"| {row['condition']} | {n['ua']:.3f} ± {n['ua_std']:.3f} | {c['ua']:.3f} ± {c['ua_std']:.3f} |")
    return "\n".join(lines) + "\n"


def plot_offline(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rooms = [(0.0, None)] + [(RT60, d) for d in DISTANCES]
    figure, axes = plt.subplots(1, len(rooms), figsize=(4.2 * len(rooms), 3.8), sharey=True)
    clean = result["rows"][0]
    colours = dict(zip(NOISE_KINDS, ("tab:blue", "tab:orange", "tab:green")))
    for axis, (rt60, distance) in zip(axes, rooms):
        for system, style in (("network", "-"), ("compare_svm", "--")):
            axis.axhline(clean[system]["ua"], color="grey", linestyle=style, linewidth=0.8)
            for noise in NOISE_KINDS:
                rows = [r for r in result["rows"] if r["noise"] == noise and r["rt60_s"] == rt60
                        and r["distance_m"] == distance]
                rows.sort(key=lambda r: -r["snr_db"])
                axis.plot([r["snr_db"] for r in rows], [r[system]["ua"] for r in rows], style, marker="o",
                          color=colours[noise], label=f"{'default' if system == 'network' else 'ComParE+SVM'} "
                                                      f"· {noise}")
        axis.invert_xaxis()
        axis.axhline(1 / 7, color="black", linestyle=":", linewidth=0.8)
        axis.set_title("dry (close-talk)" if not rt60 else f"room RT60 {rt60} s, {distance:g} m")
        axis.set_xlabel("SNR (dB)")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("UA (LOSO, 12 folds)")
    axes[-1].legend(fontsize=7, loc="upper right")
    figure.suptitle(f"uem-es under noise and reverberation · solid: default recipe, dashed: ComParE + SVM · grey: "
                    f"clean · dotted: chance · {result['date']}", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


# ------------------------------------------------------------------ main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="compare,offline,node,false_alarms")
    parser.add_argument("--corpus", type=Path, default=DATA / "uem-es")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "work" / "robustness")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    clips = load_emomatch(args.corpus).clips
    parts = args.parts.split(",")
    degrader = Degrader(clips) if {"compare", "offline"} & set(parts) else None
    for part in parts:
        print(f"== {part}", flush=True)
        if part == "compare":
            from tqdm import tqdm

            for condition in tqdm(conditions(), desc="ComParE per condition", unit="condition"):
                compare_features(degrader, condition, args.work)
        elif part == "offline":
            result = run_offline(degrader, args)
            write_json(args.out / "robustness.json", result)
            (args.out / "robustness.md").write_text(offline_table(result))
            plot_offline(result, args.out / "robustness.png")
        else:
            parser.error(f"unknown part {part}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
