"""Scenes a robot hears: does the node publish results only for the person talking to it?

A person talks to the robot at 1 m (uem-es speakers, 10 clips each, a room of RT60 0.5 s). Around them:
  robot TTS   the robot answers every turn (espeak-ng, Spanish and English voices), its loudspeaker 0.4 m from the
              microphone, band-limited to 300-4000 Hz, as loud as the person
  television  speech of other corpora's speakers (Italian, German) at 3.5 m, band-limited to 150-6000 Hz, with
              music-like tones and noise between sentences, 6 dB below the person
  babble      4 talkers at once (Amharic, German, Italian corpora) at 2.5 m, continuous, 10 dB and 0 dB below
Every scene is streamed through the node's own segmenter (StreamProcessor, Silero) and the shipped model. A result
is false when less than half of it lies on the person's clips (it is not the person); a person's clip is lost when
no published result matches it (overlap at least half of the shorter, one to one), split when a second one lands
on it too. Policies (what the node can do): none; the robot_speaking gate (the TTS intervals, 0.3 s hangover); the
enrolled self voice (2 other sentences of each TTS voice, nearest enrolled sentence, thresholds 0.65-0.85);
a level gate (utterances more than `d` dB below the loudest recent speech are taken for distant talkers);
a target voice (the person the robot talks to, enrolled from 3 other clips of theirs: keep what sounds like
them); and the node's own segmenter parameters, the scene segmented again with each: `foreground_db` (the
background gate: speech must stand 6 dB above a low percentile of the last 20 s of levels), `min_speech_s` and
`min_snr_db` (the SNR over that background). UA of the person's matched utterances is against the same clips
alone; the shipped model heard these speakers in training, so UA compares scenes with each other, not with LOSO
figures.

  .venv/bin/python bench/scenes.py     # ~3 minutes; needs espeak-ng (apt install espeak-ng)
Writes bench/results/scenes.{json,md,png} (with --seed N other than 5: scenes_seedN.*, a second draw that confirms
settings chosen on the first).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from robustness import RecordedVad, RecordingVad  # noqa: E402

from ser_node.audio.decode import load_audio  # noqa: E402
from ser_node.audio.segmenter import Segmenter, SegmenterConfig  # noqa: E402
from ser_node.audio.stream import StreamProcessor  # noqa: E402
from ser_node.audio.vad import make_vad  # noqa: E402
from ser_node.bags.evaluate import match_segments  # noqa: E402
from ser_node.bags.io import Segment  # noqa: E402
from ser_node.inference.classifier import Classifier  # noqa: E402
from ser_node.inference.self_voice import SelfVoice  # noqa: E402
from ser_node.labels import EMOTIONS  # noqa: E402
from ser_node.train.acoustics import BabbleSource, reverberate, room_response  # noqa: E402
from ser_node.train.corpora import load_corpus_entry  # noqa: E402
from ser_node.train.reports import compute_metrics, format_table, write_json  # noqa: E402

RATE = 16000
SELF_VOICE_THRESHOLDS = (0.85, 0.8, 0.75, 0.65)  # the node's default (0.8) and steps either side
SPANISH = ["Hola, ¿cómo estás hoy?", "Me alegra mucho verte.", "¿Quieres que te lea las noticias?",
           "Es la hora de tomar la medicina.", "Hace un día estupendo para pasear.", "¿Has dormido bien esta noche?",
           "Tu hija ha llamado esta mañana.", "Vamos a hacer unos ejercicios.", "Perdona, no te he entendido.",
           "¿Te apetece escuchar música?", "La comida estará lista a las dos.", "Recuerda beber un poco de agua.",
           "Mañana viene el médico a las diez.", "¿Quieres jugar a las cartas?", "Qué bien, me lo apunto.",
           "Voy a encender la luz.", "Te escucho, cuéntame más.", "Lo siento mucho, de verdad.",
           "¿Necesitas ayuda con algo?", "Hasta luego, que descanses."]
ENGLISH = ["Hello, how are you today?", "It is time for your medicine.", "Would you like to hear some music?",
           "I did not understand, could you repeat?", "Your daughter called this morning.",
           "Let us do some exercises together.", "Remember to drink some water.", "The doctor comes tomorrow at ten.",
           "I am listening, tell me more.", "See you later, have a good rest."]
VOICES = ["es", "es+f3", "en-gb"]


def db(x: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.square(x, dtype=np.float64)) + 1e-12))


def band(x: np.ndarray, low: float, high: float) -> np.ndarray:
    from scipy.signal import butter, sosfilt

    return sosfilt(butter(4, [low, high], btype="band", fs=RATE, output="sos"), x).astype(np.float32)


def tts(text: str, voice: str, work: Path) -> np.ndarray:
    import shutil

    if shutil.which("espeak-ng") is None:
        raise SystemExit("bench/scenes.py needs espeak-ng for the robot's voice: apt install espeak-ng")
    path = work / f"tts_{abs(hash((text, voice)))}.wav"
    if not path.exists():
        subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "-w", str(path), text], check=True, capture_output=True)
    return load_audio(path)


def robot_sentence(text: str, voice: str, work: Path) -> np.ndarray:
    """The robot's sentence as its own microphone hears it: loudspeaker band, 0.4 m in the room."""
    return reverberate(band(tts(text, voice, work), 300, 4000), room_response(0.5, 0.4, seed=7))


