"""The default model's accuracy: the GE2E voice-encoder recipe against openSMILE ComParE + SVM and DS-AM, all on the
same 12 leave-one-speaker-out folds of uem-es, in one run; plus skewed speaker histories, LOCO and robustness.

Parts (--parts, default all):
  loso        one table: ComParE + SVM, encoder features (uem-es only; + the three other corpora), the shipped
              recipe (uem-es + emovo + emodb + ased + one acoustically degraded copy of every uem-es clip), heavier
              augmentation (two copies at the target's weight), DS-AM (12-epoch LOSO fold models of bench/robustness.py, rows
              left out until that run is complete) and DS-AM x encoder late fusion, each plain and speaker-normalised;
              mean ± sd over the 12 test speakers, and a paired comparison with ComParE in the same regime (wins of
              12, Wilcoxon signed-rank p). Normalised: each test speaker's clips in 5 random orders, each clip
              centred by the mean of that speaker's earlier clips (the node's SpeakerAdapter), the first 5 judged
              unnormalised.
  skew        real speakers are mostly neutral: each test clip centred by 20 other clips of its speaker drawn
              with 1/7 (balanced), 50 % and 70 % neutral; the shipped recipe, the recipe trained on such skewed
              histories (history_neutral_share) and ComParE + SVM.
  frontend    the causal front end (what the node computes while people speak) against the wheel's
              whole-utterance one it replaced: the shipped recipe and uem-es only, same folds, plain and normalised
              (front end 1's features come from the cache its package version filled).
  loco        leave one corpus out (train on three corpora, test on the fourth on its own labels), plain and
              normalised, the shipped recipe and ComParE + SVM (C 1e-4, as bench/accuracy.py --methods loco).
  robustness  room RT60 0.6 s at 2 m and robot noise at 10 dB (ser_node/train/acoustics.py, the robustness bench's
              conditions and seeds) against clean: each clip by its own fold's model.
  rooms       multi-condition training: recipe variants with room copies (each training speaker heard in one
              simulated room per copy), each judged clean, in the test room and under robot noise; and a variant
              chosen per test speaker on the other 11 speakers' folds (honest selection).
  heads       head capacity: model v0.4's linear heads against one-hidden-layer MLP heads on the same rows (both
              heads, or the normalised one only), judged as in rooms, with the same honest choice.
  ensemble    MLP normalised heads averaged over 5 seeds (model v0.5) against one MLP and the linear heads.
  copies      model v0.5's heads with 4 room copies of every uem-es clip instead of 2 (weight 1 or 0.5).
  consistency model v0.5's heads with each copy's hidden units pulled towards its clean clip's (head_consistency),
              paired consistency as in teacher-student training for far-field speech.
  dereverb    front end 3 (late reverberation suppressed before the encoder) against model v0.4's front end 2,
              every training and test clip through each, judged as in rooms, with the same honest choice.
  wpe         front end 4 (causal block-online WPE on the STFT frames) against front end 2 under the shipped
              recipe (one MLP seed each), every training and test clip through each, judged as in rooms.
  scale       per-voice variance normalisation (speaker_scale: the normalised head reads the centred features
              divided by the voice's spread) against the shipped recipe (model v0.7), judged as in rooms.
  ceiling     how far heads can take the room: the shipped recipe with the benchmark's own test room as one more
              room copy of the training speakers (an oracle no robot has), judged as in rooms.
  siteroom    what knowing the robot's room buys: one more room copy at the test room's RT60 and distance, in the
              room copies' simulated rooms (not the test room), room weight 2, against the shipped recipe.
  widerooms   room copies with a simulated room shape per speaker and copy (room_shapes own) instead of 4 shared
              shapes: 2 copies, 4, and 4 at weight 0.5, against the shipped recipe, with the same honest choice.
  mixture     v0.8.1's heads and the own-shape variant's (4 copies, weight 0.5) as one ensemble: their
              log-probabilities mixed at weights 0-1, judged as in rooms, with the honest choice of the weight.
  headsets    the mixture as one model (recipe head_sets): a head set on own-shape room copies fitted in v0.8.1's
              standardisation, logits averaged with v0.8.1's; and, as a control, a second set on v0.8.1's rows.
  warmup      a new voice's first utterances: warm-up and offset shrinkage of the normalisation, with the same
              honest choice.
  balance     a voice's offset as the class-balanced mean of its history (history_balance, weighed by the plain
              head) against the plain mean: random orders clean, in the room and in noise, and skewed histories.
  attention   attentive pooling over the encoder's frames, trained per fold (uem-es only), then the linear heads.
  finetune    the same with the encoder's layer 3 fine-tuned at a low learning rate (~40 min on one core).
  report      bench/results/voice.md and voice.png from voice.json.

  .venv/bin/python bench/voice.py                  # everything (~10 min once features are cached)
  .venv/bin/python bench/voice.py --parts loso,report
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from accuracy import RANK_NAMES, fit_svm, ua_by_rank, ua_per_speaker  # noqa: E402

from ser_node.files import save_bytes_atomic  # noqa: E402
from ser_node.inference.adaptation import SpeakerAdapter, adapt_log_probabilities  # noqa: E402
from ser_node.labels import EMOTIONS  # noqa: E402
from ser_node.train.reports import compute_metrics, format_table, write_json  # noqa: E402
from ser_node.train.teacher import opensmile_functionals  # noqa: E402
from ser_node.train.voice_recipe import (  # noqa: E402
    AUGMENTED,
    ROOMS,
    Copies,
    VoiceData,
    VoiceHeads,
    VoiceRecipe,
    augmented_copies,
    averaged_heads,
    causal_normalisation,
    centre_by_speaker,
    copy_features,
    fit_head_sets,
    fit_heads,
    head_set_copies,
    head_set_recipes,
    load_voice_data,
    predict_in_order,
    speaker_orders,
    training_copies,
)

DATA = ROOT.parent / "shared" / "data"
SKEWS = {"balanced": None, "50 % neutral": 0.5, "70 % neutral": 0.7}
SKEWED_TRAINING = (1 / 7, 0.7)  # neutral share of the training histories, drawn uniformly per history
SKEWED_NAME = "recipe trained on histories of 14-70 % neutral"
SHIPPED = "encoder, shipped recipe (+ 3 corpora, 1 augmented copy, 2 room copies)"  # config/train_voice.yaml


def shipped_recipe(path: Path = ROOT / "config" / "train_voice.yaml") -> VoiceRecipe:
    """The recipe of a ser_train_voice config (default: the shipped model's), corpus paths made absolute."""
    import yaml

    values = yaml.safe_load(path.read_text())
    values["corpora"] = [{**c, "path": str((ROOT / c["path"]).resolve())} for c in values["corpora"]]
    return VoiceRecipe.from_mapping(values)


def v081_recipe() -> VoiceRecipe:
    """Model v0.8.1's recipe: the shipped one without v0.9's second head set. The parts judged against v0.8.1
    (SHIPPED_V081) train it, so they still measure what their rows are named after."""
    return dataclasses.replace(shipped_recipe(), head_sets=[])


# ------------------------------------------------------------------ records and summaries

class Records:
    """Predictions per system: (test speaker, rank in its order, truth, predicted)."""

    def __init__(self) -> None:
        self.rows: dict[str, list[tuple[str, int, str, str]]] = {}

    def add(self, system: str, speaker: str, truths, probabilities: np.ndarray) -> None:
        predicted = [EMOTIONS[i] for i in np.argmax(probabilities, axis=1)]
        self.rows.setdefault(system, []).extend(
            (speaker, rank, t, p) for rank, (t, p) in enumerate(zip(truths, predicted), start=1))

    def summary(self, system: str) -> dict:
        rows = self.rows[system]
        ua = ua_per_speaker(rows)
        pooled = compute_metrics([r[2] for r in rows], [r[3] for r in rows], EMOTIONS)
        return {"ua_mean": float(np.mean(list(ua.values()))), "ua_std": float(np.std(list(ua.values()))),
                "per_speaker": ua, "ua_by_rank": ua_by_rank(rows), "confusion": pooled["confusion"],
                "recall": {c: pooled["per_class"][c]["recall"] for c in EMOTIONS}}


def paired(a: dict[str, float], b: dict[str, float]) -> dict:
    """a against b over the same speakers: mean difference, wins of a, Wilcoxon signed-rank p (two-sided)."""
    from scipy.stats import wilcoxon

    speakers = sorted(set(a) & set(b))
    diff = np.array([a[s] - b[s] for s in speakers])
    p = float(wilcoxon(diff).pvalue) if np.any(diff != 0) else 1.0
    return {"difference": float(diff.mean()), "wins": int((diff > 0).sum()), "ties": int((diff == 0).sum()),
            "speakers": len(speakers), "wilcoxon_p": p}


# ------------------------------------------------------------------ systems

class CompareSystem:
    """ComParE_2016 functionals + linear SVM (C by speaker-grouped inner CV), plain and trained on speaker-centred
    features; fitted per test speaker, cached (the fits are the slow part)."""

    def __init__(self, work: Path, x: np.ndarray, y: np.ndarray, speakers: np.ndarray) -> None:
        self.work, self.x, self.y, self.speakers = work, x, y, speakers
        self.cache = work / "voice_compare_svm.pkl"

    def models(self) -> dict:
        import pickle

        models = pickle.loads(self.cache.read_bytes()) if self.cache.exists() else {}
        for t in sorted(set(self.speakers)):
            if t in models:
                continue
            train = self.speakers != t
            grid = (1e-5, 1e-4, 1e-3, 1e-2)
            plain = fit_svm(self.x[train], self.y[train], self.speakers[train], grid, 4).best_estimator_
            centred = centre_by_speaker(self.x[train], self.speakers[train])
            normalised = fit_svm(centred, self.y[train], self.speakers[train], grid, 4).best_estimator_
            models[t] = (plain, normalised, self.x[train].mean(axis=0))
            self.cache.parent.mkdir(parents=True, exist_ok=True)
            self.cache.write_bytes(pickle.dumps(models))
            print(f"ComParE SVMs for {t} fitted", flush=True)
        return models


def compare_baseline(work: Path, target: VoiceData) -> tuple[np.ndarray, dict]:
    """ComParE_2016 functionals of the target clips (cached per clip) and the per-test-speaker SVMs."""
    x = opensmile_functionals(target.paths, "ComParE_2016", work / "cache" / "opensmile").astype(np.float64)
    return x, CompareSystem(work, x, target.labels, target.speakers).models()


def compare_scores(svms: tuple, x: np.ndarray, recipe: VoiceRecipe) -> tuple[np.ndarray, np.ndarray]:
    """One speaker's clips in the order heard: the plain SVM's margins, and the normalised regime's (the centred
    SVM on each clip minus the mean of the earlier ones, the plain margins during warm-up)."""
    plain_svm, centred_svm, global_mean = svms
    margins = plain_svm.decision_function(x)
    offsets, _, active = causal_normalisation(x - global_mean, recipe)
    normalised = centred_svm.decision_function(x - global_mean - offsets)
    return margins, np.where(active[:, None], normalised, margins)


def dsam_predictions() -> dict[str, np.ndarray] | None:
    """Per clip path: DS-AM probabilities from its LOSO fold model (the 12-epoch run of bench/robustness.py, which
    trains it: ~75 min on one core); None, and the DS-AM rows left out, while that run is incomplete."""
    from robustness import NETWORK_RUN

    run = ROOT / "bench" / "work" / "runs" / NETWORK_RUN
    folds = sorted(run.glob("speaker_*/result.json"))
    if len(folds) < 12:
        print(f"DS-AM rows left out: {run} has {len(folds)} of 12 finished folds "
              "(bench/robustness.py --parts offline trains them)", flush=True)
        return None
    out = {}
    for fold in folds:
        out.update({p["path"]: np.array(p["scores"], dtype=np.float64)
                    for p in json.loads(fold.read_text())["predictions"]})
    return out


# ------------------------------------------------------------------ parts

def fold_heads(data: VoiceData, recipe: VoiceRecipe, test_speaker: str, pooled_corpora: bool,
               copies: list[Copies] | None = None) -> VoiceHeads:
    """The heads of one LOSO fold: trained without the test speaker (and without the other corpora unless
    `pooled_corpora`), with the recipe's augmentation copies of the training speakers' clips (`copies`, the first
    head set's) and the recipe's further head sets, averaged as the model averages them."""
    return averaged_heads(fold_head_sets(data, recipe, test_speaker, pooled_corpora, copies))


def fold_head_sets(data: VoiceData, recipe: VoiceRecipe, test_speaker: str, pooled_corpora: bool,
                   copies: list[Copies] | None = None) -> list[VoiceHeads]:
    """Each head set of one LOSO fold (fold_heads), before averaging."""
    train = data.speakers != test_speaker
    if not pooled_corpora:
        train &= data.corpora == data.target
    others = [training_copies(data, r, progress=False) for r in head_set_recipes(recipe)[1:]]
    return fit_head_sets(data, recipe, [copies or [], *others], train)


def variants(recipe: VoiceRecipe) -> dict[str, tuple[VoiceRecipe, bool]]:
    """The ablation: name -> (recipe, with the other corpora)."""
    clean = dataclasses.replace(recipe, augment_copies=0, room_copies=0, head_sets=[])
    heavy = dataclasses.replace(recipe, augment_copies=2, augment_weight=recipe.target_weight, room_copies=0,
                                head_sets=[])
    return {"encoder, uem-es only, no augmentation": (clean, False),
            "encoder, + 3 corpora, no augmentation": (clean, True),
            SHIPPED: (recipe, True),
            "encoder, + 3 corpora, 2 augmented copies at the target's weight": (heavy, True)}


def run_loso(work: Path) -> dict:
    recipe = shipped_recipe()
    data = load_voice_data(recipe)
    target = data.subset(data.corpora == data.target)
    clips_x, compare = compare_baseline(work, target)
    dsam = dsam_predictions()
    systems = variants(recipe)
    copies = {name: training_copies(data, r) for name, (r, _) in systems.items()}
    records = Records()
    began = time.perf_counter()
    for t in sorted(set(target.speakers)):
        test = np.where(target.speakers == t)[0]
        heads = {name: fold_heads(data, r, t, pooled, copies[name]) for name, (r, pooled) in systems.items()}
        for order in speaker_orders(len(test), t):
            rows = test[order]
            truth = target.labels[rows]
            margins, normalised = compare_scores(compare[t], clips_x[rows], recipe)
            records.add("ComParE + SVM | plain", t, truth, margins)
            records.add("ComParE + SVM | normalised", t, truth, normalised)
            for name, h in heads.items():
                z = h.standardise(target.features[rows])
                records.add(f"{name} | plain", t, truth, predict_in_order(h, z, recipe, normalise=False))
                records.add(f"{name} | normalised", t, truth, predict_in_order(h, z, recipe, normalise=True))
            if dsam:
                scores = np.stack([dsam[p] for p in np.array(target.paths)[rows]])
                adapter = SpeakerAdapter()
                adapted = np.stack([adapt_log_probabilities(adapter, s) for s in scores])
                records.add("DS-AM (12 epochs) | plain", t, truth, scores)
                records.add("DS-AM (12 epochs) | normalised", t, truth, adapted)
                shipped = heads[SHIPPED]
                z = shipped.standardise(target.features[rows])
                for mode, normalise, ds in (("plain", False, scores), ("normalised", True, adapted)):
                    enc = predict_in_order(shipped, z, recipe, normalise)
                    fused = np.log(np.clip(enc, 1e-7, 1)) + np.log(np.clip(ds, 1e-7, 1))
                    records.add(f"fusion: shipped recipe x DS-AM | {mode}", t, truth, fused)
        print(f"LOSO fold {t} done", flush=True)
    rows = {name: records.summary(name) for name in records.rows}
    for name, row in rows.items():
        regime = name.split(" | ")[1]
        reference = rows[f"ComParE + SVM | {regime}"]["per_speaker"]
        row["vs_compare"] = paired(row["per_speaker"], reference)
    return {"date": time.strftime("%Y-%m-%d %H:%M"), "seconds": time.perf_counter() - began,
            "protocol": "LOSO over the 12 speakers of uem-es (same folds for every row); normalised: each test "
                        "speaker's clips in 5 random orders, centred by the mean of that speaker's earlier clips, "
                        "the first 5 unnormalised; ComParE + SVM with C from (1e-5 .. 1e-2) by 4-fold "
                        "speaker-grouped inner CV, plain and trained on speaker-centred features",
            "recipe": recipe.to_mapping(), "rows": rows}


def run_frontend(work: Path, before: int = 1) -> dict:
    """The front end the model reads, before and after it became causal (voice_frontend.StreamingFrontEnd): the
    same LOSO folds, orders and recipes on features of front end `before` (read from the cache that version of the
    package filled: run its bench/voice.py or ser_train_voice first) and of this version's."""
    from ser_node.inference.voice_frontend import FRONTEND_VERSION

    # front end 1 caches hold no room copies (nor the head set's)
    recipe = dataclasses.replace(shipped_recipe(), room_copies=0, head_sets=[])
    systems = {name: value for name, value in variants(recipe).items()
               if name in (SHIPPED, "encoder, uem-es only, no augmentation")}
    records = Records()
    for version in (before, FRONTEND_VERSION):
        data = load_voice_data(dataclasses.replace(recipe, frontend_version=version))
        target = data.subset(data.corpora == data.target)
        copies = {name: augmented_copies(data, dataclasses.replace(r, frontend_version=version))
                  for name, (r, _) in systems.items()}
        for t in sorted(set(target.speakers)):
            test = np.where(target.speakers == t)[0]
            heads = {name: fold_heads(data, r, t, pooled, copies[name]) for name, (r, pooled) in systems.items()}
            for order in speaker_orders(len(test), t):
                rows = test[order]
                for name, h in heads.items():
                    z = h.standardise(target.features[rows])
                    for mode, normalise in (("plain", False), ("normalised", True)):
                        records.add(f"{name}, front end {version} | {mode}", t, target.labels[rows],
                                    predict_in_order(h, z, recipe, normalise=normalise))
        print(f"front end {version} done", flush=True)
    rows = {name: records.summary(name) for name in records.rows}
    for name, row in rows.items():
        system, regime = name.split(" | ")
        reference = f"{system.replace(f'front end {FRONTEND_VERSION}', f'front end {before}')} | {regime}"
        row["vs_before"] = paired(row["per_speaker"], rows[reference]["per_speaker"])
    table = [{"system": name.split(" | ")[0], "regime": name.split(" | ")[1],
              "UA mean ± sd": f"{row['ua_mean']:.3f} ± {row['ua_std']:.3f}",
              "vs front end 1": (f"{row['vs_before']['difference']:+.3f} ({row['vs_before']['wins']}/12 better, "
                                 f"p {row['vs_before']['wilcoxon_p']:.2f})")
              if name.split(" | ")[0].endswith(f"front end {FRONTEND_VERSION}") else ""}
             for name, row in rows.items()]
    print(format_table(table, list(table[0])), flush=True)
    return {"date": time.strftime("%Y-%m-%d %H:%M"), "before": before, "after": FRONTEND_VERSION,
            "protocol": "LOSO over the 12 speakers of uem-es, the loso part's folds, orders and normalisation; "
                        f"front end {before}: the wheel's whole-utterance gain and trimming; front end "
                        f"{FRONTEND_VERSION}: causal (gain from the level heard so far, trimming with 210 ms "
                        "look-ahead), what the node computes while people speak",
            "rows": rows}


def run_skew(work: Path, history: int = 20) -> dict:
    """Each test clip centred by `history` other clips of its speaker with a given neutral share."""
    recipe = shipped_recipe()
    data = load_voice_data(recipe)
    target = data.subset(data.corpora == data.target)
    clips_x, compare = compare_baseline(work, target)
    skewed = dataclasses.replace(recipe, history_neutral_share=list(SKEWED_TRAINING))
    copies = training_copies(data, recipe)
    records = Records()
    for t in sorted(set(target.speakers)):
        test = np.where(target.speakers == t)[0]
        heads = fold_heads(data, recipe, t, True, copies)
        skewed_heads = fold_heads(data, skewed, t, True, copies)
        z = heads.standardise(target.features[test])
        plain_svm, centred_svm, global_mean = compare[t]
        for order in speaker_orders(len(test), t):  # the loso part's causal regime, for the skew-trained heads
            records.add(f"{SKEWED_NAME} | causal, random order", t, target.labels[test][order],
                        predict_in_order(skewed_heads, z[order], skewed, normalise=True))
        neutral = target.labels[test] == "neutral"
        truth = target.labels[test]
        for skew, share in SKEWS.items():
            picks = skewed_histories(neutral, share, np.random.default_rng(int(t[-2:])), history)
            offsets = np.stack([z[p].mean(axis=0) for p in picks])
            records.add(f"shipped recipe | {skew}", t, truth, heads.normalised_probabilities(z, offsets))
            records.add(f"{SKEWED_NAME} | {skew}", t, truth, skewed_heads.normalised_probabilities(z, offsets))
            x = clips_x[test] - global_mean
            svm_offsets = np.stack([x[p].mean(axis=0) for p in picks])
            records.add(f"ComParE + SVM | {skew}", t, truth, centred_svm.decision_function(x - svm_offsets))
    return {"date": time.strftime("%Y-%m-%d %H:%M"),
            "protocol": f"LOSO, uem-es; each test clip centred by {history} other clips of its speaker drawn with the "
                        "given neutral share (neutral clips drawn with replacement where a speaker has too few)",
            "rows": {name: records.summary(name) for name in records.rows}}


def run_loco(work: Path) -> dict:
    recipe = shipped_recipe()
    data = load_voice_data(recipe)
    x = opensmile_functionals(data.paths, "ComParE_2016", work / "cache" / "opensmile")
    loco_copies = head_set_copies(data, recipe)
    out = {}
    for held in np.unique(data.corpora):
        train, test = data.corpora != held, np.where(data.corpora == held)[0]
        labels = sorted(set(data.labels[test]))
        allowed = [EMOTIONS.index(label) for label in labels]
        if held == data.target:  # no target corpus among the training ones: no target weight, no augmentation
            fold, copies = dataclasses.replace(data, target="none"), [[] for _ in loco_copies]
        else:
            fold, copies = data, loco_copies
        heads = averaged_heads(fit_head_sets(fold, recipe, copies, train))
        svm = fit_svm(x[train], data.labels[train], data.speakers[train], (1e-4,), 2).best_estimator_
        row = {"n_test": len(test), "labels": labels}
        for system in ("encoder plain", "encoder normalised", "ComParE + SVM plain"):
            truth, predicted = [], []
            for s in np.unique(data.speakers[test]):
                rows = test[data.speakers[test] == s]
                if system.startswith("encoder"):
                    z = heads.standardise(data.features[rows])
                    scores = predict_in_order(heads, z, recipe, system.endswith("normalised"))
                else:
                    scores = svm.decision_function(x[rows])
                pick = np.array(allowed)[np.argmax(scores[:, allowed], axis=1)]
                truth += list(data.labels[rows])
                predicted += [EMOTIONS[i] for i in pick]
            row[system] = compute_metrics(truth, predicted, labels)["ua"]
        out[str(held)] = row
        print(f"LOCO {held}: {row}", flush=True)
    return {"date": time.strftime("%Y-%m-%d %H:%M"),
            "protocol": "leave one corpus out; trained on the other three (the target corpus weight applies to "
                        "uem-es when it is among them), scored on the held-out corpus's own labels; normalised: each "
                        "held-out speaker's clips in corpus order, centred by their earlier clips; ComParE + SVM "
                        "C = 1e-4", "corpora": out}


def test_conditions():
    from robustness import Condition

    return {"clean": Condition(), "room RT60 0.6 s at 2 m": Condition(rt60_s=0.6, distance_m=2.0),
            "robot noise 10 dB": Condition(noise="robot", snr_db=10.0)}


def condition_features(target: VoiceData, recipe: VoiceRecipe):
    """The robustness bench's Degrader (its seeds, room seed 0) and the encoder features of every uem-es clip under
    each test condition (cached per condition)."""
    from robustness import Degrader

    from ser_node.train.corpora import load_emomatch
    from ser_node.train.voice_features import clip_features, clip_prosody

    clips = load_emomatch(DATA / "uem-es").clips
    assert [str(c.path) for c in clips] == list(target.paths)
    degrader = Degrader(clips)
    features = {}
    for name, condition in test_conditions().items():
        transform: Callable | None = None if name == "clean" else (lambda audio, i, c=condition: degrader(i, c))
        tag = "clean" if name == "clean" else condition.name.replace(" ", "_")
        features[name] = clip_features(target.paths, recipe.feature_cache, tag=tag, transform=transform,
                                       frontend_version=recipe.frontend_version)[0]
        if recipe.prosody_weight:  # the prosody block after the encoder's features, as VoiceData keeps it
            features[name] = np.hstack([features[name], clip_prosody(target.paths, recipe.feature_cache, tag,
                                                                     transform)])
    return degrader, features


def recipe_rows(recipe: VoiceRecipe) -> tuple[VoiceData, VoiceData, dict[str, np.ndarray], list]:
    """What a LOSO part of this recipe reads: every clip of its corpora, the target corpus's clips, their features
    under each test condition and the recipe's training copies."""
    data = load_voice_data(recipe)
    target = data.subset(data.corpora == data.target)
    return data, target, condition_features(target, recipe)[1], training_copies(data, recipe)


LINEAR = {"head_hidden": 0, "plain_head_hidden": None, "head_ensemble": 1, "prosody_weight": 0.0, "head_sets": []}
PREVIOUS = LINEAR  # model v0.4's recipe (linear heads; same rows, same serving), against this one's
SIMPLE = {**LINEAR, "augment_copies": 0, "room_copies": 0}  # uem-es only (not pooled with the other corpora)


def run_robustness(work: Path) -> dict:
    """The shipped recipe, model v0.4's (linear heads), the simple recipe (uem-es only, no copies, linear heads)
    and ComParE + SVM, clean, in the test room and under robot noise, on the same LOSO folds and 5 orders per
    speaker."""
    from robustness import compare_features

    recipe = shipped_recipe()
    previous = dataclasses.replace(recipe, **PREVIOUS)
    data = load_voice_data(recipe)
    target = data.subset(data.corpora == data.target)
    degrader, features = condition_features(target, recipe)
    conditions = test_conditions()
    robust_work = work / "robustness"
    robust_work.mkdir(parents=True, exist_ok=True)
    simple = dataclasses.replace(recipe, **SIMPLE)
    systems = {"shipped recipe": (recipe, training_copies(data, recipe), True),
               "model v0.4's recipe": (previous, training_copies(data, previous), True),
               "simple recipe": (simple, [], False)}
    compare = {name: compare_features(degrader, c, robust_work) for name, c in conditions.items()}
    svms = compare_baseline(work, target)[1]
    records = Records()
    for t in sorted(set(target.speakers)):
        test = np.where(target.speakers == t)[0]
        heads = {label: (r, fold_heads(data, r, t, pooled, copies))
                 for label, (r, copies, pooled) in systems.items()}
        for order in speaker_orders(len(test), t):
            rows = test[order]
            truth = target.labels[rows]
            for name in conditions:
                for label, (r, h) in heads.items():
                    z = h.standardise(features[name][rows])
                    records.add(f"{label} plain | {name}", t, truth, predict_in_order(h, z, r, False))
                    records.add(f"{label} normalised | {name}", t, truth, predict_in_order(h, z, r, True))
                margins, normalised = compare_scores(svms[t], compare[name][rows].astype(np.float64), recipe)
                records.add(f"ComParE + SVM plain | {name}", t, truth, margins)
                records.add(f"ComParE + SVM normalised | {name}", t, truth, normalised)
        print(f"robustness: fold {t} done", flush=True)
    rows = {name: records.summary(name) for name in records.rows}
    for name, row in rows.items():
        regime, condition = name.split(" | ")[0].rsplit(" ", 1)[1], name.split(" | ")[1]
        row["vs_compare"] = paired(row["per_speaker"], rows[f"ComParE + SVM {regime} | {condition}"]["per_speaker"])
    return {"date": time.strftime("%Y-%m-%d %H:%M"),
            "protocol": "LOSO, uem-es, every clip of the test speaker under the condition (seeds and room seed 0 of "
                        "bench/robustness.py, never heard in training), each by its own fold's model; 5 random "
                        "orders per speaker for normalisation (each judged against the speaker's earlier clips in "
                        "the same condition); model v0.4's recipe: the shipped one with linear heads; simple recipe: "
                        "uem-es only, no augmented or room copies, linear heads, the shipped serving",
            "recipe": recipe.to_mapping(),
            "rows": {name: {k: v for k, v in row.items() if k in ("ua_mean", "ua_std", "per_speaker", "vs_compare")}
                     for name, row in rows.items()}}


ROOM_VARIANTS = {  # name -> (changes to model v0.3's recipe ("shipped" when this ran), with the other corpora)
    "simple recipe (uem-es only, no augmentation)": ({"augment_copies": 0}, False),
    "simple recipe + 2 room copies": ({"augment_copies": 0, "room_copies": 2}, False),
    "shipped recipe": ({}, True),
    "shipped + 1 room copy of uem-es": ({"room_copies": 1, "room_corpora": ["uem-es"]}, True),
    "shipped + 2 room copies of uem-es": ({"room_copies": 2, "room_corpora": ["uem-es"]}, True),
    "shipped + 1 room copy of every corpus": ({"room_copies": 1}, True),
    "shipped + 2 room copies of every corpus": ({"room_copies": 2}, True),
    "shipped + 2 room copies of every corpus, weight 0.5": ({"room_copies": 2, "room_weight": 0.5}, True),
}
SELECTION_CONDITIONS = ("clean", "room RT60 0.6 s at 2 m")  # what a variant is chosen by (normalised UA)


def run_rooms(work: Path) -> dict:
    """Multi-condition training: each recipe variant's LOSO folds judged on clean uem-es clips, in the test room
    (room seed 0, never trained on) and under robot noise, plain and normalised, 5 orders per speaker; then an
    honest choice: for each test speaker, the variant with the best mean normalised UA (clean and room) over the
    other 11 speakers' folds, scored on that speaker only."""
    base = dataclasses.replace(shipped_recipe(), **PREVIOUS)  # the variants are changes to model v0.3's recipe
    recipes = {name: (dataclasses.replace(base, **changes), pooled)
               for name, (changes, pooled) in ROOM_VARIANTS.items()}
    base_all = dataclasses.replace(base, room_copies=max(r.room_copies for r, _ in recipes.values()))
    data = load_voice_data(base)
    target = data.subset(data.corpora == data.target)
    _, features = condition_features(target, base)
    copies_all = training_copies(data, base_all)  # computes (and caches) every room copy once
    rows, seconds = judge_variants("rooms", data, target, features, copies_all, recipes)
    return choice_outcome("LOSO over the 12 speakers of uem-es; test clips clean, in room seed 0 (RT60 0.6 s at 2 m, "
                          "a room no training copy is heard in) and with robot noise at 10 dB (bench/robustness.py's "
                          "seeds); normalised: 5 random orders per speaker, centred by the speaker's earlier clips "
                          "heard in the same condition; room copies: each training speaker heard in one room per "
                          "copy (RT60 0.3-0.9 s, 0.5-3 m, room seeds 1-4)",
                          {name: {"changes": ROOM_VARIANTS[name][0], "other_corpora": ROOM_VARIANTS[name][1]}
                           for name in recipes}, rows, seconds, list(features))


def judge_variants(part: str, data: VoiceData, target: VoiceData, features: dict[str, np.ndarray], copies_all: list,
                   recipes: dict[str, tuple[VoiceRecipe, bool]]) -> tuple[dict, float]:
    """Every variant (recipe, with the other corpora) on every LOSO fold in every condition: the summary rows
    "<variant> | <condition> | <mode>" and the seconds it took."""
    records = Records()
    began = time.perf_counter()
    for t in sorted(set(target.speakers)):
        test = np.where(target.speakers == t)[0]
        for name, (recipe, pooled) in recipes.items():
            copies = recipe_copies(data, copies_all, recipe)
            judge_in_conditions(records, name, fold_heads(data, recipe, t, pooled, copies), recipe, target, test,
                                features)
        print(f"{part}: fold {t} done ({time.perf_counter() - began:.0f} s)", flush=True)
    return {name: records.summary(name) for name in records.rows}, time.perf_counter() - began


def recipe_copies(data: VoiceData, copies_all: list, recipe: VoiceRecipe) -> list:
    """The copies a recipe trains with, out of every copy computed for the most demanding variant: its augmented
    copies and its room copies (of its room corpora only)."""
    rooms = [c if recipe.room_corpora is None else _rows_of(c, np.isin(data.corpora[c.rows], recipe.room_corpora))
             for c in copies_all if c.corpus == ROOMS][:recipe.room_copies]
    return [c for c in copies_all if c.corpus == AUGMENTED][:recipe.augment_copies] + rooms


def judge_in_conditions(records: Records, name: str, heads: VoiceHeads, recipe: VoiceRecipe, target: VoiceData,
                        test: np.ndarray, features: dict[str, np.ndarray]) -> None:
    """One fold's heads on its test speaker's clips in each condition, 5 orders, plain and normalised: records
    "<name> | <condition> | <mode>"."""
    judge_orders(records, lambda x, normalise: {name: predict_in_order(heads, heads.standardise(x), recipe,
                                                                        normalise)}, target, test, features)


def judge_orders(records: Records, predict: Callable[[np.ndarray, bool], dict[str, np.ndarray]], target: VoiceData,
                 test: np.ndarray, features: dict[str, np.ndarray]) -> None:
    """The test speaker's clips in each condition, 5 orders, plain and normalised: `predict(features in order,
    normalise)` gives each system's probabilities, recorded as "<system> | <condition> | <mode>"."""
    t = str(target.speakers[test[0]])
    for order in speaker_orders(len(test), t):
        rows = test[order]
        for condition, x in features.items():
            for mode, normalise in (("plain", False), ("normalised", True)):
                for name, probabilities in predict(x[rows], normalise).items():
                    records.add(f"{name} | {condition} | {mode}", t, target.labels[rows], probabilities)


def honest_selection(rows: dict, names: list[str], conditions: list[str]) -> dict:
    """Per test speaker, the variant with the best mean normalised UA over SELECTION_CONDITIONS on the other
    speakers' folds, and what the chosen variants score on their own speakers, per condition and mode."""
    speakers = sorted(rows[f"{names[0]} | clean | normalised"]["per_speaker"])
    chosen, _ = honest_choice({name: {s: np.mean([rows[f"{name} | {c} | normalised"]["per_speaker"][s]
                                                  for c in SELECTION_CONDITIONS]) for s in speakers}
                               for name in names})
    selected = {}
    for condition in conditions:
        for mode in ("plain", "normalised"):
            per = {t: rows[f"{chosen[t]} | {condition} | {mode}"]["per_speaker"][t] for t in speakers}
            selected[f"{condition} | {mode}"] = {"ua_mean": float(np.mean(list(per.values()))),
                                                 "ua_std": float(np.std(list(per.values()))), "per_speaker": per}
    return {"rule": "per test speaker, the variant with the best mean normalised UA over clean and room on the "
                    "other 11 speakers' folds", "chosen": chosen, "rows": selected}


HEAD_BASELINE = "linear heads (model v0.4)"
HEAD_VARIANTS = {  # name -> changes to model v0.4's recipe (linear heads)
    HEAD_BASELINE: {},
    "MLP heads, 128 hidden": {"head_hidden": 128},
    "MLP heads, 128 hidden, room copies weight 2": {"head_hidden": 128, "room_weight": 2.0},
    "MLP heads, 128 hidden, 4 room copies": {"head_hidden": 128, "room_copies": 4},
    "MLP heads, 256 hidden, 30 epochs": {"head_hidden": 256, "head_epochs": 30},
    # the MLP heads' plain head lost 2 points clean: an MLP for the normalised head only
    "MLP normalised head (128 hidden), linear plain head": {"head_hidden": 128, "plain_head_hidden": 0},
    "MLP normalised head (128 hidden), linear plain head, room copies weight 2":
        {"head_hidden": 128, "plain_head_hidden": 0, "room_weight": 2.0},
}


def run_heads(work: Path, variants: dict[str, dict] | None = None, part: str = "heads",
              base: VoiceRecipe | None = None) -> dict:
    """Head capacity: model v0.4's recipe (linear heads; or `base`) against one-hidden-layer MLP heads on the same
    training rows (3 corpora, the augmented and room copies), each LOSO fold judged clean, in the test room and under
    robot noise, plain and normalised, 5 orders per speaker; and the honest choice among them."""
    variants = HEAD_VARIANTS if variants is None else variants
    base = dataclasses.replace(shipped_recipe(), head_hidden=0, head_sets=[]) if base is None else base
    recipes = {name: dataclasses.replace(base, **changes) for name, changes in variants.items()}
    data = load_voice_data(base)
    target = data.subset(data.corpora == data.target)
    _, features = condition_features(target, base)
    copies_all = training_copies(data, dataclasses.replace(base, room_copies=max(r.room_copies
                                                                                   for r in recipes.values())))
    rows, seconds = judge_variants(part, data, target, features, copies_all,
                                   {name: (recipe, True) for name, recipe in recipes.items()})
    return choice_outcome(V04_ROWS + "unless its changes say otherwise",
                          {name: {"changes": changes} for name, changes in variants.items()}, rows, seconds,
                          list(features))


MLP_NORMALISED = {"head_hidden": 128, "plain_head_hidden": 0}
V05_HEADS = {**MLP_NORMALISED, "head_ensemble": 5}  # model v0.5's heads: the MLP normalised head, 5 seeds averaged
ENSEMBLE_VARIANTS = {  # name -> changes to model v0.4's recipe
    HEAD_BASELINE: {},
    "MLP normalised head (128 hidden), linear plain head": MLP_NORMALISED,
    "MLP normalised head, 5 seeds averaged": V05_HEADS,
    "MLP normalised head, 5 seeds averaged, room copies weight 2": {**MLP_NORMALISED, "head_ensemble": 5,
                                                                     "room_weight": 2.0},
    "MLP normalised head, 5 seeds averaged, layers 2-3 only": {**MLP_NORMALISED, "head_ensemble": 5,
                                                                "layers": [1, 2]},
}


SHIPPED_HEADS = "model v0.5 (shipped: MLP normalised head, 5 seeds averaged)"
COPIES_VARIANTS = {  # name -> changes to model v0.4's recipe: does the averaged MLP hold more room copies?
    SHIPPED_HEADS: V05_HEADS,
    "model v0.5, 4 room copies of uem-es": {**V05_HEADS, "room_copies": 4},
    "model v0.5, 4 room copies of uem-es, weight 0.5": {**V05_HEADS, "room_copies": 4, "room_weight": 0.5},
}


CONSISTENCY_VARIANTS = {  # name -> changes to model v0.4's recipe: paired consistency on model v0.5's heads
    SHIPPED_HEADS: V05_HEADS,
    "model v0.5, copies' hidden units pulled to their clean clip's (weight 1)": {**V05_HEADS, "head_consistency": 1.0},
}


V04_ROWS = ("LOSO over the 12 speakers of uem-es, the conditions and orders of --parts rooms; every variant trains on "
            "model v0.4's rows (uem-es x3, emovo, emodb, ased, 1 augmented and 2 room copies of uem-es) ")


def choice_outcome(protocol: str, variants: dict[str, dict], rows: dict, seconds: float, conditions: list[str],
                   kept: tuple[str, ...] = ("ua_mean", "ua_std", "per_speaker")) -> dict:
    """What a part of variants judged in the rooms protocol writes to voice.json: each variant's entry (what it
    changes), the `kept` fields of its summary rows, and the honest choice among the variants."""
    return {"date": time.strftime("%Y-%m-%d %H:%M"), "seconds": seconds, "protocol": protocol, "variants": variants,
            "rows": {name: {k: v for k, v in row.items() if k in kept} for name, row in rows.items()},
            "selection": honest_selection(rows, list(variants), conditions)}


DEREVERB_BASELINE = "front end 2 (model v0.4)"
DEREVERB_VARIANTS = {  # name -> changes to model v0.4's recipe
    DEREVERB_BASELINE: {},
    "front end 3 (late reverberation suppressed)": {"frontend_version": 3},
    "front end 3, MLP normalised head (128 hidden), linear plain head":
        {"frontend_version": 3, "head_hidden": 128, "plain_head_hidden": 0},
}


WPE_BASELINE = "model v0.5's recipe, one MLP seed, front end 2"
WPE_VARIANTS = {  # name -> changes to the shipped recipe; one seed each (5 seeds cost 5x the time, 2 cores)
    WPE_BASELINE: {"head_ensemble": 1},
    "the same, front end 4 (online WPE)": {"head_ensemble": 1, "frontend_version": 4},
}


def run_dereverb(work: Path) -> dict:
    """The encoder's input with its late reverberation suppressed (front end 3, inference/dereverb.py) against
    model v0.4's front end: every training clip, copy and test clip through each front end, the same LOSO folds,
    conditions and orders as --parts rooms, and the honest choice among the variants."""
    return run_front_ends("dereverb", DEREVERB_VARIANTS,
                          dataclasses.replace(shipped_recipe(), head_hidden=0, head_sets=[]))


def run_wpe(work: Path) -> dict:
    """Front end 4 (the STFT frames through causal block-online WPE, inference/dereverb.py OnlineWpe) against
    front end 2 under the shipped recipe's rows and heads (one MLP seed each), as --parts dereverb."""
    return run_front_ends("wpe", WPE_VARIANTS, shipped_recipe())


SHIPPED_V081 = "model v0.8.1 (shipped)"
ROOM_SCALE_VARIANTS = {  # name -> changes to v0.8.1's recipe: do scaled heads take more from the room copies?
    SHIPPED_V081: {},
    "model v0.8.1, 4 room copies of uem-es": {"room_copies": 4},
    "model v0.8.1, room copies weight 2": {"room_weight": 2.0},
}


SCALE_BASELINE = "model v0.7 (shipped)"
SCALE_VARIANTS = {  # name -> changes to the shipped recipe
    SCALE_BASELINE: {},
    "model v0.7, per-voice variance normalisation (speaker_scale)": {"speaker_scale": True},
}


def run_scale(work: Path) -> dict:
    """Each voice's centred features divided by the spread of its history (recipe speaker_scale, SpeakerAdapter
    .spread) against the shipped recipe's centring alone, on the same rows, folds, conditions and orders."""
    return run_front_ends("scale", SCALE_VARIANTS, shipped_recipe())


SPREAD_SHRINKAGES = (0.0, 1.0, 2.0, 3.0, 5.0)


def run_spread(work: Path) -> dict:
    """The voice's spread pulled towards 1 while it rests on few utterances (recipe spread_shrinkage, a serving
    setting): the shipped recipe's LOSO fold heads, fitted once per fold, judged with each setting on the
    conditions and orders of --parts rooms; then the honest choice among the settings."""
    recipe = shipped_recipe()
    data = load_voice_data(recipe)
    target = data.subset(data.corpora == data.target)
    _, features = condition_features(target, recipe)
    copies = training_copies(data, recipe)
    settings = {f"spread shrinkage {k:g}": dataclasses.replace(recipe, spread_shrinkage=k) for k in SPREAD_SHRINKAGES}
    records, began = Records(), time.perf_counter()
    for t in sorted(set(target.speakers)):
        test = np.where(target.speakers == t)[0]
        heads = fold_heads(data, recipe, t, True, copies)
        for name, served in settings.items():
            judge_in_conditions(records, name, heads, served, target, test, features)
        print(f"spread: fold {t} done ({time.perf_counter() - began:.0f} s)", flush=True)
    rows = {name: records.summary(name) for name in records.rows}
    return choice_outcome("LOSO over the 12 speakers of uem-es, the shipped recipe's fold heads (fitted once per "
                          "fold), the conditions and orders of --parts rooms; each setting serves the same heads with "
                          "the voice's spread shrunk as if k more utterances of unit variance were in its history",
                          {name: {"changes": {"spread_shrinkage": served.spread_shrinkage}}
                           for name, served in settings.items()}, rows, time.perf_counter() - began, list(features),
                          ("ua_mean", "ua_std", "per_speaker", "ua_by_rank"))


CEILING_ORACLE = "model v0.8.1 + the test room as a room copy (oracle)"
TEST_ROOM = "room RT60 0.6 s at 2 m"


def run_ceiling(work: Path) -> dict:
    """An upper bound for multi-condition training: the shipped recipe's fold heads against the same recipe with one
    more room copy that is the benchmark's own test room (the training speakers' clips as the room condition hears
    them, centred as "<speaker>@test room"), and that at room weight 2. No robot knows its room in advance, so this
    is not a recipe; it says how much of the room gap heads on this encoder can close at all."""
    recipe = v081_recipe()
    data, target, features, copies = recipe_rows(recipe)
    oracle = Copies(features[TEST_ROOM], np.where(data.corpora == data.target)[0],
                    np.char.add(target.speakers.astype(str), "@test room"), ROOMS)
    return judge_extra_copies("ceiling", data, target, features, {
        SHIPPED_V081: (recipe, copies),
        CEILING_ORACLE: (recipe, copies + [oracle]),
        f"{CEILING_ORACLE}, room copies weight 2": (dataclasses.replace(recipe, room_weight=2.0), copies + [oracle])},
        "the oracle rows add the test room itself as one more room copy of the 11 training speakers' clips (no "
        "choice is made among oracles)")


SITE_ROOM = "model v0.8.1 + a room copy at the test room's RT60 and distance (other rooms), room copies weight 2"


def run_site_room(work: Path) -> dict:
    """What knowing the robot's room buys without the oracle's exact room: one more room copy of every uem-es clip
    heard at the test condition's RT60 and microphone distance, but in the simulated rooms of the room copies (each
    speaker in one of ROOM_SEEDS, never the benchmark's room seed 0), at room weight 2: what a lab could train
    after measuring its room's RT60 and the usual distance to the people."""
    from ser_node.train.acoustics import AcousticSimulator, stable_seed
    from ser_node.train.voice_recipe import ROOM_SEEDS

    recipe = v081_recipe()
    data, target, features, copies = recipe_rows(recipe)
    condition = test_conditions()[TEST_ROOM]
    speakers = target.speakers.astype(str)
    simulators: dict[int, AcousticSimulator] = {}

    def transform(audio: np.ndarray, i: int) -> np.ndarray:
        seed = ROOM_SEEDS[stable_seed(speakers[i], "site room") % len(ROOM_SEEDS)]
        return simulators.setdefault(seed, AcousticSimulator(room_seed=seed))(audio, condition)

    site = copy_features(target.paths, recipe, "site-" + condition.name.replace(" ", "_"), transform, True)
    copy = Copies(site, np.where(data.corpora == data.target)[0], np.char.add(speakers, "@site room"), ROOMS)
    return judge_extra_copies("siteroom", data, target, features, {
        SHIPPED_V081: (recipe, copies),
        SITE_ROOM: (dataclasses.replace(recipe, room_weight=2.0), copies + [copy])},
        "the site-room row adds one room copy of the 11 training speakers' clips at the test room's RT60 and "
        "distance, each speaker in one of the room copies' simulated rooms (not the test room), room weight 2")


WIDE_ROOMS = "model v0.8.1, room copies in rooms of their own"
WIDE_ROOM_VARIANTS = {  # name -> changes to the shipped recipe
    SHIPPED_V081: {},
    f"{WIDE_ROOMS}, 2 copies": {"room_shapes": "own"},
    f"{WIDE_ROOMS}, 4 copies": {"room_shapes": "own", "room_copies": 4},
    f"{WIDE_ROOMS}, 4 copies, weight 0.5": {"room_shapes": "own", "room_copies": 4, "room_weight": 0.5},
}


def run_wide_rooms(work: Path) -> dict:
    """Do the room copies lack room shapes? The shipped recipe's room copies put each speaker in one of 4 simulated
    room shapes (room_shapes "shared"); here each speaker and copy gets a shape of its own ("own", never the
    benchmark's room seed 0), at the same RT60 and distance draws: 2 copies, 4, and 4 at half the weight (the
    shipped copies' total weight), against the shipped recipe; and the honest choice among them."""
    recipe = v081_recipe()
    data, target, features, _ = recipe_rows(recipe)
    variants = {}
    for name, changes in WIDE_ROOM_VARIANTS.items():
        variant = dataclasses.replace(recipe, **changes)
        variants[name] = (variant, training_copies(data, variant))
    return judge_extra_copies("widerooms", data, target, features, variants,
                              "the wide-room rows replace the shipped recipe's room copies (each speaker in one of 4 "
                              "shared simulated room shapes) by copies in which each speaker is heard in a room "
                              "shape of its own (room_shapes own; the same RT60 and distance draws)")


MIX_PARTNER = {"room_shapes": "own", "room_copies": 4, "room_weight": 0.5}  # changes to the shipped recipe
MIX_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def mix_name(weight: float) -> str:
    if weight == 0:
        return SHIPPED_V081
    if weight == 1:
        return f"{WIDE_ROOMS}, 4 copies, weight 0.5 (alone)"
    return f"v0.8.1 and the own-shape heads, log-probabilities mixed at {weight:g}"


def run_mixture(work: Path) -> dict:
    """Two recipes as one ensemble: v0.8.1's heads and the heads of its own-shape room-copy variant (4 copies at
    weight 0.5, --parts widerooms), each fold's two head sets fitted once, each utterance's log-probabilities mixed
    as (1 - w) v0.8.1 + w the other (the same answer as mixing their logits); judged on the conditions and orders of
    --parts rooms, with the honest choice of w. Each member standardises and centres a voice in its own feature
    space, so serving a mixture takes both head sets and both voice states."""
    recipe = v081_recipe()
    partner = dataclasses.replace(recipe, **MIX_PARTNER)
    data, target, features, copies = recipe_rows(recipe)
    members = [(recipe, copies), (partner, training_copies(data, partner))]
    records, began = Records(), time.perf_counter()
    for t in sorted(set(target.speakers)):
        heads = [(r, fold_heads(data, r, t, True, c)) for r, c in members]

        def predict(x: np.ndarray, normalise: bool) -> dict[str, np.ndarray]:
            first, second = (np.log(np.clip(predict_in_order(h, h.standardise(x), r, normalise), 1e-12, None))
                             for r, h in heads)
            return {mix_name(w): np.exp((1 - w) * first + w * second) for w in MIX_WEIGHTS}
        judge_orders(records, predict, target, np.where(target.speakers == t)[0], features)
        print(f"mixture: fold {t} done ({time.perf_counter() - began:.0f} s)", flush=True)
    return choice_outcome("LOSO over the 12 speakers of uem-es, the conditions and orders of --parts rooms; each "
                          "fold's v0.8.1 heads and own-shape heads (room_shapes own, 4 room copies at weight 0.5) "
                          "fitted once, their log-probabilities mixed at weight w (w 0: v0.8.1, w 1: the own-shape "
                          "heads alone)",
                          {mix_name(w): {"changes": {"mixed_weight": w, **({} if w == 0 else MIX_PARTNER)}}
                           for w in MIX_WEIGHTS}, {name: records.summary(name) for name in records.rows},
                          time.perf_counter() - began, list(features))


HEAD_SET_OWN = {"room_shapes": "own", "room_copies": 4, "room_weight": 0.5}  # the mixture's partner, as a head set
HEAD_SET_CONTROL = {"seed": 7}  # the shipped rows again, other seeds: what a second set gives without new rooms
HEAD_SET_VARIANTS = {  # name -> the head sets added to the shipped recipe
    SHIPPED_V081: [],
    "model v0.8.1 + a second set of its own heads (other seeds; control)": [HEAD_SET_CONTROL],
    "model v0.8.1 + a head set on own-shape room copies (4, weight 0.5)": [HEAD_SET_OWN],
}


def run_head_sets(work: Path) -> dict:
    """The mixture as one model (recipe head_sets): v0.8.1's heads and heads fitted on the own-shape room copies
    (4 copies at weight 0.5) in v0.8.1's standardisation, their logits averaged (exported as one wider MLP, served
    with one voice state); against v0.8.1, and against a second set on v0.8.1's own rows with other seeds, so the
    gain of a second set is not taken for the gain of new rooms. Each fold fits the three sets once; judged on the
    conditions and orders of --parts rooms, with the honest choice."""
    recipe = v081_recipe()
    data, target, features, copies = recipe_rows(recipe)
    every = dataclasses.replace(recipe, head_sets=[HEAD_SET_CONTROL, HEAD_SET_OWN])
    records, began = Records(), time.perf_counter()
    for t in sorted(set(target.speakers)):
        first, control, own = fold_head_sets(data, every, t, True, copies)
        systems = dict(zip(HEAD_SET_VARIANTS, (first, averaged_heads([first, control]), averaged_heads([first, own]))))
        for name, heads in systems.items():
            judge_in_conditions(records, name, heads, recipe, target, np.where(target.speakers == t)[0], features)
        print(f"headsets: fold {t} done ({time.perf_counter() - began:.0f} s)", flush=True)
    return choice_outcome("LOSO over the 12 speakers of uem-es, the conditions and orders of --parts rooms; each fold "
                          "fits v0.8.1's heads, a second set on the same rows with other seeds and a set on own-shape "
                          "room copies (4 at weight 0.5) in v0.8.1's standardisation once; a variant averages the "
                          "logits of its sets",
                          {name: {"changes": {"head_sets": sets}} for name, sets in HEAD_SET_VARIANTS.items()},
                          {name: records.summary(name) for name in records.rows}, time.perf_counter() - began,
                          list(features))


def judge_extra_copies(part: str, data: VoiceData, target: VoiceData, features: dict[str, np.ndarray],
                       variants: dict[str, tuple[VoiceRecipe, list]], protocol_end: str) -> dict:
    """Variants given as (recipe, the copies they train with) on the LOSO folds, conditions and orders of --parts
    rooms, with the honest choice among them: what parts whose variants train on different copies (ceiling, siteroom,
    widerooms) write to voice.json."""
    records, began = Records(), time.perf_counter()
    for t in sorted(set(target.speakers)):
        test = np.where(target.speakers == t)[0]
        for name, (variant, variant_copies) in variants.items():
            judge_in_conditions(records, name, fold_heads(data, variant, t, True, variant_copies), variant, target,
                                test, features)
        print(f"{part}: fold {t} done ({time.perf_counter() - began:.0f} s)", flush=True)
    return choice_outcome("LOSO over the 12 speakers of uem-es, the conditions and orders of --parts rooms; "
                          + protocol_end,
                          {name: {"changes": {"room_weight": v.room_weight, "room_shapes": v.room_shapes,
                                              "room_copies": sum(copy.corpus == ROOMS for copy in c)}}
                           for name, (v, c) in variants.items()},
                          {name: records.summary(name) for name in records.rows}, time.perf_counter() - began,
                          list(features))


def run_front_ends(part: str, variants: dict[str, dict], base: VoiceRecipe) -> dict:
    """Variants of `base` that may read different front ends: each front end's features of every training clip,
    copy and test clip (cached per version), judged on the LOSO folds, conditions and orders of --parts rooms."""
    recipes = {name: dataclasses.replace(base, **changes) for name, changes in variants.items()}
    rows, seconds, conditions = {}, 0.0, []
    for version in sorted({r.frontend_version for r in recipes.values()}):
        front = {name: r for name, r in recipes.items() if r.frontend_version == version}
        recipe = next(iter(front.values()))
        data = load_voice_data(recipe)
        target = data.subset(data.corpora == data.target)
        _, features = condition_features(target, recipe)
        conditions = list(features)
        copies_all = training_copies(data, recipe)
        part_rows, part_seconds = judge_variants(part, data, target, features, copies_all,
                                                 {name: (r, True) for name, r in front.items()})
        rows.update(part_rows)
        seconds += part_seconds
    return choice_outcome(V04_ROWS + "through the variant's front end",
                          {name: {"changes": changes} for name, changes in variants.items()}, rows, seconds,
                          conditions)


WARMUP_GRID = [(w, s) for w in (1, 2, 3, 5) for s in (0.0, 1.0, 3.0)]


def run_warmup(work: Path) -> dict:
    """A new voice's first utterances: the normalised head from the `warmup`-th utterance on, with the offset
    shrunk by n / (n + shrinkage), against the plain head for the first 5 (today's). The shipped recipe's LOSO
    folds and 5 orders; then an honest choice per test speaker (the best mean normalised UA over the other 11
    speakers' folds), scored on that speaker."""
    recipe = shipped_recipe()
    data = load_voice_data(recipe)
    target = data.subset(data.corpora == data.target)
    copies = training_copies(data, recipe)
    records = Records()
    for t in sorted(set(target.speakers)):
        test = np.where(target.speakers == t)[0]
        heads = fold_heads(data, recipe, t, True, copies)
        for order in speaker_orders(len(test), t):
            rows = test[order]
            z = heads.standardise(target.features[rows])
            for warmup, shrinkage in WARMUP_GRID:
                r = dataclasses.replace(recipe, warmup=warmup, shrinkage=shrinkage)
                records.add(f"warmup {warmup}, shrinkage {shrinkage:g}", t, target.labels[rows],
                            predict_in_order(heads, z, r, normalise=True))
        print(f"warmup: fold {t} done", flush=True)
    rows = {name: records.summary(name) for name in records.rows}
    chosen, per = honest_choice({name: row["per_speaker"] for name, row in rows.items()})
    table = [{"setting": name, "UA": f"{row['ua_mean']:.3f} ± {row['ua_std']:.3f}",
              **{f"UA at {k}": f"{v:.3f}" for k, v in row["ua_by_rank"].items()}} for name, row in rows.items()]
    print(format_table(table, list(table[0])), flush=True)
    print(f"chosen per test speaker: {chosen}; UA {np.mean(list(per.values())):.3f}", flush=True)
    return {"date": time.strftime("%Y-%m-%d %H:%M"),
            "protocol": "LOSO over the 12 speakers of uem-es, the shipped recipe's fold heads, 5 random orders per "
                        "speaker; the normalised head answers once `warmup` earlier utterances of the speaker are in, "
                        "with their mean shrunk by n / (n + shrinkage) as the offset; the plain head before",
            "rows": {name: {k: row[k] for k in ("ua_mean", "ua_std", "per_speaker", "ua_by_rank")}
                     for name, row in rows.items()},
            "selection": {"rule": "per test speaker, the best mean UA over the other 11 speakers' folds",
                          "chosen": chosen, "ua_mean": float(np.mean(list(per.values()))), "per_speaker": per}}


BALANCES = (0.0, 0.5, 1.0, 2.0)  # SpeakerAdapter balance: 0 the plain mean, else the class-balanced mean's smoothing


def run_balance(work: Path) -> dict:
    """A voice's offset as the class-balanced mean of its history (history_balance) against the plain mean: the
    shipped recipe's LOSO fold heads, each test speaker's clips in 5 random orders clean, in the test room and under
    robot noise (the node's causal regime), and centred by 20 other clips drawn balanced, 50 % or 70 % neutral (the
    skew part's histories, the weights from the plain head); the honest choice per test speaker by clean and room."""
    from ser_node.inference.adaptation import SpeakerAdapter

    recipe = shipped_recipe()
    data, target, features, copies = recipe_rows(recipe)
    records = Records()
    began = time.perf_counter()
    for t in sorted(set(target.speakers)):
        test = np.where(target.speakers == t)[0]
        heads = fold_heads(data, recipe, t, True, copies)
        for balance in BALANCES:
            judge_in_conditions(records, f"balance {balance:g}", heads,
                                dataclasses.replace(recipe, history_balance=balance), target, test, features)
        z = heads.standardise(target.features[test])
        plain = heads.plain_probabilities(z)
        neutral, truth = target.labels[test] == "neutral", target.labels[test]
        for skew, share in SKEWS.items():
            picks = skewed_histories(neutral, share, np.random.default_rng(int(t[-2:])))
            for balance in BALANCES:
                offsets = []
                for pick in picks:
                    adapter = SpeakerAdapter(warmup=1, history=len(pick), shrinkage=0.0, balance=balance)
                    for k in pick:
                        adapter.remember(z[k], plain[k])
                    offsets.append(adapter.offset())
                records.add(f"balance {balance:g} | {skew} | normalised", t, truth,
                            heads.normalised_probabilities(z, np.stack(offsets)))
        print(f"balance: fold {t} done ({time.perf_counter() - began:.0f} s)", flush=True)
    rows = {name: records.summary(name) for name in records.rows}
    names = [f"balance {b:g}" for b in BALANCES]
    for name in names[1:]:
        for condition in [*features, *SKEWS]:
            key = f"{name} | {condition} | normalised"
            rows[key]["vs_plain_mean"] = paired(rows[key]["per_speaker"],
                                                rows[f"balance 0 | {condition} | normalised"]["per_speaker"])
    return {"date": time.strftime("%Y-%m-%d %H:%M"), "seconds": time.perf_counter() - began,
            "protocol": "LOSO over the 12 speakers of uem-es, the shipped recipe's fold heads; conditions: 5 random "
                        "orders per speaker, each clip judged against the speaker's earlier clips in the same "
                        "condition (warm-up and shrinkage of the recipe); skews: each clip centred by 20 other clips "
                        "of its speaker drawn with the given neutral share (the skew part's draws); the offset the "
                        "SpeakerAdapter's mean, class-balanced by the plain head's probabilities with the given "
                        "smoothing (0: the plain mean)",
            "rows": {name: {k: v for k, v in row.items() if k in ("ua_mean", "ua_std", "per_speaker", "ua_by_rank",
                                                                   "vs_plain_mean")}
                     for name, row in rows.items()},
            "selection": honest_selection(rows, names, list(features))}


def skewed_histories(neutral: np.ndarray, share: float | None, rng: np.random.Generator,
                     history: int = 20) -> list[np.ndarray]:
    """For each clip of one speaker (`neutral` marks its neutral clips), `history` of its other clips, drawn with
    the given neutral share (None: uniformly; neutral clips with replacement where there are too few)."""
    picks = []
    for i in range(len(neutral)):
        others = np.delete(np.arange(len(neutral)), i)
        if share is None:
            picks.append(rng.choice(others, history, replace=False))
            continue
        n_neutral = int(round(share * history))
        pool_n, pool_o = others[neutral[others]], others[~neutral[others]]
        picks.append(np.concatenate([rng.choice(pool_n, n_neutral, replace=n_neutral > len(pool_n)),
                                     rng.choice(pool_o, history - n_neutral, replace=False)]))
    return picks


def honest_choice(per_speaker: dict[str, dict[str, float]]) -> tuple[dict[str, str], dict[str, float]]:
    """For each speaker, the option with the best mean over the other speakers, and that option's score on the
    speaker: a choice never made on the speaker it is scored on."""
    speakers = sorted(next(iter(per_speaker.values())))
    chosen = {t: max(per_speaker, key=lambda name: np.mean([per_speaker[name][s] for s in speakers if s != t]))
              for t in speakers}
    return chosen, {t: per_speaker[chosen[t]][t] for t in speakers}


def _rows_of(copies, keep: np.ndarray):
    """Copies restricted to some of their rows."""
    return dataclasses.replace(copies, features=copies.features[keep], rows=copies.rows[keep],
                               speakers=copies.speakers[keep])


def encoder_states(paths: list[str], cache: Path, tag: str = "uem-es",
                   transform: Callable[[np.ndarray, int], np.ndarray] | None = None) -> list[np.ndarray]:
    """Per clip, the frozen encoder's hidden states of all three layers (frames, 768), float16, cached per `tag`;
    `transform(audio, index)` degrades each clip first (give it its own tag)."""
    import pickle

    import torch
    from tqdm import tqdm

    from ser_node.audio.decode import load_audio
    from ser_node.inference.voice_frontend import encoder_input
    from ser_node.train.voice_encoder import GE2EEncoder

    path = cache / f"{tag}-states.pkl"
    if path.exists():
        return pickle.loads(path.read_bytes())  # our own file, written below
    encoder = GE2EEncoder.pretrained()
    states = []
    with torch.no_grad():
        for i, p in enumerate(tqdm(paths, desc=f"encoder states ({tag})", unit="clip")):
            audio = load_audio(p) if transform is None else transform(load_audio(p), i)
            states.append(torch.cat(encoder(torch.from_numpy(encoder_input(audio)[None])), dim=2)[0]
                          .numpy().astype(np.float16))
    cache.mkdir(parents=True, exist_ok=True)
    save_bytes_atomic(pickle.dumps(states), path)  # another part may be writing it too
    return states


def run_attention(work: Path, epochs: int = 8, heads: int = 4, finetune: bool = False) -> dict:
    """Attentive pooling over the encoder's frames (the DS-AM idea applied to the encoder): per fold, `heads`
    learned softmax weightings over time of the three layers' states, their weighted means and deviations beside
    the plain ones, trained with cross-entropy on the fold's training speakers (uem-es); then the recipe's two
    linear heads on the learned features, plain and normalised as in `loso`. With `finetune`, layer 3 of the
    encoder is trained too, from its pretrained weights at a low learning rate (1e-4), as DS-FC fine-tunes VGG16."""
    import torch
    from torch import nn

    from ser_node.train.voice_encoder import HIDDEN

    recipe = dataclasses.replace(shipped_recipe(), head_sets=[])  # heads on learned features: one set
    recipe.corpora = recipe.corpora[:1]
    data = load_voice_data(recipe)
    states = [torch.from_numpy(s.astype(np.float32)) for s in encoder_states(data.paths, work / "cache")]
    classes = np.array([EMOTIONS.index(label) for label in data.labels])
    torch.set_num_threads(1)

    class Pooling(nn.Module):
        def __init__(self, layer3: nn.LSTM | None) -> None:
            super().__init__()
            self.layer3 = layer3
            self.score = nn.Linear(3 * HIDDEN, heads)
            self.head = nn.Linear(2 * 3 * HIDDEN * (1 + heads), len(EMOTIONS))
            self.drop = nn.Dropout(0.3)

        def pooled(self, x: torch.Tensor) -> torch.Tensor:
            if self.layer3 is not None:  # recompute layer 3 from layer 2's states
                top, _ = self.layer3(x[None, :, HIDDEN:2 * HIDDEN])
                x = torch.cat([x[:, :2 * HIDDEN], top[0]], dim=1)
            weights = torch.softmax(self.score(x), dim=0)
            mean = weights.T @ x
            std = (weights.T @ (x * x) - mean * mean).clamp_min(1e-6).sqrt()
            plain_std = x.std(dim=0, unbiased=False)
            return torch.cat([x.mean(dim=0), plain_std, mean.reshape(-1), std.reshape(-1)])

    records = Records()
    for t in sorted(set(data.speakers)):
        torch.manual_seed(0)
        train, test = np.where(data.speakers != t)[0], np.where(data.speakers == t)[0]
        layer3 = None
        if finetune:
            from ser_node.train.voice_encoder import GE2EEncoder

            layer3 = GE2EEncoder.pretrained().layers[2]
            layer3.requires_grad_(True)
        model = Pooling(layer3)
        with torch.no_grad():
            first = torch.stack([model.pooled(states[i]) for i in train])
            centre, spread = first.mean(dim=0), first.std(dim=0) + 1e-5
        groups = [{"params": [p for n, p in model.named_parameters() if not n.startswith("layer3.")], "lr": 1e-3}]
        if layer3 is not None:
            groups.append({"params": list(layer3.parameters()), "lr": 1e-4})
        optimiser = torch.optim.Adam(groups, weight_decay=1e-4)
        rng = np.random.default_rng(0)
        for _ in range(epochs):
            model.train()
            for batch in np.array_split(rng.permutation(train), max(1, len(train) // 32)):
                features = (torch.stack([model.pooled(states[i]) for i in batch]) - centre) / spread
                loss = nn.functional.cross_entropy(model.head(model.drop(features)),
                                                   torch.from_numpy(classes[batch]))
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
        model.eval()
        with torch.no_grad():
            learned = torch.stack([model.pooled(s) for s in states]).numpy()
        fold = VoiceData(learned, data.speaker_embeddings, data.labels, data.speakers, data.corpora, data.paths,
                         data.target)
        heads_ = fit_heads(fold.subset(data.speakers != t), recipe, columns=np.arange(learned.shape[1]))
        for order in speaker_orders(len(test), t):
            rows = test[order]
            z = heads_.standardise(learned[rows])
            records.add("attentive pooling | plain", t, data.labels[rows], heads_.plain_probabilities(z))
            records.add("attentive pooling | normalised", t, data.labels[rows],
                        predict_in_order(heads_, z, recipe, normalise=True))
        print(f"attention fold {t} done", flush=True)
    return {"date": time.strftime("%Y-%m-%d %H:%M"), "epochs": epochs, "heads": heads, "finetune_layer3": finetune,
            "protocol": "LOSO, uem-es only (as the `encoder, uem-es only` rows of `loso`); pooling trained per fold",
            "rows": {name: {k: v for k, v in records.summary(name).items() if k in ("ua_mean", "ua_std")}
                     for name in records.rows}}


# ------------------------------------------------------------------ report

SYSTEM_ORDER = ("ComParE", "DS-AM", "encoder, uem-es only", "encoder, + 3 corpora, no", "encoder, shipped",
                "encoder, + 3 corpora, 2", "fusion")


def _skew_order(history: str) -> int:
    return list(SKEWS).index(history) if history in SKEWS else len(SKEWS)


def _row_order(name: str) -> tuple[int, int]:
    """Rows in reading order: the baseline, DS-AM, the encoder variants, fusion; plain before normalised."""
    system, regime = name.split(" | ")
    rank = next((i for i, prefix in enumerate(SYSTEM_ORDER) if system.startswith(prefix)), len(SYSTEM_ORDER))
    return rank, 0 if regime == "plain" else 1

ROOM_PARTS = (  # parts judged in the rooms protocol: part, title, baseline and what it is (paired table), plot, caption
    ("rooms", "Multi-condition training: room copies", None, None, "voice_rooms.png", "room copies in training"),
    ("heads", "Head capacity: linear against MLP heads", HEAD_BASELINE, "the linear heads", "voice_heads.png",
     "linear against MLP heads"),
    ("ensemble", "Averaged MLP heads", HEAD_BASELINE, "the linear heads", "voice_ensemble.png", "averaged MLP heads"),
    ("copies", "Averaged MLP heads with more room copies", SHIPPED_HEADS, "model v0.5", "voice_copies.png",
     "averaged MLP heads with more room copies"),
    ("consistency", "Copies held to their clean clip (paired consistency)", SHIPPED_HEADS, "model v0.5",
     "voice_consistency.png", "copies held to their clean clip"),
    ("dereverb", "Late reverberation suppressed before the encoder", DEREVERB_BASELINE, "model v0.4's front end",
     "voice_dereverb.png", "late reverberation suppressed"),
    ("wpe", "Online WPE before the mel bands (front end 4)", WPE_BASELINE, "front end 2", "voice_wpe.png",
     "online WPE (front end 4)"),
    ("scale", "Per-voice variance normalisation (speaker_scale)", SCALE_BASELINE, "the shipped recipe",
     "voice_scale.png", "per-voice variance normalisation"),
    ("roomscale", "Room copies for the scaled heads", SHIPPED_V081, "model v0.8.1", "voice_roomscale.png",
     "room copies for the scaled heads"),
    ("spread", "A voice's spread shrunk while it rests on few utterances", "spread shrinkage 0",
     "the spread unshrunk (model v0.8 as shipped)", "voice_spread.png", "a voice's spread shrunk towards 1"),
    ("ceiling", "How far heads can take the room: the test room in training (oracle)", SHIPPED_V081,
     "model v0.8.1", "voice_ceiling.png", "the test room itself in training (oracle)"),
    ("siteroom", "A room copy at the robot's room's RT60 and distance", SHIPPED_V081, "model v0.8.1",
     "voice_siteroom.png", "a room copy at the test room's RT60 and distance"),
    ("widerooms", "Room copies in room shapes of their own", SHIPPED_V081, "model v0.8.1", "voice_widerooms.png",
     "room copies in room shapes of their own"),
    ("mixture", "v0.8.1 and own-shape room-copy heads mixed", SHIPPED_V081, "model v0.8.1", "voice_mixture.png",
     "v0.8.1 and own-shape room-copy heads mixed"),
    ("headsets", "Head sets in one model: v0.8.1's and own-shape room-copy heads averaged", SHIPPED_V081,
     "model v0.8.1", "voice_headsets.png", "head sets averaged in one model"),
)


def report(out: Path) -> str:
    results = json.loads((out / "voice.json").read_text())
    text = "# The voice-encoder default against ComParE + SVM and DS-AM (uem-es, LOSO)\n\n"
    loso = results.get("loso")
    if loso:
        text += f"`.venv/bin/python bench/voice.py --parts loso` ({loso['date']}, 2 cores). {loso['protocol']}.\n\n"
        table = []
        for name, r in sorted(loso["rows"].items(), key=lambda kv: _row_order(kv[0])):
            system, regime = name.split(" | ")
            v = r["vs_compare"]
            table.append({"system": system, "regime": regime, "UA": f"{r['ua_mean']:.3f} ± {r['ua_std']:.3f}",
                          "vs ComParE (same regime)": (f"{v['difference']:+.3f}, {v['wins']}/{v['speakers']} "
                                                       f"wins, p = {v['wilcoxon_p']:.3f}")
                          if not system.startswith("ComParE") else "",
                          **{f"UA at {k}": f"{r['ua_by_rank'][k]:.3f}" for k in RANK_NAMES}})
        text += format_table(table, list(table[0])) + "\n"
    skew = results.get("skew")
    if skew:
        text += f"\n## Skewed speaker histories ({skew['date']})\n\n{skew['protocol']}.\n\n"
        table = [{"system": name.split(" | ")[0], "history": name.split(" | ")[1],
                  "UA": f"{r['ua_mean']:.3f} ± {r['ua_std']:.3f}"}
                 for name, r in sorted(skew["rows"].items(),
                                       key=lambda kv: (kv[0].split(" | ")[0], _skew_order(kv[0].split(" | ")[1])))]
        text += format_table(table, list(table[0])) + "\n"
    loco = results.get("loco")
    if loco:
        text += f"\n## Leave one corpus out ({loco['date']})\n\n{loco['protocol']}.\n\n"
        table = [{"held-out corpus": c, "clips": r["n_test"], "labels": len(r["labels"]),
                  **{k: f"{r[k]:.3f}" for k in ("encoder plain", "encoder normalised", "ComParE + SVM plain")}}
                 for c, r in loco["corpora"].items()]
        text += format_table(table, list(table[0])) + "\n"
    robust = results.get("robustness")
    if robust:
        text += f"\n## Rooms and robot noise ({robust['date']})\n\n{robust['protocol']}.\n\n"
        systems = list(dict.fromkeys(n.split(" | ")[0] for n in robust["rows"]))
        conditions = ["clean"] + [c for c in dict.fromkeys(n.split(" | ")[1] for n in robust["rows"]) if c != "clean"]
        table = []
        for system in systems:
            clean = robust["rows"][f"{system} | clean"]["ua_mean"]
            table.append({"system": system, **{c: (f"{robust['rows'][f'{system} | {c}']['ua_mean']:.3f}"
                                                   + ("" if c == "clean" else
                                                      f" ({robust['rows'][f'{system} | {c}']['ua_mean'] - clean:+.3f})"))
                                               for c in conditions}})
        text += format_table(table, list(table[0])) + "\n"
    for part, title, baseline, against, _, _ in ROOM_PARTS:
        if part in results:
            text += rooms_section(results[part], title, part)
            if baseline:
                text += paired_section(results[part], baseline, against)
            if part == "spread":  # what the shrinkage is for: a voice's first utterances
                table = [{"setting": name.split(" | ")[0], **{f"clean, UA at {k}": f"{r['ua_by_rank'][k]:.3f}"
                                                               for k in RANK_NAMES}}
                         for name, r in results[part]["rows"].items() if name.endswith(" | clean | normalised")]
                text += ("\nClean, normalised, by the utterance's rank in its voice:\n\n"
                         + format_table(table, list(table[0])) + "\n")
    warmup = results.get("warmup")
    if warmup:
        text += (f"\n## A new voice's first utterances ({warmup['date']})\n\n`--parts warmup`: {warmup['protocol']}. "
                 f"Chosen per test speaker on the other 11 speakers' folds: "
                 f"{', '.join(sorted(set(warmup['selection']['chosen'].values())))}; UA of the choices "
                 f"{warmup['selection']['ua_mean']:.3f}.\n\n")
        table = [{"setting": name, "UA": f"{r['ua_mean']:.3f} ± {r['ua_std']:.3f}",
                  **{f"UA at {k}": f"{r['ua_by_rank'][k]:.3f}" for k in RANK_NAMES}}
                 for name, r in warmup["rows"].items()]
        text += format_table(table, list(table[0])) + "\n"
    balance = results.get("balance")
    if balance:
        text += balance_section(balance)
    pooling = [(part, results[part]) for part in ("attention", "finetune") if part in results]
    if pooling and loso:
        text += ("\n## Attentive pooling and fine-tuning the encoder (uem-es only)\n\nThe `attention` and `finetune` "
                 "parts: attentive pooling (4 learned softmax weightings over the frames, their weighted means and "
                 "deviations beside the plain ones) trained per fold with cross-entropy, with the encoder frozen or "
                 "its layer 3 fine-tuned at lr 1e-4; then the recipe's linear heads on the learned features. Against "
                 "the frozen mean and deviation on the same data (the `loso` row `encoder, uem-es only, no "
                 "augmentation`).\n\n")
        base = {regime: loso["rows"].get(f"encoder, uem-es only, no augmentation | {regime}") for regime in
                ("plain", "normalised")}
        table = [{"features": "frozen encoder, mean and deviation (loso)",
                  **{regime: f"{r['ua_mean']:.3f} ± {r['ua_std']:.3f}" if r else "" for regime, r in base.items()}}]
        for part, data in pooling:
            table.append({"features": f"attentive pooling, {'layer 3 fine-tuned' if data['finetune_layer3'] else 'encoder frozen'}"
                                      f" ({data['date']}, {data['epochs']} epochs)",
                          **{regime: f"{data['rows'][f'attentive pooling | {regime}']['ua_mean']:.3f} ± "
                                     f"{data['rows'][f'attentive pooling | {regime}']['ua_std']:.3f}"
                             for regime in ("plain", "normalised")}})
        text += format_table(table, list(table[0])) + "\n"
    (out / "voice.md").write_text(text)
    if loso:
        plot(loso, out / "voice.png")
    for part, _, _, _, image, caption in ROOM_PARTS:
        if part in results:
            plot_rooms(results[part], out / image, caption)
    return text


def balance_section(part: dict) -> str:
    """The balance part: normalised UA per offset rule in each condition and skew, with the paired difference
    against the plain mean."""
    names = sorted({name.split(" | ")[0] for name in part["rows"]}, key=lambda n: float(n.split()[-1]))
    columns = [c for c in ("clean", "room RT60 0.6 s at 2 m", "robot noise 10 dB", *SKEWS)
               if f"{names[0]} | {c} | normalised" in part["rows"]]

    def cell(name: str, column: str) -> str:
        row = part["rows"][f"{name} | {column} | normalised"]
        versus = row.get("vs_plain_mean")
        return f"{row['ua_mean']:.3f}" + (f" ({versus['difference']:+.3f}, {versus['wins']}/12, p "
                                           f"{versus['wilcoxon_p']:.2f})" if versus else "")
    table = [{"offset": "plain mean" if name == "balance 0" else f"class-balanced, {name}",
              **{column: cell(name, column) for column in columns}} for name in names]
    chosen = sorted(set(part["selection"]["chosen"].values()))
    return (f"\n## A class-balanced history ({part['date']})\n\n`--parts balance`: {part['protocol']}. Normalised UA "
            f"(against the plain mean: difference, wins of 12, Wilcoxon p); chosen per test speaker by clean and "
            f"room on the other 11 speakers' folds: {', '.join(chosen)}.\n\n" + format_table(table, list(table[0]))
            + "\n")


def paired_section(part: dict, baseline: str, against: str) -> str:
    """Each variant of a part (heads, dereverb) against its baseline variant, paired over the test speakers."""
    text = f"\nEach variant against {against}, same folds and orders (paired over the 12 speakers):\n\n"
    table = []
    for name in part["variants"]:
        if name == baseline:
            continue
        row = {"variant": name}
        for key in ("clean | normalised", "room RT60 0.6 s at 2 m | normalised", "robot noise 10 dB | normalised",
                    "clean | plain"):
            v = paired(part["rows"][f"{name} | {key}"]["per_speaker"],
                       part["rows"][f"{baseline} | {key}"]["per_speaker"])
            row[key.replace(" | ", ", ")] = (f"{v['difference']:+.3f}, {v['wins']}/{v['speakers']}, "
                                             f"p {v['wilcoxon_p']:.3f}")
        table.append(row)
    return text + format_table(table, list(table[0])) + "\n"


def rooms_section(rooms: dict, title: str, part: str) -> str:
    """A part of variants judged in conditions (rooms, heads) as a table: per variant, clean / room / noise UA
    normalised and plain, the drops from clean, and the honest choice's row."""
    conditions = ["clean", "room RT60 0.6 s at 2 m", "robot noise 10 dB"]

    def cells(get) -> dict:
        out = {}
        for mode in ("normalised", "plain"):
            clean = get(f"clean | {mode}")
            for c in conditions:
                value = get(f"{c} | {mode}")
                out[f"{c}, {mode}"] = f"{value:.3f}" + ("" if c == "clean" else f" ({value - clean:+.3f})")
        return out

    table = [{"variant": name, **cells(lambda key, n=name: rooms["rows"][f"{n} | {key}"]["ua_mean"])}
             for name in rooms["variants"]]
    head = f"\n## {title} ({rooms['date']})\n\n`--parts {part}`: {rooms['protocol']}."
    choice = rooms.get("selection")
    if choice is None:  # a part of oracles (ceiling) chooses nothing
        return head + "\n\n" + format_table(table, list(table[0])) + "\n"
    table.append({"variant": "chosen per test speaker (honest)", **cells(lambda key: choice["rows"][key]["ua_mean"])})
    picks = list(choice["chosen"].values())
    chosen = ", ".join(f"{v} ({picks.count(v)})" for v in dict.fromkeys(picks))
    return (head + f" The choice: {choice['rule']}; chosen (test speakers): {chosen}.\n\n"
            + format_table(table, list(table[0])) + "\n")


def plot_rooms(rooms: dict, path: Path, title: str) -> None:
    """Clean against room UA (normalised) per variant: the trade-off multi-condition training moves along."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5), dpi=110)
    markers = "osD^vP*Xh"
    for i, name in enumerate(rooms["variants"]):
        clean = rooms["rows"][f"{name} | clean | normalised"]["ua_mean"]
        room = rooms["rows"][f"{name} | room RT60 0.6 s at 2 m | normalised"]["ua_mean"]
        ax.scatter(clean, room, marker=markers[i % len(markers)], label=name)
    low, high = ax.get_xlim()
    ax.plot([low, high], [low - 0.08, high - 0.08], color="grey", linestyle="--", label="8 points below clean")
    ax.set_xlabel("clean UA, normalised (LOSO, 12 speakers)")
    ax.set_ylabel("room RT60 0.6 s at 2 m UA, normalised")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))  # names beside the plot, never over points
    ax.set_title(f"uem-es, {title} ({rooms['date']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot(loso: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = list(dict.fromkeys(n.split(" | ")[0] for n in sorted(loso["rows"], key=_row_order)))
    fig, ax = plt.subplots(figsize=(9, 4), dpi=110)
    width = 0.38
    for k, regime in enumerate(("plain", "normalised")):
        means = [loso["rows"][f"{s} | {regime}"]["ua_mean"] for s in systems]
        stds = [loso["rows"][f"{s} | {regime}"]["ua_std"] for s in systems]
        ax.bar(np.arange(len(systems)) + (k - 0.5) * width, means, width, yerr=stds, capsize=3, label=regime)
    ax.axhline(1 / 7, color="grey", linestyle="--", label="chance")
    ax.set_xticks(np.arange(len(systems)), [s.replace(", ", ",\n").replace(" x ", " x\n") for s in systems],
                  fontsize=7)
    ax.set_ylabel("UA, LOSO mean ± sd (12 speakers)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title(f"uem-es, leave one speaker out ({loso['date']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="loso,skew,loco,robustness,attention,report")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "work")
    args = parser.parse_args()
    path = args.out / "voice.json"
    runners = {"loso": run_loso, "frontend": run_frontend, "skew": run_skew, "loco": run_loco, "robustness": run_robustness,
               "rooms": run_rooms, "heads": run_heads,
               "ensemble": lambda work: run_heads(work, ENSEMBLE_VARIANTS, "ensemble"),
               "copies": lambda work: run_heads(work, COPIES_VARIANTS, "copies"),
               "consistency": lambda work: run_heads(work, CONSISTENCY_VARIANTS, "consistency"),
               "dereverb": run_dereverb, "wpe": run_wpe, "scale": run_scale, "spread": run_spread,
               "roomscale": lambda work: run_heads(work, ROOM_SCALE_VARIANTS, "roomscale", v081_recipe()),
               "ceiling": run_ceiling, "siteroom": run_site_room,
               "widerooms": run_wide_rooms, "mixture": run_mixture, "headsets": run_head_sets, "warmup": run_warmup, "balance": run_balance,
               "attention": run_attention, "finetune": lambda work: run_attention(work, finetune=True)}
    for part in args.parts.split(","):
        if part == "report":
            print(report(args.out))
            continue
        if part not in runners:
            parser.error(f"unknown part {part}")
        print(f"== {part}", flush=True)
        outcome = runners[part](args.work)
        results = json.loads(path.read_text()) if path.exists() else {}  # another part may have written meanwhile
        results[part] = outcome
        write_json(path, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
