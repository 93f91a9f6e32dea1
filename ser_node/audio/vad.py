"""Voice-activity detectors: Silero (its ONNX model, in ONNX Runtime; default) and WebRTC.

Both take fixed frames of 16 kHz mono float32 and return a speech probability in [0, 1] (WebRTC: 0 or 1).
The Silero model file comes from the silero-vad wheel; that package is never imported, because importing it
pulls torch and sets torch's thread count for the whole process.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000


class VadError(RuntimeError):
    pass


def silero_model_path() -> Path:
    """The ONNX model shipped inside the silero-vad wheel (pip install --no-deps silero-vad)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise VadError("the silero-vad package is not installed (pip install --no-deps silero-vad), "
                       "or choose vad_backend:=webrtc")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "silero_vad.onnx"
    if not path.is_file():
        raise VadError(f"{path}: Silero VAD model missing from the silero-vad package")
    return path


class SileroVad:
    """Silero VAD v5+: 512-sample frames, 64 samples of context carried from the previous frame, LSTM state."""

    frame_samples = 512
    _context_samples = 64

    def __init__(self, model_path: str | Path | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        path = Path(model_path) if model_path else silero_model_path()
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as error:
            raise VadError(f"{path}: cannot load the Silero VAD model ({error})") from error
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)
        self.reset()

    def reset(self) -> None:
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._context = np.zeros((1, self._context_samples), dtype=np.float32)

    def __call__(self, frame: np.ndarray) -> float:
        x = np.concatenate([self._context, frame.reshape(1, -1).astype(np.float32, copy=False)], axis=1)
        probability, self._state = self.session.run(None, {"input": x, "state": self._state, "sr": self._sr})
        self._context = x[:, -self._context_samples :]
        return float(probability[0, 0])


class WebRtcVad:
    """Google's WebRTC VAD (GMM): 30 ms frames, aggressiveness 0 (permissive) to 3 (strict)."""

    frame_samples = 480

    def __init__(self, aggressiveness: int = 2) -> None:
        import webrtcvad

        if aggressiveness not in (0, 1, 2, 3):
            raise VadError(f"WebRTC VAD aggressiveness must be 0..3, got {aggressiveness}")
        self._vad = webrtcvad.Vad(aggressiveness)

    def reset(self) -> None:
        pass

    def __call__(self, frame: np.ndarray) -> float:
        pcm = (np.clip(frame, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
        return 1.0 if self._vad.is_speech(pcm, SAMPLE_RATE) else 0.0


def make_vad(backend: str, silero_path: str | None = None, webrtc_aggressiveness: int = 2) -> SileroVad | WebRtcVad:
    if backend == "silero":
        return SileroVad(silero_path or None)
    if backend == "webrtc":
        return WebRtcVad(webrtc_aggressiveness)
    raise VadError(f"unknown VAD backend {backend!r}: silero or webrtc")
