"""Robustness benchmark: the default recipe and ComParE + SVM under the acoustic conditions a robot meets.

Every uem-es clip is degraded (ser_node/train/acoustics.py, seeded per clip and condition) and scored by the model of its
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
  segmentation  streams of utterances and pauses under 7 conditions through the node's own segmenter (offline),
                Silero and WebRTC, with and without the min_snr_db gate: precision / recall of utterances
  false_alarms  noise-only input (an hour per noise type and level, faster than real time, offline through the
                node's segmenter): expressions the node would publish per hour, per VAD and min_snr_db gate
  babble        what a higher Silero vad_threshold or the background gate (foreground_db) buys against babble
                (false alarms) and costs (recall)
  node          the same streams through a running ser_node (each speaker's fold model, 10x real time):
                segmentation precision/recall against the clean reference and UA of what the node published
  pauses        one clip, one utterance? Every uem-es clip alone (1.5 s of silence after it) through the segmenter
                (Silero) at several min_silence_s, and with a longer wait while an utterance holds little speech
                (short_speech_s, short_silence_s): the share of clips cut into several utterances by a pause
                inside them, against the time the result waits after the speech ends and how often two
                sentences said with a short pause between them merge
  report        only rewrite robustness.md from the results present (every part does it too)

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
sys.path.insert(0, str(ROOT / "test"))

from ser_node.audio.decode import load_audio  # noqa: E402
from ser_node.files import atomic_path  # noqa: E402
from ser_node.labels import EMOTIONS  # noqa: E402
from ser_node.train.acoustics import NOISE_KINDS, AcousticSimulator, Condition, stable_seed, talker  # noqa: E402
from ser_node.train.corpora import load_corpus_entry, load_emomatch  # noqa: E402
from ser_node.train.reports import compute_metrics, summarise_folds, write_json  # noqa: E402

SNRS = (20.0, 10.0, 5.0, 0.0)
RT60 = 0.6
DISTANCES = (1.0, 2.0, 4.0)
DATA = ROOT.parent / "shared" / "data"
NETWORK_RUN, NETWORK_BUDGET = "default_12ep", {"epochs": 12, "patience": 12}
NODE_SPEED = 10.0  # x real time into the node (the soak bench measured 20x lossless on this machine)


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
    with atomic_path(path) as tmp:
        np.save(tmp, features)
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


def fold_networks(runs: Path, corpus: Path, only_folds: tuple[str, ...] = ()):
    """(config, {speaker: model}) of the default recipe's LOSO run; trains it first if it is not there."""
    import torch
    import yaml
    from accuracy import default_recipe, run_ds

    from ser_node.train.config import TrainConfig
    from ser_node.train.loop import load_trained_network

    run_dir = runs / NETWORK_RUN
    print("the default recipe's LOSO fold models (trained if missing; resumable) ...", flush=True)
    run_ds(NETWORK_RUN, {**default_recipe(), **NETWORK_BUDGET, "only_folds": list(only_folds)}, runs, corpus,
           threads=1)
    if only_folds:
        return None
    torch.set_num_threads(1)
    config = TrainConfig.from_mapping(yaml.safe_load((run_dir / "config.yaml").read_text()))
    return config, {d.name.removeprefix("speaker_"): load_trained_network(d, config)
                    for d in sorted(run_dir.glob("speaker_*"))}


def network_predictions(config, models: dict, degrader: Degrader, condition: Condition) -> list[str]:
    import torch

    from ser_node.inference.features import FeatureExtractor

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


