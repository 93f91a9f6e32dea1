"""Accuracy benchmark on real Spanish speech, leave-one-speaker-out (LOSO) over uem-es's 12 speakers.

Methods (choose with --methods, default all):
  egemaps_svm, compare_svm  the peer baseline: openSMILE eGeMAPSv02 / ComParE_2016 functionals + linear SVM,
                            C chosen by inner speaker-grouped CV (Garcia-Cuesta et al. recipe)
  ds_svc, ds_fc, ds_am      DeepSpectrum variants through ser_train (from scratch: no ImageNet weights here)
  default                   the shipped default model's recipe (config/train_default.yaml) under LOSO
  default_tta               the same fold models with test-time augmentation: log-probabilities averaged over
                            5 playback speeds (0.85-1.15); needs `default` first (inference only, ~2 min)
  pretrained                the default recipe fine-tuned per fold from a DS-AM backbone pretrained once on
                            emovo + emodb + ased (config/pretrain_other_corpora.yaml): no uem-es speaker is ever
                            seen by the pretraining, which the trainer checks for every fold
  pretrained_teacher        the same with the openSMILE teacher (eGeMAPS + ComParE PCA-64) during pretraining
  adaptation                online adaptation to the test speaker from that speaker's earlier clips only
                            (ser_node/inference/adaptation.py), each test speaker's clips fed in 5 random orders, UA by
                            utterance rank; for the network (on the fold models of `pretrained` or `default`,
                            whichever exists) and, in the same regime, for ComParE + SVM (feature means and scores)
  int8                      fp32 against int8 ONNX of the same fold models (`default`, or bench/robustness.py's
                            12-epoch run): UA of each and top-1 agreement (bench/results/accuracy_int8.json)
  loco                      leave-one-corpus-out over the four corpora: the default recipe and ComParE + SVM,
                            trained on three corpora, tested on the fourth on the labels it has
                            (bench/results/accuracy_loco.json, a second table in accuracy.md)

Every method sees the same folds (one per speaker). Results: bench/results/accuracy.json (per fold, per class,
pooled confusion), accuracy.md (the table), ua_by_method.png and one confusion PNG per method. Slow runs are
resumable: re-running skips finished folds (ser_train's --resume and a feature cache).

  .venv/bin/python bench/accuracy.py --methods compare_svm,egemaps_svm,default
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ser_node.audio.decode import load_audio  # noqa: E402
from ser_node.labels import EMOTIONS  # noqa: E402
from ser_node.train.corpora import load_corpus_entry, load_emomatch  # noqa: E402
from ser_node.train.reports import (compute_metrics, format_table, plot_confusion, summarise_folds,  # noqa: E402
                                     unweighted_average_recall, write_json)
from ser_node.train.voice_recipe import speaker_orders  # noqa: E402

OPENSMILE_SETS = {"egemaps_svm": "eGeMAPSv02", "compare_svm": "ComParE_2016"}
DS_RECIPES = {
    "ds_svc": {"variant": "ds_svc", "image_size": 224, "width": 1.0, "svc_layer": "pool45"},
    "ds_fc": {"variant": "ds_fc", "image_size": 128, "width": 0.25, "epochs": 30, "backbone_lr": 1e-3},
    "ds_am": {"variant": "ds_am", "image_size": 128, "width": 0.25, "epochs": 30, "backbone_lr": 1e-3},
}


def opensmile_features(clips, feature_set: str, cache: Path) -> np.ndarray:
    """Functionals per clip, cached on disk by clip content (the trainer's teacher shares the cache)."""
    from ser_node.train.teacher import opensmile_functionals

    return opensmile_functionals([c.path for c in clips], feature_set, cache)


def fit_svm(x: np.ndarray, y: np.ndarray, groups: np.ndarray, grid: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0),
            inner_folds: int = 5):
    """StandardScaler + linear SVM, C chosen by speaker-grouped inner CV: the peer baseline as a lab runs it."""
    from sklearn.model_selection import GridSearchCV, GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    search = GridSearchCV(make_pipeline(StandardScaler(), LinearSVC(class_weight="balanced", max_iter=20000)),
                          {"linearsvc__C": list(grid)}, cv=GroupKFold(inner_folds),
                          scoring="balanced_accuracy", n_jobs=1)
    search.fit(x, y, groups=groups)
    return search


