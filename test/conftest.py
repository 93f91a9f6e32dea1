"""Shared test set-up: ROS isolation (loopback discovery, own domain id), the real corpus, a small trained model."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Before anything imports rclpy: DDS discovery stays on loopback and this process gets its own domain.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", str(100 + os.getpid() % 100))
os.environ.setdefault("ROS_LOG_DIR", tempfile.mkdtemp(prefix="ser_ros_log_"))
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CORPUS = Path(os.environ.get("SER_CORPUS", ROOT.parent / "shared" / "data" / "uem-es"))


def child_env() -> dict[str, str]:
    """Environment for a spawned ser_node process: this checkout's code, loopback discovery, the same domain."""
    env = {k: v for k, v in os.environ.items() if k != "_ROS_WHEELS_BOOTSTRAP_COMPLETE"}
    env["PYTHONPATH"] = str(ROOT)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    return env


def corpus_clip(speaker: str, name: str) -> Path:
    path = CORPUS / speaker / f"{name}.flac"
    if not path.is_file():
        pytest.skip(f"real corpus clip {path} not present (set SER_CORPUS to the uem-es folder)")
    return path


# The file name stem of each emotion in the test corpus (uem-es names its clips in Spanish: Ira_01.flac).
STEMS = {"anger": "Ira", "disgust": "Asco", "fear": "Miedo", "joy": "Alegria", "neutral": "Neutro",
         "sadness": "Tristeza", "surprise": "Sorpresa"}


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    if not CORPUS.is_dir():
        pytest.skip(f"corpus folder {CORPUS} not present (set SER_CORPUS to the uem-es folder)")
    return CORPUS


@pytest.fixture(scope="session")
def real_waveforms(corpus_dir: Path) -> list[np.ndarray]:
    from ser_node.audio.decode import load_audio

    names = ["Ira_01", "Tristeza_02", "Alegria_03", "Neutro_04", "Miedo_05", "Sorpresa_06", "Asco_07"]
    return [load_audio(corpus_dir / speaker / f"{n}.flac") for speaker in ("s04", "s05") for n in names]


@pytest.fixture(scope="session")
def trained_run(corpus_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A small DS-AM trained for a few epochs on four real speakers (about 20 s on 2 cores)."""
    pytest.importorskip("torch", reason="training needs the train extra (torch)")
    from ser_node.train.experiment import TrainConfig, run_experiment

    config = TrainConfig(corpus={"kind": "emomatch", "path": str(corpus_dir)}, speakers=["s00", "s01", "s02", "s03"],
                         variant="ds_am", protocol="all", image_size=64, width=0.125, epochs=4, batch_size=16,
                         backbone_lr=1e-3, lr=2e-3, spec_augment=False, speed_perturb=0.0, validation_fraction=0.25)
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    run_experiment(config, run_dir)
    return config, run_dir


@pytest.fixture(scope="session")
def exported_models(trained_run, real_waveforms, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """fp32 and int8 ONNX exports of the trained model (int8 calibrated on real clips of other speakers)."""
    from ser_node.train.export import export_run

    config, run_dir = trained_run
    out = tmp_path_factory.mktemp("models")
    paths = export_run(run_dir, out / "tiny.onnx", int8=True, model_id="test-tiny-ds-am", calibration_clips=40)
    return paths


@pytest.fixture(scope="session")
def voice_model(corpus_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A voice-encoder model (the default recipe's kind) fitted on 4 real speakers, 3 clips per emotion each, and
    exported to ONNX; about 15 s. Returns the model path, its heads, recipe and the feature cache folder."""
    pytest.importorskip("torch", reason="exporting needs the train extra (torch)")
    from ser_node.train.voice_recipe import VoiceRecipe, export_voice_model, fit_heads, load_voice_data

    pytest.importorskip("resemblyzer", reason="the encoder's weights come from the resemblyzer wheel "
                                              "(pip install --no-deps resemblyzer==0.1.4)")
    out = tmp_path_factory.mktemp("voice")
    manifest = out / "manifest.csv"
    rows = ["path,label,speaker"]
    for speaker in ("s00", "s01", "s02", "s03"):
        for label, name in STEMS.items():
            rows += [f"{corpus_dir / speaker / f'{name}_0{k}.flac'},{label},{speaker}" for k in (1, 2, 3)]
    manifest.write_text("\n".join(rows) + "\n")
    recipe = VoiceRecipe(corpora=[{"name": "uem-es", "kind": "manifest", "path": str(manifest)}],
                         cache_dir=str(out / "cache"), warmup=2)
    heads = fit_heads(load_voice_data(recipe, progress=False), recipe)
    path = export_voice_model(heads, recipe, out / "voice.onnx", {"protocol": "test"}, model_id="test-voice")
    return {"path": path, "heads": heads, "recipe": recipe, "cache": out / "cache"}


def voice_graph_by_hand(session, audio: np.ndarray, offsets: np.ndarray,
                        names: tuple[str, ...] = ("probabilities", "probabilities_plain", "features",
                                                  "speaker_embedding")) -> list[np.ndarray]:
    """The voice model's graph run directly on ONNX Runtime, without the package's stepping code: the causal front
    end's frames of the whole utterance in one step from the zero state, then the heads on the state it returns
    (one dummy frame, as the graph's contract says)."""
    from ser_node.inference.voice_frontend import encoder_input

    frames = encoder_input(audio)[None].astype(np.float32)
    zero = {"h": np.zeros((3, 1, 256), np.float32), "c": np.zeros((3, 1, 256), np.float32),
            "sums": np.zeros((2, 768)), "count": np.zeros(1), "speaker_offset": offsets[:1].astype(np.float32)}
    h, c, sums, count = session.run(["h_next", "c_next", "sums_next", "count_next"], {"frames": frames, **zero})
    assert count[0] == frames.shape[1]
    return session.run(list(names), {"frames": np.zeros((1, 1, 40), np.float32), "h": h, "c": c, "sums": sums,
                                     "count": count, "speaker_offset": offsets.astype(np.float32)})
