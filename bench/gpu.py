"""The models on an NVIDIA GPU: which ONNX Runtime execution providers really run them, how fast, and training.

Run by `scripts/bench.sh gpu` (or directly on a machine with the GPU; `scripts/gpu_device.sh` prepares a bare one).
Every row names the provider ONNX Runtime actually used (session.get_providers() and, per graph node, its profile),
not only the one requested. Rows, each against the same machine's CPU:
  providers   Classifier(device=...) for cuda and tensorrt,cuda: what is used, what diagnostics would report
  placement   per graph node, which provider ran it (ORT profiling): the GE2E LSTM default and the paper's DS-AM
  inference   p50/p95 ms per utterance, batch 1, real speech: default model, paper-size DS-AM (VGG16 224 px) fp32
              and fp16 (CUDA), against the CPU provider (2 intra-op threads, as the node)
  pipeline    the node's work path in process (StreamProcessor -> Silero VAD segmenter -> Classifier -> per-voice
              normalisation), from the segmenter's decision to the result, and CPU ms per second of audio
  training    full-width DS-AM at 224 px: training images/s (batch 16, bf16 autocast on CUDA as train/loop.py),
              and one LOSO fold of uem-es (wall time, epochs) with a time cap
Writes gpu.json and gpu.md to --out. On a machine without CUDA the GPU rows say so (a dry run).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _gpu_name() -> str:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30).stdout.strip() or "none"
    except (OSError, subprocess.TimeoutExpired):
        return "none"


def environment() -> dict:
    import onnxruntime as ort

    info = {"date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "gpu": _gpu_name(),
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "python": platform.python_version(), "onnxruntime": ort.__version__,
            "onnxruntime_providers": ort.get_available_providers()}
    try:
        import torch

        info.update(torch=torch.__version__, torch_cuda=torch.cuda.is_available())
    except ImportError:
        info.update(torch=None, torch_cuda=False)
    return info


def cuda_available() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def load_speech(corpus: Path | None, count: int) -> list[np.ndarray]:
    """Real utterances: uem-es clips (one speaker per emotion name, spread over speakers), else the demo audio cut
    at its pauses."""
    from ser_node.audio.decode import load_audio

    if corpus is not None and corpus.is_dir():
        paths = sorted(corpus.glob("s*/*.flac"))
        return [load_audio(p) for p in paths[:: max(1, len(paths) // count)][:count]]
    demo = load_audio(ROOT / "demo" / "demo_es.wav")
    return [demo[i * 16000 : (i + 3) * 16000] for i in range(0, 15, 3)]


# ------------------------------------------------------------------ providers and placement

def provider_check(models: Path) -> dict:
    """What Classifier(device=...) really uses, and the provider string /diagnostics would publish (the node's
    diagnostics report `provider` = classifier.providers[0])."""
    from ser_node.inference.classifier import Classifier

    out = {}
    for device in ("cpu", "cuda", "tensorrt,cuda"):
        warnings: list[str] = []
        classifier = Classifier(models / "ser_default.onnx", device=device, warn=warnings.append)
        out[device] = {"providers": classifier.providers, "diagnostics_provider": classifier.providers[0],
                       "warning": warnings[0] if warnings else None}
    return out


def placement(model: Path, providers: list[str], feed: dict) -> dict:
    """Per provider: graph nodes run and their share of the run time, from ONNX Runtime's profile of a few runs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "ort_profile")
    session = ort.InferenceSession(str(model), sess_options=options, providers=providers)
    for _ in range(5):
        session.run(None, feed)
    profile = Path(session.end_profiling())
    events = json.loads(profile.read_text())
    nodes: dict[str, set] = {}
    time_us: dict[str, float] = {}
    kinds: dict[str, set] = {}
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        provider = event.get("args", {}).get("provider", "?")
        name = event["name"][: -len("_kernel_time")]
        nodes.setdefault(provider, set()).add(name)
        kinds.setdefault(provider, set()).add(event.get("args", {}).get("op_name", "?"))
        time_us[provider] = time_us.get(provider, 0.0) + float(event.get("dur", 0))
    total = sum(time_us.values()) or 1.0
    return {"session_providers": session.get_providers(),
            "by_provider": {p: {"nodes": len(nodes[p]), "ops": sorted(kinds[p]),
                                "share_of_kernel_time": time_us[p] / total} for p in nodes}}


