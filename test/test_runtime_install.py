"""The robot's install: what a robot runs must work with the run-time dependencies alone (no torch, tqdm, sklearn).

Every other test runs in the full development venv, where a run-time module importing a training package goes
unnoticed (it did: the default model failed to load on a robot because of tqdm). Two checks close that gap:
- in this venv, with training packages blocked by an import hook, the shipped models classify the demo audio and
  agree with the committed reference run (bench/results/runtime_reference.json);
- a real runtime-only venv (scripts/setup.sh --runtime: ROS wheels, run-time and VAD requirements, nothing else)
  whose installed `ser_node` console script publishes an expression for every utterance of the demo audio.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT, child_env

PARITY = ROOT / "bench" / "runtime_parity.py"
REFERENCE = ROOT / "bench" / "results" / "runtime_reference.json"
ROBOT_VENV = ROOT / "build" / "robot-venv"  # ignored by git; built once, then reused by later runs
TRAINING_PACKAGES = ("torch", "tqdm", "scikit-learn", "scipy", "librosa", "onnx", "matplotlib", "opensmile",
                     "resemblyzer", "audiomentations", "pyroomacoustics", "rosbags")


def test_the_runtime_imports_no_training_package_and_matches_the_reference(tmp_path):
    out = tmp_path / "run.json"
    result = subprocess.run([sys.executable, str(PARITY), "--runtime-only", "--out", str(out),
                             "--compare", str(REFERENCE)], capture_output=True, text=True, timeout=300, cwd=ROOT,
                            env=child_env())  # this checkout's code
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run = json.loads(out.read_text())
    assert run["comparison"]["same"] and len(run["vads"]["silero"]["boundaries"]) == 12
    # the node's default path (per-voice normalisation) really normalised some utterances, or the check is empty
    plain, voiced = (run["vads"]["silero"]["models"][k] for k in ("ser_default.onnx", "ser_default.onnx+voices"))
    assert max(abs(a - b) for p, v in zip(plain, voiced) for a, b in zip(p, v)) > 0.01


def test_the_import_hook_catches_a_training_import():
    """The guard itself can fail: a run-time process that imports tqdm is stopped by it."""
    code = (f"import sys; sys.path.insert(0, {str(ROOT / 'bench')!r}); import runtime_parity; "
            "runtime_parity.block_training_packages(); import tqdm")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=child_env())
    assert result.returncode != 0 and "tqdm is a training-only package" in result.stderr


def test_a_runtime_only_venv_runs_the_installed_node_on_the_demo_audio(tmp_path):
    pytest.importorskip("rclpy", reason="the test process publishes the audio over ROS 2 (needs the ROS wheels)")
    from ros_harness import expressions_from_process

    from ser_node.audio.decode import load_audio

    built = subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh"), "--runtime", "--venv", str(ROBOT_VENV)],
                           capture_output=True, text=True, timeout=900)
    assert built.returncode == 0, built.stderr[-3000:]
    installed = subprocess.run([str(ROBOT_VENV / "bin" / "python"), "-m", "pip", "list", "--format=json"],
                               capture_output=True, text=True, timeout=120)
    names = {p["name"].lower().replace("_", "-") for p in json.loads(installed.stdout)}
    assert {"onnxruntime", "numpy", "soxr", "soundfile", "silero-vad", "ser-node"} <= names
    assert not names & set(TRAINING_PACKAGES), sorted(names & set(TRAINING_PACKAGES))

    env = child_env()
    env.pop("PYTHONPATH")  # the robot venv's installed package, not this checkout
    demo = load_audio(ROOT / "demo" / "demo_es.wav")
    received, sent, output = expressions_from_process(
        [str(ROBOT_VENV / "bin" / "ser_node"), "--ros-args", "-p", "reliability:=reliable", "-r", "audio:=/robot_mic"],
        env, "/robot_mic", "/ser_node/expression", [demo], expected=4)
    assert "ser_default.onnx" in output and "Traceback" not in output, output[-3000:]
    assert str(ROBOT_VENV) in output, output[-3000:]  # the model found in the robot venv's share/ser_node
    assert sent == 1 and len(received) >= 4, output[-3000:]  # the demo holds four sentences


def test_compat_check_on_python_310_312_313(tmp_path):
    """scripts/compat_check.sh: runtime-only venvs on 3.10 (lowest supported versions), 3.12 and 3.13 (newest)
    classify the demo audio with every shipped model like the reference run. Needs the three interpreters."""
    missing = [v for v in ("3.10", "3.12", "3.13")
               if not subprocess.run(["bash", "-c", f"source <(sed -n '/^find_python()/,/^}}/p' "
                                                     f"{ROOT / 'scripts' / 'compat_check.sh'}); find_python {v}"],
                                     capture_output=True, text=True).stdout.strip()]
    if missing:
        pytest.skip(f"Python {', '.join(missing)} not installed here (pyenv or PATH); the check needs all three")
    result = subprocess.run(["bash", str(ROOT / "scripts" / "compat_check.sh")], capture_output=True, text=True,
                            timeout=900, env={**child_env(), "COMPAT_OUT": str(tmp_path), "PY311": sys.executable})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    runs = json.loads((tmp_path / "compat.json").read_text())["runs"]
    assert [r["platform"]["python"][:4] for r in runs] == ["3.10", "3.12", "3.13"]
    assert all(r["comparison"]["same"] for r in runs)
    assert runs[0]["platform"]["packages"]["onnxruntime"] == "1.18.1"  # the lowest supported set really ran
