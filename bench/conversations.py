"""Conversations: does knowing who speaks keep speaker normalisation's gain when people take turns?

Conversations are built from the corpora: 1 speaker (what tracking costs a person alone), 2-4 speakers, turns of 1-4 utterances, pauses of 0.5-5 s between turns
(0.2-0.8 s within one), about 40 % neutral (every neutral clip of a speaker plus a draw of the others). Four ways
to normalise, each judged by the same heads:
  none               the plain head only
  reset on silence   one state for everybody, reset after 30 s without speech (the node before voice tracking)
  estimated identity a state per voice found by ser_node/voices.py from the model's speaker embeddings
  oracle identity    a state per true speaker
Reported: voice purity (share of utterances whose voice's majority speaker is their own), fragmentation (voices
per true speaker), pairwise F1 of same-voice against same-speaker, and UA overall and by the utterance's rank
among its speaker's utterances (1-5, 6-20, 21+).

The tracker's thresholds are calibrated on conversations built from emovo, emodb and ased (never uem-es); the
evaluation conversations come from uem-es, each judged by heads trained without its speakers (the other uem-es
speakers plus the three other corpora: the shipped recipe).

  .venv/bin/python bench/conversations.py        # ~5 min once the encoder features are cached (bench/voice.py)
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from accuracy import ua_by_rank  # noqa: E402
from voice import shipped_recipe  # noqa: E402
from ser_node.adaptation import SpeakerAdapter  # noqa: E402
from ser_node.labels import EMOTIONS  # noqa: E402
from ser_node.reports import compute_metrics, format_table, write_json  # noqa: E402
from ser_node.voice_training import (VoiceData, augmented_copies, fit_heads, load_voice_data,  # noqa: E402
                                     with_augmentation)
from ser_node.voices import VoiceSettings, VoiceTracker  # noqa: E402

SYSTEMS = ("none", "reset on silence", "estimated identity", "oracle identity")
RESET_S = 30.0


@dataclass
class Utterance:
    row: int  # index into the VoiceData
    speaker: str
    start: float
    end: float
    rank: int  # among its speaker's utterances in this conversation


def durations(paths: list[str]) -> np.ndarray:
    import soundfile

    return np.array([soundfile.info(p).duration for p in paths])


def conversation(data: VoiceData, lengths: np.ndarray, speakers: list[str], rng: np.random.Generator,
                 neutral_share: float = 0.4) -> list[Utterance]:
    """Turns of 1-4 utterances among `speakers` until every speaker's chosen clips are used."""
    queues = {}
    for s in speakers:
        rows = np.where(data.speakers == s)[0]
        neutral = rows[data.labels[rows] == "neutral"]
        others = rows[data.labels[rows] != "neutral"]
        n_others = min(len(others), int(round(len(neutral) * (1 - neutral_share) / neutral_share))) \
            if len(neutral) else min(len(others), 20)
        chosen = np.concatenate([neutral, rng.choice(others, n_others, replace=False)])
        queues[s] = list(rng.permutation(chosen))
    out, t, last, ranks = [], 0.0, None, {s: 0 for s in speakers}
    while any(queues.values()):
        choices = [s for s in speakers if queues[s] and s != last] or [s for s in speakers if queues[s]]
        speaker = str(rng.choice(choices))
        t += rng.uniform(0.5, 5.0)
        for k in range(int(rng.integers(1, 5))):
            if not queues[speaker]:
                break
            row = int(queues[speaker].pop())
            ranks[speaker] += 1
            out.append(Utterance(row, speaker, t, t + lengths[row], ranks[speaker]))
            t += lengths[row] + rng.uniform(0.2, 0.8)
        last = speaker
    return out


def identity_scores(utterances: list[Utterance], assigned: list[str]) -> dict:
    truth = [u.speaker for u in utterances]
    voices = sorted(set(assigned))
    majority = 0
    for v in voices:
        members = [t for t, a in zip(truth, assigned) if a == v]
        majority += max(members.count(s) for s in set(members))
    same_voice = same_speaker = both = 0
    for i, j in itertools.combinations(range(len(truth)), 2):
        sv, ss = assigned[i] == assigned[j], truth[i] == truth[j]
        same_voice += sv
        same_speaker += ss
        both += sv and ss
    precision, recall = both / max(same_voice, 1), both / max(same_speaker, 1)
    return {"purity": majority / len(truth), "fragmentation": len(voices) / len(set(truth)),
            "pairwise_f1": 2 * precision * recall / max(precision + recall, 1e-12)}


def track(data: VoiceData, utterances: list[Utterance], settings: VoiceSettings) -> list[str]:
    tracker = VoiceTracker(settings)
    return [tracker.assign(data.speaker_embeddings[u.row], u.start, u.end).id for u in utterances]


def calibrate(data: VoiceData, lengths: np.ndarray, seed: int = 0) -> tuple[VoiceSettings, list[dict]]:
    """Thresholds with the best mean pairwise F1 over conversations of the other corpora."""
    rng = np.random.default_rng(seed)
    conversations = []
    for corpus in ("emovo", "emodb", "ased"):
        speakers = sorted(set(data.speakers[data.corpora == corpus]))
        for _ in range(8):
            group = list(rng.choice(speakers, int(rng.integers(2, 5)), replace=False))
            conversations.append(conversation(data, lengths, group, rng))
    grid = []
    for threshold in (0.6, 0.65, 0.7, 0.75, 0.8, 0.85):
        for same_turn in (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85):
            if same_turn > threshold:
                continue
            settings = VoiceSettings(threshold=threshold, same_turn_threshold=same_turn)
            scores = [identity_scores(c, track(data, c, settings)) for c in conversations]
            grid.append({"threshold": threshold, "same_turn_threshold": same_turn,
                         **{k: float(np.mean([s[k] for s in scores])) for k in scores[0]}})
    best = max(grid, key=lambda g: g["pairwise_f1"])
    return VoiceSettings(threshold=best["threshold"], same_turn_threshold=best["same_turn_threshold"]), grid