def voice_feed(classifier, waveform: np.ndarray) -> dict:
    """The default model's inputs for one whole utterance in one step from the initial state (what the node feeds
    the graph when encode_while_speaking is off)."""
    from ser_node.inference.prosody import prosody
    from ser_node.inference.voice_frontend import encoder_input
    from ser_node.inference.voice_stream import PROSODY_INPUT, EncoderState

    state = EncoderState()
    feed = {"frames": np.ascontiguousarray(encoder_input(waveform)[None], np.float32), "h": state.h, "c": state.c,
            "sums": state.sums, "count": state.count,
            "speaker_offset": np.zeros((1, classifier.feature_size), np.float32)}
    if classifier.prosody_size:  # models with a prosody head: the utterance's block
        feed[PROSODY_INPUT] = prosody(waveform).astype(np.float32)[None]
    return feed


# ------------------------------------------------------------------ inference latency

def _percentiles(seconds: list[float]) -> dict:
    ms = np.array(seconds) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)), "n": len(ms)}


def time_session(path: Path, providers: list[str], feeds: list[dict], repeat: int = 3, threads: int = 2) -> dict:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    for feed in feeds[:3]:  # warm-up (CUDA: kernels, cuDNN algorithm search)
        session.run(None, feed)
    times = []
    for _ in range(repeat):
        for feed in feeds:
            began = time.perf_counter()
            session.run(None, feed)
            times.append(time.perf_counter() - began)
    return {"used": session.get_providers()[0], **_percentiles(times)}


def paper_ds_am(work: Path) -> tuple[Path, Path | None]:
    """The paper-size DS-AM (VGG16, full width, 224 px; untrained weights: latency does not depend on the values)
    exported to ONNX fp32, and an fp16 copy (ONNX Runtime's float16 converter; inputs and outputs stay fp32)."""
    import torch

    from ser_node.inference.features import FeatureConfig
    from ser_node.inference.model_file import ModelMetadata
    from ser_node.labels import EMOTIONS
    from ser_node.train.export import export_onnx
    from ser_node.train.networks import ModelConfig, build_model

    fp32 = work / "ds_am_vgg16_224.onnx"
    if not fp32.exists():
        torch.manual_seed(0)
        config = ModelConfig(variant="ds_am", width=1.0)
        export_onnx(build_model(config).eval(), ModelMetadata("bench-vgg16-224", list(EMOTIONS),
                                                              FeatureConfig(image_height=224, image_width=224),
                                                              "ds_am", model=config.to_dict()), fp32)
    fp16 = work / "ds_am_vgg16_224.fp16.onnx"
    try:
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        if not fp16.exists():
            onnx.save(convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True), str(fp16))
    except Exception as error:  # the converter needs onnx; say why the row is missing
        print(f"fp16 conversion unavailable: {error!r}", flush=True)
        fp16 = None
    return fp32, fp16