def run_opensmile_svm(clips, feature_set: str, cache: Path) -> dict:
    from sklearn.model_selection import LeaveOneGroupOut

    x = opensmile_features(clips, feature_set, cache)
    y = np.array([c.label for c in clips])
    groups = np.array([c.speaker for c in clips])
    folds, predictions = [], []
    began = time.perf_counter()
    for train, test in LeaveOneGroupOut().split(x, y, groups):
        search = fit_svm(x[train], y[train], groups[train])
        predicted = search.predict(x[test])
        metrics = compute_metrics(y[test], predicted, EMOTIONS)
        folds.append({"fold": f"speaker_{groups[test][0]}", "metrics": metrics,
                      "c": float(search.best_params_["linearsvc__C"])})
        predictions += list(zip(y[test], predicted))
    return {"folds": folds, "predictions": predictions, "train_seconds": time.perf_counter() - began}


# ---------------------------------------------------------------- multi-corpus rows (pretraining, LOCO)

FINE_TUNE = {"epochs": 15, "patience": 5}  # a pretrained backbone converges in fewer epochs; 2x cheaper


def all_corpora(data: Path) -> list[dict]:
    """The four corpora of ../shared/data as `corpora:` entries (as in config/train_multicorpus.yaml)."""
    return [{"name": "uem-es", "kind": "emomatch", "path": str(data / "uem-es")},
            {"name": "emovo", "kind": "manifest", "path": str(data / "emovo")},
            {"name": "emodb", "kind": "manifest", "path": str(data / "emodb"), "label_map": {"boredom": None}},
            {"name": "ased", "kind": "manifest", "path": str(data / "ased")}]


def pretrained_backbone(work: Path, data: Path, teacher: bool, threads: int) -> Path:
    """The backbone of config/pretrain_other_corpora.yaml (trained once, resumable), with or without teacher."""
    import yaml

    from ser_node.train.experiment import TrainConfig, run_experiment

    values = yaml.safe_load((ROOT / "config" / "pretrain_other_corpora.yaml").read_text())
    values["corpora"] = [{**e, "role": "pretrain"} for e in all_corpora(data) if e["name"] != "uem-es"]
    values.update(threads=threads, cache_dir=str(work / "cache"), teacher_weight=0.5 if teacher else 0.0)
    run_dir = work / "runs" / ("pretrain_teacher" if teacher else "pretrain")
    if not (run_dir / "backbone.pt").exists():
        run_experiment(TrainConfig.from_mapping({**TrainConfig().to_mapping(), **values}), run_dir, resume=True)
    return run_dir / "backbone.pt"


def default_recipe() -> dict:
    import yaml

    return {k: v for k, v in yaml.safe_load((ROOT / "config" / "train_default.yaml").read_text()).items()
            if k not in ("corpus", "protocol")}


RANK_BUCKETS = ((1, 5), (6, 20), (21, 10_000))
RANK_NAMES = [f"{low}-{high if high < 10_000 else ''}" for low, high in RANK_BUCKETS]


def ua_per_speaker(records: list[tuple[str, int, str, str]]) -> dict[str, float]:
    """UA of each speaker's (speaker, rank, truth, predicted) records, all orders pooled."""
    return {s: compute_metrics([r[2] for r in records if r[0] == s], [r[3] for r in records if r[0] == s],
                               EMOTIONS)["ua"] for s in sorted({r[0] for r in records})}


def ua_by_rank(records: list[tuple[str, int, str, str]]) -> dict[str, float]:
    """Pooled UA of the records whose utterance rank falls in each bucket (NaN for an empty bucket)."""
    out = {}
    for name, (low, high) in zip(RANK_NAMES, RANK_BUCKETS):
        chosen = [r for r in records if low <= r[1] <= high]
        out[name] = unweighted_average_recall([r[2] for r in chosen], [r[3] for r in chosen]) if chosen \
            else float("nan")
    return out


