"""A prosody head beside the GE2E heads: does it hold up in a reverberant room? (rooms issue, lever 1)

Pitch and its movement survive reverberation better than the spectrum the voice encoder reads, so heads on a small
block of utterance-level prosody (ser_node/inference/prosody.py: F0 level, range and movement, voicing, loudness
dynamics, spectral tilt) are fused with the GE2E heads (log p + w log p(prosody), the recipe's prosody_weight), and,
with --concat, the block is appended to the GE2E features instead. Measured on the LOSO folds, conditions and
orders of `bench/voice.py --parts rooms`, on the shipped recipe's rows (uem-es x3, emovo, emodb, ased, 1 augmented
and 2 room copies of uem-es), each copy's prosody computed from the same degraded audio as its encoder features;
the weight chosen per test speaker on the other 11 speakers' folds. Also the block's CPU cost against the shipped
model's in the same process.

    .venv/bin/python bench/prosody.py [--ensemble 5] [--fusion-weights 0.5 1 1.5] [--concat] [--out DIR]
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

from ser_node.inference.prosody import PROSODY_NAMES, SR, prosody  # noqa: E402

BASE = "shipped recipe"
ALONE = "prosody heads alone"
CONCAT = "shipped recipe, block appended to the GE2E features"


def fusion_name(weight: float) -> str:
    return f"late fusion: shipped x prosody heads^{weight:g}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ensemble", type=int, default=5, help="MLP seeds averaged per head (shipped: 5)")
    parser.add_argument("--fusion-weights", type=float, nargs="*", default=[0.5, 1.0, 1.5],
                        help="late fusion: log p(shipped heads) + w log p(prosody heads), one row per w")
    parser.add_argument("--concat", action="store_true",
                        help="also the block appended to the GE2E features (one shipped-size fit more a fold)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()

    from voice import Records, honest_selection, paired, plot_rooms, recipe_rows, shipped_recipe, speaker_orders

    from ser_node.train.voice_recipe import (GE2E_WIDTH, PROSODY_COLUMNS, fit_heads, predict_in_order,
                                             with_augmentation)

    # one head set: the fusion is judged on the shipped recipe's first set (fit_heads takes no further sets)
    base = dataclasses.replace(shipped_recipe(), head_ensemble=args.ensemble, prosody_weight=0.0, head_sets=[])
    with_block = dataclasses.replace(base, prosody_weight=1.0)  # rows and test features carry the block
    data, target, features, copies = recipe_rows(with_block)
    records = Records()
    began = time.perf_counter()
    for t in sorted(set(target.speakers)):
        rows = with_augmentation(data, copies, data.speakers != t)
        shipped, alone = fit_heads(rows, base), fit_heads(rows, base, PROSODY_COLUMNS)
        systems = {BASE: shipped, ALONE: alone, **{fusion_name(w): dataclasses.replace(
            shipped, prosody=alone, prosody_weight=w) for w in args.fusion_weights}}
        if args.concat:
            systems[CONCAT] = fit_heads(rows, base, np.arange(GE2E_WIDTH + len(PROSODY_COLUMNS)))
        test = np.where(target.speakers == t)[0]
        for order in speaker_orders(len(test), t):
            pick = test[order]
            for condition, x in features.items():
                for name, heads in systems.items():
                    z = heads.standardise(x[pick])
                    for mode, normalise in (("plain", False), ("normalised", True)):
                        records.add(f"{name} | {condition} | {mode}", t, target.labels[pick],
                                    predict_in_order(heads, z, base, normalise))
        print(f"prosody: fold {t} done ({time.perf_counter() - began:.0f} s)", flush=True)
    rows = {name: records.summary(name) for name in records.rows}
    names = sorted({k.split(" | ")[0] for k in rows})
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "seconds": time.perf_counter() - began,
              "command": " ".join([".venv/bin/python bench/prosody.py"] + sys.argv[1:]),
              "protocol": "LOSO over the 12 speakers of uem-es, the conditions and orders of bench/voice.py --parts "
                          "rooms; the shipped recipe's rows and copies (uem-es x3, emovo, emodb, ased, 1 augmented "
                          f"and 2 room copies of uem-es), head_ensemble {args.ensemble}; each copy's prosody from "
                          "the same degraded audio as its encoder features; the heads on the block fitted like the "
                          "shipped ones; normalised: the offset of the whole vector (features and block), as the "
                          "node keeps it",
              "features": list(PROSODY_NAMES),
              "rows": {k: {f: v[f] for f in ("ua_mean", "ua_std", "per_speaker")} for k, v in rows.items()},
              "against_shipped": {f"{name} | {c} | {m}": paired(rows[f"{name} | {c} | {m}"]["per_speaker"],
                                                                rows[f"{BASE} | {c} | {m}"]["per_speaker"])
                                  for name in names if name != BASE for c in features
                                  for m in ("plain", "normalised")},
              "selection": honest_selection(rows, [n for n in names if n != ALONE], list(features))}
    result["cost"] = cost(list(target.paths))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "prosody.json").write_text(json.dumps(result, indent=1))
    plot_rooms({"variants": names, "rows": rows, "date": result["date"]}, args.out / "prosody.png",
               f"prosody heads beside the GE2E heads, head_ensemble {args.ensemble}")
    text = report(result)
    (args.out / "prosody.md").write_text(text)
    print(text)
    return 0


def cost(paths: list[str], clips: int = 120, rounds: int = 3) -> dict:
    """CPU per second of audio: the prosody block against the shipped model (models/ser_default.onnx, one thread,
    whole utterances) on the same clips in this process, best of `rounds`; the ratio is what the block would add."""
    from ser_node.audio.decode import load_audio
    from ser_node.inference.classifier import Classifier

    audio = [load_audio(p) for p in paths[::max(1, len(paths) // clips)][:clips]]
    seconds = sum(len(a) for a in audio) / SR
    model = Classifier(ROOT / "models" / "ser_default.onnx", threads=1)

    def best(run: Callable[[np.ndarray], object]) -> float:
        times = []
        for _ in range(rounds):
            began = time.process_time()
            for a in audio:
                run(a)
            times.append(time.process_time() - began)
        return min(times) / seconds * 1000

    block, shipped = best(prosody), best(lambda a: model.predict([a]))
    print(f"CPU per second of audio: prosody block {block:.2f} ms, shipped model {shipped:.2f} ms "
          f"(x{block / shipped:.3f})", flush=True)
    return {"clips": len(audio), "audio_seconds": seconds, "prosody_ms_per_s": block, "model_ms_per_s": shipped,
            "ratio": block / shipped}


def report(result: dict) -> str:
    """The table: normalised / plain UA per variant and condition, the gap to clean, and the paired differences."""
    conditions = ("clean", "room RT60 0.6 s at 2 m", "robot noise 10 dB")
    names = sorted({k.split(" | ")[0] for k in result["rows"]}, key=lambda n: (n != BASE, n))
    lines = [f"# Prosody heads beside the GE2E heads ({result['date']})", "",
             f"`{result['command']}`: {result['protocol']}.", "",
             "| variant | " + " | ".join(conditions) + " |", "|---|" + "---|" * len(conditions)]
    for name in names:
        clean = result["rows"][f"{name} | clean | normalised"]["ua_mean"]
        cells = []
        for c in conditions:
            n, p = (result["rows"][f"{name} | {c} | {m}"]["ua_mean"] for m in ("normalised", "plain"))
            gap = "" if c == "clean" else f" ({n - clean:+.3f})"
            cells.append(f"{n:.3f}{gap} / {p:.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    chosen = result["selection"]["rows"]
    clean = chosen["clean | normalised"]["ua_mean"]
    cells = [f"{chosen[f'{c} | normalised']['ua_mean']:.3f}"
             + ("" if c == "clean" else f" ({chosen[f'{c} | normalised']['ua_mean'] - clean:+.3f})")
             + f" / {chosen[f'{c} | plain']['ua_mean']:.3f}" for c in conditions]
    picks = {}
    for name in result["selection"]["chosen"].values():
        picks[name] = picks.get(name, 0) + 1
    lines.append("| honest choice (" + ", ".join(f"{n}: {k}" for n, k in sorted(picks.items())) + ") | "
                 + " | ".join(cells) + " |")
    lines += ["", "Normalised / plain UA; in brackets the gap to the same variant's clean row. Against the shipped "
                  "recipe (difference, speakers better, paired p):", ""]
    for key, d in result["against_shipped"].items():
        lines.append(f"- {key}: {d['difference']:+.3f}, {d['wins']}/{d['speakers']}, p {d['wilcoxon_p']:.3f}")
    c = result["cost"]
    lines += ["", f"CPU per second of audio ({c['clips']} clips, {c['audio_seconds']:.0f} s, one thread, best of 3): "
                  f"prosody block {c['prosody_ms_per_s']:.2f} ms, the shipped model on whole utterances "
                  f"{c['model_ms_per_s']:.2f} ms (x{c['ratio']:.3f}).", "",
              "![clean against room UA per variant](prosody.png)"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