def inference_rows(models: Path, speech: list[np.ndarray], work: Path, gpu: bool) -> dict:
    from ser_node.inference.classifier import Classifier
    from ser_node.inference.features import FeatureConfig, FeatureExtractor
    from ser_node.inference.model_file import INPUT_NAME

    rows: dict[str, dict] = {}
    default = Classifier(models / "ser_default.onnx", threads=2)
    feeds = [voice_feed(default, w) for w in speech]
    audio_s = sum(w.size for w in speech) / 16000 / len(speech)
    for label, providers in (("cpu", ["CPUExecutionProvider"]),
                             ("cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"])):
        if label == "cuda" and not gpu:
            continue
        rows[f"default GE2E fp32, {label}"] = {**time_session(models / "ser_default.onnx", providers, feeds),
                                               "mean_utterance_s": audio_s}
    fp32, fp16 = paper_ds_am(work)
    extractor = FeatureExtractor(FeatureConfig(image_height=224, image_width=224))
    image_feeds = [{INPUT_NAME: extractor.batch([w])} for w in speech]
    rows["paper DS-AM VGG16 224 fp32, cpu"] = time_session(fp32, ["CPUExecutionProvider"], image_feeds[:10], 1)
    if gpu:
        rows["paper DS-AM VGG16 224 fp32, cuda"] = time_session(
            fp32, ["CUDAExecutionProvider", "CPUExecutionProvider"], image_feeds)
        if fp16 is not None:
            rows["paper DS-AM VGG16 224 fp16, cuda"] = time_session(
                fp16, ["CUDAExecutionProvider", "CPUExecutionProvider"], image_feeds)
    return rows


# ------------------------------------------------------------------ the node's work path, in process

def pipeline_row(models: Path, speech: list[np.ndarray], device: str) -> dict:
    """StreamProcessor + Silero segmenter + Classifier(device) + per-voice normalisation, fed 20 ms chunks:
    decision (the chunk that closes an utterance) -> result, and the process's CPU per second of audio."""
    from ser_node.audio.segmenter import Segmenter
    from ser_node.audio.stream import AudioChunk, StreamProcessor
    from ser_node.audio.vad import make_vad
    from ser_node.inference.classifier import Classifier
    from ser_node.inference.voice_stream import UtteranceEncoder
    from ser_node.inference.voices import VoiceNormaliser, VoiceSettings

    classifier = Classifier(models / "ser_default.onnx", device=device, threads=2)
    normaliser = VoiceNormaliser(VoiceSettings(**classifier.adapter_settings))
    gap = np.zeros(16000, np.float32)
    stream = np.concatenate([x for w in speech for x in (w, gap)])
    # The encoder steps while the utterance is spoken, as in the node (inference/voice_stream.py).
    processor = StreamProcessor(Segmenter(make_vad("silero"), listener=UtteranceEncoder(lambda: classifier)))
    latencies, cpu0, wall0 = [], time.process_time(), time.perf_counter()
    for start in range(0, stream.size, 320):
        began = time.perf_counter()  # the deciding chunk's own work (the encoder's last frames) counts
        for utterance in processor.feed(AudioChunk(stream[start : start + 320, None], 16000, start / 16000)):
            normaliser.judge(classifier, utterance.encoded, utterance.start, utterance.end)
            latencies.append(time.perf_counter() - began)
    cpu_s = time.process_time() - cpu0
    return {"used": classifier.providers[0], "utterances": len(latencies),
            "decision_to_result": _percentiles(latencies[2:]),  # the first two warm the provider up
            "cpu_ms_per_audio_s": cpu_s / (stream.size / 16000) * 1000,
            "wall_s": time.perf_counter() - wall0}


# ------------------------------------------------------------------ training

