"""When to prepare an utterance's end: the segmenter's `may_end()` lead, in this process.

The voice encoder prepares an utterance's end (the front end's last frames, their step, the prosody statistics)
when the segmenter says a pause may be the end (ser_node/audio/segmenter.py, PREPARE_LEAD_S before the silence
would end the utterance, never before the post-roll). The earlier in the pause, the more pauses between words get a
preparation that speech resuming throws away; the later, the less time is left before the decision. Real uem-es
clips (every `--every`th, 1.5 s apart) through the node's segmenter (Silero, defaults) and the shipped model's
streaming encoder on one thread, in 20 ms messages, for several leads and with no preparation: preparations per
utterance and how many were wasted, utterances that ended prepared, the time of the message that ends an utterance,
and CPU per second of audio. The node's end-to-end figures are bench/performance.py --voice's.

    .venv/bin/python bench/pauses.py [--every 3] [--leads 1.0 0.3 0.2 0.1] [--out bench/results]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ser_node.audio.segmenter as segmenter  # noqa: E402
from ser_node.audio.decode import load_audio  # noqa: E402
from ser_node.audio.stream import AudioChunk, StreamProcessor  # noqa: E402
from ser_node.audio.vad import make_vad  # noqa: E402
from ser_node.inference.classifier import Classifier  # noqa: E402
from ser_node.inference.voice_stream import UtteranceEncoder  # noqa: E402

MESSAGE = 320  # 20 ms at 16 kHz


class Counted(UtteranceEncoder):
    """The node's streaming encoder, counting the segmenter's may_end() calls."""

    def __init__(self, classifier: Classifier, prepare: bool) -> None:
        super().__init__(lambda: classifier)
        self.prepare, self.may_ends = prepare, 0

    def may_end(self) -> None:
        self.may_ends += 1
        if self.prepare:
            super().may_end()


def run(audio: np.ndarray, classifier: Classifier, lead: float | None) -> dict:
    """One pass over the stream; `lead` None: the encoder ignores may_end() (the end computed at the decision)."""
    segmenter.PREPARE_LEAD_S = 0.2 if lead is None else lead
    encoder = Counted(classifier, prepare=lead is not None)
    processor = StreamProcessor(segmenter.Segmenter(make_vad("silero"), listener=encoder))
    ends, cpu, utterances = [], 0.0, 0
    for start in range(0, audio.size, MESSAGE):
        began = time.process_time()
        out = processor.feed(AudioChunk(audio[start:start + MESSAGE, None], 16000, start / 16000))
        took = time.process_time() - began
        cpu += took
        if out:
            ends.append(took)
            utterances += len(out)
    ends_ms = 1e3 * np.array(ends)
    return {"lead_s": lead, "utterances": utterances, "may_end_per_utterance": encoder.may_ends / utterances,
            "wasted_per_utterance": (encoder.may_ends - encoder.prepared_ends) / utterances if lead is not None
            else None, "ended_prepared": encoder.prepared_ends / utterances,
            "end_message_ms_p50": float(np.median(ends_ms)), "end_message_ms_p95": float(np.percentile(ends_ms, 95)),
            "cpu_ms_per_audio_s": 1e3 * cpu / (audio.size / 16000)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "data" / "uem-es")
    parser.add_argument("--every", type=int, default=3, help="every n-th clip of the corpus (sorted by path)")
    parser.add_argument("--leads", type=float, nargs="+", default=[1.0, 0.3, 0.2, 0.1],
                        help="PREPARE_LEAD_S values (1.0: at the post-roll with the defaults)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()

    paths = sorted(args.corpus.glob("s*/*.flac"))[::args.every]
    gap = np.zeros(24000, np.float32)
    audio = np.concatenate([part for path in paths for part in (load_audio(path), gap)])
    audio += 1e-3 * np.random.default_rng(0).standard_normal(audio.size).astype(np.float32)
    classifier = Classifier(ROOT / "models" / "ser_default.onnx", threads=1)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")
    print(f"{len(paths)} clips, {audio.size / 16000 / 60:.1f} min of audio, {classifier.metadata.model_id}", flush=True)
    rows = []
    for lead in [None, *args.leads, None]:  # no preparation first and last: the machine's drift shows
        rows.append(run(audio, classifier, lead))
        r = rows[-1]
        name = "none" if lead is None else f"{lead:g} s"
        print(f"lead {name}: {r['utterances']} utterances, may_end "
              f"{r['may_end_per_utterance']:.2f} per utterance, ended prepared {r['ended_prepared']:.2f}, end message "
              f"p50 {r['end_message_ms_p50']:.2f} / p95 {r['end_message_ms_p95']:.2f} ms, CPU "
              f"{r['cpu_ms_per_audio_s']:.2f} ms per s of audio", flush=True)
    result = {"date": when, "command": "bench/pauses.py " + " ".join(sys.argv[1:]), "clips": len(paths),
              "model": classifier.metadata.model_id, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pauses.json").write_text(json.dumps(result, indent=1))
    lines = [f"# When to prepare an utterance's end ({when})", "",
             f"`.venv/bin/python {result['command']}`: {len(paths)} uem-es clips 1.5 s apart, the node's segmenter "
             f"(Silero, defaults) and {classifier.metadata.model_id}'s streaming encoder on one thread, 20 ms "
             "messages. Lead: PREPARE_LEAD_S (may_end() that long before the silence would end the utterance, never "
             "before the post-roll); none: the end computed at the decision. Wasted: preparations thrown away "
             "because speech resumed.", "",
             "| lead | utterances | may_end per utterance | wasted per utterance | ended prepared | end message p50 / "
             "p95 ms | CPU ms per s of audio |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        wasted = "-" if r["wasted_per_utterance"] is None else f"{r['wasted_per_utterance']:.2f}"
        lead = "none" if r["lead_s"] is None else f"{r['lead_s']:g} s"
        lines.append(f"| {lead} | {r['utterances']} | "
                     f"{r['may_end_per_utterance']:.2f} | {wasted} | {r['ended_prepared']:.2f} | "
                     f"{r['end_message_ms_p50']:.2f} / {r['end_message_ms_p95']:.2f} | {r['cpu_ms_per_audio_s']:.2f} |")
    (args.out / "pauses.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