def _ranked_outcome(records: list[tuple[str, int, str, str]]) -> dict:
    """UA per speaker (mean ± sd, over all orders) and pooled UA by utterance rank bucket."""
    per_speaker = list(ua_per_speaker(records).values())
    return {"ua_mean": float(np.mean(per_speaker)), "ua_std": float(np.std(per_speaker)),
            "ua_by_rank": ua_by_rank(records)}


def _svm_folds(work: Path, x: np.ndarray, y: np.ndarray, speakers: np.ndarray) -> dict:
    """Per test speaker: the plain ComParE + SVM and the one trained on speaker-centred features (each training
    clip minus its speaker's mean: trained the way it is used). Cached: the fits are the slow part."""
    import pickle

    path = work / "cache" / "adaptation_svm.pkl"
    models = pickle.loads(path.read_bytes()) if path.exists() else {}  # our own file, written below
    for test_speaker in sorted(set(speakers)):
        if test_speaker in models:
            continue
        train = np.where(speakers != test_speaker)[0]
        # A narrower grid than the main table (C=1e-4 won 11 of its 12 folds): 5x fewer fits for two models.
        plain = fit_svm(x[train], y[train], speakers[train], (1e-4, 1e-3, 1e-2), 4).best_estimator_
        centred = x[train].copy()
        for s in set(speakers[train]):
            centred[speakers[train] == s] -= x[train][speakers[train] == s].mean(axis=0)
        models[test_speaker] = (plain, fit_svm(centred, y[train], speakers[train], (1e-4, 1e-3, 1e-2),
                                               4).best_estimator_, x[train].mean(axis=0))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pickle.dumps(models))
        print(f"adaptation: SVMs for {test_speaker} done", flush=True)
    return models


def _softmax(margins: np.ndarray) -> np.ndarray:
    z = np.exp(margins - margins.max())
    return z / z.sum()


def run_adaptation(work: Path, corpus_dir: Path, warmup: int = 5) -> dict:
    """Online speaker adaptation, both systems, same folds and same random orders (see ser_node/inference/adaptation.py);
    and late fusion of the network with ComParE + SVM (a reference row: it would put openSMILE on the robot).

    Before `warmup` clips of a speaker are in, every system answers unadapted (as the node does).
    """
    from ser_node.inference.adaptation import SpeakerAdapter, adapt_log_probabilities

    clips = load_emomatch(corpus_dir).clips
    x = opensmile_features(clips, "ComParE_2016", work / "cache" / "opensmile").astype(np.float64)
    y = np.array([c.label for c in clips])
    speakers = np.array([c.speaker for c in clips])
    models = _svm_folds(work, x, y, speakers)
    network: dict[str, dict] = {}  # clip path -> LOSO prediction of the network run used
    network_run = next((run for run in ("pretrained", "default")
                        if len(list((work / "runs" / run).glob("speaker_*/result.json"))) == 12), None)
    if network_run:
        for fold_file in sorted((work / "runs" / network_run).glob("speaker_*/result.json")):
            network.update({p["path"]: p for p in json.loads(fold_file.read_text())["predictions"]})
    records: dict[str, list] = {k: [] for k in ("svm", "svm_scores", "svm_features", "net", "net_scores",
                                                "fusion")}
    for test_speaker in sorted(set(speakers)):
        plain, centred, global_mean = models[test_speaker]
        assert list(plain.classes_) == list(EMOTIONS)
        test = np.where(speakers == test_speaker)[0]
        margins = plain.decision_function(x[test])
        for order in speaker_orders(len(test), test_speaker):
            adapters = {k: SpeakerAdapter(warmup=warmup) for k in ("svm_scores", "svm_features", "net_scores")}
            for rank, k in enumerate(order, start=1):
                i = test[k]
                truth = y[i]
                plain_label = EMOTIONS[int(np.argmax(margins[k]))]
                records["svm"].append((test_speaker, rank, truth, plain_label))
                records["svm_scores"].append((test_speaker, rank, truth,
                                              EMOTIONS[int(np.argmax(adapters["svm_scores"](margins[k])))]))
                active = adapters["svm_features"].active
                normalised = adapters["svm_features"](x[i] - global_mean)
                label = centred.predict(normalised[None])[0] if active else plain_label
                records["svm_features"].append((test_speaker, rank, truth, label))
                prediction = network.get(str(clips[i].path))
                if prediction is None:
                    continue
                scores = np.array(prediction["scores"], dtype=np.float64)
                records["net"].append((test_speaker, rank, truth, prediction["predicted"]))
                adapted = adapt_log_probabilities(adapters["net_scores"], scores)
                records["net_scores"].append((test_speaker, rank, truth, EMOTIONS[int(np.argmax(adapted))]))
                fused = np.log(np.clip(scores, 1e-7, 1)) + np.log(_softmax(margins[k]))
                records["fusion"].append((test_speaker, rank, truth, EMOTIONS[int(np.argmax(fused))]))
    names = {"svm": "ComParE + SVM", "svm_scores": "ComParE + SVM, scores adapted",
             "svm_features": "ComParE + SVM, features adapted (trained on speaker-centred features)",
             "net": f"network ({network_run} recipe)", "net_scores": f"network ({network_run}), scores adapted",
             "fusion": f"late fusion: network ({network_run}) x ComParE + SVM (reference, unadapted)"}
    rows = {names[k]: _ranked_outcome(v) for k, v in records.items() if v}
    return {"protocol": "LOSO, 12 speakers of uem-es; each test speaker's clips in 5 random orders; adaptation "
                        f"from earlier clips of the same speaker only, warm-up {warmup} clips; ComParE + SVM with "
                        "C from (1e-4, 1e-3, 1e-2) by 4-fold speaker-grouped inner CV",
            "date": time.strftime("%Y-%m-%d"), "network_run": network_run, "rows": rows}


