"""The robot's path without ROS, on what a robot installs: decode, segment, classify; compared across platforms.

Runs the demo audio through StreamProcessor -> Segmenter (Silero and WebRTC) -> Classifier for every shipped model
(plain heads, and the node's default per-voice normalisation for the voice model, and its encoder stepped while
the audio streams in, as the node runs it) and writes the utterance
boundaries and probabilities as JSON. With --compare it checks them against a reference run (the pinned development
set on x86-64) and exits 1 when a boundary moves or a probability differs by more than --tolerance.

With --runtime-only, importing any training-only package (torch, tqdm, sklearn, ...) raises ImportError, so a
run-time module that still reaches for one fails here as it would on a robot. Needs numpy, onnxruntime, soundfile,
soxr, webrtcvad-wheels, pyyaml, silero-vad and ser_node: nothing else.

    python bench/runtime_parity.py --runtime-only --out run.json --compare bench/results/runtime_reference.json
"""
from __future__ import annotations

import argparse
import importlib.abc
import importlib.metadata
import json
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAINING_ONLY = ("torch", "torchaudio", "torchvision", "tqdm", "sklearn", "scipy", "librosa", "numba", "opensmile",
                 "matplotlib", "onnx", "onnxscript", "audiomentations", "pyroomacoustics", "resemblyzer", "rosbags",
                 "mcap")
MODELS = ("ser_default.onnx", "ser_ds_am.onnx", "ser_ds_am.int8.onnx")
CHUNK_S = 0.02  # the node's usual audio message


class _TrainingOnlyBlocker(importlib.abc.MetaPathFinder):
    """Refuses training-only top-level packages, as a robot without them would."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in TRAINING_ONLY:
            raise ImportError(f"{name} is a training-only package; the robot's run time must not import it")
        return None


def block_training_packages() -> None:
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in TRAINING_ONLY)
    if loaded:
        raise RuntimeError(f"training-only packages already imported: {loaded}")
    sys.meta_path.insert(0, _TrainingOnlyBlocker())


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def run(audio_path: Path, models_dir: Path) -> dict:
    """Boundaries and probabilities per VAD backend and model."""
    import numpy as np

    from ser_node.audio.decode import load_audio
    from ser_node.audio.segmenter import Segmenter
    from ser_node.audio.stream import StreamProcessor
    from ser_node.audio.vad import make_vad
    from ser_node.inference.classifier import Classifier, classify_in_order
    from ser_node.inference.voice_stream import UtteranceEncoder
    from ser_node.inference.voices import VoiceSettings

    # Three plays, a second apart: enough utterances for per-voice normalisation to start (warm-up 3 to 5).
    clip = load_audio(audio_path)
    audio = np.concatenate([np.concatenate([clip, np.zeros(16000, np.float32)])] * 3)
    classifiers = {name: Classifier(models_dir / name, threads=1) for name in MODELS}
    result: dict = {"audio": audio_path.name, "vads": {}}
    for backend in ("silero", "webrtc"):
        utterances = StreamProcessor(Segmenter(make_vad(backend))).feed_recording(audio, 16000, CHUNK_S)
        timed = [(u.start, u.end, u.audio) for u in utterances]
        entry: dict = {"boundaries": [[round(u.start, 6), round(u.end, 6)] for u in utterances], "models": {}}
        for name, classifier in classifiers.items():
            entry["models"][name] = classifier.predict([u.audio for u in utterances]).tolist()
            if classifier.is_voice_model:  # the node's default: per-voice normalisation
                voices = VoiceSettings(warmup=classifier.recommended_warmup, **classifier.adapter_settings)
                entry["models"][name + "+voices"] = classify_in_order(classifier, timed, voices=voices).tolist()
                # and the node's live path: the encoder stepped while each utterance streams in
                listener = UtteranceEncoder(lambda classifier=classifier: classifier)
                streamed = StreamProcessor(Segmenter(make_vad(backend), listener=listener)).feed_recording(
                    audio, 16000, CHUNK_S)
                entry["models"][name + "+streamed"] = [classifier.infer([u.encoded])[0].probabilities.tolist()
                                                       for u in streamed]
        result["vads"][backend] = entry
    return result


def compare(run_result: dict, reference: dict, tolerance: float, int8_tolerance: float) -> tuple[bool, dict]:
    """(same?, the largest difference per VAD and model). int8 models get their own tolerance: ONNX Runtime's
    integer kernels round requantisation differently between releases (1.18 vs 1.31: up to 1e-2), fp32 does not."""
    import numpy as np

    same, report = True, {}
    for backend, ref in reference["vads"].items():
        got = run_result["vads"].get(backend)
        if got is None or len(got["boundaries"]) != len(ref["boundaries"]) or \
                np.abs(np.subtract(got["boundaries"], ref["boundaries"])).max(initial=0) > 1e-4:
            report[backend] = "utterance boundaries differ"
            same = False
            continue
        for name, probabilities in ref["models"].items():
            diff = float(np.abs(np.subtract(got["models"][name], probabilities)).max(initial=0))
            report[f"{backend}/{name}"] = diff
            same &= diff <= (int8_tolerance if ".int8." in name else tolerance)
    return same, report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--audio", type=Path, default=ROOT / "demo" / "demo_es.wav")
    parser.add_argument("--models", type=Path, default=ROOT / "models", help="folder with the shipped models")
    parser.add_argument("--runtime-only", action="store_true", help="fail on any training-only import")
    parser.add_argument("--out", type=Path, help="write this run's JSON here")
    parser.add_argument("--compare", type=Path, help="reference JSON to compare with")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest probability difference allowed")
    parser.add_argument("--int8-tolerance", type=float, default=0.02, help="the same for int8 models")
    args = parser.parse_args(argv)
    if args.runtime_only:
        block_training_packages()
    result = run(args.audio, args.models)
    result["platform"] = {"python": platform.python_version(), "machine": platform.machine(),
                          "system": platform.platform(),
                          "packages": {n: _version(n) for n in ("numpy", "onnxruntime", "soundfile", "soxr",
                                                                "webrtcvad-wheels", "silero-vad", "pyyaml")}}
    counts = {b: len(v["boundaries"]) for b, v in result["vads"].items()}
    print(f"python {result['platform']['python']} on {result['platform']['machine']}: utterances {counts}; "
          f"packages {result['platform']['packages']}")
    status = 0
    if args.compare:
        same, report = compare(result, json.loads(args.compare.read_text()), args.tolerance, args.int8_tolerance)
        result["comparison"] = {"reference": args.compare.name, "tolerance": args.tolerance,
                                "int8_tolerance": args.int8_tolerance, "same": same,
                                "max_abs_difference": report}
        for key, value in report.items():
            print(f"  {key}: {value if isinstance(value, str) else f'max |diff| {value:.2e}'}")
        print("parity: " + ("OK" if same else f"FAILED (tolerance {args.tolerance}, int8 {args.int8_tolerance})"))
        status = 0 if same else 1
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
