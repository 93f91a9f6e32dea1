"""Soak benchmark: a running ser_node fed real speech and silence for minutes, then bursts.

  scripts/bench.sh soak --minutes 10          # 1x for 10 min, then 10x and 50x bursts, then the rate ladder

Phases, each published as 20 ms AudioStamped messages from this process to a ser_node child process over loopback:
  soak     real uem-es clips separated by 2 s of silence, at real time, for --minutes
  burst    the same stream at 10x and at 50x real time, --burst-s seconds of audio each
  ladder   rising speeds (5x ... 80x) for --burst-s seconds each: the highest with no lost message and no lost
           utterance is the maximum sustained rate on this machine
For every phase: utterances sent / received, audio messages lost before intake (the node's sequence-gap count),
chunks and utterances dropped, CPU of the node (% of one core), RSS start / end / peak and the RSS slope per
hour (least squares over 10 s samples of the soak). Results: bench/results/soak.json and soak.md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "test"))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")

from performance import _child_env, _proc_cpu_seconds, _proc_rss_mb  # noqa: E402


def clips(corpus: Path, count: int) -> list[np.ndarray]:
    from ser_node.audio.decode import load_audio

    paths = sorted(corpus.glob("s*/*.flac"))
    rng = np.random.default_rng(0)
    return [load_audio(paths[i]) for i in rng.permutation(len(paths))[:count]]


def expected_utterances(stream: np.ndarray) -> int:
    """How many utterances the node's own pipeline (same defaults) cuts from this stream: the number to expect
    (a clip with a long inner pause gives two)."""
    from ser_node.audio.segmenter import Segmenter
    from ser_node.audio.stream import AudioChunk, StreamProcessor
    from ser_node.audio.vad import make_vad

    processor = StreamProcessor(Segmenter(make_vad("silero")))
    found = sum(len(processor.feed(AudioChunk(stream[i : i + 320, None], 16000, i / 16000)))
                for i in range(0, stream.size, 320))
    return found + len(processor.flush())


class Soak:
    """The node under test as a child process, and a source / sink node in this process."""

    def __init__(self, model: str, params: dict | None = None) -> None:
        import rclpy
        from audio_common_msgs.msg import AudioStamped
        from diagnostic_msgs.msg import DiagnosticArray
        from hri_msgs.msg import Expression
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        args = [sys.executable, "-m", "ser_node.ros.node", "--ros-args", "-p", "reliability:=reliable"]
        if model:
            args += ["-p", f"model_path:={model}"]
        args += [arg for key, value in (params or {}).items() for arg in ("-p", f"{key}:={value}")]
        self.process = subprocess.Popen(args, env=_child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("soak_source", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.received = 0
        self.diagnostics: dict[str, str] = {}
        self.node.create_subscription(Expression, "/ser_node/expression", self._count, 1000)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", lambda m: self.diagnostics.update(
            {kv.key: kv.value for kv in m.status[0].values}), 10)
        self.publisher = self.node.create_publisher(AudioStamped, "audio", QoSProfile(
            depth=1000, reliability=ReliabilityPolicy.RELIABLE))
        deadline = time.monotonic() + 60
        while self.publisher.get_subscription_count() == 0 and time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=0.05)
        self.spin(1.5)
        self.stream_time = 1000.0  # header time of the next message: continuous across phases
        self._expected: dict[int, int] = {}

    def prepare(self, waveforms: list[np.ndarray]) -> None:
        from ros_harness import speech_stream

        for key, clip in enumerate(waveforms):
            self._expected[key] = expected_utterances(speech_stream([clip], silence_s=1.0)[0])

    def _count(self, _msg) -> None:
        self.received += 1

    def spin(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=0.02)

    def counters(self) -> dict[str, int]:
        self.spin(1.2)  # one more diagnostics period
        keys = ("audio_messages_lost", "chunks_dropped", "utterances_dropped", "utterances_classified")
        return {k: int(self.diagnostics.get(k, 0)) for k in keys}

    def play(self, waveforms: list[np.ndarray], seconds: float, speed: float,
             rss_samples: list[tuple[float, float]] | None = None) -> dict:
        """Streams clips with 2 s of silence between them for `seconds` of audio at `speed` x real time."""
        from ros_harness import speech_stream, typed_chunks

        before, received0 = self.counters(), self.received
        cpu0, wall0 = _proc_cpu_seconds(self.process.pid), time.monotonic()
        rss0, peak = _proc_rss_mb(self.process.pid), 0.0
        sent_utterances, audio_s, index = 0, 0.0, 0
        began = time.monotonic()
        next_sample = began
        while audio_s < seconds:
            key = index % len(waveforms)
            index += 1
            stream, _bounds = speech_stream([waveforms[key]], silence_s=1.0)
            if key not in self._expected:  # computed before the first phase (see prepare), so never here in time
                self._expected[key] = expected_utterances(stream)
            for msg in typed_chunks(stream, 16000, 1, "int16", 0.02, self.stream_time):
                due = began + audio_s / speed
                while (ahead := due - time.monotonic()) > 0:
                    self.executor.spin_once(timeout_sec=min(ahead, 0.005))
                self.publisher.publish(msg)
                audio_s += 0.02
            self.stream_time += stream.size / 16000
            sent_utterances += self._expected[key]
            if time.monotonic() >= next_sample:
                rss = _proc_rss_mb(self.process.pid)
                peak = max(peak, rss)
                if rss_samples is not None:
                    rss_samples.append((time.monotonic() - began, rss))
                next_sample += 10.0
        deadline = time.monotonic() + 30
        while self.received - received0 < sent_utterances and time.monotonic() < deadline:
            self.spin(0.2)
        wall = time.monotonic() - wall0
        after = self.counters()
        rss1 = _proc_rss_mb(self.process.pid)
        return {"speed": speed, "audio_s": round(audio_s, 1), "wall_s": round(wall, 1),
                "utterances_expected": sent_utterances, "utterances_received": self.received - received0,
                **{k: after[k] - before[k] for k in after},
                "cpu_percent_of_one_core": round((_proc_cpu_seconds(self.process.pid) - cpu0) / wall * 100, 1),
                "rss_mb_start": round(rss0, 1), "rss_mb_end": round(rss1, 1), "rss_mb_peak": round(max(peak, rss1), 1)}

    def close(self) -> None:
        self.node.destroy_node()
        self.rclpy.shutdown(context=self.context)
        self.process.terminate()
        self.process.wait(timeout=20)


def lossless(phase: dict) -> bool:
    return (phase["audio_messages_lost"] == 0 and phase["utterances_dropped"] == 0
            and phase["chunks_dropped"] == 0 and phase["utterances_received"] >= phase["utterances_expected"])


def rss_slopes(samples: list[tuple[float, float]]) -> dict[str, float]:
    """RSS growth in MB/hour over the whole soak and over its second half (start-up allocations excluded)."""
    slopes = {}
    for name, part in (("whole", samples), ("second_half", samples[len(samples) // 2 :])):
        if len(part) >= 3:
            t, rss = np.array(part).T
            slopes[name] = round(float(np.polyfit(t, rss, 1)[0] * 3600), 2)
    return slopes


def write_report(results: dict, out: Path) -> None:
    slopes = rss_slopes([tuple(s) for s in results.get("rss_samples", [])])
    columns = ["phase", "speed", "audio_s", "utterances_expected", "utterances_received", "audio_messages_lost",
               "chunks_dropped", "utterances_dropped", "cpu_percent_of_one_core", "rss_mb_start", "rss_mb_end",
               "rss_mb_peak"]
    lines = [f"# Soak ({results['date']}, {results['cpus']} CPUs, node and source on one machine)", "",
             "Expected utterances: what the node's own pipeline cuts from the same clips offline (a few more can "
             "appear live where a pause sits on a message boundary); lost audio: the node's sequence-gap count.", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(p[c]) for c in columns) + " |" for p in results["phases"]]
    best = results["max_sustained_speed_without_loss"]
    lines += ["", f"RSS slope over the soak: {slopes.get('whole', 'n/a')} MB/hour; over its second half: "
              f"{slopes.get('second_half', 'n/a')} MB/hour. Highest ladder speed without any loss: {best:g}x real "
              f"time ({best * 50:g} messages/s of 20 ms)."]
    (out / "soak.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the real-time soak")
    parser.add_argument("--burst-s", type=float, default=60.0, help="seconds of audio per burst / ladder step")
    parser.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "data" / "uem-es")
    parser.add_argument("--model", default="", help="ONNX model (default: the shipped default)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--report", action="store_true", help="only rewrite soak.md from the last soak.json")
    args = parser.parse_args()
    if args.report:
        write_report(json.loads((args.out / "soak.json").read_text()), args.out)
        return 0
    waveforms = clips(args.corpus, 60)
    soak = Soak(args.model)
    soak.prepare(waveforms)
    results: dict = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count(), "phases": []}
    try:
        samples: list[tuple[float, float]] = []
        print(f"soak: {args.minutes:g} min at 1x", flush=True)
        results["phases"].append({"phase": "soak", **soak.play(waveforms, args.minutes * 60, 1.0, samples)})
        results["rss_samples"] = samples
        for speed in (10.0, 50.0):
            print(f"burst: {speed:g}x", flush=True)
            results["phases"].append({"phase": "burst", **soak.play(waveforms, args.burst_s, speed)})
        best = 0.0
        for speed in (5.0, 10.0, 20.0, 40.0, 80.0):
            print(f"ladder: {speed:g}x", flush=True)
            phase = {"phase": "ladder", **soak.play(waveforms, args.burst_s, speed)}
            results["phases"].append(phase)
            if not lossless(phase):
                break
            best = speed
        results["max_sustained_speed_without_loss"] = best
    finally:
        soak.close()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_text(json.dumps(results, indent=1))
    write_report(results, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