def person_clips(corpus: Path, per_speaker: int, rng: np.random.Generator):
    """([(audio at 1 m, label, speaker)], {speaker: 3 other clips of theirs at 1 m, for a target-voice enrolment}):
    every uem-es speaker, clips of varied emotions."""
    clips = load_corpus_entry({"name": "uem-es", "kind": "emomatch", "path": str(corpus)}).corpus.clips
    near = room_response(0.5, 1.0, seed=7)
    out, enrol = [], {}
    for speaker in sorted({c.speaker for c in clips}):
        mine = [c for c in clips if c.speaker == speaker]
        chosen = rng.choice(len(mine), per_speaker + 3, replace=False)
        for k in chosen[:per_speaker]:
            out.append((reverberate(load_audio(mine[k].path), near), mine[k].label, speaker))
        enrol[speaker] = [reverberate(load_audio(mine[k].path), near) for k in chosen[per_speaker:]]
    return out, enrol


def place(stream: np.ndarray, audio: np.ndarray, at: int) -> None:
    stream[at:at + audio.size] += audio[: max(0, min(audio.size, stream.size - at))]


def scene(kind: str, person, tts_bank, other_clips, rng, level_db: float = 0.0):
    """(mixed stream, person segments, robot TTS intervals)."""
    placed, segments, robot, t = [], [], [], 1.0  # laid out first, then mixed: every clip is in the stream
    reference = np.sqrt(np.mean([np.mean(a ** 2) for a, _l, _s in person]))
    for k, (audio, label, _speaker) in enumerate(person):
        placed.append((audio, t))
        segments.append(Segment(t, t + audio.size / RATE, label))
        t += audio.size / RATE + (rng.uniform(0.6, 1.5) if kind == "robot TTS" else rng.uniform(2.0, 6.0))
        if kind == "robot TTS":
            sentence = tts_bank[k % len(tts_bank)]
            placed.append((sentence / np.sqrt(np.mean(sentence ** 2)) * reference, t))
            robot.append((t, t + sentence.size / RATE))
            t += sentence.size / RATE + rng.uniform(0.6, 1.5)
    stream = np.zeros(int((t + 2) * RATE), np.float32)
    for audio, at in placed:
        place(stream, audio, int(at * RATE))
    if kind == "television":
        far, parts, n = room_response(0.5, 3.5, seed=7), [], 0
        while n < stream.size:
            clip = band(load_audio(other_clips[int(rng.integers(len(other_clips)))].path), 150, 6000)
            music = 0.3 * np.sin(2 * np.pi * np.cumsum(rng.choice([220, 330, 440, 550], int(rng.uniform(1, 4) * RATE)))
                                 / RATE).astype(np.float32)
            parts += [clip / np.sqrt(np.mean(clip ** 2)), music]
            n += clip.size + music.size
        tv = reverberate(np.concatenate(parts)[: stream.size], far)
        stream = stream + tv / np.sqrt(np.mean(tv ** 2)) * reference * 10 ** (level_db / 20)
    elif kind == "babble":
        babble, _ = BabbleSource(other_clips, talkers=4)(stream.size, seed=11)
        babble = reverberate(babble, room_response(0.5, 2.5, seed=7))
        stream = stream + babble / np.sqrt(np.mean(babble ** 2)) * reference * 10 ** (level_db / 20)
    return np.clip(stream, -1, 1).astype(np.float32), segments, robot