def run_loco(work: Path, data: Path, threads: int) -> dict:
    """Leave-one-corpus-out: the default recipe (fewer epochs: 3,000+ clips per epoch) and ComParE + SVM, each
    trained on three corpora and scored on the fourth, restricted to the labels that corpus has."""
    from ser_node.train.experiment import TrainConfig, run_experiment
    from ser_node.train.protocols import leave_one_corpus_out

    recipe = {**default_recipe(), "epochs": 4, "patience": 3, "balance": "sampler"}  # ~25 min on 1 core
    config = TrainConfig.from_mapping({**TrainConfig().to_mapping(), **recipe, "corpora": all_corpora(data),
                                       "protocol": "loco", "threads": threads})
    network = json.loads((run_experiment(config, work / "runs" / "loco", resume=True).run_dir
                          / "report.json").read_text())
    clips = [c for spec in all_corpora(data) for c in load_corpus_entry(spec).corpus.clips]
    x = opensmile_features(clips, "ComParE_2016", work / "cache" / "opensmile")
    y = np.array([c.label for c in clips])
    groups = np.array([c.speaker for c in clips])
    rows = {}
    for fold in leave_one_corpus_out(clips):
        held_out = fold.name.removeprefix("corpus_")
        train = np.array(fold.train + fold.validation)
        # C fixed at 1e-4, the value the LOSO grid chose in 11 of 12 folds: a grid over 3,000+ clips x 6,373
        # features would take about an hour per corpus on 2 cores.
        search = fit_svm(x[train], y[train], groups[train], (1e-4,), 2)
        labels = sorted({clips[i].label for i in fold.test})
        margins = search.decision_function(x[fold.test])  # scored on the held-out corpus's own labels
        allowed = [list(search.classes_).index(label) for label in labels]
        predicted = search.classes_[np.array(allowed)[margins[:, allowed].argmax(axis=1)]]
        svm = compute_metrics(y[fold.test], predicted, labels)
        ds = next(f["metrics"] for f in network["folds"] if f["fold"] == fold.name)
        rows[held_out] = {"n_test": len(fold.test), "labels": labels,
                          "default_recipe": {k: ds[k] for k in ("ua", "accuracy", "macro_f1")},
                          "compare_svm": {k: svm[k] for k in ("ua", "accuracy", "macro_f1")}}
    return {"protocol": "leave one corpus out (uem-es, emovo, emodb, ased); ComParE + SVM with C = 1e-4",
            "recipe": recipe,
            "date": time.strftime("%Y-%m-%d"), "corpora": rows,
            "train_seconds": network["train_seconds"]}


