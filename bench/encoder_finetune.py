"""Does fine-tuning the encoder's layer 3 on room copies close the room gap? (issue #33, lever 1)

The head-side levers (capacity, averaged MLPs, copy counts and weights) leave the test room ~9 points below clean
(bench/voice.py --parts copies): the frozen encoder's states are what reverberation blurs. Here, per LOSO fold of
uem-es, layer 3 of the GE2E encoder is trained (from its pretrained weights, learning rate 1e-4, as DS-FC fine-tunes
VGG16) with a linear classifier on the pooled states of the fold's training clips, clean and in two rooms per speaker
(the recipe's room copies), optionally with a consistency loss that pulls a room copy's pooled layer-3 features
towards its clean clip's. Then the recipe's heads (uem-es + 2 room copies, linear, as `simple recipe + 2 room
copies` of --parts rooms) are fitted on the new features and judged clean, in the test room (RT60 0.6 s at 2 m, room
seed 0, never trained on) and under robot noise at 10 dB, plain and normalised, 5 orders per speaker; the frozen
encoder runs the same pipeline as the reference. Layers 1-2 stay frozen, so their states are computed once (cached).

The node's speaker embedding is the encoder's head on the mean of layer 3's states: a fine-tuned layer 3 would move
it. Each fold's layer 3 is therefore also scored as a speaker verifier on all clean uem-es clips (EER over every
pair) beside the frozen one.

  .venv/bin/python bench/encoder_finetune.py                      # ~62 min on two cores (3 variants), ~5 min more to cache the states
  .venv/bin/python bench/encoder_finetune.py --variants frozen,finetuned --epochs 4 --out /tmp/eft
  .venv/bin/python bench/encoder_finetune.py --report-only             # the .md again from --out's JSON
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from voice import (SIMPLE, Records, condition_features, encoder_states, fold_heads, judge_in_conditions,  # noqa: E402
                   paired, shipped_recipe, test_conditions)

from ser_node.files import save_bytes_atomic  # noqa: E402
from ser_node.labels import EMOTIONS  # noqa: E402
from ser_node.train.reports import format_table, write_json  # noqa: E402
from ser_node.train.voice_encoder import HIDDEN  # noqa: E402
from ser_node.train.voice_recipe import ROOMS, Copies, VoiceData, load_voice_data, room_transform  # noqa: E402

ROOM_COPIES = 2
VARIANTS = {  # name -> consistency weight (None: layer 3 frozen)
    "frozen": None,
    "finetuned": 0.0,
    "finetuned + consistency": 1.0,
}


def pooled_layer3(layer3, inputs: list, grad: bool = False):
    """Mean and standard deviation over time of layer 3's states for each sequence of layer-2 states (frames, 256):
    (n, 512). The batch is zero-padded and the padding masked out of the pooling (an LSTM is causal, so the states
    within each length are exact); packed sequences give the same numbers but train ~14x slower on CPU."""
    import torch
    from torch.nn.utils.rnn import pad_sequence

    with torch.set_grad_enabled(grad):
        lengths = torch.tensor([len(x) for x in inputs])
        padded = pad_sequence(inputs, batch_first=True)
        out, _ = layer3(padded)
        out = out * (torch.arange(padded.shape[1])[None, :] < lengths[:, None])[..., None]
        count = lengths[:, None].float()
        mean = out.sum(dim=1) / count
        std = ((out * out).sum(dim=1) / count - mean * mean).clamp_min(1e-8).sqrt()
        return torch.cat([mean, std], dim=1)


def pooled_all(layer3, inputs: list, batch: int = 64) -> np.ndarray:
    return np.concatenate([pooled_layer3(layer3, inputs[i:i + batch]).numpy()
                           for i in range(0, len(inputs), batch)])


def lower_pooled(states: list[np.ndarray]) -> np.ndarray:
    """Layers 1-2's (mean, std) blocks, as the cached features lay them out (n, 1024)."""
    out = []
    for s in states:
        x = s[:, :2 * HIDDEN].astype(np.float64)
        mean, std = x.mean(axis=0), x.std(axis=0)
        out.append(np.concatenate([mean[:HIDDEN], std[:HIDDEN], mean[HIDDEN:], std[HIDDEN:]]))
    return np.array(out, dtype=np.float32)