def segmentation_table(result: dict) -> str:
    lines = [f"## Segmentation of utterance streams ({result['date']}; {result['protocol']})", "",
             "| condition | VAD | min_snr_db | detected / reference | precision | recall |", "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        gate = "off" if r["min_snr_db"] is None else f"{r['min_snr_db']:g} dB"
        lines.append(f"| {r['condition']} | {r['vad']} | {gate} | {r['detected']} / {r['references']} | "
                     f"{r['precision']:.3f} | {r['recall']:.3f} |")
    return "\n".join(lines) + "\n"


def false_alarm_table(result: dict) -> str:
    lines = [f"## False alarms: noise only, no speech ({result['date']}; {result['hours_per_row']:g} h per row; "
             f"{result['protocol']})", "",
             "| noise | level | VAD | gate off | min_snr_db 3 | min_snr_db 6 | seconds of 'speech' per hour (gate off) |",
             "|---|---|---|---|---|---|---|"]
    rows = result["rows"]
    for key in dict.fromkeys((r["noise"], r["level"], r["vad"]) for r in rows):
        cells = {r["min_snr_db"]: r for r in rows if (r["noise"], r["level"], r["vad"]) == key}
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {cells[None]['per_hour']:.0f}/h | "
                     f"{cells[3.0]['per_hour']:.0f}/h | {cells[6.0]['per_hour']:.0f}/h | "
                     f"{cells[None]['seconds_per_hour']:.0f} |")
    return "\n".join(lines) + "\n"