def run_ds(method: str, recipe: dict, runs: Path, corpus: Path, threads: int) -> dict:
    from ser_node.train.experiment import TrainConfig, run_experiment

    config = TrainConfig.from_mapping({**TrainConfig().to_mapping(), "corpus": {"kind": "emomatch",
                                                                                "path": str(corpus)},
                                       "protocol": "loso", **recipe, "threads": threads})
    result = run_experiment(config, runs / method, resume=True)
    report = json.loads((result.run_dir / "report.json").read_text())
    folds = [{"fold": f["fold"], "metrics": f["metrics"]} for f in report["folds"]]
    predictions = []
    for fold in report["folds"]:
        fold_result = json.loads((result.run_dir / fold["fold"] / "result.json").read_text())
        predictions += [(p["label"], p["predicted"]) for p in fold_result["predictions"]]
    return {"folds": folds, "predictions": predictions, "train_seconds": report["train_seconds"],
            "recipe": recipe}


def run_tta(run_dir: Path, corpus: Path, speeds: tuple[float, ...] = (0.85, 0.925, 1.0, 1.075, 1.15)) -> dict:
    """Test-time augmentation on a finished LOSO run's fold models (the `default` method's)."""
    import torch
    import yaml

    from ser_node.inference.features import FeatureExtractor
    from ser_node.train.config import TrainConfig
    from ser_node.train.data import AudioBank, speed_perturb
    from ser_node.train.loop import load_trained_network

    if not (run_dir / "report.json").exists():
        raise SystemExit(f"{run_dir} has no finished LOSO run: run the `default` method first")
    config = TrainConfig.from_mapping(yaml.safe_load((run_dir / "config.yaml").read_text()))
    clips = load_emomatch(corpus).clips
    extractor, bank = FeatureExtractor(config.feature_config()), AudioBank()
    bank.load(clips)
    folds, predictions = [], []
    began = time.perf_counter()
    for fold_dir in sorted(run_dir.glob("speaker_*")):
        model = load_trained_network(fold_dir, config)
        test = [c for c in clips if f"speaker_{c.speaker}" == fold_dir.name]
        log_probabilities = []
        for speed in speeds:
            images = torch.from_numpy(np.stack([extractor(speed_perturb(bank[c], speed)) for c in test]))
            with torch.no_grad():
                log_probabilities.append(torch.log_softmax(model(images), dim=1).numpy())
        predicted = [EMOTIONS[i] for i in np.mean(log_probabilities, axis=0).argmax(axis=1)]
        truth = [c.label for c in test]
        folds.append({"fold": fold_dir.name, "metrics": compute_metrics(truth, predicted, EMOTIONS)})
        predictions += list(zip(truth, predicted))
    return {"folds": folds, "predictions": predictions, "train_seconds": time.perf_counter() - began,
            "recipe": {"tta_speeds": list(speeds)}}