def finetune(layer3, versions: list[list], lower: list[np.ndarray], classes: np.ndarray, train: np.ndarray,
             epochs: int, consistency: float, seed: int = 0):
    """Trains `layer3` in place with a linear classifier on the standardised pooled features of every version
    (clean first, then the room copies) of the training clips; batches of 16 clips with all their versions, so the
    consistency term can pull each room copy's layer-3 block towards its clean clip's."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    frozen = [np.concatenate([lower[v], pooled_all(layer3, versions[v])], axis=1) for v in range(len(versions))]
    stacked = np.concatenate([f[train] for f in frozen])
    centre = torch.from_numpy(stacked.mean(axis=0))
    spread = torch.from_numpy(stacked.std(axis=0) + 1e-5)
    lower_t = [torch.from_numpy(x) for x in lower]
    layer3.requires_grad_(True)
    classifier, drop = nn.Linear(6 * HIDDEN, len(EMOTIONS)), nn.Dropout(0.3)
    optimiser = torch.optim.Adam([{"params": list(layer3.parameters()), "lr": 1e-4},
                                  {"params": list(classifier.parameters()), "lr": 1e-3}], weight_decay=1e-4)
    rng = np.random.default_rng(seed)
    target = torch.from_numpy(classes)
    for _ in range(epochs):
        layer3.train()
        for batch in np.array_split(rng.permutation(train), max(1, len(train) // 16)):
            tops = pooled_layer3(layer3, [versions[v][i] for v in range(len(versions)) for i in batch], grad=True)
            features = (torch.cat([torch.cat([lower_t[v][batch] for v in range(len(versions))]), tops], dim=1)
                        - centre) / spread
            loss = nn.functional.cross_entropy(classifier(drop(features)),
                                               target[np.tile(batch, len(versions))])
            if consistency:
                top = features[:, 4 * HIDDEN:].reshape(len(versions), len(batch), -1)
                loss = loss + consistency * ((top[1:] - top[:1].detach()) ** 2).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    layer3.eval()
    layer3.requires_grad_(False)


def verification_eer(embeddings: np.ndarray, speakers: np.ndarray) -> float:
    """Equal error rate of cosine scoring over every pair of clips (same speaker or not)."""
    from sklearn.metrics import roc_curve

    e = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    upper = np.triu_indices(len(e), k=1)
    scores = (e @ e.T)[upper]
    same = (speakers[:, None] == speakers[None, :])[upper]
    fpr, tpr, _ = roc_curve(same, scores)
    i = np.argmin(np.abs(fpr - (1 - tpr)))
    return float((fpr[i] + 1 - tpr[i]) / 2)


def utterance_embeddings(encoder, layer3, inputs: list) -> np.ndarray:
    """The node's speaker embedding (the encoder's head on the mean of layer 3's states) through `layer3`."""
    import torch

    means = torch.from_numpy(pooled_all(layer3, inputs)[:, :HIDDEN])
    with torch.no_grad():
        return encoder.embed(means).numpy()


def run(work: Path, variants: list[str], epochs: int) -> dict:
    import copy as copying

    import torch

    from ser_node.train.voice_encoder import GE2EEncoder

    torch.set_num_threads(2)
    recipe = dataclasses.replace(shipped_recipe(), **{**SIMPLE, "room_copies": ROOM_COPIES})
    recipe.corpora = recipe.corpora[:1]
    data = load_voice_data(recipe)
    degrader, cached = condition_features(data, recipe)
    cache = work / "cache"
    sets = {"clean": encoder_states(data.paths, cache)}
    for k in range(ROOM_COPIES):
        sets[f"room{k}"] = encoder_states(data.paths, cache, f"uem-es-room{k}", room_transform(data.speakers, k))
    for name, condition in test_conditions().items():
        if name != "clean":
            sets[name] = encoder_states(data.paths, cache, f"uem-es-{condition.name.replace(' ', '_')}",
                                        lambda audio, i, c=condition: degrader(i, c))
    inputs = {name: [torch.from_numpy(s[:, HIDDEN:2 * HIDDEN].astype(np.float32)) for s in states]
              for name, states in sets.items()}
    lower = {name: lower_pooled(states) for name, states in sets.items()}
    encoder = GE2EEncoder.pretrained()
    frozen_clean = np.concatenate([lower["clean"], pooled_all(encoder.layers[2], inputs["clean"])], axis=1)
    drift = float(np.abs(frozen_clean - cached["clean"]).max() / np.abs(cached["clean"]).max())
    print(f"states against the feature cache (clean): max deviation {drift:.2e} of the largest feature", flush=True)
    classes = np.array([EMOTIONS.index(label) for label in data.labels])
    versions = ["clean"] + [f"room{k}" for k in range(ROOM_COPIES)]
    conditions = list(test_conditions())
    folds_dir = work / "encoder_finetune" / f"epochs{epochs}"
    folds_dir.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    records, eers = Records(), {}
    for t in sorted(set(data.speakers)):
        test, train = np.where(data.speakers == t)[0], np.where(data.speakers != t)[0]
        for name in variants:
            path = folds_dir / f"{name.replace(' ', '_')}-{t}.json"
            if not path.exists():  # each finished fold is kept: a stopped run resumes where it was
                layer3 = copying.deepcopy(encoder.layers[2])
                if VARIANTS[name] is not None:
                    finetune(layer3, [inputs[v] for v in versions], [lower[v] for v in versions], classes, train,
                             epochs, VARIANTS[name])
                features = {v: np.concatenate([lower[v], pooled_all(layer3, inputs[v])], axis=1) for v in inputs}
                fold = VoiceData(features["clean"], data.speaker_embeddings, data.labels, data.speakers,
                                 data.corpora, data.paths, data.target)
                copies = [Copies(features[f"room{k}"], np.arange(len(data.labels)),
                                 np.char.add(data.speakers.astype(str), f"@room{k}"), ROOMS)
                          for k in range(ROOM_COPIES)]
                fold_records = Records()
                judge_in_conditions(fold_records, name, fold_heads(fold, recipe, t, False, copies), recipe, fold,
                                    test, {c: features[c] for c in conditions})
                eer = verification_eer(utterance_embeddings(encoder, layer3, inputs["clean"]), data.speakers)
                save_bytes_atomic(json.dumps({"rows": fold_records.rows, "eer": eer}).encode(), path)
                print(f"fold {t} {name}: EER {eer:.3f} ({time.perf_counter() - began:.0f} s)", flush=True)
            saved = json.loads(path.read_text())
            for system, rows in saved["rows"].items():
                records.rows.setdefault(system, []).extend(tuple(r) for r in rows)
            eers.setdefault(name, {})[t] = saved["eer"]
    rows = {system: {k: v for k, v in records.summary(system).items() if k in ("ua_mean", "ua_std", "per_speaker")}
            for system in records.rows}
    against = {}  # "<variant> | <condition> | <mode>" -> paired comparison with the frozen encoder's row
    for system, row in rows.items():
        name, rest = system.split(" | ", 1)
        if name != "frozen" and f"frozen | {rest}" in rows:
            against[system] = paired(row["per_speaker"], rows[f"frozen | {rest}"]["per_speaker"])
    return {"date": time.strftime("%Y-%m-%d %H:%M"), "seconds": time.perf_counter() - began, "epochs": epochs,
            "protocol": "LOSO over the 12 speakers of uem-es (uem-es only); layer 3 trained per fold on the training "
                        "speakers' clean clips and 2 room copies (each speaker in one room per copy, RT60 0.3-0.9 s, "
                        "0.5-3 m, room seeds 1-4); heads: linear, uem-es + the 2 room copies (bench/voice.py's "
                        "`simple recipe + 2 room copies`); test clips clean, in room seed 0 (RT60 0.6 s at 2 m) and "
                        "with robot noise at 10 dB; normalised: 5 random orders per speaker, centred by the "
                        "speaker's earlier clips in the same condition",
            "cache_deviation": drift, "variants": {name: {"consistency": VARIANTS[name]} for name in variants},
            "rows": rows, "against_frozen": against,
            "speaker_eer": {name: {"mean": float(np.mean(list(e.values()))), "per_fold": e}
                            for name, e in eers.items()}}