def node_table(result: dict) -> str:
    lines = [f"## Through a running ser_node ({result['date']}; {result['protocol']}; {result['speed']:g}x real "
             "time)", "", "| condition | VAD | detected / reference | precision | recall | UA of what was published |",
             "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        ua = "n/a" if r["ua_published"] is None else f"{r['ua_published']:.3f}"
        lines.append(f"| {r['condition']} | {r['vad']} | {r['detected']} / {r['references']} | {r['precision']:.3f} "
                     f"| {r['recall']:.3f} | {ua} |")
    lost = sum(int(x.get("audio_messages_lost", 0)) + int(x.get("utterances_dropped", 0)) for x in result["losses"])
    lines += ["", f"Audio messages lost + utterances dropped over all {len(result['losses'])} node runs: {lost}."]
    return "\n".join(lines) + "\n"


def pauses_table(result: dict) -> str:
    pauses = PAIR_PAUSES_S
    lines = [f"## One clip, one utterance? Pauses inside utterances ({result['date']}; {result['protocol']})", "",
             "| min_silence_s | short_speech_s | short_silence_s | clips | one utterance | several | none | mean wait s |"
             + "".join(f" two sentences {p:g} s apart merged |" for p in pauses),
             "|---|---|---|---|---|---|---|---|" + "---|" * len(pauses)]
    for r in result["rows"]:
        merged = r.get("pairs_merged", {})
        lines.append(f"| {r['min_silence_s']:g} | {r.get('short_speech_s', 0):g} | "
                     f"{r.get('short_silence_s', r['min_silence_s']):g} | {r['clips']} | {r['one']:.3f} | "
                     f"{r['several']:.3f} | {r['none']:.3f} | {r.get('mean_wait_s', r['min_silence_s']):.2f} |"
                     + "".join(f" {merged[str(p)]:.3f} |" if str(p) in merged else " |" for p in pauses))
    return "\n".join(lines) + "\n"


def write_report(out: Path) -> None:
    """robustness.md from whichever parts have results."""
    parts = [("robustness.json", offline_table), ("robustness_segmentation.json", segmentation_table),
             ("robustness_false_alarms.json", false_alarm_table), ("robustness_babble.json", babble_table),
             ("robustness_node.json", node_table), ("robustness_pauses.json", pauses_table)]
    sections = ["# Robustness: noise, reverberation, false alarms (bench/robustness.py)", ""]
    for name, table in parts:
        if (out / name).exists():
            sections.append(table(json.loads((out / name).read_text())))
    if (out / "robustness.png").exists():
        sections.append("![UA against SNR](robustness.png)\n")
    (out / "robustness.md").write_text("\n".join(sections))


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


# ------------------------------------------------------------------ streams (node and segmentation)

NODE_CONDITIONS = (Condition(), Condition(noise="robot", snr_db=10.0), Condition(noise="robot", snr_db=0.0),
                   Condition(noise="babble", snr_db=10.0), Condition(noise="events", snr_db=10.0),
                   Condition(rt60_s=RT60, distance_m=2.0),
                   Condition(noise="robot", snr_db=10.0, rt60_s=RT60, distance_m=2.0))
CLIPS_PER_EMOTION = 2
SNR_GATES = (None, 3.0, 6.0)


def stream_clips(clips, speaker: str) -> list[int]:
    """Two clips per emotion of the speaker (the first by file name): 14 utterances per stream."""
    chosen = []
    for emotion in EMOTIONS:
        chosen += sorted((i for i, c in enumerate(clips) if c.speaker == speaker and c.label == emotion),
                         key=lambda i: clips[i].path.name)[:CLIPS_PER_EMOTION]
    return chosen


def degraded_stream(degrader: Degrader, indices: list[int], condition: Condition, seed: int):
    """A robot's hour in miniature: the clips with 1-2 s pauses, the whole stream (pauses included) put through
    the room and the noise; the SNR is set against the speech parts. Returns (stream, reference segments)."""
    from ser_node.bags.io import Segment
    from ser_node.train.acoustics import microphone, mix_at_snr, reverberate, room_response

    rng = np.random.default_rng(seed)
    parts, segments, t = [np.zeros(32000, np.float32)], [], 2.0
    for i in indices:
        audio = degrader.clean[i]
        segments.append(Segment(t, t + audio.size / 16000, degrader.clips[i].label))
        pause = np.zeros(int(rng.uniform(1.0, 2.0) * 16000), np.float32)
        parts += [audio, pause]
        t += (audio.size + pause.size) / 16000
    stream = np.concatenate(parts)
    if condition.rt60_s > 0:
        stream = reverberate(stream, room_response(condition.rt60_s, condition.distance_m, 0))
    if condition.noise != "none":
        speech = np.concatenate([stream[int(g.start * 16000) : int(g.end * 16000)] for g in segments])
        noise = degrader.simulator.noise(condition.noise, stream.size, seed,
                                         exclude_speakers=[talker(degrader.clips[indices[0]])])
        stream = mix_at_snr(stream, noise, condition.snr_db, speech_rms=float(np.sqrt(np.mean(speech ** 2))))
    return microphone(stream, condition), segments


class RecordedVad:
    """Replays per-frame probabilities recorded from a real VAD: threshold sweeps without re-running it."""

    def __init__(self, frame_samples: int, probabilities: list[float]) -> None:
        self.frame_samples, self.probabilities, self.index = frame_samples, probabilities, 0

    def __call__(self, frame: np.ndarray) -> float:
        self.index += 1
        return self.probabilities[self.index - 1]

    def reset(self) -> None:
        pass


class RecordingVad:
    def __init__(self, vad) -> None:
        self.vad, self.frame_samples, self.probabilities = vad, vad.frame_samples, []

    def __call__(self, frame: np.ndarray) -> float:
        self.probabilities.append(float(self.vad(frame)))
        return self.probabilities[-1]

    def reset(self) -> None:
        self.vad.reset()


def segment_offline(blocks, vad_backend: str, settings: dict | None = None) -> dict:
    """The node's own StreamProcessor + Segmenter over 16 kHz blocks, once per setting (default parameters but
    those named; default: the SNR gates). The VAD runs once; its probabilities are replayed for the other settings.
    Returns {setting key: [(start, end), ...]}."""
    from ser_node.audio.segmenter import Segmenter, SegmenterConfig
    from ser_node.audio.stream import AudioChunk, StreamProcessor
    from ser_node.audio.vad import make_vad

    settings = settings or {gate: {"min_snr_db": gate} for gate in SNR_GATES}
    recording = RecordingVad(make_vad(vad_backend))
    found = {}
    for number, (key, values) in enumerate(settings.items()):
        vad = recording if number == 0 else RecordedVad(recording.frame_samples, recording.probabilities)
        processor = StreamProcessor(Segmenter(vad, SegmenterConfig(**values)))
        utterances, t = [], 0.0
        for block in blocks():
            for start in range(0, block.size, 16000):
                piece = block[start : start + 16000]
                utterances += processor.feed(AudioChunk(piece[:, None], 16000, t))
                t += piece.size / 16000
        utterances += processor.flush()
        found[key] = [(u.start, u.end) for u in utterances]
    return found


def run_segmentation(degrader: Degrader) -> dict:
    """Offline through the node's segmenter: precision/recall per condition, VAD and SNR gate."""
    from ser_node.bags.evaluate import DetectedUtterance, score_against_reference

    speakers = sorted({c.speaker for c in degrader.clips})
    rows = []
    for condition in NODE_CONDITIONS:
        for backend in ("silero", "webrtc"):
            totals = {gate: [0, 0, 0] for gate in SNR_GATES}
            for speaker in speakers:
                stream, segments = degraded_stream(degrader, stream_clips(degrader.clips, speaker), condition,
                                                   stable_seed(speaker, condition.name))
                for gate, spans in segment_offline(lambda: [stream], backend).items():
                    detected = [DetectedUtterance(a, b, "neutral", []) for a, b in spans]
                    _metrics, seg = score_against_reference(detected, segments, EMOTIONS)
                    for k, key in enumerate(("references", "detected", "matched")):
                        totals[gate][k] += seg[key]
            for gate, (refs, detected, matched) in totals.items():
                rows.append({"condition": condition.name, "vad": backend, "min_snr_db": gate, "references": refs,
                             "detected": detected, "precision": matched / max(detected, 1),
                             "recall": matched / max(refs, 1)})
                print(f"{condition.name:42s} {backend:7s} gate {gate!s:5s} precision {rows[-1]['precision']:.3f} "
                      f"recall {rows[-1]['recall']:.3f}", flush=True)
    return {"date": time.strftime("%Y-%m-%d"), "rows": rows,
            "protocol": f"{CLIPS_PER_EMOTION} clips per emotion x 12 speakers of uem-es, 1-2 s pauses, offline "
                        "through the node's StreamProcessor + Segmenter (default parameters)"}


# ------------------------------------------------------------------ pauses inside an utterance

PAUSE_SETTINGS = (0.3, 0.4, 0.5, 0.6, 0.8)  # min_silence_s
# (short_speech_s, short_silence_s) with min_silence_s 0.5: a longer wait while an utterance holds little speech
SHORT_SETTINGS = ((1.0, 0.7), (1.0, 0.8), (1.5, 0.7), (1.5, 0.8), (2.0, 0.8))
PAIR_PAUSES_S = (0.6, 0.7, 0.9)  # silence between two sentences said one after the other


def run_pauses(clips) -> dict:
    """Every clip alone, then 1.5 s of silence, through the Segmenter (Silero, the node's defaults but the silence
    settings, 20 ms pushes): how many clips come out as one utterance, several, or none; how long each result
    waits after the last speech (the push that emits it against the utterance's end without its post-roll); and
    how often two sentences of a speaker said with a short pause between them come out as one utterance."""
    from ser_node.audio.segmenter import Segmenter, SegmenterConfig
    from ser_node.audio.vad import make_vad

    audio = [load_audio(c.path) for c in clips]
    rng = np.random.default_rng(0)
    pairs = [(i, int(rng.choice([k for k, c in enumerate(clips) if c.speaker == clips[i].speaker and k != i])))
             for i in range(0, len(clips), 4)]
    # the first rows wait min_silence_s alone (short_speech_s 0: the segmenter's default waits longer after little
    # speech since 2026-12-03)
    settings = [{"min_silence_s": m, "short_speech_s": 0.0} for m in PAUSE_SETTINGS] + [
        {"min_silence_s": 0.5, "short_speech_s": short, "short_silence_s": wait} for short, wait in SHORT_SETTINGS]
    tail = np.zeros(24000, np.float32)
    clip_streams = [np.concatenate([a, tail]) for a in audio]
    pair_streams = {p: [np.concatenate([audio[i], np.zeros(int(p * 16000), np.float32), audio[j], tail])
                        for i, j in pairs] for p in PAIR_PAUSES_S}
    # Silero runs once per stream (a fresh one each, as the node starts one per stream); each setting replays it
    recorded: dict[int, RecordingVad] = {}  # by id() of the stream, all of which live until the end

    def segment(stream: np.ndarray, config: SegmenterConfig) -> list[tuple[object, float]]:
        """(utterance, seconds from its last speech to the 20 ms push that emitted it)"""
        if id(stream) in recorded:
            vad = RecordedVad(recorded[id(stream)].frame_samples, recorded[id(stream)].probabilities)
        else:
            vad = recorded[id(stream)] = RecordingVad(make_vad("silero"))
        segmenter, out, step = Segmenter(vad, config), [], 320
        for k in range(0, stream.size, step):
            now = (k + step) / 16000
            out += [(u, now - (u.end - config.post_roll_s)) for u in segmenter.push(stream[k:k + step], k / 16000)]
        return out

    rows = []
    for setting in settings:
        config = SegmenterConfig(**setting)
        heard = [segment(stream, config) for stream in clip_streams]
        counts = np.array([len(h) for h in heard])
        merged = {str(p): float(np.mean([len(segment(stream, config)) == 1 for stream in streams]))
                  for p, streams in pair_streams.items()}
        rows.append({**setting, "clips": len(audio), "one": float(np.mean(counts == 1)),
                     "several": float(np.mean(counts > 1)), "none": float(np.mean(counts == 0)),
                     "mean_wait_s": float(np.mean([w for h in heard for _, w in h[-1:]])),
                     "pairs": len(pairs), "pairs_merged": merged})
        print(f"{setting}: {rows[-1]['one']:.3f} one utterance, {rows[-1]['several']:.3f} several, "
              f"wait {rows[-1]['mean_wait_s']:.2f} s, pairs merged {merged}", flush=True)
    return {"date": time.strftime("%Y-%m-%d %H:%M"), "rows": rows,
            "protocol": "every uem-es clip alone, followed by 1.5 s of silence, through the Segmenter (Silero, "
                        "default parameters but the silence settings), 20 ms pushes; wait: from the clip's last "
                        "speech (its utterance's end less the post-roll) to the push that emitted it, mean over "
                        "the clips' last utterances; pairs: every 4th clip, then another clip of its speaker after "
                        "a pause of 0.6, 0.7 or 0.9 s"}


# ------------------------------------------------------------------ false alarms


def noise_blocks(simulator: AcousticSimulator, kind: str, seconds: float, level_rms: float, seed: int,
                 block_s: float = 60.0):
    """`seconds` of one noise at `level_rms`, as 60 s blocks joined by 0.5 s equal-power cross-fades (independent
    blocks would otherwise meet in a click)."""
    fade = 8000
    ramp = np.sqrt(np.linspace(0, 1, fade, dtype=np.float32))
    tail = None
    for k in range(int(math.ceil(seconds / block_s))):
        block = simulator.noise(kind, int(block_s * 16000) + fade, stable_seed(kind, seed, k)) * level_rms
        if tail is not None:
            block[:fade] = block[:fade] * ramp + tail * ramp[::-1]
        tail = block[-fade:].copy()
        yield block[:-fade]


def run_false_alarms(clips, hours: float) -> dict:
    """Noise only, no speech: utterances (each one an expression the node would publish) per hour."""
    speech_rms = float(np.median([np.sqrt(np.mean(load_audio(c.path) ** 2)) for c in clips[::7]]))
    simulator = AcousticSimulator(babble_pool())
    rows = []
    for kind in NOISE_KINDS:
        for snr in (10.0, 0.0):
            level = speech_rms * 10 ** (-snr / 20)
            for backend in ("silero", "webrtc"):
                began = time.perf_counter()
                found = segment_offline(lambda: noise_blocks(simulator, kind, hours * 3600, level, 1), backend)
                for gate, spans in found.items():
                    rows.append({"noise": kind, "level": f"as loud as at SNR {snr:g} dB", "vad": backend,
                                 "min_snr_db": gate, "per_hour": len(spans) / hours,
                                 "seconds_per_hour": sum(b - a for a, b in spans) / hours})
                print(f"{kind:7s} SNR-equivalent {snr:4g} dB {backend:7s} "
                      + "  ".join(f"gate {g!s:5s}: {len(s) / hours:7.1f}/h" for g, s in found.items())
                      + f"  ({time.perf_counter() - began:.0f} s)", flush=True)
    return {"date": time.strftime("%Y-%m-%d"), "hours_per_row": hours, "speech_rms": speech_rms, "rows": rows,
            "protocol": "noise only through the node's StreamProcessor + Segmenter (default parameters); every "
                        "utterance found is an expression the node publishes (min_confidence 0)"}


def run_babble_thresholds(degrader: Degrader, hours: float) -> dict:
    """Babble is speech, so no VAD rejects it; what a higher Silero threshold buys against it (false alarms per
    hour of babble alone) and costs (recall of the target speech in clean and babble streams)."""
    from ser_node.bags.evaluate import DetectedUtterance, score_against_reference

    settings = {f"vad_threshold {t:g}": {"threshold": t, "negative_threshold": min(0.35, t)} for t in (0.5, 0.7, 0.9)}
    # the background gate (README, Listening to people), alone and with the per-utterance limits beside it
    settings["foreground_db 6"] = {"foreground_db": 6.0}
    settings["foreground_db 6, min_snr_db 5, min_speech_s 1.25"] = {"foreground_db": 6.0, "min_snr_db": 5.0,
                                                                   "min_speech_s": 1.25}
    speech_rms = float(np.median([np.sqrt(np.mean(a ** 2)) for a in degrader.clean[::7]]))
    rows = []
    for snr in (10.0, 0.0):
        level = speech_rms * 10 ** (-snr / 20)
        found = segment_offline(lambda: noise_blocks(degrader.simulator, "babble", hours * 3600, level, 2),
                                "silero", settings)
        rows += [{"input": f"babble alone, as loud as at SNR {snr:g} dB", "setting": t,
                  "false_alarms_per_hour": len(spans) / hours} for t, spans in found.items()]
    for condition in (Condition(), Condition(noise="babble", snr_db=10.0)):
        totals = {t: [0, 0, 0] for t in settings}
        for speaker in sorted({c.speaker for c in degrader.clips}):
            stream, segments = degraded_stream(degrader, stream_clips(degrader.clips, speaker), condition,
                                               stable_seed(speaker, condition.name))
            for t, spans in segment_offline(lambda: [stream], "silero", settings).items():
                _m, seg = score_against_reference([DetectedUtterance(a, b, "neutral", []) for a, b in spans],
                                                  segments, EMOTIONS)
                for k, key in enumerate(("references", "detected", "matched")):
                    totals[t][k] += seg[key]
        rows += [{"input": f"speech streams, {condition.name}", "setting": t,
                  "precision": m / max(d, 1), "recall": m / max(r, 1)} for t, (r, d, m) in totals.items()]
    for row in rows:
        print(row, flush=True)
    return {"date": time.strftime("%Y-%m-%d %H:%M"), "rows": rows, "hours_per_row": hours,
            "protocol": "Silero VAD, vad_threshold swept (negative threshold 0.35) and the background gate, offline "
                        "through the node's segmenter; speech streams as in the segmentation part"}


def babble_table(result: dict) -> str:
    lines = [f"## Babble against the VAD threshold and the background gate ({result['date']}; {result['protocol']})",
             "", "| input | setting | false alarms per hour | precision | recall |", "|---|---|---|---|---|"]
    for r in result["rows"]:
        fa = f"{r['false_alarms_per_hour']:.0f}" if "false_alarms_per_hour" in r else ""
        p = f"{r['precision']:.3f}" if "precision" in r else ""
        rc = f"{r['recall']:.3f}" if "recall" in r else ""
        lines.append(f"| {r['input']} | {r['setting']} | {fa} | {p} | {rc} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ through the node


def run_node(degrader: Degrader, args) -> dict:
    """The degraded streams published into a running ser_node (each speaker's fold model, exported to ONNX), at
    10x real time over loopback; segmentation from ~/utterance, labels from ~/expression."""
    import rclpy  # noqa: F401  (fails early, with a clear message, outside the ROS environment)
    from audio_common_msgs.msg import AudioStamped
    from ros_harness import typed_chunks
    from soak import Soak

    from ser_node.bags.evaluate import DetectedUtterance, match_segments
    from ser_node.labels import canonical_label
    from ser_node.train.export import export_run

    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ.setdefault("ROS_DOMAIN_ID", str(40 + os.getpid() % 50))
    run_dir = args.work.parent / "runs" / NETWORK_RUN
    fold_networks(args.work.parent / "runs", args.corpus)  # trains them if missing
    speakers = sorted({c.speaker for c in degrader.clips})
    streams = {(s, c.name): degraded_stream(degrader, stream_clips(degrader.clips, s), c, stable_seed(s, c.name))
               for s in speakers for c in NODE_CONDITIONS}

    class NodeRun(Soak):
        def __init__(self, model: str, params: dict) -> None:
            self.expressions: dict[float, str] = {}
            self.spans: dict[float, float] = {}
            super().__init__(model, params)
            self.node.create_subscription(AudioStamped, "/ser_node/utterance", self._utterance, 1000)
            self.spin(1.5)

        def _count(self, msg) -> None:
            self.received += 1
            # The expression is in ROS4HRI words (angry, sad ...): back to the corpus's emotion names.
            self.expressions[round(msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9, 4)] = \
                canonical_label(msg.expression) or msg.expression

        def _utterance(self, msg) -> None:
            start = round(msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9, 4)
            self.spans[start] = start + len(msg.audio.audio_data.float32_data) / 16000

    results = {(c.name, b): {"truth": [], "predicted": [], "refs": 0, "detected": 0, "matched": 0}
               for c in NODE_CONDITIONS for b in ("silero", "webrtc")}
    losses = []
    for backend in ("silero", "webrtc"):
        for speaker in speakers:
            model = args.work / "onnx" / f"{speaker}.onnx"
            if not model.exists():
                export_run(run_dir, model, int8=False, fold=f"speaker_{speaker}")
            run = NodeRun(str(model), {"vad_backend": backend, "publish_utterance": "true",
                                       "qos_depth": 5000, "queue_size": 64})
            try:
                bases = {}
                for k, condition in enumerate(NODE_CONDITIONS):
                    base = 1000.0 + 1000.0 * k  # a time jump between conditions closes what is open
                    bases[condition.name] = base
                    stream, _segments = streams[(speaker, condition.name)]
                    began = time.monotonic()
                    for index, msg in enumerate(typed_chunks(stream, 16000, 1, "int16", 0.02, base)):
                        due = began + index * 0.02 / NODE_SPEED
                        while (ahead := due - time.monotonic()) > 0:
                            run.executor.spin_once(timeout_sec=min(ahead, 0.005))
                        run.publisher.publish(msg)
                quiet, count = time.monotonic(), -1
                while time.monotonic() - quiet < 3.0:
                    run.spin(0.2)
                    if len(run.spans) != count:
                        count, quiet = len(run.spans), time.monotonic()
                counters = run.counters()
                losses.append({"vad": backend, "speaker": speaker, **counters})
            finally:
                run.close()
            for condition in NODE_CONDITIONS:
                base = bases[condition.name]
                _stream, segments = streams[(speaker, condition.name)]
                detected = [DetectedUtterance(a - base, run.spans[a] - base, run.expressions.get(a, "?"), [])
                            for a in sorted(run.spans) if base <= a < base + 1000.0]
                pairs = match_segments([(d.start, d.end) for d in detected], segments)  # matched once, used twice
                cell = results[(condition.name, backend)]
                cell["refs"] += len(segments)
                cell["detected"] += len(detected)
                cell["matched"] += len(pairs)
                for i, j in pairs:
                    cell["truth"].append(segments[j].label)
                    cell["predicted"].append(detected[i].label)
            print(f"{backend} {speaker}: done ({losses[-1]})", flush=True)
    rows = []
    for (name, backend), cell in results.items():
        metrics = compute_metrics(cell["truth"], cell["predicted"], EMOTIONS) if cell["truth"] else None
        rows.append({"condition": name, "vad": backend, "references": cell["refs"], "detected": cell["detected"],
                     "precision": cell["matched"] / max(cell["detected"], 1),
                     "recall": cell["matched"] / max(cell["refs"], 1),
                     "ua_published": metrics["ua"] if metrics else None})
        print(f"{name:42s} {backend:7s} precision {rows[-1]['precision']:.3f} recall {rows[-1]['recall']:.3f} "
              f"UA {rows[-1]['ua_published'] or 0:.3f}", flush=True)
    return {"date": time.strftime("%Y-%m-%d"), "rows": rows, "losses": losses, "speed": NODE_SPEED,
            "protocol": f"{CLIPS_PER_EMOTION} clips per emotion x 12 speakers of uem-es in 1-2 s pauses; each "
                        "speaker's stream through a ser_node running that speaker's LOSO fold model "
                        f"({NETWORK_RUN}, fp32 ONNX), default parameters; UA over matched utterances (pooled)"}


# ------------------------------------------------------------------ main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="compare,offline,segmentation,false_alarms,babble,node")
    parser.add_argument("--reverse", action="store_true",
                        help="compare: walk the conditions backwards (a second process shares the work)")
    parser.add_argument("--hours", type=float, default=1.0, help="noise-only audio per false-alarm row")
    parser.add_argument("--corpus", type=Path, default=DATA / "uem-es")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "work" / "robustness")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    clips = load_emomatch(args.corpus).clips
    parts = args.parts.split(",")
    degrader = Degrader(clips) if {"compare", "offline", "node", "segmentation", "babble"} & set(parts) else None
    for part in parts:
        print(f"== {part}", flush=True)
        if part == "compare":
            from tqdm import tqdm

            grid = conditions()[::-1] if args.reverse else conditions()
            for condition in tqdm(grid, desc="ComParE per condition", unit="condition"):
                compare_features(degrader, condition, args.work)
        elif part == "segmentation":
            write_json(args.out / "robustness_segmentation.json", run_segmentation(degrader))
        elif part == "false_alarms":
            write_json(args.out / "robustness_false_alarms.json", run_false_alarms(clips, args.hours))
        elif part == "babble":
            write_json(args.out / "robustness_babble.json", run_babble_thresholds(degrader, args.hours))
        elif part == "node":
            write_json(args.out / "robustness_node.json", run_node(degrader, args))
        elif part == "pauses":
            write_json(args.out / "robustness_pauses.json", run_pauses(clips))
        elif part == "report":
            pass  # rewrites robustness.md from the results there are
        elif part == "offline":
            result = run_offline(degrader, args)
            write_json(args.out / "robustness.json", result)
            plot_offline(result, args.out / "robustness.png")
        else:
            parser.error(f"unknown part {part}")
        write_report(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