def run_int8(run_dir: Path, corpus: Path, work: Path) -> dict:
    """The same LOSO fold models in fp32 and int8 ONNX (int8 calibrated on 200 clips of the fold's own training
    speakers, never the test speaker): what the node's precision choice costs in UA, and how often they agree."""
    import yaml

    from ser_node.inference.classifier import Classifier
    from ser_node.inference.features import FeatureExtractor
    from ser_node.train.config import TrainConfig
    from ser_node.train.export import export_run, quantize_int8

    config = TrainConfig.from_mapping(yaml.safe_load((run_dir / "config.yaml").read_text()))
    clips = load_emomatch(corpus).clips
    extractor = FeatureExtractor(config.feature_config())
    rows, agree, total = [], 0, 0
    for fold_dir in sorted(run_dir.glob("speaker_*")):
        speaker = fold_dir.name.removeprefix("speaker_")
        fp32 = work / "int8" / f"{speaker}.onnx"
        if not fp32.exists():
            export_run(run_dir, fp32, int8=False, fold=fold_dir.name)
        int8 = fp32.with_suffix(".int8.onnx")
        if not int8.exists():
            train = [c for c in clips if c.speaker != speaker]
            chosen = np.random.default_rng(0).permutation(len(train))[:200]
            quantize_int8(fp32, int8, np.stack([extractor(load_audio(train[i].path)) for i in chosen]))
        test = [c for c in clips if c.speaker == speaker]
        audio = [load_audio(c.path) for c in test]
        predicted = {p: [EMOTIONS[i] for i in Classifier(path).predict(audio).argmax(axis=1)]
                     for p, path in (("fp32", fp32), ("int8", int8))}
        truth = [c.label for c in test]
        rows.append({"fold": fold_dir.name, **{f"ua_{p}": compute_metrics(truth, v, EMOTIONS)["ua"]
                                               for p, v in predicted.items()}})
        agree += sum(a == b for a, b in zip(predicted["fp32"], predicted["int8"]))
        total += len(test)
        print(f"{fold_dir.name}: UA fp32 {rows[-1]['ua_fp32']:.3f}  int8 {rows[-1]['ua_int8']:.3f}", flush=True)
    summary = {p: float(np.mean([r[f"ua_{p}"] for r in rows])) for p in ("fp32", "int8")}
    print(f"mean UA fp32 {summary['fp32']:.3f}  int8 {summary['int8']:.3f}  top-1 agreement {agree / total:.3f}")
    return {"run": str(run_dir.name), "date": time.strftime("%Y-%m-%d"), "folds": rows, "mean_ua": summary,
            "top1_agreement": agree / total, "protocol": "LOSO, 12 speakers of uem-es, same fold models"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "data" / "uem-es")
    parser.add_argument("--methods", default="egemaps_svm,compare_svm,ds_svc,ds_fc,default,default_tta")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "work", help="caches and training runs")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the DeepSpectrum trainings")
    args = parser.parse_args()
    corpus = load_emomatch(args.corpus)
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "accuracy.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for method in args.methods.split(","):
        print(f"== {method}", flush=True)
        if method in OPENSMILE_SETS:
            outcome = run_opensmile_svm(corpus.clips, OPENSMILE_SETS[method], args.work / "cache" / "opensmile")
        elif method == "default":
            import yaml

            recipe = {k: v for k, v in yaml.safe_load((ROOT / "config" / "train_default.yaml").read_text()).items()
                      if k not in ("corpus", "protocol")}
            outcome = run_ds("default", recipe, args.work / "runs", args.corpus, args.threads)
        elif method == "default_tta":
            outcome = run_tta(args.work / "runs" / "default", args.corpus)
        elif method in ("pretrained", "pretrained_teacher"):
            backbone = pretrained_backbone(args.work, args.corpus.parent, method.endswith("teacher"), args.threads)
            recipe = {**default_recipe(), **FINE_TUNE, "backbone_weights": str(backbone)}
            outcome = run_ds(method, recipe, args.work / "runs", args.corpus, args.threads)
        elif method == "adaptation":
            write_json(args.out / "accuracy_adaptation.json", run_adaptation(args.work, args.corpus))
            continue
        elif method == "int8":
            run_dir = next(d for d in (args.work / "runs" / "default", args.work / "runs" / "default_12ep")
                           if (d / "report.json").exists())
            write_json(args.out / "accuracy_int8.json", run_int8(run_dir, args.corpus, args.work))
            continue
        elif method == "loco":
            loco = run_loco(args.work, args.corpus.parent, args.threads)
            write_json(args.out / "accuracy_loco.json", loco)
            continue
        elif method in DS_RECIPES:
            outcome = run_ds(method, DS_RECIPES[method], args.work / "runs", args.corpus, args.threads)
        else:
            parser.error(f"unknown method {method}")
        truth, predicted = zip(*outcome.pop("predictions"))
        pooled = compute_metrics(truth, predicted, EMOTIONS)
        # Re-read: another bench process (another method, the other core) may have written rows meanwhile.
        results = json.loads(results_path.read_text()) if results_path.exists() else {}
        results[method] = {**outcome, "summary": summarise_folds([f["metrics"] for f in outcome["folds"]]),
                           "pooled": pooled, "protocol": "LOSO, 12 speakers of uem-es",
                           "date": time.strftime("%Y-%m-%d")}
        plot_confusion(pooled["confusion"], EMOTIONS, args.out / f"confusion_{method}.png",
                       f"{method} · LOSO (12 folds) · pooled")
        write_json(results_path, results)
        s = results[method]["summary"]
        print(f"{method}: UA {s['ua']['mean']:.3f} ± {s['ua']['std']:.3f}  accuracy {s['accuracy']['mean']:.3f}",
              flush=True)
    write_table(results, args.out)
    return 0


