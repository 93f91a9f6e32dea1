"""How much the best WPE could give the shipped recipe: nara-wpe's offline WPE (the whole utterance, 512-point STFT,
hop 128, 10 taps, delay 3, 3 iterations; the settings issue #33 measured +1.6 points with, before the recipe had
room copies) on every clip's audio, after its room or noise, before front end 2: every training clip, copy and
test clip. It is not causal (the encoder could only start at the utterance's end) and costs ~14 ms of CPU per
second of audio (bench/wpe_cost.py), so this is an upper bound for the node's causal WPE (front end 4,
bench/voice.py --parts wpe), not a candidate. The same LOSO folds, conditions, orders and one MLP seed as
--parts wpe, against front end 2 without WPE judged in the same run.

  .venv/bin/pip install -r requirements/bench.txt    # nara-wpe (MIT; bench only, needs SciPy)
  OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/wpe_offline.py   # ~20 min on one core, features cached after

Features of the dereverberated audio are cached in bench/work/wpe_offline/. Writes bench/results/wpe_offline.json.
"""
from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import voice  # noqa: E402
from wpe_cost import nara_dereverberate  # noqa: E402

import ser_node.train.voice_features as voice_features  # noqa: E402
from ser_node.train.reports import format_table, write_json  # noqa: E402
from ser_node.train.voice_recipe import load_voice_data, training_copies  # noqa: E402

WITHOUT = "shipped recipe, one MLP seed, front end 2"
WITH = "the same, nara-wpe offline before the front end (not causal)"
KEYS = ("clean | normalised", "room RT60 0.6 s at 2 m | normalised", "robot noise 10 dB | normalised",
        "clean | plain", "room RT60 0.6 s at 2 m | plain")


@contextlib.contextmanager
def wpe_before_front_end():
    """The encoder's input computed from dereverberated audio while features are computed (the feature code
    offers no hook for a pre-processing step only this benchmark needs)."""
    plain = voice_features.encoder_input
    voice_features.encoder_input = lambda audio, version=2: plain(nara_dereverberate(audio), version)
    try:
        yield
    finally:
        voice_features.encoder_input = plain


def judged(name: str, recipe) -> dict:
    data = load_voice_data(recipe)
    target = data.subset(data.corpora == data.target)
    _, features = voice.condition_features(target, recipe)
    rows, _ = voice.judge_variants(name, data, target, features, training_copies(data, recipe), {name: (recipe, True)})
    return rows


def main() -> None:
    began = time.perf_counter()
    recipe = dataclasses.replace(voice.shipped_recipe(), head_ensemble=1)
    rows = judged(WITHOUT, recipe)
    with wpe_before_front_end():
        rows.update(judged(WITH, dataclasses.replace(recipe, cache_dir=str(ROOT / "bench" / "work" / "wpe_offline"))))
    table = []
    for key in KEYS:
        versus = voice.paired(rows[f"{WITH} | {key}"]["per_speaker"], rows[f"{WITHOUT} | {key}"]["per_speaker"])
        table.append({"condition": key.replace(" | ", ", "), WITHOUT: f"{rows[f'{WITHOUT} | {key}']['ua_mean']:.3f}",
                      WITH: f"{rows[f'{WITH} | {key}']['ua_mean']:.3f}",
                      "difference": f"{versus['difference']:+.3f} ({versus['wins']}/12 better, "
                                    f"p {versus['wilcoxon_p']:.2f})"})
    date = time.strftime("%Y-%m-%d %H:%M")
    print(f"{date}, LOSO over the 12 uem-es speakers, UA mean over speakers:")
    print(format_table(table, list(table[0])))
    write_json(ROOT / "bench" / "results" / "wpe_offline.json",
               {"date": date, "seconds": time.perf_counter() - began, "protocol": __doc__.split("\n\n")[0],
                "rows": {name: {k: v for k, v in row.items() if k in ("ua_mean", "ua_std", "per_speaker")}
                         for name, row in rows.items()}, "table": table})


if __name__ == "__main__":
    main()
