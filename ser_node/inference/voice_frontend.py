"""The GE2E voice encoder's front end in numpy: what the robot computes before the encoder's ONNX graph.

The encoder's weights come from the `resemblyzer` wheel (a GE2E speaker encoder, Apache-2.0), and they only mean
something on the input they were trained on: the wheel's `preprocess_wav` (gain raised to -30 dBFS, pauses longer
than ~0.2 s cut with WebRTC VAD) and `wav_to_mel_spectrogram` (librosa mel, 25 ms / 10 ms, 40 bands, power, no
log). This module re-implements both without librosa or scipy (they would put numba and SciPy on the robot) and
a test checks it against the wheel's own code on real clips. The weights' file is located in the installed
wheel without importing it (its package imports torch and librosa).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from ..files import sha256_of
from .features import FeatureConfig, stft_mel_power

SAMPLE_RATE = 16000
MEL_CONFIG = FeatureConfig(sample_rate=SAMPLE_RATE, n_fft=400, hop_length=160, n_mels=40)  # 25 ms / 10 ms
TARGET_DBFS = -30.0
VAD_WINDOW = 480  # 30 ms at 16 kHz
VAD_SMOOTHING = 8  # windows in the moving average
VAD_MAX_SILENCE = 6  # windows of silence kept around speech
PARTIAL_FRAMES = 160  # the encoder saw 1.6 s windows in training
INT16_MAX = 2**15 - 1

# The weights we built and measured with: resemblyzer 0.1.4's pretrained.pt. A different file is refused.
ENCODER_PACKAGE = "resemblyzer"
ENCODER_VERSION = "0.1.4"
ENCODER_SHA256 = "39373b86598fa3da9fcddee6142382efe09777e8d37dc9c0561f41f0070f134e"
# Bump when this module changes what reaches the encoder: models record it, the classifier refuses a mismatch.
FRONTEND_VERSION = 1


class EncoderWeightsError(RuntimeError):
    """The pretrained encoder's weights are missing or not the file this package was built with."""


def normalise_volume(wav: np.ndarray, target_dbfs: float = TARGET_DBFS) -> np.ndarray:
    """Raises (never lowers) the gain so the clip's RMS is `target_dbfs`, as the wheel's `normalize_volume`."""
    wav = np.asarray(wav, dtype=np.float32)
    rms = float(np.sqrt(np.mean(np.square(wav, dtype=np.float64)))) if wav.size else 0.0
    if rms <= 0.0:
        return wav
    change_db = target_dbfs - 20.0 * np.log10(rms)
    if change_db <= 0:
        return wav
    return (wav * np.float32(10.0 ** (change_db / 20.0))).astype(np.float32)


