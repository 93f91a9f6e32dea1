"""Audio decoding, channel mixing and resampling to the 16 kHz mono float32 the models expect.

Files are decoded with soundfile (libsndfile: WAV, FLAC, OGG, ...); resampling uses soxr (the SoX resampler,
high quality and fast, with a streaming mode for the live node).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile
import soxr

MODEL_RATE = 16000


class AudioError(ValueError):
    """Audio that cannot be used, with the reason (and the file, where there is one)."""


def to_mono(frames: np.ndarray, channel: int | None = None) -> np.ndarray:
    """(samples, channels) -> (samples,): the mean of all channels, or one channel (0-based) when given."""
    if frames.ndim == 1:
        return frames
    if frames.ndim != 2:
        raise AudioError(f"expected (samples, channels) audio, got shape {frames.shape}")
    if channel is None:
        return frames.mean(axis=1, dtype=np.float32) if frames.shape[1] > 1 else frames[:, 0]
    if not 0 <= channel < frames.shape[1]:
        raise AudioError(f"channel {channel} requested but the audio has {frames.shape[1]} channel(s)")
    return frames[:, channel]


def resample(audio: np.ndarray, rate: int, target_rate: int = MODEL_RATE) -> np.ndarray:
    """One-shot high-quality resampling of a mono float32 signal."""
    audio = np.asarray(audio, dtype=np.float32)
    if rate == target_rate or audio.size == 0:
        return audio
    return soxr.resample(audio, rate, target_rate, quality="HQ").astype(np.float32, copy=False)


def check_finite(audio: np.ndarray, what: str = "audio") -> None:
    if not np.isfinite(audio).all():
        raise AudioError(f"{what} contains NaN or infinite samples")


def load_audio(path: str | Path, target_rate: int = MODEL_RATE, channel: int | None = None) -> np.ndarray:
    """Decodes a file to mono float32 at target_rate. Raises AudioError naming the file when it is unusable."""
    path = Path(path)
    try:
        frames, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError, OSError) as error:
        raise AudioError(f"{path}: cannot decode audio ({error})") from error
    if frames.shape[0] == 0:
        raise AudioError(f"{path}: the file holds no samples")
    try:
        mono = to_mono(frames, channel)
        check_finite(mono)
    except AudioError as error:
        raise AudioError(f"{path}: {error}") from error
    return resample(mono, rate, target_rate)