# Policies of the node's segmenter (its parameters): the scene is segmented again with each, the VAD's
# probabilities replayed (the VAD hears every frame whatever the segmenter does with it).
SEGMENTER_POLICIES = {
    "min speech 1.25 s": SegmenterConfig(min_speech_s=1.25),
    "background gate (6 dB)": SegmenterConfig(foreground_db=6.0),
    "background gate (6 dB), min speech 1.25 s": SegmenterConfig(foreground_db=6.0, min_speech_s=1.25),
    "background gate (6 dB), min SNR 5 dB, min speech 1.25 s": SegmenterConfig(foreground_db=6.0, min_snr_db=5.0,
                                                                                min_speech_s=1.25),
}


def segment(stream: np.ndarray, vad, config: SegmenterConfig | None = None) -> list:
    return StreamProcessor(Segmenter(vad, config)).feed_recording(stream, RATE)


def on_person(utterance, segments) -> float:
    """The share of an utterance that lies on the person's clips."""
    overlap = sum(max(0.0, min(utterance.end, s.end) - max(utterance.start, s.start)) for s in segments)
    return overlap / max(utterance.end - utterance.start, 1e-9)


def level_cues(audio: np.ndarray) -> dict[str, float]:
    """Cues of a near talker that need one microphone only: the spread of 10 ms levels (reverberation and a crowd
    fill the gaps between syllables) and the share of the envelope's power modulated at 2-8 Hz (the syllable rate)."""
    n = audio.size // 160
    power = np.mean(audio[: n * 160].reshape(n, 160).astype(np.float64) ** 2, axis=1)
    levels = 10 * np.log10(power + 1e-10)
    envelope = np.sqrt(power)
    spectrum = np.abs(np.fft.rfft(envelope - envelope.mean())) ** 2
    frequency = np.fft.rfftfreq(n, 0.01)
    return {"level spread (dB, p90 - p10)": float(np.percentile(levels, 90) - np.percentile(levels, 10)),
            "2-8 Hz modulation": float(spectrum[(frequency >= 2) & (frequency <= 8)].sum()
                                       / (envelope.mean() ** 2 * n + 1e-12))}


def cue_quartiles(utterances, segments) -> dict:
    """Quartiles of each level cue for the person's utterances and for the others (the "none" segmentation)."""
    out: dict = {}
    for who in ("person", "not the person"):
        chosen = [level_cues(u.audio) for u in utterances
                  if (on_person(u, segments) >= 0.5) == (who == "person") and u.audio.size >= 1600]
        for cue in (chosen[0] if chosen else {}):
            out[f"{cue}, {who}"] = [float(q) for q in np.percentile([c[cue] for c in chosen], [25, 50, 75])]
    return out


def evaluate(utterances, inferences, keep: list[bool], segments, duration_s: float, alone: dict) -> dict:
    """A published result is the person's when at least half of it lies on the person's clips; it is a false result
    otherwise (the issue's definition: published results that are not the person). A clip of the person is lost
    when no result matches it one to one; a second result on the same clip is a split (counted apart)."""
    kept = [k for k, ok in enumerate(keep) if ok]
    pairs = match_segments([(utterances[k].start, utterances[k].end) for k in kept], segments)
    matched = {kept[i]: j for i, j in pairs}
    unmatched = [k for k in kept if k not in matched]
    false = sum(on_person(utterances[k], segments) < 0.5 for k in unmatched)
    splits = len(unmatched) - false
    truth = [segments[j].label for j in matched.values()]
    predicted = [EMOTIONS[int(np.argmax(inferences[k].probabilities))] for k in matched]
    ua = compute_metrics(truth, predicted, EMOTIONS)["ua"] if matched else float("nan")
    ua_alone = compute_metrics(truth, [alone[j] for j in matched.values()], EMOTIONS)["ua"] if matched else float("nan")
    return {"published": len(kept), "false": false, "false_per_hour": false / duration_s * 3600, "splits": splits,
            "person_lost": 1 - len(pairs) / len(segments), "ua": ua, "ua_alone": ua_alone}


def level_gate(utterances, window: int = 20, below_db: float = 6.0) -> list[bool]:
    """Keep an utterance unless its level is more than `below_db` under the loudest of the last `window` kept or
    heard ones (a near talker is louder than distant ones at the robot's microphone)."""
    levels, keep = [], []
    for u in utterances:
        level = db(u.audio)
        recent = levels[-window:]
        keep.append(not recent or level >= max(recent) - below_db)
        levels.append(level)
    return keep