def adaptation_table(out: Path) -> str:
    path = out / "accuracy_adaptation.json"
    if not path.exists():
        return ""
    data = json.loads(path.read_text())
    buckets = RANK_NAMES
    rows = [{"system": name, "UA": f"{r['ua_mean']:.3f} ± {r['ua_std']:.3f}",
             **{f"UA, utterances {b}": f"{r['ua_by_rank'][b]:.3f}" for b in buckets}}
            for name, r in data["rows"].items()]
    return (f"\n## Adaptation to the speaker at run time ({data['date']})\n\n{data['protocol']}. UA mean ± sd over "
            "the 12 test speakers (all orders pooled per speaker); by rank: pooled UA of the clips heard at that "
            "position in their speaker's order.\n\n"
            + format_table(rows, ["system", "UA", *[f"UA, utterances {b}" for b in buckets]]) + "\n")


def loco_table(out: Path) -> str:
    path = out / "accuracy_loco.json"
    if not path.exists():
        return ""
    data = json.loads(path.read_text())
    rows = [{"held-out corpus": name, "test clips": r["n_test"], "labels": len(r["labels"]),
             "chance UA": f"{1 / len(r['labels']):.3f}",
             "default recipe UA": f"{r['default_recipe']['ua']:.3f}", "ComParE + SVM UA": f"{r['compare_svm']['ua']:.3f}",
             "default recipe acc.": f"{r['default_recipe']['accuracy']:.3f}",
             "ComParE + SVM acc.": f"{r['compare_svm']['accuracy']:.3f}"}
            for name, r in data["corpora"].items()]
    recipe = ", ".join(f"{k} {v}" for k, v in data["recipe"].items() if k in ("epochs", "patience", "balance"))
    return (f"\n## Leave one corpus out ({data['date']})\n\n{data['protocol']}: trained on the other three "
            f"corpora, scored on the held-out corpus's own labels. Default recipe with {recipe}; "
            f"{data['train_seconds'] / 60:.0f} min of training.\n\n"
            + format_table(rows, list(rows[0])) + "\n")


def write_table(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    for method, r in results.items():
        s = r["summary"]
        rows.append({"method": method, "UA": f"{s['ua']['mean']:.3f} ± {s['ua']['std']:.3f}",
                     "accuracy": f"{s['accuracy']['mean']:.3f} ± {s['accuracy']['std']:.3f}",
                     "macro-F1": f"{s['macro_f1']['mean']:.3f} ± {s['macro_f1']['std']:.3f}",
                     "train time": f"{r['train_seconds'] / 60:.0f} min",
                     **{f"R {c[:4]}": f"{r['pooled']['per_class'][c]['recall']:.2f}" for c in EMOTIONS}})
    columns = ["method", "UA", "accuracy", "macro-F1", "train time", *[f"R {c[:4]}" for c in EMOTIONS]]
    text = ("# Accuracy on uem-es, leave-one-speaker-out (12 folds)\n\n"
            "Mean ± standard deviation over the 12 test speakers; per-class recall (R) pooled over folds. "
            "Chance UA is 0.143.\n\n" + format_table(rows, columns) + "\n")
    text += adaptation_table(out) + loco_table(out)
    (out / "accuracy.md").write_text(text)
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=110)
    names = list(results)
    means = [results[m]["summary"]["ua"]["mean"] for m in names]
    stds = [results[m]["summary"]["ua"]["std"] for m in names]
    ax.bar(names, means, yerr=stds, capsize=4, color="#3b7dd8")
    ax.axhline(1 / 7, color="grey", linestyle="--", label="chance")
    ax.set_ylabel("UA (LOSO mean ± sd)")
    ax.set_ylim(0, 1)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "ua_by_method.png")
    plt.close(fig)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