def training_throughput(steps: int, batch: int = 16) -> dict:
    """Images per second of full training steps (forward, loss, backward, AdamW) of the full-width DS-AM at 224 px,
    as train/loop.py runs them (bf16 autocast on CUDA)."""
    import torch
    from torch import nn

    from ser_node.train.networks import ModelConfig, build_model

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = build_model(ModelConfig(variant="ds_am", width=1.0)).to(device).train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = torch.rand(batch, 3, 224, 224, device=device)
    labels = torch.randint(0, 7, (batch,), device=device)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = loss_fn(model(images), labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()

    for _ in range(2):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    began = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - began
    return {"device": str(device), "name": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "threads": torch.get_num_threads(), "batch": batch, "steps": steps,
            "images_per_s": steps * batch / elapsed}


def loso_fold(corpus: Path, work: Path, cap_s: float, epochs: int, overrides: list[str]) -> dict:
    """One LOSO fold (test speaker s00) of the full-width DS-AM at 224 px on uem-es, the default recipe's training
    settings otherwise; per-epoch times from the progress callback; stops at `cap_s` (in a child process)."""
    code = f"""
import json, sys, time
from pathlib import Path
sys.path.insert(0, {str(ROOT)!r})
from ser_node.train.config import build_config
from ser_node.train.experiment import run_experiment
config = build_config(Path({str(ROOT / 'config' / 'train_default.yaml')!r}), [
    "corpus.path={corpus}", "protocol=loso", "max_folds=1", "width=1.0", "image_size=224", "epochs={epochs}",
    "threads=0", *{overrides!r}])
began = time.perf_counter()
def progress(event):
    print(json.dumps({{"t": time.perf_counter() - began, **{{k: v for k, v in event.items()
                     if isinstance(v, (int, float, str))}}}}), flush=True)
result = run_experiment(config, {str(work / 'loso_run')!r}, progress=progress)
print(json.dumps({{"done": time.perf_counter() - began}}), flush=True)
"""
    began = time.perf_counter()
    lines: list[dict] = []
    try:
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=cap_s)
        out, finished = run.stdout, run.returncode == 0
        error = run.stderr[-1500:] if run.returncode else None
    except subprocess.TimeoutExpired as expired:
        out = expired.stdout.decode() if isinstance(expired.stdout, bytes) else (expired.stdout or "")
        finished, error = False, f"stopped at the {cap_s:.0f} s cap"
    for line in out.splitlines():
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    epochs_done = [e for e in lines if "epoch" in e]
    return {"finished": finished, "wall_s": time.perf_counter() - began, "events": lines[-40:],
            "epochs_seen": len(epochs_done), "error": error, "epochs_configured": epochs}


# ------------------------------------------------------------------ report