def judge(data: VoiceData, utterances: list[Utterance], heads, settings: VoiceSettings) -> dict[str, list]:
    """Predicted label per utterance for every system (same heads, same features)."""
    z = heads.standardise(data.features[[u.row for u in utterances]])
    plain = heads.plain_probabilities(z)
    out = {"none": [EMOTIONS[i] for i in plain.argmax(axis=1)]}

    def normalised(state_of) -> list[str]:
        labels = []
        for k, u in enumerate(utterances):
            adapter = state_of(k, u)
            offset = adapter.offset()
            p = plain[k] if offset is None else heads.normalised_probabilities(z[k:k + 1], offset[None])[0]
            adapter.remember(z[k])
            labels.append(EMOTIONS[int(np.argmax(p))])
        return labels

    new = lambda: SpeakerAdapter(settings.warmup, settings.history, settings.shrinkage)  # noqa: E731
    shared = {"adapter": new(), "end": -np.inf}

    def reset_on_silence(k: int, u: Utterance) -> SpeakerAdapter:
        if u.start - shared["end"] > RESET_S:
            shared["adapter"] = new()
        shared["end"] = u.end
        return shared["adapter"]

    out["reset on silence"] = normalised(reset_on_silence)
    tracker = VoiceTracker(settings)
    out["estimated identity"] = normalised(
        lambda k, u: tracker.assign(data.speaker_embeddings[u.row], u.start, u.end).adapter)
    oracle: dict[str, SpeakerAdapter] = {}
    out["oracle identity"] = normalised(lambda k, u: oracle.setdefault(u.speaker, new()))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--repeats", type=int, default=2, help="partitions of the 12 speakers per group size")
    args = parser.parse_args()
    began = time.perf_counter()
    recipe = shipped_recipe()
    data = load_voice_data(recipe)
    lengths = durations(data.paths)
    copies = augmented_copies(data, recipe)
    settings, grid = calibrate(data, lengths)
    print(f"calibrated on emovo, emodb, ased: {settings}", flush=True)
    rng = np.random.default_rng(1)
    target_speakers = sorted(set(data.speakers[data.corpora == data.target]))
    records = {s: [] for s in SYSTEMS}  # (speaker, rank, truth, predicted)
    alone = {s: [] for s in SYSTEMS}  # the same for one-speaker sessions only
    identity = []
    conversations = 0
    for _ in range(args.repeats):
        for size in (1, 2, 3, 4):
            order = list(rng.permutation(target_speakers))
            for group in (order[i:i + size] for i in range(0, len(order) - size + 1, size)):
                utterances = conversation(data, lengths, group, rng)
                train = ~np.isin(data.speakers, group)
                heads = fit_heads(with_augmentation(data, copies, train) if copies else data.subset(train), recipe)
                predicted = judge(data, utterances, heads, settings)
                for system in SYSTEMS:
                    rows = [(u.speaker, u.rank, data.labels[u.row], p)
                            for u, p in zip(utterances, predicted[system])]
                    (alone if size == 1 else records)[system] += rows
                if size > 1:
                    identity.append(identity_scores(utterances, track(data, utterances, settings)))
                conversations += 1
                print(f"conversation {conversations}: {len(group)} speakers, {len(utterances)} utterances", flush=True)
    rows = {}
    for system, rec in [*records.items(), *((f"{s}, one speaker alone", r) for s, r in alone.items())]:
        rows[system] = {"ua": compute_metrics([r[2] for r in rec], [r[3] for r in rec], EMOTIONS)["ua"],
                        "ua_by_rank": ua_by_rank(rec), "utterances": len(rec)}
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "seconds": time.perf_counter() - began,
              "conversations": conversations, "settings": settings.__dict__, "calibration_grid": grid,
              "identity": {k: float(np.mean([s[k] for s in identity])) for k in identity[0]}, "rows": rows}
    write_json(args.out / "conversations.json", result)
    table = [{"normalisation": s, "UA": f"{r['ua']:.3f}", **{f"UA at {k}": f"{v:.3f}" for k, v in r["ua_by_rank"].items()}}
             for s, r in rows.items()]
    ident = result["identity"]
    text = (f"# Conversations: normalisation by voice ({result['date']})\n\n`.venv/bin/python bench/conversations.py`:"
            f" {conversations} sessions of uem-es speakers (~40 % neutral): conversations of 2-4 speakers (the "
            f"first rows) and each speaker alone (the last rows), each judged by heads trained without its speakers. Tracker calibrated on emovo, emodb and ased: threshold {settings.threshold}, "
            f"same-turn threshold {settings.same_turn_threshold} (turn gap {settings.turn_gap_s} s).\n\n"
            f"Voice identity: purity {ident['purity']:.3f}, fragmentation {ident['fragmentation']:.2f} voices per "
            f"speaker, pairwise F1 {ident['pairwise_f1']:.3f}.\n\n" + format_table(table, list(table[0])) + "\n")
    (args.out / "conversations.md").write_text(text)
    print(text)
    print(json.dumps(result["identity"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
