"""Performance benchmark: latency, throughput, idle cost and per-stage cost of ser_node on this machine.

Every figure is printed next to a reference measured in the same run, so a reader can compare machines:
  - the CPU's measured peak (fp32 matmul in torch, int8 matmul in ONNX Runtime) and each model's FLOPs, so each
    backend's inference time is also a ratio of its compute floor (FLOPs / peak);
  - openSMILE ComParE_2016 extraction on the same utterances, the peer pipeline's cost.
End-to-end latency is measured through ser_node processes (the console script, one per row, all running at once)
fed by a publisher in this process, in interleaved blocks of 10 utterances so that machine noise hits every row
alike: from the end of an utterance (audio time) and from the audio message that let the segmenter decide, to the
arrival of its expression message; p50 / p95 / p99 with 95 % bootstrap intervals over 200 utterances per row, and
the node's own per-stage timestamps (stage_timing) for where the time goes.

  .venv/bin/python bench/performance.py                 # everything (~20 minutes on 2 cores)
  .venv/bin/python bench/performance.py --quick         # 40 utterances per row, no full-size VGG16
  .venv/bin/python bench/performance.py --e2e-only --out bench/work/exp --row threads=1   # an experiment
  .venv/bin/python bench/performance.py --voice         # the voice-encoder default against DS-AM (~6 min)

Since the voice-encoder model became the default, the rows named "default" above are the DS-AM model
(models/ser_ds_am.onnx, the previous default); --voice measures the shipped default and writes
performance_voice.json / .md.

Writes bench/results/performance.json (plottable), performance.md and latency.png.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", str(60 + os.getpid() % 40))

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ser_node.audio.decode import load_audio  # noqa: E402
from ser_node.train.corpora import load_emomatch  # noqa: E402

THREADS = 2
SHORT_S, LONG_S = 3.0, 5.0  # utterance lengths (s) of the short and long latency rows


def timed(fn, repeat: int = 20, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return times


def ms(values: list[float]) -> dict[str, float]:
    array = np.array(values) * 1000
    return {"p50": float(np.percentile(array, 50)), "p95": float(np.percentile(array, 95)),
            "p99": float(np.percentile(array, 99)), "mean": float(array.mean())}


# ------------------------------------------------------------------ reference points

def cpu_peak() -> dict[str, float]:
    """Measured peak of this CPU: fp32 GEMM (torch) and int8 GEMM (ONNX Runtime MatMulInteger), 2 threads."""
    import onnx
    import onnxruntime as ort
    import torch
    from onnx import TensorProto, helper

    torch.set_num_threads(THREADS)
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    fp32 = 2 * n**3 / min(timed(lambda: torch.mm(a, b), repeat=10)) / 1e9
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["c"])], "int8_peak",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n]),
         helper.make_tensor_value_info("b", TensorProto.INT8, [n, n])],
        [helper.make_tensor_value_info("c", TensorProto.INT32, [n, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    xa = np.random.randint(0, 255, (n, n), dtype=np.uint8)
    xb = np.random.randint(-127, 127, (n, n), dtype=np.int8)
    int8 = 2 * n**3 / min(timed(lambda: session.run(None, {"a": xa, "b": xb}), repeat=10)) / 1e9
    conv_fp32, conv_int8 = conv_peak()
    del onnx
    # The peak is the best of the kernels tried: a floor computed from it is then a true lower bound.
    return {"fp32_gflops": max(fp32, conv_fp32), "int8_gops": max(int8, conv_int8), "gemm_fp32_gflops": fp32,
            "gemm_int8_gops": int8, "conv_fp32_gflops_ort": conv_fp32, "conv_int8_gops_ort": conv_int8}


def conv_peak() -> tuple[float, float]:
    """A VGG-sized 3x3 convolution (256 -> 256 channels, 56x56) in ONNX Runtime, fp32 and static int8 (QDQ).
    Random calibration is fine here: only the speed of the kernel is measured, not its accuracy."""
    import onnxruntime as ort
    import torch
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    with tempfile.TemporaryDirectory() as tmp:
        fp32_path, int8_path = Path(tmp) / "conv.onnx", Path(tmp) / "conv8.onnx"
        conv = torch.nn.Conv2d(256, 256, 3, padding=1).eval()
        x = torch.randn(1, 256, 56, 56)
        torch.onnx.export(conv, (x,), str(fp32_path), input_names=["x"], output_names=["y"], dynamo=False)
        batches = iter([{"x": np.random.randn(1, 256, 56, 56).astype(np.float32)} for _ in range(4)])

        class Reader:
            def get_next(self):
                return next(batches, None)

        quantize_static(str(fp32_path), str(int8_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        flops = 2 * 256 * 256 * 9 * 56 * 56
        options = ort.SessionOptions()
        options.intra_op_num_threads = THREADS
        feed = {"x": x.numpy()}
        rates = []
        for path in (fp32_path, int8_path):
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            rates.append(flops / min(timed(lambda: session.run(None, feed), repeat=10)) / 1e9)
    return rates[0], rates[1]


def opensmile_cost(waveforms: list[np.ndarray]) -> dict[str, float] | None:
    try:
        import opensmile
    except ImportError:
        return None
    smile = opensmile.Smile(feature_set=opensmile.FeatureSet.ComParE_2016,
                            feature_level=opensmile.FeatureLevel.Functionals)
    times = []
    for w in waveforms:
        began = time.perf_counter()
        smile.process_signal(w, 16000)
        times.append(time.perf_counter() - began)
    return ms(times)


# ------------------------------------------------------------------ models

def build_models(work: Path, calibration: np.ndarray, full: bool) -> dict[str, dict]:
    """The shipped default (fp32, int8) and the paper's full-width DS-AM at 224x224 (fp32, int8; untrained weights:
    latency does not depend on the values). Returns name -> {path, torch model, flops, image size}."""
    import torch

    from ser_node.inference.features import FeatureConfig, FeatureExtractor
    from ser_node.inference.model_file import ModelMetadata, read_metadata
    from ser_node.labels import EMOTIONS
    from ser_node.train.export import export_onnx, quantize_int8
    from ser_node.train.networks import ModelConfig, build_model, count_flops

    models: dict[str, dict] = {}
    default_meta = read_metadata(ROOT / "models" / "ser_ds_am.onnx")
    default_cfg = ModelConfig.from_dict(default_meta.model)
    torch.manual_seed(0)
    specs = [("default", default_cfg, ROOT / "models" / "ser_ds_am.onnx", ROOT / "models" / "ser_ds_am.int8.onnx")]
    if full:
        specs.append(("vgg16_224", ModelConfig(variant="ds_am", width=1.0), work / "vgg16_224.onnx",
                      work / "vgg16_224.int8.onnx"))
    for name, config, fp32_path, int8_path in specs:
        network = build_model(config).eval()
        features = FeatureConfig(image_height=config.image_height, image_width=config.image_width)
        if not fp32_path.exists():
            export_onnx(network, ModelMetadata(f"bench-{name}", list(EMOTIONS), features, config.variant,
                                               model=config.to_dict()), fp32_path)
            images = FeatureExtractor(features).batch(calibration)
            quantize_int8(fp32_path, int8_path, images)
        models[name] = {"fp32": fp32_path, "int8": int8_path, "torch": network, "config": config,
                        "flops": count_flops(network, config.image_height, config.image_width),
                        "features": features}
    return models


def cold_inference(classifier, images: np.ndarray, gap_s: float = 0.02, repeat: int = 60) -> float:
    """p50 ms of one inference after `gap_s` of idling, as in the node (one utterance now and then): caches and
    the core have gone cold, unlike in back-to-back runs."""
    times = []
    for r in range(repeat):
        image = images[r % len(images)][None]
        began = time.perf_counter()
        classifier.predict_images(image)
        times.append(time.perf_counter() - began)
        time.sleep(gap_s)
    return float(np.median(times[5:]) * 1000)


def inference_latency(models: dict[str, dict], waveforms: list[np.ndarray], peak: dict) -> list[dict]:
    """Per-utterance inference (features excluded) for torch fp32, ORT fp32 and ORT int8, batch 1."""
    import torch

    from ser_node.inference.classifier import Classifier
    from ser_node.inference.features import FeatureExtractor

    torch.set_num_threads(THREADS)
    rows = []
    for name, model in models.items():
        images = FeatureExtractor(model["features"]).batch(waveforms[:8])
        tensors = [torch.from_numpy(images[i : i + 1]) for i in range(len(images))]
        network = model["torch"]

        def run_torch() -> None:
            with torch.no_grad():
                for t in tensors:
                    network(t)

        backends = {"torch fp32": (run_torch, "fp32")}
        for precision in ("fp32", "int8"):
            classifier = Classifier(model[precision], threads=THREADS)
            backends[f"onnxruntime {precision}"] = (
                lambda c=classifier: [c.predict_images(images[i : i + 1]) for i in range(len(images))], precision)
        for backend, (fn, precision) in backends.items():
            per_utterance = [t / len(images) for t in timed(fn, repeat=5, warmup=1)]
            floor_s = model["flops"] / ((peak["int8_gops"] if precision == "int8" else peak["fp32_gflops"]) * 1e9)
            stats = ms(per_utterance)
            rows.append({"model": name, "backend": backend, "gflop": model["flops"] / 1e9, **stats,
                         "compute_floor_ms": floor_s * 1000, "ratio_to_floor": stats["p50"] / (floor_s * 1000)})
            if backend.startswith("onnxruntime") and name == "default":
                rows[-1]["cold_p50"] = cold_inference(Classifier(model[precision], threads=THREADS), images)
            print(f"  {name:10s} {backend:18s} p50 {stats['p50']:7.2f} ms  floor {floor_s * 1000:6.2f} ms  "
                  f"x{stats['p50'] / (floor_s * 1000):.2f}", flush=True)
    return rows


# ------------------------------------------------------------------ stages

def stage_costs(waveforms: list[np.ndarray], models: dict) -> dict[str, float]:
    """Cost of each pipeline stage in ms per second of audio (48 kHz stereo int16 input, 20 ms chunks)."""
    from ser_node.audio.decode import resample
    from ser_node.audio.vad import SileroVad
    from ser_node.audio.wire import typed_to_chunk
    from ser_node.inference.classifier import Classifier
    from ser_node.inference.features import FeatureExtractor
    from ser_node.ros.messages import interpret

    sys.path.insert(0, str(ROOT / "test"))
    from ros_harness import typed_chunks

    audio = np.concatenate(waveforms[:5])
    seconds = audio.size / 16000
    messages = typed_chunks(audio, 48000, 2, "int16", 0.02, 0.0)
    chunks = []
    decode = min(timed(lambda: chunks.__setitem__(slice(None), [typed_to_chunk(m, 0.0) for m in messages]), 3, 1))
    mono = [c.samples.mean(axis=1) for c in chunks]
    import soxr

    def run_resample() -> None:
        stream = soxr.ResampleStream(48000, 16000, 1, dtype="float32")
        for m in mono:
            stream.resample_chunk(m.astype(np.float32))

    resample_s = min(timed(run_resample, 3, 1))
    vad = SileroVad()
    frames = [audio[i : i + 512] for i in range(0, audio.size - 512, 512)]
    vad_s = min(timed(lambda: [vad(f) for f in frames], 3, 1))
    extractor = FeatureExtractor(models["default"]["features"])
    features_s = min(timed(lambda: [extractor(w) for w in waveforms[:5]], 3, 1))
    classifier = Classifier(models["default"]["fp32"], threads=THREADS)
    images = extractor.batch(waveforms[:5])
    inference_s = min(timed(lambda: [classifier.predict_images(images[i : i + 1]) for i in range(5)], 3, 1))
    probabilities = classifier.predict_images(images)
    publish_s = min(timed(lambda: publish_results(probabilities, classifier.classes, interpret), 3, 1))
    del resample
    return {"decode": decode / seconds * 1000, "resample_48k": resample_s / seconds * 1000,
            "vad_silero": vad_s / seconds * 1000, "features": features_s / seconds * 1000,
            "inference_fp32": inference_s / seconds * 1000, "publish": publish_s / seconds * 1000}


_PUBLISHERS: dict = {}


def publish_results(probabilities: np.ndarray, classes: list[str], interpret) -> None:
    """What the node does per utterance after inference: interpret, build and publish both result messages."""
    import rclpy
    from hri_msgs.msg import Expression
    from std_msgs.msg import Header
    from vision_msgs.msg import Classification, ObjectHypothesis

    if not _PUBLISHERS:
        context = rclpy.Context()
        rclpy.init(context=context)
        node = rclpy.create_node("bench_publish", context=context)
        _PUBLISHERS.update(node=node, expression=node.create_publisher(Expression, "bench_expression", 10),
                           classification=node.create_publisher(Classification, "bench_classification", 10))
    for row in probabilities:
        result = interpret(row, classes, 0.0, 1.0, 0.0, "neutral")
        header = Header(frame_id="mic")
        _PUBLISHERS["classification"].publish(Classification(header=header, results=[
            ObjectHypothesis(class_id=c, score=float(v)) for c, v in zip(classes, row)]))
        _PUBLISHERS["expression"].publish(Expression(header=header, expression=result.expression,
                                                     confidence=result.confidence, valence=result.valence,
                                                     arousal=result.arousal))


def offline_throughput(waveforms: list[np.ndarray], work: Path) -> dict[str, float]:
    from ser_node.bags.evaluate import evaluate_bag
    from ser_node.bags.io import concatenate_clips, write_audio_bag
    from ser_node.inference.classifier import Classifier

    stream, segments = concatenate_clips(waveforms, ["neutral"] * len(waveforms), 1.0)
    bag = work / "throughput_bag"
    if not bag.exists():
        write_audio_bag(bag, stream, rate=48000, channels=2)
    classifier = Classifier(ROOT / "models" / "ser_ds_am.onnx", threads=THREADS)
    evaluate_bag(bag, classifier)  # warm-up
    evaluation = evaluate_bag(bag, classifier)
    return {"audio_s": evaluation.audio_seconds, "processing_s": evaluation.processing_seconds,
            "times_real_time": evaluation.audio_seconds / evaluation.processing_seconds}


# ------------------------------------------------------------------ end to end

def _child_env(code: Path | None = None) -> dict[str, str]:
    """The node's environment: this checkout's code, or `code` (another checkout, for before/after rows)."""
    env = {k: v for k, v in os.environ.items() if k != "_ROS_WHEELS_BOOTSTRAP_COMPLETE"}
    env["PYTHONPATH"] = str(code or ROOT)
    return env


def _proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def decision_messages(stream: np.ndarray) -> dict[float, int]:
    """For each utterance (by start offset), the index of the 20 ms message whose arrival lets the segmenter close
    it: found by running the node's own StreamProcessor (same defaults) over the same messages."""
    from ser_node.audio.segmenter import Segmenter
    from ser_node.audio.stream import AudioChunk, StreamProcessor
    from ser_node.audio.vad import make_vad

    processor = StreamProcessor(Segmenter(make_vad("silero")))
    found: dict[float, int] = {}
    for index, start in enumerate(range(0, stream.size, 320)):
        for utterance in processor.feed(AudioChunk(stream[start : start + 320, None], 16000, start / 16000)):
            found[utterance.start] = index
    return found