def _moving_average(flags: np.ndarray, width: int) -> np.ndarray:
    padded = np.concatenate((np.zeros((width - 1) // 2), flags, np.zeros(width // 2)))
    sums = np.cumsum(padded, dtype=float)
    sums[width:] = sums[width:] - sums[:-width]
    return sums[width - 1:] / width


def _fresh_vad():
    """A new VAD per clip: WebRTC's VAD keeps state from frame to frame, so a shared one would make a clip's
    trimming depend on the clip before it (the wheel makes a new one per call too)."""
    import webrtcvad  # webrtcvad-wheels: a runtime dependency already (the node's WebRTC VAD backend)

    return webrtcvad.Vad(3)


def speech_mask(wav: np.ndarray) -> np.ndarray:
    """Per 30 ms window: kept or not (WebRTC VAD mode 3, smoothed over 8 windows, then dilated)."""
    n = len(wav) // VAD_WINDOW
    # The wheel rounds to int16 without clipping (overflowing on a clipped clip); clipping is the only difference.
    pcm = np.clip(np.round(wav[: n * VAD_WINDOW] * INT16_MAX), -INT16_MAX - 1, INT16_MAX).astype("<i2")
    vad = _fresh_vad()
    flags = np.array([vad.is_speech(pcm[i * VAD_WINDOW:(i + 1) * VAD_WINDOW].tobytes(), SAMPLE_RATE)
                      for i in range(n)], dtype=float)
    if n == 0:
        return np.zeros(0, dtype=bool)
    mask = np.round(_moving_average(flags, VAD_SMOOTHING)).astype(bool)
    # The wheel dilates with scipy and a structuring element VAD_MAX_SILENCE + 1 (7) windows long, centred:
    # every kept window also keeps 3 windows either side.
    reach = (VAD_MAX_SILENCE + 1) // 2
    # "full", then the centred n: numpy's "same" returns max(len) samples, too many for clips under 7 windows
    return np.convolve(mask.astype(float), np.ones(2 * reach + 1), mode="full")[reach:reach + n] > 0


def trim_long_silences(wav: np.ndarray) -> np.ndarray:
    """The clip without its long pauses (and without the last partial 30 ms window, as the wheel does)."""
    mask = speech_mask(wav)
    return wav[: len(mask) * VAD_WINDOW][np.repeat(mask, VAD_WINDOW)]


def preprocess(wav: np.ndarray) -> np.ndarray:
    """The wheel's `preprocess_wav` for a 16 kHz mono float clip: gain up to -30 dBFS, long pauses cut.

    A clip the VAD finds no speech in at all would come out empty; it is kept whole instead (the node has already
    decided it is speech, and an empty input has no features)."""
    wav = normalise_volume(np.asarray(wav, dtype=np.float32))
    trimmed = trim_long_silences(wav)
    return trimmed if trimmed.size >= MEL_CONFIG.hop_length else wav


def mel_frames(wav: np.ndarray) -> np.ndarray:
    """(frames, 40) float32 mel power frames of a preprocessed clip (the wheel's `wav_to_mel_spectrogram`)."""
    return np.ascontiguousarray(stft_mel_power(np.asarray(wav, dtype=np.float32), MEL_CONFIG).T, dtype=np.float32)


def encoder_input(wav: np.ndarray) -> np.ndarray:
    """Everything the robot does before the encoder graph: preprocess, then mel frames."""
    return mel_frames(preprocess(wav))


def partial_slices(n_samples: int, rate: float = 1.3, min_coverage: float = 0.75) -> list[slice]:
    """Frame windows of the wheel's `embed_utterance` (1.6 s windows, `rate` per second, the last one kept when it
    covers `min_coverage` of a window): only used to reproduce its speaker embedding."""
    hop = MEL_CONFIG.hop_length
    n_frames = int(np.ceil((n_samples + 1) / hop))
    step = int(np.round((SAMPLE_RATE / rate) / hop))
    slices = [slice(i, i + PARTIAL_FRAMES) for i in range(0, max(1, n_frames - PARTIAL_FRAMES + step + 1), step)]
    coverage = (n_samples - slices[-1].start * hop) / (PARTIAL_FRAMES * hop)
    if coverage < min_coverage and len(slices) > 1:
        slices = slices[:-1]
    return slices


def partial_frames(wav: np.ndarray) -> np.ndarray:
    """(partials, 160, 40) mel windows of a preprocessed clip, zero-padded as the wheel pads."""
    slices = partial_slices(len(wav))
    needed = slices[-1].stop * MEL_CONFIG.hop_length
    if needed >= len(wav):
        wav = np.pad(wav, (0, needed - len(wav)))
    frames = mel_frames(wav)
    return np.stack([frames[s] for s in slices])


def encoder_weights_path(check: bool = True) -> Path:
    """resemblyzer's pretrained.pt in the installed wheel (found without importing the package), hash-checked."""
    spec = importlib.util.find_spec(ENCODER_PACKAGE)
    if spec is None or spec.origin is None:
        raise EncoderWeightsError(f"the {ENCODER_PACKAGE} wheel is not installed: pip install --no-deps "
                                  f"{ENCODER_PACKAGE}=={ENCODER_VERSION} (it ships the encoder's weights)")
    path = Path(spec.origin).parent / "pretrained.pt"
    if not path.is_file():
        raise EncoderWeightsError(f"{path}: the encoder's weights are missing from the {ENCODER_PACKAGE} wheel")
    if check and sha256_of(path) != ENCODER_SHA256:
        raise EncoderWeightsError(f"{path}: sha256 differs from {ENCODER_PACKAGE} {ENCODER_VERSION}'s "
                                  f"pretrained.pt ({ENCODER_SHA256}); install that version")
    return path