def plot(rows: dict, path: Path) -> None:
    """False results per hour against the share of the person's utterances lost: one panel per scene, one colour
    per policy (the same in every panel), the goal's corner shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(*key.split(" | "), r) for key, r in rows.items() if "published" in r]
    order = ("robot TTS", "television", "babble, -10", "babble, 0")  # as run (a JSON file may hold them sorted)
    scenes = sorted(dict.fromkeys(scene_name for scene_name, _p, _r in points),
                    key=lambda n: next((k for k, o in enumerate(order) if n.startswith(o)), len(order)))
    policies = list(dict.fromkeys(policy for _s, policy, _r in points))
    colours = plt.get_cmap("tab20")
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), sharex=True)
    for axis, scene_name in zip(axes.flat, scenes):
        axis.fill_between([0, 3], 0, 30, color="green", alpha=0.2, label="goal")
        for k, policy in enumerate(policies):
            for s, p, r in points:
                if (s, p) == (scene_name, policy):
                    axis.scatter(100 * r["person_lost"], r["false_per_hour"], s=45, color=colours(k % 20),
                                 marker="os^D"[k // 5 % 4], label=policy)
        axis.set_title(scene_name, fontsize=10)
        axis.set_xlim(-2, 100)
        axis.grid(alpha=0.3)
    for axis in axes[1]:
        axis.set_xlabel("person's utterances lost (%)")
    for axis in axes[:, 0]:
        axis.set_ylabel("false results per hour")
    handles = {h.get_label(): h for axis in axes.flat for h in axis.collections}
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=3, fontsize=7)
    fig.suptitle("Listening policies per scene (goal, shaded: below 30 false results per hour, at most 3 % lost)")
    fig.tight_layout(rect=(0, 0.12, 1, 0.97))
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--per-speaker", type=int, default=10)
    parser.add_argument("--plot-only", action="store_true", help="redraw scenes.png from scenes.json")
    parser.add_argument("--seed", type=int, default=5,
                        help="the draw of clips, timing and sentences; settings were chosen on 5, another seed "
                             "confirms them (written as scenes_seed<N>.*)")
    args = parser.parse_args()
    stem = "scenes" if args.seed == 5 else f"scenes_seed{args.seed}"
    if args.plot_only:
        import json

        plot(json.loads((args.out / f"{stem}.json").read_text())["rows"], args.out / f"{stem}.png")
        return 0
    began = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    work = Path(tempfile.mkdtemp(prefix="ser_scenes_"))
    classifier = Classifier(ROOT / "models" / "ser_default.onnx", threads=2)
    person, person_enrolment = person_clips(args.corpus / "uem-es", args.per_speaker, rng)
    targets = {speaker: SelfVoice.enrol(np.array([classifier.infer(classifier.prepare([a]))[0].speaker_embedding
                                                  for a in clips]), classifier.model_id)
               for speaker, clips in person_enrolment.items()}
    sentences = [(s, v) for v in VOICES for s in (ENGLISH if v.startswith("en") else SPANISH)]
    order = rng.permutation(len(sentences))
    # two sentences of every TTS voice are enrolled (what README advises: every voice the robot speaks with)
    enrol_set = [k for voice in VOICES for k in [k for k in order if sentences[k][1] == voice][:2]]
    speak_set = [k for k in order if k not in enrol_set]
    tts_bank = [robot_sentence(*sentences[k], work) for k in speak_set]
    enrolled = SelfVoice.enrol(np.array([classifier.infer(classifier.prepare([robot_sentence(*sentences[k], work)]))[0]
                                         .speaker_embedding for k in enrol_set]), classifier.model_id)
    others = []
    for name, kind in (("emovo", "manifest"), ("emodb", "manifest"), ("ased", "manifest")):
        others += load_corpus_entry({"name": name, "kind": kind, "path": str(args.corpus / name),
                                     **({"label_map": {"boredom": None}} if name == "emodb" else {})}).corpus.clips
    tv_clips = [c for c in others if c.corpus in ("emovo", "emodb")]
    alone_labels = [EMOTIONS[int(np.argmax(p))] for p in classifier.predict([a for a, _l, _s in person])]
    rows: dict[str, dict] = {}
    for name, kind, level in (("robot TTS", "robot TTS", 0.0), ("television, -6 dB", "television", -6.0),
                              ("babble, -10 dB", "babble", -10.0), ("babble, 0 dB", "babble", 0.0)):
        stream, segments, robot = scene(kind, person, tts_bank, tv_clips if kind == "television" else others, rng,
                                        level)
        recording = RecordingVad(make_vad("silero"))
        utterances = segment(stream, recording)
        inferences = [classifier.infer(classifier.prepare([u.audio]))[0] for u in utterances]
        duration = stream.size / RATE
        alone = dict(enumerate(alone_labels))
        policies = {"none": [True] * len(utterances)}
        if kind == "robot TTS":
            policies["robot_speaking gate"] = [not any(u.start < end + 0.3 and u.end > start for start, end in robot)
                                               for u in utterances]
            similarity = [enrolled.similarity(i.speaker_embedding) for i in inferences]
            for threshold in SELF_VOICE_THRESHOLDS:
                policies[f"self voice, enrolled ({threshold:g})"] = [s < threshold for s in similarity]
            robot_utterances = [k for k, u in enumerate(utterances)
                                if any(u.start < end and u.end > start for start, end in robot)]
            for threshold in SELF_VOICE_THRESHOLDS:
                rows[f"{name}: robot sentences published with enrolment only ({threshold:g})"] = {
                    "share": float(np.mean([similarity[k] < threshold for k in robot_utterances])),
                    "robot_utterances": len(robot_utterances)}
        for below in (6.0, 10.0):
            policies[f"level gate ({below:g} dB)"] = level_gate(utterances, below_db=below)
        # Target voice: the robot knows whom it talks to (engagement) and has heard them before (3 enrolled
        # clips): keep what sounds like that person. An upper bound for a target-speaker filter.
        speakers = [person[k][2] for k in range(len(person))]
        current = [speakers[int(np.argmin([abs((u.start + u.end) / 2 - (s.start + s.end) / 2) for s in segments]))]
                   for u in utterances]
        to_target = [targets[who].similarity(i.speaker_embedding) for who, i in zip(current, inferences)]
        for threshold in (0.6, 0.7):
            policies[f"target voice ({threshold:g})"] = [t >= threshold for t in to_target]
        for policy, keep in policies.items():
            rows[f"{name} | {policy}"] = evaluate(utterances, inferences, keep, segments, duration, alone)
        if kind != "robot TTS":
            rows[f"{name}: level cues"] = {"quartiles": cue_quartiles(utterances, segments)}
        for policy, config in SEGMENTER_POLICIES.items():
            heard = segment(stream, RecordedVad(recording.frame_samples, recording.probabilities), config)
            judged = [classifier.infer(classifier.prepare([u.audio]))[0] for u in heard]
            rows[f"{name} | {policy}"] = evaluate(heard, judged, [True] * len(heard), segments, duration, alone)
        for key, r in rows.items():
            if key.startswith(f"{name} | "):
                print(f"{key:60s} false/h {r['false_per_hour']:7.1f}  lost {100 * r['person_lost']:5.1f} %"
                      f"  UA {r['ua']:.3f} (alone {r['ua_alone']:.3f})", flush=True)
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "seconds": time.perf_counter() - began,
              "command": ".venv/bin/python bench/scenes.py" + ("" if args.seed == 5 else f" --seed {args.seed}"),
              "seed": args.seed, "person_clips": len(person), "rows": rows,
              "enrolment_within": enrolled.within}
    write_json(args.out / f"{stem}.json", result)
    table = [{"scene: policy": k.replace(" | ", ": "), "published": str(r["published"]),
              "false results per hour": f"{r['false_per_hour']:.0f}",
              "person's clips split in two": str(r["splits"]),
              "person's utterances lost": f"{100 * r['person_lost']:.1f} %",
              "UA (same clips alone)": f"{r['ua']:.3f} ({r['ua_alone']:.3f})"}
             for k, r in rows.items() if "published" in r]
    extra = [f"- {k}: {100 * r['share']:.1f} % of {r['robot_utterances']}" for k, r in rows.items() if "share" in r]
    extra += [f"- {k} (quartiles, no gate): " + "; ".join(f"{cue} {q[0]:.1f} / {q[1]:.1f} / {q[2]:.1f}"
                                                          for cue, q in r["quartiles"].items())
              for k, r in rows.items() if "quartiles" in r]
    text = (f"# Scenes: listening to the person, not the robot, the TV or the crowd ({result['date']})\n\n"
            f"`{result['command']}`: {len(person)} clips of the 12 uem-es speakers at 1 m (RT60 0.5 s), through "
            "the node's segmenter (Silero) and the shipped model; see the script's docstring for the scenes.\n\n"
            + format_table(table, list(table[0])) + "\n\n" + "\n".join(extra) + "\n")
    (args.out / f"{stem}.md").write_text(text)
    plot(rows, args.out / f"{stem}.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