def bootstrap_ci(values: list[float], q: float, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile-bootstrap interval of the q-th percentile."""
    array = np.asarray(values)
    rng = np.random.default_rng(seed)
    stats = np.percentile(array[rng.integers(0, array.size, (resamples, array.size))], q, axis=1)
    return float(np.percentile(stats, 2.5)), float(np.percentile(stats, 97.5))


def paired_cpu_ratio(rows: list[list[tuple[float, float]]], resamples: int = 2000, seed: int = 0) -> dict:
    """CPU per second of speech of row 0 over row 1, from rounds in which both had the same clips (end_to_end's
    cpu_rounds), with a 95 % bootstrap interval over the rounds: machine noise that hits one round hits both."""
    pairs = np.array([(a[0] / a[1], b[0] / b[1]) for a, b in zip(*rows)])
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(pairs), (resamples, len(pairs)))
    ratios = pairs[picks, 0].sum(axis=1) / pairs[picks, 1].sum(axis=1)
    return {"ratio": float(pairs[:, 0].sum() / pairs[:, 1].sum()), "low": float(np.percentile(ratios, 2.5)),
            "high": float(np.percentile(ratios, 97.5)), "rounds": len(pairs),
            "rounds_row0_cheaper": int((pairs[:, 0] < pairs[:, 1]).sum())}


def cpu_ms_per_audio_s(rounds: list[tuple[float, float]]) -> float:
    """CPU ms per second of audio over (CPU s, audio s) rounds."""
    return sum(c for c, _ in rounds) / max(sum(a for _, a in rounds), 1e-9) * 1000


def ms_ci(values: list[float]) -> dict[str, float]:
    """p50 / p95 / p99 in ms, each with its bootstrap interval (`p95_low`, `p95_high` ...)."""
    out = ms(values)
    array = np.array(values) * 1000
    for q in (50, 95, 99):
        out[f"p{q}_low"], out[f"p{q}_high"] = bootstrap_ci(array, q)
    return out


class NodeTarget:
    """One ser_node process under test (console script, own namespace) and its source/sink in this process."""

    def __init__(self, index: int, label: str, model: Path, params: dict, utterances: int, code: Path | None = None,
                 *, source) -> None:
        from audio_common_msgs.msg import AudioStamped
        from hri_msgs.msg import Expression
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        self.label, self.utterances, self.namespace = label, utterances, f"/e2e_{index}"
        args = {"model_path": model, "reliability": "reliable", "stage_timing": "true", **params}
        self.process = subprocess.Popen(
            [str(Path(sys.prefix) / "bin" / "ser_node"), "--ros-args", "-r", f"__ns:={self.namespace}",
             *[a for k, v in args.items() for a in ("-p", f"{k}:={v}")]],
            env=_child_env(code), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        from ser_node.ros.intake import BatchedIntake, never_executed_group

        self.arrivals: dict[float, float] = {}
        # Arrivals are taken by a thread of their own waiting on the subscription (the node's own intake class),
        # not by this process's executor, which is busy publishing audio: its wait-set rebuilds would add up to
        # a millisecond or two of this process's overhead to every measured latency.
        subscription = source.create_subscription(
            Expression, f"{self.namespace}/ser_node/expression", lambda _m: None, 100,
            callback_group=never_executed_group())
        self.receiver = BatchedIntake(subscription, source.context, self._arrived, lambda: 0.0,
                                      lambda error: print(f"receiver error: {error}", flush=True))
        self.receiver.start()
        self.publisher = source.create_publisher(AudioStamped, f"{self.namespace}/audio",
                                                 QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE))
        self.diagnostics: dict[str, str] = {}
        self.stream_time = 1000.0
        self.sent: list[tuple[float, float, float]] = []  # (utterance start stamp, wall end, wall decision)
        self.cpu_rounds: list[tuple[float, float]] = []  # per round of the speech phase: (CPU s, audio s)

    def _arrived(self, msg) -> None:
        self.arrivals.setdefault(round(msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9, 4), time.monotonic())


def start_profiler(pid: int, out: Path) -> subprocess.Popen | None:
    """py-spy sampling the node (all threads, idle ones too, without pausing it) into folded stacks."""
    spy = Path(sys.prefix) / "bin" / "py-spy"
    if not spy.exists():
        print("  (py-spy not installed: no profile)", flush=True)
        return None
    return subprocess.Popen([str(spy), "record", "--pid", str(pid), "--rate", "250", "--threads", "--idle",
                             "--nonblocking", "--format", "raw", "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarise_profile(folded: Path, top: int = 8) -> list[dict]:
    """Share of samples per thread and, within the worker thread while it has work (its idle wait on the queue
    left out), the functions (leaf < caller) that take most of them, whether on CPU or blocked."""
    threads: dict[str, int] = {}
    leaves: dict[str, int] = {}
    for line in folded.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        thread = frames[0]
        threads[thread] = threads.get(thread, 0) + int(count)
        if "ser_inference" in thread and not frames[-1].startswith("wait (threading.py"):  # not the idle queue wait
            leaf = " < ".join(f.split(" (")[0] for f in frames[-1:-3:-1])
            leaves[leaf] = leaves.get(leaf, 0) + int(count)
    worker_total = sum(leaves.values()) or 1
    rows = [{"where": f"worker: {name}", "share of worker samples": f"{100 * n / worker_total:.1f} %"}
            for name, n in sorted(leaves.items(), key=lambda kv: -kv[1])[:top]]
    total = sum(threads.values()) or 1
    rows += [{"where": f"thread {name[:60]}", "share of worker samples": f"{100 * n / total:.1f} % of all"}
             for name, n in sorted(threads.items(), key=lambda kv: -kv[1])[:6]]
    return rows


def end_to_end(targets: list[tuple], waveforms: list[np.ndarray], idle_s: float,
               block: int = 10, fast: float = 8.0, near_s: float = 0.4, profile: Path | None = None) -> dict:
    """Latency, idle CPU and RSS of several ser_node processes, measured interleaved: blocks of `block`
    utterances go to each process in turn until each has had its count, so machine noise hits all rows alike.

    Pacing: real time within `near_s` of each utterance end (the decision and the work it triggers see exactly
    the load of a live microphone), `fast` x real time elsewhere (the middle of an utterance and the silence
    between them), which makes 200+ utterances per row affordable.
    """
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor

    sys.path.insert(0, str(ROOT / "test"))
    from ros_harness import speech_stream, typed_chunks

    context = rclpy.Context()
    rclpy.init(context=context)
    source = rclpy.create_node("bench_source", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(source)
    nodes = [NodeTarget(i, *t, source=source) for i, t in enumerate(targets)]
    by_name = {f"{n.namespace}/ser_node: speech emotion recognition": n for n in nodes}

    def on_diagnostics(msg) -> None:
        for status in msg.status:
            if status.name in by_name:
                by_name[status.name].diagnostics.update({kv.key: kv.value for kv in status.values})

    source.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 50)

    def spin_until(due: float) -> None:
        while (ahead := due - time.monotonic()) > 0:
            executor.spin_once(timeout_sec=min(ahead, 0.005))

    def spin(seconds: float) -> None:
        spin_until(time.monotonic() + seconds)

    results: dict = {}
    try:
        deadline = time.monotonic() + 90
        while any(n.publisher.get_subscription_count() == 0 for n in nodes) and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
        spin(1.5)
        rng = np.random.default_rng(0)
        idle = np.concatenate([np.zeros(int(idle_s * 8000), np.float32),
                               rng.normal(0, 0.003, int(idle_s * 8000)).astype(np.float32)])  # silence, then noise
        for node in nodes:  # idle cost, one process at a time, real time
            messages = typed_chunks(idle, 16000, 1, "int16", 0.02, 0.0)
            cpu0, wall0 = _proc_cpu_seconds(node.process.pid), time.monotonic()
            for index, msg in enumerate(messages):
                spin_until(wall0 + index * 0.02)
                node.publisher.publish(msg)
            spin(0.5)
            results[node.label] = {"idle": {"cpu_percent_of_one_core": (_proc_cpu_seconds(node.process.pid) - cpu0)
                                            / (time.monotonic() - wall0) * 100}}
        print("  idle: " + ", ".join(f"{n.label} {results[n.label]['idle']['cpu_percent_of_one_core']:.1f} %"
                                      for n in nodes), flush=True)
        profiler = start_profiler(nodes[0].process.pid, profile) if profile else None
        clip = 0
        while any(len(n.sent) < n.utterances for n in nodes):
            # One round: every row gets the same clips, so each round's CPU is a paired comparison between rows.
            chosen = [waveforms[(clip + k) % len(waveforms)] for k in range(block)]
            clip += block
            for node in nodes:
                if len(node.sent) >= node.utterances:
                    continue
                stream, bounds = speech_stream(chosen, silence_s=1.0)
                decided = decision_messages(stream)  # offset of utterance start -> deciding message index
                messages = typed_chunks(stream, 16000, 1, "int16", 0.02, node.stream_time)
                ends = [bounds[min(range(len(bounds)), key=lambda b: abs(bounds[b][0] - start))][1]
                        for start in decided]
                decision_index = sorted(decided.values())
                cpu0 = _proc_cpu_seconds(node.process.pid)
                wall, sent_at = time.monotonic(), []
                for index, msg in enumerate(messages):
                    t = index * 0.02
                    near = any(abs(t - d * 0.02) <= near_s for d in decision_index)
                    wall += 0.02 if near else 0.02 / fast
                    spin_until(wall)
                    node.publisher.publish(msg)
                    sent_at.append(time.monotonic())
                # Wall time of each utterance's last speech sample: the audio time of that sample, mapped through
                # the publication time of the message that carried it.
                for (start, index), end in zip(sorted(decided.items()), sorted(ends)):
                    end_message = min(int(end / 0.02), len(sent_at) - 1)
                    node.sent.append((round(node.stream_time + start, 4), sent_at[end_message], sent_at[index],
                                      end - start))
                spin(0.3)
                node.cpu_rounds.append((_proc_cpu_seconds(node.process.pid) - cpu0, stream.size / 16000))
                node.stream_time += stream.size / 16000 + 1.0
            done = sum(len(n.sent) for n in nodes)
            print(f"\r  speech: {done}/{sum(n.utterances for n in nodes)} utterances sent", end="", flush=True)
        print(flush=True)
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            profiler.wait(timeout=30)
        spin(3.0)  # the last results and one more diagnostics period
        for node in nodes:
            from_end, from_decision, by_length = [], [], {"short": [], "long": []}
            for start, end_wall, decision_wall, duration in node.sent:
                arrival = node.arrivals.get(start)
                if arrival is None:  # stamps are the segmenter's starts; allow for rounding at the 4th decimal
                    arrival = next((a for s, a in node.arrivals.items() if abs(s - start) < 0.05), None)
                if arrival is not None:
                    from_end.append(arrival - end_wall)
                    from_decision.append(arrival - decision_wall)
                    if duration < SHORT_S or duration >= LONG_S:
                        by_length["short" if duration < SHORT_S else "long"].append(arrival - decision_wall)
            stages = {k.removeprefix("stage_ms_"): float(v) for k, v in node.diagnostics.items()
                      if k.startswith("stage_ms_")}
            results[node.label].update({
                "latency_from_utterance_end_ms": ms(from_end), "latency_from_decision_ms": ms_ci(from_decision),
                **{f"latency_from_decision_ms_{k}": ms_ci(v) for k, v in by_length.items() if len(v) >= 5},
                "utterances_by_length": {k: len(v) for k, v in by_length.items()},
                "utterances": {"sent": len(node.sent), "received": len(from_decision)},
                "speech": {"cpu_ms_per_audio_s": cpu_ms_per_audio_s(node.cpu_rounds),
                           "cpu_rounds": node.cpu_rounds,
                           "rss_mb": _proc_rss_mb(node.process.pid)},
                "node_inference_ms": {k: float(node.diagnostics[f"latency_ms_{k}"]) for k in ("p50", "p95")
                                      if f"latency_ms_{k}" in node.diagnostics},
                "stages_ms": stages})
        return results
    finally:
        for node in nodes:
            node.receiver.stop()
        source.destroy_node()
        rclpy.shutdown(context=context)
        for node in nodes:
            node.process.terminate()
        for node in nodes:
            node.process.wait(timeout=20)


# ------------------------------------------------------------------ the voice-encoder default

VOICE_GOALS = {"decision_to_arrival_p95_ms": 30.0, "speech_cpu_percent_of_one_core": 10.0}


def voice_inference(waveforms: list[np.ndarray]) -> dict:
    """Per second of audio, in this process: the front end and the graph on whole utterances (1 and 2 threads),
    the same encoder in torch (the reference run in the same process), the streaming path (20 ms pushes, as the
    node steps while people speak) and how many voices one core encodes at once in real time."""
    import torch

    from ser_node.inference.classifier import Classifier
    from ser_node.inference.prosody import prosody
    from ser_node.inference.voice_frontend import encoder_input
    from ser_node.inference.voice_stream import EncoderState
    from ser_node.train.voice_encoder import GE2EEncoder, pool

    audio_s = sum(w.size for w in waveforms) / 16000
    began = time.perf_counter()
    frames = [encoder_input(w) for w in waveforms]
    out = {"utterances": len(waveforms), "audio_s": audio_s,
           "front_end_ms_per_audio_s": (time.perf_counter() - began) / audio_s * 1000}
    zero = None
    for threads in (1, 2):
        classifier = Classifier(ROOT / "models" / "ser_default.onnx", threads=threads)
        zero = np.zeros(classifier.feature_size, np.float32)
        for f in frames[:3]:  # warm-up
            classifier.step(EncoderState(), f)
        began = time.perf_counter()
        for w, f in zip(waveforms, frames):  # the whole utterance in one step from the initial state, the heads
            state = classifier.step(EncoderState(), f)
            if classifier.prosody_size:  # models with a prosody head read the utterance's block too
                state.prosody = prosody(w).astype(np.float32)[None]
            classifier.infer([state], [zero])
        out[f"onnxruntime_{threads}_threads_ms_per_audio_s"] = (time.perf_counter() - began) / audio_s * 1000
    torch.set_num_threads(1)
    encoder = GE2EEncoder.pretrained()
    with torch.no_grad():
        for f in frames[:3]:  # warm-up, as for ONNX Runtime
            pool(encoder(torch.from_numpy(f[None])), (0, 1, 2))
        began = time.perf_counter()
        for f in frames:
            pool(encoder(torch.from_numpy(f[None])), (0, 1, 2))
    out["torch_encoder_1_thread_ms_per_audio_s"] = (time.perf_counter() - began) / audio_s * 1000
    out["ratio_onnxruntime_to_torch_1_thread"] = (out["onnxruntime_1_threads_ms_per_audio_s"]
                                                  / out["torch_encoder_1_thread_ms_per_audio_s"])
    out["voices_at_once"] = voices_per_core(Classifier(ROOT / "models" / "ser_default.onnx", threads=1), waveforms)
    return out


def voices_per_core(classifier, waveforms: list[np.ndarray], counts: tuple[int, ...] = (1, 2, 4, 8)) -> list[dict]:
    """N voices speaking at once, each its own VoiceStream, fed 20 ms in turn on one thread (ONNX Runtime on one
    thread): this thread's CPU time per second of audio of each voice (front end, steps, the end of each
    utterance and its heads), and the voices one core sustains in real time (1000 ms / that)."""
    from ser_node.inference.voice_stream import VoiceStream

    rows = []
    for n in counts:
        voices = [list(waveforms[i::n]) for i in range(n)]
        streams = [VoiceStream(classifier) for _ in range(n)]
        offset = np.zeros((1, classifier.feature_size), np.float32)
        queues = [np.concatenate(v) if v else np.zeros(0, np.float32) for v in voices]
        bounds = [np.cumsum([w.size for w in v]) for v in voices]
        length = min(q.size for q in queues)
        cpu0 = time.thread_time()
        for start in range(0, length, 320):
            for k in range(n):
                stream = streams[k]
                stream.push(queues[k][start:start + 320])
                if np.any((bounds[k] > start) & (bounds[k] <= start + 320)):  # an utterance ends in this chunk
                    classifier.infer_candidates(stream.finish(), offset)
                    streams[k] = VoiceStream(classifier)
        cpu = time.thread_time() - cpu0
        per_voice_ms = cpu / (length / 16000) / n * 1000
        rows.append({"voices": n, "cpu_ms_per_audio_s_per_voice": per_voice_ms,
                     "voices_per_core": 1000.0 / per_voice_ms})
        print(f"  {n} voice(s) at once: {per_voice_ms:.1f} ms CPU per second of each voice's audio "
              f"-> {1000.0 / per_voice_ms:.0f} voices per core", flush=True)
    return rows


def voice_waveforms(waveforms: list[np.ndarray]) -> list[np.ndarray]:
    """Short and long utterances alternating: each clip alone (2-4 s), then with the next clip after a 0.15 s
    pause (under min_silence_s, so one utterance of 5-8 s)."""
    out = []
    for i, clip in enumerate(waveforms):
        out.append(clip)
        following = waveforms[(i + 1) % len(waveforms)]
        out.append(np.concatenate([clip, np.zeros(2400, np.float32), following]))
    return out


def run_voice(args: argparse.Namespace, waveforms: list[np.ndarray], results: dict) -> int:
    from ser_node.train.reports import format_table

    waveforms = voice_waveforms(waveforms)
    print("voice model inference (in process)", flush=True)
    results["inference"] = voice_inference(waveforms)
    print(json.dumps(results["inference"], indent=1), flush=True)
    count = args.utterances or 100
    default = ROOT / "models" / "ser_default.onnx"
    targets = [("voice default (normalisation on)", default, {}, count),
               ("voice default, encode_while_speaking=false", default, {"encode_while_speaking": "false"}, count)]
    if args.compare_code:  # before/after a code change: another checkout's node with that checkout's own model
        targets.insert(1, (f"voice default, code and model of {args.compare_code.name}",
                           args.compare_code.resolve() / "models" / "ser_default.onnx", {}, count,
                           args.compare_code.resolve()))
    else:
        targets.append(("DS-AM fp32 (previous default)", ROOT / "models" / "ser_ds_am.onnx",
                        {"speaker_adaptation": "false"}, count))
    results["goal"] = dict(VOICE_GOALS)
    print(f"end to end, interleaved: {', '.join(t[0] for t in targets)}", flush=True)
    results["end_to_end"] = end_to_end(targets, waveforms, idle_s=10.0)
    rows = []

    def p95(e2e: dict, key: str) -> str:
        d = e2e.get(key)
        return f"{d['p95']:.1f} [{d['p95_low']:.1f}, {d['p95_high']:.1f}]" if d else "-"

    for label, e2e in results["end_to_end"].items():
        dec = e2e["latency_from_decision_ms"]
        cpu_percent = e2e["speech"]["cpu_ms_per_audio_s"] / 10.0
        rows.append({"row": label, "utterances": f"{e2e['utterances']['received']}/{e2e['utterances']['sent']}",
                     "decision->arrival p50 ms [95% CI]": f"{dec['p50']:.1f} [{dec['p50_low']:.1f}, "
                                                          f"{dec['p50_high']:.1f}]",
                     "p95 ms [95% CI]": p95(e2e, "latency_from_decision_ms"),
                     f"p95 < {SHORT_S:.0f} s utterances": p95(e2e, "latency_from_decision_ms_short"),
                     f"p95 >= {LONG_S:.0f} s utterances": p95(e2e, "latency_from_decision_ms_long"),
                     "CPU ms per s of speech": f"{e2e['speech']['cpu_ms_per_audio_s']:.0f}",
                     "idle CPU %": f"{e2e['idle']['cpu_percent_of_one_core']:.1f}",
                     "RSS MB": f"{e2e['speech']['rss_mb']:.0f}",
                     **{f"{stage} p50/p95 ms": (f"{e2e['stages_ms'].get(f'{stage}_p50', float('nan')):.1f} / "
                                                 f"{e2e['stages_ms'].get(f'{stage}_p95', float('nan')):.1f}")
                        for stage in ("features", "inference")}})
        print(f"  {label}: p95 {dec['p95']:.1f} ms [{dec['p95_low']:.1f}, {dec['p95_high']:.1f}] "
              f"(goal {VOICE_GOALS['decision_to_arrival_p95_ms']:.0f}), CPU {cpu_percent:.1f} % of one core "
              f"while speech streams (goal {VOICE_GOALS['speech_cpu_percent_of_one_core']:.0f})", flush=True)
    ratio_lines = []
    if args.compare_code:
        new, old = (results["end_to_end"][targets[i][0]]["latency_from_decision_ms"]["p95"] for i in (0, 1))
        cpu_new, cpu_old = (results["end_to_end"][targets[i][0]]["speech"]["cpu_ms_per_audio_s"] for i in (0, 1))
        paired = paired_cpu_ratio([results["end_to_end"][targets[i][0]]["speech"]["cpu_rounds"] for i in (0, 1)])
        results["ratios"] = {"decision_to_arrival_p95": new / old, "cpu_per_speech_s": cpu_new / cpu_old,
                             "cpu_per_speech_s_paired": paired}
        ratio_lines.append(f"This code against {args.compare_code.name}'s, same run: decision->arrival p95 x"
                           f"{new / old:.2f}, CPU per second of speech x{cpu_new / cpu_old:.2f}; paired over "
                           f"{paired['rounds']} rounds of the same clips x{paired['ratio']:.3f} [95% CI "
                           f"{paired['low']:.3f}, {paired['high']:.3f}], this code cheaper in "
                           f"{paired['rounds_row0_cheaper']} of them.\n\n")
    inference = results["inference"]
    voices = "; ".join(f"{r['voices']} at once: {r['cpu_ms_per_audio_s_per_voice']:.1f} ms per voice-second "
                       f"= {r['voices_per_core']:.0f} voices per core" for r in inference["voices_at_once"])
    text = (f"# The voice-encoder default in the node ({results['date']}, {results['machine']['cpu']}, "
            f"{results['machine']['cores']} cores)\n\n`.venv/bin/python bench/performance.py --voice"
            f"{' --compare-code ' + str(args.compare_code.name) if args.compare_code else ''}`: one ser_node "
            f"process per row, interleaved rounds of 10 clips, the same clips for every row in a round (real "
            f"time near each utterance end, 8x elsewhere), {count} utterances per row, short (one clip, 2-4 s) "
            f"and long (two clips 0.15 s apart, 5-8 s) alternating. CPU ms per second of speech: the node "
            "process's CPU time over the audio it was fed during the speech phase.\n\n" + format_table(rows, list(rows[0]))
            + f"\n\nGoals: decision->arrival p95 <= {VOICE_GOALS['decision_to_arrival_p95_ms']:.0f} ms, the node "
            f"<= {VOICE_GOALS['speech_cpu_percent_of_one_core']:.0f} % of one core during continuous speech.\n\n"
            + "".join(ratio_lines) +
            f"In this process, per second of audio over {inference['utterances']} utterances: front end "
            f"{inference['front_end_ms_per_audio_s']:.1f} ms (numpy, WebRTC VAD trimming), ONNX graph "
            f"{inference['onnxruntime_1_threads_ms_per_audio_s']:.1f} ms on 1 thread / "
            f"{inference['onnxruntime_2_threads_ms_per_audio_s']:.1f} ms on 2, the same encoder in torch "
            f"{inference['torch_encoder_1_thread_ms_per_audio_s']:.1f} ms on 1 thread "
            f"(ratio {inference['ratio_onnxruntime_to_torch_1_thread']:.2f}). Voices encoded while they speak, "
            f"on one thread (20 ms pushes, front end + steps + heads): {voices}.\n")
    (args.out / "performance_voice.json").write_text(json.dumps(results, indent=1))
    (args.out / "performance_voice.md").write_text(text)
    print(text)
    return 0


# ------------------------------------------------------------------ report

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "data" / "uem-es")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "work")
    parser.add_argument("--quick", action="store_true", help="40 utterances per row, no full-size VGG16")
    parser.add_argument("--e2e-only", action="store_true", help="only the end-to-end rows (experiments)")
    parser.add_argument("--utterances", type=int, default=0, help="per default-model row (default 200; quick 40)")
    parser.add_argument("--profile", action="store_true", help="py-spy the first row's node during the speech phase")
    parser.add_argument("--row", action="append", default=[], metavar="PARAM=VALUE",
                        help="an extra row: the default fp32 model with one node parameter changed")
    parser.add_argument("--compare-code", type=Path, default=None, metavar="CHECKOUT",
                        help="with --voice: a row whose node runs another checkout's code (e.g. a git worktree of "
                             "the previous commit), interleaved with this one's")
    parser.add_argument("--voice", action="store_true",
                        help="the voice-encoder default against DS-AM end to end (performance_voice.*)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    clips = [c for c in load_emomatch(args.corpus, check_audio=False).clips
             if c.speaker in ("s02", "s05", "s09", "s11")]
    clips = [clips[i] for i in np.random.default_rng(0).permutation(len(clips))[: 10 if args.quick else 48]]
    waveforms = [load_audio(c.path) for c in clips]
    calibration = [load_audio(c.path) for c in load_emomatch(args.corpus, check_audio=False).clips[::25]]
    results: dict = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": {
        "cpu": next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                     if l.startswith("model name")), platform.processor()),
        "cores": os.cpu_count(), "python": platform.python_version(), "threads": THREADS},
        "mode": "quick" if args.quick else ("e2e only" if args.e2e_only else "full")}
    if args.voice:
        return run_voice(args, waveforms, results)
    print("measuring CPU peak", flush=True)
    results["cpu_peak"] = cpu_peak()
    print(f"  fp32 {results['cpu_peak']['fp32_gflops']:.0f} GFLOP/s, int8 {results['cpu_peak']['int8_gops']:.0f} GOP/s")
    full = not (args.quick or args.e2e_only)
    models = build_models(args.work, calibration, full=full)
    int8_floor_ms = models["default"]["flops"] / (results["cpu_peak"]["int8_gops"] * 1e9) * 1000
    results["goal"] = {"decision_to_arrival_p95_ms": 1.5 * int8_floor_ms + 10.0, "int8_floor_ms": int8_floor_ms,
                       "rule": "1.5 x the default model's int8 compute floor + 10 ms"}
    if full:
        print("inference latency (batch 1, features excluded)", flush=True)
        results["inference"] = inference_latency(models, waveforms, results["cpu_peak"])
        print("stage costs", flush=True)
        results["stages_ms_per_audio_s"] = stage_costs(waveforms, models)
        results["opensmile_compare_ms_per_utterance"] = opensmile_cost(waveforms[:10])
        print("offline throughput", flush=True)
        results["offline"] = offline_throughput(waveforms, args.work)
    count = args.utterances or (40 if args.quick else 200)
    targets = [("default fp32", models["default"]["fp32"], {}, count),
               ("default int8", models["default"]["int8"], {}, count),
               # The same node taking every audio message through the rclpy executor: what batching saves.
               ("default fp32, idle_batch_s=0", models["default"]["fp32"], {"idle_batch_s": 0.0}, count)]
    for row in args.row:  # experiments: the default fp32 with other parameters, e.g. --row threads=1
        targets.append((f"default fp32, {row}", models["default"]["fp32"], dict([row.split("=", 1)]), count))
    if full:
        targets += [("vgg16_224 fp32", models["vgg16_224"]["fp32"], {}, 40),
                    ("vgg16_224 int8", models["vgg16_224"]["int8"], {}, 40)]
    print(f"end to end, interleaved: {', '.join(t[0] for t in targets)}", flush=True)
    profile = args.work / "node_profile.folded" if args.profile else None
    results["end_to_end"] = end_to_end(targets, waveforms, idle_s=10.0 if args.quick else 20.0, profile=profile)
    if profile is not None and profile.exists():
        results["profile"] = summarise_profile(profile)
    goal = results["goal"]["decision_to_arrival_p95_ms"]
    for label, e2e in results["end_to_end"].items():
        d = e2e["latency_from_decision_ms"]
        print(f"  {label:34s} decision->arrival p95 {d['p95']:.1f} ms [{d['p95_low']:.1f}, {d['p95_high']:.1f}] "
              f"(goal {goal:.1f}: {'met' if d['p95_high'] < goal else 'NOT met'}), "
              f"{e2e['utterances']['received']}/{e2e['utterances']['sent']} received", flush=True)
    (args.out / "performance.json").write_text(json.dumps(results, indent=1))
    write_report(results, args.out)
    return 0


def torch_estimates(results: dict) -> list[str]:
    """The node runs ONNX Runtime only; a torch backend's end-to-end latency is estimated from the measured
    ONNX Runtime one by swapping the inference times measured above (said so in the report)."""
    lines = []
    inference = {(r["model"], r["backend"]): r for r in results["inference"]}
    for label, e2e in results["end_to_end"].items():
        model, _, precision = label.partition(" ")
        if precision != "fp32" or (model, "torch fp32") not in inference:
            continue
        delta = inference[(model, "torch fp32")]["p95"] - inference[(model, "onnxruntime fp32")]["p95"]
        dec = e2e["latency_from_decision_ms"]["p95"]
        lines.append(f"- torch fp32, {model} (estimate: the onnxruntime fp32 run + {delta:.1f} ms of slower "
                     f"inference): decision->arrival p95 ≈ {dec + delta:.1f} ms.")
    return ["Torch is not a runtime backend of the node (it ships ONNX):", *lines] if lines else []


def e2e_tables(results: dict) -> list[str]:
    """The end-to-end table (with bootstrap intervals and the goal) and the per-stage breakdown."""
    from ser_node.train.reports import format_table

    goal = results["goal"]["decision_to_arrival_p95_ms"]
    rows, stage_rows = [], []
    for label, e2e in results["end_to_end"].items():
        lat, dec = e2e["latency_from_utterance_end_ms"], e2e["latency_from_decision_ms"]
        rows.append({"row": label, "utterances": f"{e2e['utterances']['received']}/{e2e['utterances']['sent']}",
                     "end->arrival p50 / p95 ms": f"{lat['p50']:.0f} / {lat['p95']:.0f}",
                     "decision->arrival p50 ms [95% CI]": f"{dec['p50']:.1f} [{dec['p50_low']:.1f}, "
                                                          f"{dec['p50_high']:.1f}]",
                     "p95 ms [95% CI]": f"{dec['p95']:.1f} [{dec['p95_low']:.1f}, {dec['p95_high']:.1f}]",
                     "p99 ms [95% CI]": f"{dec['p99']:.1f} [{dec['p99_low']:.1f}, {dec['p99_high']:.1f}]",
                     "goal": "met" if dec["p95_high"] < goal else "not met",
                     "idle CPU %": f"{e2e['idle']['cpu_percent_of_one_core']:.1f}",
                     "CPU ms per audio s": f"{e2e['speech']['cpu_ms_per_audio_s']:.0f}",
                     "RSS MB": f"{e2e['speech']['rss_mb']:.0f}"})
        stages = e2e.get("stages_ms", {})
        if stages:
            row = {"row": label}
            for stage in ("intake", "wake", "features", "inference", "build", "publish"):
                row[stage] = f"{stages.get(f'{stage}_p50', float('nan')):.2f} / {stages.get(f'{stage}_p95', float('nan')):.2f}"
            total = sum(stages.get(f"{k}_p50", 0.0) for k in ("intake", "wake", "features", "inference", "build",
                                                               "publish"))
            row["sum of p50"] = f"{total:.2f}"
            row["decision->arrival p50"] = f"{e2e['latency_from_decision_ms']['p50']:.2f}"
            stage_rows.append(row)
    lines = [format_table(rows, list(rows[0])) if rows else "(not run)", "",
             f"Goal: decision->arrival p95 below **{goal:.1f} ms** ({results['goal']['rule']}: "
             f"{results['goal']['int8_floor_ms']:.2f} ms floor); *met* means the upper end of the p95's 95 % "
             "bootstrap interval is below it."]
    if stage_rows:
        lines += ["", "### Where the time goes (p50 / p95 ms per utterance, the node's own timestamps)", "",
                  format_table(stage_rows, list(stage_rows[0])), "",
                  "*intake*: from taking the audio message that closed the utterance to queueing it (segmenter); "
                  "*wake*: queue to the worker; *features*, *inference*; *build*: result messages; *publish*: "
                  "handing them to the middleware. What *decision->arrival* adds beyond their sum is DDS delivery "
                  "both ways and this process's own receive path."]
    if results.get("profile"):
        lines += ["", f"### py-spy on the `{next(iter(results['end_to_end']))}` node during the speech phase "
                      "(250 samples/s; blocked samples included, the worker's wait for work left out)", "",
                  format_table(results["profile"], ["where", "share of worker samples"])]
    return lines


def write_report(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ser_node.train.reports import format_table

    peak = results["cpu_peak"]
    lines = [f"# Performance ({results['date']}, {results['machine']['cpu']}, {results['machine']['cores']} cores, "
             f"{results['machine']['threads']} inference threads; {results['mode']} run)", "",
             f"Measured peak of this CPU (best of a 2048² GEMM and a VGG-sized 3x3 convolution, same threads): "
             f"{peak['fp32_gflops']:.0f} GFLOP/s fp32, {peak['int8_gops']:.0f} GOP/s int8. The compute floor of a "
             "model is its FLOPs at that peak; `ratio_to_floor` = measured / floor (1.0 = perfect).", ""]
    if "inference" in results:
        lines += ["## Inference per utterance (batch 1, features excluded)", "",
                  format_table([{**r, **{k: f"{r[k]:.2f}" for k in ("p50", "p95", "compute_floor_ms",
                                                                   "ratio_to_floor", "gflop")},
                                 "p50 after 20 ms idle": f"{r['cold_p50']:.2f}" if "cold_p50" in r else ""}
                                for r in results["inference"]],
                               ["model", "backend", "gflop", "p50", "p95", "compute_floor_ms", "ratio_to_floor",
                                "p50 after 20 ms idle"]), "",
                  "Back-to-back runs (p50, p95) are the usual benchmark; the node runs one inference now and then, "
                  "on a core whose caches have gone cold, which the last column measures.", ""]
    lines += ["## End to end (ser_node processes, interleaved blocks of 10 utterances, utterance end -> expression "
              "received)", "", *e2e_tables(results), "",
              "Each row is its own ser_node process (console script); rounds of 10 clips, the same clips for "
              "every row, go to each in turn, so machine noise hits every row alike. Audio is paced at real time within 0.4 s of each utterance "
              "end and at 8x elsewhere. Latency from the utterance end includes the `min_silence_s` (0.5 s by "
              "default) of silence the segmenter must hear before it can close an utterance (a design choice, tunable). "
              "*decision->arrival* starts at the publication of the audio message that let the segmenter close "
              "the utterance: the pipeline's own cost. `idle_batch_s=0` is the node taking every audio message "
              "through the rclpy executor; the default takes them in 0.25 s batches while nobody speaks (see "
              "ser_node/ros/intake.py).", ""]
    if "inference" in results:
        lines += [*torch_estimates(results), "",
                  "## Cost per stage (ms per second of audio, 48 kHz stereo int16 input)", "",
                  format_table([{"stage": k, "ms per audio s": f"{v:.2f}"} for k, v in
                                results["stages_ms_per_audio_s"].items()], ["stage", "ms per audio s"]), ""]
        offline = results["offline"]
        lines.append(f"Offline bag evaluation: {offline['audio_s']:.0f} s of audio in {offline['processing_s']:.1f} "
                     f"s, **{offline['times_real_time']:.0f}x real time**.")
        peer = results.get("opensmile_compare_ms_per_utterance")
        if peer:
            lines.append(f"Peer cost: openSMILE ComParE_2016 functionals take {peer['p50']:.0f} ms per utterance "
                         "(p50).")
    (out / "performance.md").write_text("\n".join(lines) + "\n")
    figure, axes = plt.subplots(1, 2 if "inference" in results else 1, figsize=(13, 3.8), dpi=110, squeeze=False)
    labels = list(results["end_to_end"])
    for q, offset, colour in ((50, -0.2, "#3b7dd8"), (95, 0.2, "#d8753b")):
        values = [results["end_to_end"][k]["latency_from_decision_ms"] for k in labels]
        axes[0][0].errorbar(np.arange(len(labels)) + offset, [v[f"p{q}"] for v in values],
                            yerr=[[v[f"p{q}"] - v[f"p{q}_low"] for v in values],
                                  [v[f"p{q}_high"] - v[f"p{q}"] for v in values]],
                            fmt="o", color=colour, capsize=3, label=f"p{q} (95 % CI)")
    axes[0][0].axhline(results["goal"]["decision_to_arrival_p95_ms"], color="black", linestyle=":", label="goal")
    axes[0][0].set_xticks(range(len(labels)), [label.replace(", ", "\n") for label in labels], fontsize=7)
    axes[0][0].set_yscale("log")
    axes[0][0].set_ylabel("decision -> arrival, ms")
    axes[0][0].legend(fontsize=7)
    if "inference" in results:
        ax = axes[0][1]
        names = [f"{r['model']}\n{r['backend']}" for r in results["inference"]]
        ax.bar(range(len(names)), [r["p50"] for r in results["inference"]], color="#3b7dd8", label="measured p50")
        ax.scatter(range(len(names)), [r["compute_floor_ms"] for r in results["inference"]], color="black",
                   zorder=3, label="compute floor")
        ax.set_xticks(range(len(names)), names, fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("inference ms per utterance")
        ax.legend(fontsize=7)
    figure.suptitle(f"ser_node latency · {results['date']} · {results['machine']['cores']} cores", fontsize=9)
    figure.tight_layout()
    figure.savefig(out / "latency.png")
    plt.close(figure)
    print((out / "performance.md").read_text())


if __name__ == "__main__":
    sys.exit(main())