def report(result: dict) -> str:
    names = sorted(result["variants"], key=list(VARIANTS).index)  # the JSON's keys come back sorted
    table = []
    for name in names:
        for mode in ("plain", "normalised"):
            row = {"layer 3": name, "head": mode}
            for condition in test_conditions():
                system = f"{name} | {condition} | {mode}"
                cell = f"{result['rows'][system]['ua_mean']:.3f}"
                if system in result["against_frozen"]:
                    p = result["against_frozen"][system]
                    cell += f" ({p['difference']:+.3f}, {p['wins']}/12, p {p['wilcoxon_p']:.2f})"
                row[condition] = cell
            row["speaker EER"] = f"{result['speaker_eer'][name]['mean']:.3f}"
            table.append(row)
    gaps = {name: result["rows"][f"{name} | clean | normalised"]["ua_mean"]
            - result["rows"][f"{name} | room RT60 0.6 s at 2 m | normalised"]["ua_mean"] for name in names}
    return (f"# Fine-tuning the encoder's layer 3 on room copies ({result['date']})\n\n"
            f"`.venv/bin/python bench/encoder_finetune.py --variants '{','.join(names)}' --epochs {result['epochs']}`"
            f" ({result['seconds'] / 60:.0f} min). {result['protocol']}. UA mean over the 12 test speakers; in "
            "brackets: against the frozen encoder in the same run (mean difference, wins of 12, Wilcoxon p). "
            "Speaker EER: the node's speaker embedding through each fold's layer 3, every pair of clean uem-es "
            "clips, mean over folds.\n\n" + format_table(table, ["layer 3", "head", *test_conditions(), "speaker EER"]) + "\n\nRoom gap (clean minus room, normalised): "
            + ", ".join(f"{name} {gap * 100:.1f} points" for name, gap in gaps.items()) + ".\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"of {', '.join(VARIANTS)}")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "work")
    parser.add_argument("--report-only", action="store_true", help="rewrite the .md from --out's JSON")
    args = parser.parse_args()
    variants = args.variants.split(",")
    if unknown := set(variants) - set(VARIANTS):
        parser.error(f"unknown variants {sorted(unknown)}")
    if args.report_only:
        result = json.loads((args.out / "encoder_finetune.json").read_text())
    else:
        result = run(args.work, variants, args.epochs)
        write_json(args.out / "encoder_finetune.json", result)
    text = report(result)
    (args.out / "encoder_finetune.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