def section(title: str, header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown section: title, then a table (nothing when there are no rows)."""
    if not rows:
        return []
    return ["", f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows)]


def report(results: dict) -> str:
    env = results["environment"]
    lines = [f"# On an NVIDIA GPU ({env['date']}; {env['gpu']}; {env['cores']} CPU cores; Python {env['python']}, "
             f"onnxruntime {env['onnxruntime']}, torch {env.get('torch')})", "",
             "`scripts/bench.sh gpu` (`bench/gpu.py`). Providers available: "
             + ", ".join(env["onnxruntime_providers"]) + "."]
    lines += section("Which provider runs", ["requested device", "providers of the session",
                                             "/diagnostics `provider`", "warning"],
                     [[d, ", ".join(r["providers"]), r["diagnostics_provider"], r["warning"] or ""]
                      for d, r in results.get("providers", {}).items()])
    lines += section("Where each graph node ran (ONNX Runtime profile, CUDA requested)",
                     ["model", "provider", "nodes", "share of kernel time", "ops"],
                     [[m, prov, str(p["nodes"]), f"{100 * p['share_of_kernel_time']:.1f} %",
                       ", ".join(p["ops"][:12]) + (" ..." if len(p["ops"]) > 12 else "")]
                      for m, r in results.get("placement", {}).items() for prov, p in r["by_provider"].items()])
    lines += section("Inference per utterance, batch 1 (real speech)",
                     ["model, provider requested", "provider used", "p50 ms", "p95 ms", "runs"],
                     [[label, r["used"], f"{r['p50_ms']:.2f}", f"{r['p95_ms']:.2f}", str(r["n"])]
                      for label, r in results.get("inference", {}).items()])
    lines += section("The node's work path in process (segmenter decision -> normalised result)",
                     ["device", "provider used", "utterances", "p50 ms", "p95 ms", "CPU ms per s of audio"],
                     [[d, r["used"], str(r["utterances"]), f"{r['decision_to_result']['p50_ms']:.2f}",
                       f"{r['decision_to_result']['p95_ms']:.2f}", f"{r['cpu_ms_per_audio_s']:.1f}"]
                      for d, r in results.get("pipeline", {}).items()])
    lines += section("Training the paper-size DS-AM (VGG16, 224 px)", ["where", "images/s", "batch", "threads"],
                     [[f"{label} ({r['name']})", f"{r['images_per_s']:.1f}", str(r["batch"]), str(r["threads"])]
                      for label, r in results.get("training", {}).items()])
    fold = results.get("loso_fold")
    if fold:
        lines += ["", f"One LOSO fold (uem-es, test speaker s00, full width, 224 px, {fold['epochs_configured']} "
                  f"epochs configured, {fold['epochs_seen']} run): {'finished' if fold['finished'] else 'not finished'}"
                  f" in {fold['wall_s']:.0f} s{'; ' + fold['error'] if fold.get('error') else ''}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=ROOT / "models")
    parser.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "data" / "uem-es")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "work" / "gpu")
    parser.add_argument("--utterances", type=int, default=40)
    parser.add_argument("--train-steps", type=int, default=30)
    parser.add_argument("--fold-cap-s", type=float, default=240.0, help="time cap of the LOSO fold (0: skip it)")
    parser.add_argument("--fold-epochs", type=int, default=30)
    parser.add_argument("--fold-set", action="append", default=[], metavar="KEY=VALUE",
                        help="more training settings for the fold (a dry run: --fold-set width=0.125 ...)")
    parser.add_argument("--cpu-training-steps", type=int, default=0,
                        help="only measure training images/s on this machine's CPU (the reference row) and exit")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.cpu_training_steps:
        row = training_throughput(args.cpu_training_steps)
        print(json.dumps(row))
        (args.out / "gpu_cpu_training_reference.json").write_text(json.dumps(
            {"date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "cpu": platform.processor(),
             "cores": os.cpu_count(), **row}, indent=1) + "\n")
        return 0
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):  # CUDA and cuDNN from the nvidia-* wheels torch installed
        try:
            ort.preload_dlls()
        except Exception as error:
            print(f"preload_dlls: {error!r}", flush=True)
    results: dict = {"environment": environment()}
    gpu = cuda_available()
    print(json.dumps(results["environment"], indent=1), flush=True)

    def save() -> None:
        (args.out / "gpu.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
        (args.out / "gpu.md").write_text(report(results))

    steps = [("providers", lambda: provider_check(args.models))]
    speech = load_speech(args.corpus, args.utterances)
    if gpu:
        from ser_node.inference.classifier import Classifier
        from ser_node.inference.model_file import INPUT_NAME

        default = Classifier(args.models / "ser_default.onnx")
        steps.append(("placement", lambda: {
            "default GE2E": placement(args.models / "ser_default.onnx", ["CUDAExecutionProvider",
                                                                          "CPUExecutionProvider"],
                                      voice_feed(default, speech[0])),
            "DS-AM 128 px (ser_ds_am.onnx)": placement(
                args.models / "ser_ds_am.onnx", ["CUDAExecutionProvider", "CPUExecutionProvider"],
                {INPUT_NAME: Classifier(args.models / "ser_ds_am.onnx").features.batch([speech[0]])})}))
    steps.append(("inference", lambda: inference_rows(args.models, speech, args.work, gpu)))
    steps.append(("pipeline", lambda: {d: pipeline_row(args.models, speech[:20], d)
                                       for d in (["cpu", "cuda"] if gpu else ["cpu"])}))
    steps.append(("training", lambda: {"this machine": training_throughput(args.train_steps)}))
    if args.fold_cap_s > 0 and args.corpus.is_dir():
        steps.append(("loso_fold", lambda: loso_fold(args.corpus, args.work, args.fold_cap_s, args.fold_epochs,
                                                            args.fold_set)))
    for name, step in steps:  # each part saved as it finishes: a timeout keeps what was measured
        began = time.perf_counter()
        try:
            results[name] = step()
        except Exception as error:
            results[name + "_error"] = f"{type(error).__name__}: {error}"
        shown = json.dumps(results.get(name, results.get(name + "_error")), indent=1, default=str)[:3000]
        print(f"{name}: {time.perf_counter() - began:.1f} s\n{shown}", flush=True)
        save()
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
