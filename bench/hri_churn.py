"""Hostile ROS4HRI upstream for minutes: does the node stay bounded and keep classifying the voice it holds?

  scripts/bench.sh hri_churn --minutes 10

A ser_node child process (hri_voices: follow, max_voices 8) and, in this process, a fake upstream voice module
that every second publishes a new /humans/voices/tracked list: the steady voice plus 5-40 ids never seen before,
every tenth second 300 ids, and malformed ids (empty, spaces, slashes, leading digits, 100 characters). The steady
voice speaks a real uem-es clip every few seconds on its own audio topic, and an untracked voice speaks on a topic
nobody lists. Every 10 s: the node's RSS, threads and open file descriptors (/proc), and its subscriptions and
publishers (the ROS graph). Reported: first and last samples, least-squares slopes, the steady voice's
utterances sent and classified, and the node's drop counters. Results: bench/results/hri_churn.{json,md,png}.
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
os.environ.setdefault("ROS_DOMAIN_ID", str(150 + os.getpid() % 50))

from performance import _child_env, _proc_cpu_seconds, _proc_rss_mb  # noqa: E402
from soak import clips, expected_utterances, rss_slopes  # noqa: E402

VOICES = "/humans/voices"
MALFORMED = ["", "has space", "a/b", "9digit_first", "x" * 100, "tilde~", "{braces}"]


def proc_counts(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    threads = int(next(line.split()[1] for line in status.splitlines() if line.startswith("Threads:")))
    return {"threads": threads, "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "data" / "uem-es")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()

    import rclpy
    from audio_common_msgs.msg import AudioStamped
    from diagnostic_msgs.msg import DiagnosticArray
    from hri_msgs.msg import Expression, IdsList
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from ros_harness import speech_stream, typed_chunks

    waveforms = clips(args.corpus, 12)
    process = subprocess.Popen([sys.executable, "-m", "ser_node.ros.node", "--ros-args", "-p", "reliability:=reliable",
                                "-p", "hri_voices:=follow", "-p", "max_voices:=8"],
                               env=_child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rclpy.init()
    node = rclpy.create_node("hri_churn_upstream")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    reliable = QoSProfile(depth=500, reliability=ReliabilityPolicy.RELIABLE)
    tracked = node.create_publisher(IdsList, f"{VOICES}/tracked", 1)
    steady = node.create_publisher(AudioStamped, f"{VOICES}/steady/audio", reliable)
    ghost = node.create_publisher(AudioStamped, f"{VOICES}/ghost/audio", reliable)
    got = {"steady": 0, "ghost": 0}
    diagnostics: dict[str, str] = {}
    node.create_subscription(Expression, f"{VOICES}/steady/expression",
                             lambda _m: got.__setitem__("steady", got["steady"] + 1), 100)
    node.create_subscription(Expression, f"{VOICES}/ghost/expression",
                             lambda _m: got.__setitem__("ghost", got["ghost"] + 1), 100)
    node.create_subscription(DiagnosticArray, "/diagnostics", lambda m: diagnostics.update(
        {kv.key: kv.value for kv in m.status[0].values}), 10)

    def spin(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            executor.spin_once(timeout_sec=0.01)

    deadline = time.monotonic() + 90
    while tracked.get_subscription_count() == 0 and time.monotonic() < deadline:
        spin(0.1)
    while steady.get_subscription_count() == 0 and time.monotonic() < deadline:  # the node holds "steady"
        tracked.publish(IdsList(ids=["steady"]))
        spin(0.3)

    def graph() -> dict[str, int]:
        subs = node.get_subscriber_names_and_types_by_node("ser_node", "/")
        pubs = node.get_publisher_names_and_types_by_node("ser_node", "/")
        return {"subscriptions": len(subs), "voice_subscriptions": sum(t.startswith(VOICES + "/") for t, _ in subs),
                "publishers": len(pubs)}

    rng = np.random.default_rng(0)
    samples, began, second, sent, stream_time = [], time.monotonic(), 0, 0, {"steady": 100.0, "ghost": 100.0}
    cpu0 = _proc_cpu_seconds(process.pid)
    speech = [(speech_stream([w], 1.0)[0], expected_utterances(speech_stream([w], 1.0)[0])) for w in waveforms]
    while time.monotonic() - began < args.minutes * 60:
        second += 1
        fresh = [f"churn{second}_{k}" for k in range(300 if second % 10 == 0 else int(rng.integers(5, 41)))]
        ids = ["steady"] + fresh + list(rng.choice(MALFORMED, 3, replace=False))
        tracked.publish(IdsList(ids=[str(i) for i in rng.permutation(ids)]))
        if second % 4 == 0:  # the steady voice speaks, and somebody on a topic nobody tracks
            stream, expected = speech[second // 4 % len(speech)]
            for publisher, name in ((steady, "steady"), (ghost, "ghost")):
                for msg in typed_chunks(stream, 16000, 1, "int16", 0.1, stream_time[name]):
                    publisher.publish(msg)
                stream_time[name] += stream.size / 16000
            sent += expected
        spin(max(0.0, began + second - time.monotonic()))
        if second % 10 == 0:
            samples.append({"t": round(time.monotonic() - began, 1), "rss_mb": round(_proc_rss_mb(process.pid), 1),
                            **proc_counts(process.pid), **graph(), "classified": got["steady"]})
            print(json.dumps(samples[-1]), flush=True)
    spin(15.0)  # the last utterances and one more diagnostics period
    wall = time.monotonic() - began
    cpu = (_proc_cpu_seconds(process.pid) - cpu0) / wall * 100
    process.terminate()
    process.wait(timeout=20)
    node.destroy_node()
    rclpy.shutdown()

    def slope(key: str) -> float:
        t, v = np.array([(s["t"], s[key]) for s in samples[len(samples) // 2:]], dtype=float).T
        return round(float(np.polyfit(t, v, 1)[0] * 3600), 2) if len(t) >= 3 else float("nan")

    keys = ("rss_mb", "threads", "fds", "subscriptions", "voice_subscriptions", "publishers")
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "minutes": args.minutes, "cpus": os.cpu_count(),
              "tracked_lists": second, "cpu_percent_of_one_core": round(cpu, 1),
              "steady_utterances_sent": sent, "steady_utterances_classified": got["steady"],
              "ghost_expressions": got["ghost"], "samples": samples,
              "first": {k: samples[0][k] for k in keys}, "last": {k: samples[-1][k] for k in keys},
              "max": {k: max(s[k] for s in samples) for k in keys},
              "slope_per_hour_second_half": {k: slope(k) for k in keys},
              "rss_slopes": rss_slopes([(s["t"], s["rss_mb"]) for s in samples]),
              "diagnostics": {k: v for k, v in diagnostics.items() if k.startswith("hri_") or k in (
                  "utterances_classified", "utterances_dropped", "inference_errors", "result_errors")}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "hri_churn.json").write_text(json.dumps(result, indent=1) + "\n")
    write_report(result, args.out)
    return 0


def write_report(result: dict, out: Path) -> None:
    keys = list(result["first"])
    rows = ["| | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 1)]
    for name in ("first", "last", "max", "slope_per_hour_second_half"):
        rows.append(f"| {name.replace('_', ' ')} | " + " | ".join(str(result[name][k]) for k in keys) + " |")
    d = result["diagnostics"]
    text = "\n".join([
        f"# Hostile ROS4HRI upstream ({result['date']}, {result['cpus']} CPUs, node and upstream on one machine)", "",
        f"`scripts/bench.sh hri_churn --minutes {result['minutes']:g}`: {result['tracked_lists']} tracked lists, one "
        "a second, each with the steady voice, 5-40 new ids (300 every tenth second) and 3 malformed ids; the node "
        "holds at most 8 voices. Samples every 10 s of the node process (/proc) and its graph entries.", "",
        *rows, "",
        f"Steady voice: {result['steady_utterances_classified']} utterances classified of "
        f"{result['steady_utterances_sent']} sent; expressions for the untracked voice: "
        f"{result['ghost_expressions']}. Node CPU {result['cpu_percent_of_one_core']} % of one core.", "",
        f"Node diagnostics at the end: ids malformed {d.get('hri_ids_malformed')}, over the limit "
        f"{d.get('hri_ids_over_limit')}, voices opened {d.get('hri_voices_opened')} / released "
        f"{d.get('hri_voices_released')}, held {d.get('hri_voices_held')}, errors {d.get('hri_errors')}, "
        f"utterances dropped {d.get('utterances_dropped')}, inference errors {d.get('inference_errors')}.", ""])
    (out / "hri_churn.md").write_text(text)
    print(text)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        t = [s["t"] / 60 for s in result["samples"]]
        fig, axes = plt.subplots(1, 4, figsize=(14, 3))
        for ax, key in zip(axes, ("rss_mb", "threads", "fds", "voice_subscriptions")):
            ax.plot(t, [s[key] for s in result["samples"]])
            ax.set_title(key)
            ax.set_xlabel("minutes")
            ax.set_ylim(bottom=0)
        fig.tight_layout()
        fig.savefig(out / "hri_churn.png", dpi=80)
    except ImportError:
        pass


if __name__ == "__main__":
    sys.exit(main())
