"""DeepSpectrum features: waveform -> mel power spectrogram -> dB -> [0,1] -> viridis RGB image -> tensor.

The same code runs in training (to build the cached images) and on the robot (numpy only), and the settings
travel inside every exported model, so training and inference cannot diverge.

Why hand-written instead of librosa: librosa pulls numba/llvmlite (hundreds of MB, ~18 s first-call JIT) onto
the robot. The STFT and Slaney mel filterbank below are a few lines of numpy and match librosa to ~1e-6
(checked in test_features.py). The colour map is a 256-entry lookup table saved from matplotlib, so no figure is
ever rendered (a lookup is orders of magnitude faster than drawing).
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from importlib import resources
from typing import Any, Sequence

import numpy as np

from ..settings import check_known_fields

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class FeatureConfig:
    """Settings of the feature pipeline. Defaults follow DeepSpectrum (mel, viridis, 224x224, ImageNet norm)."""

    sample_rate: int = 16000
    n_fft: int = 512
    hop_length: int = 256  # n_fft / 2
    n_mels: int = 128
    fmin: float = 0.0
    fmax: float = 8000.0
    top_db: float = 80.0  # dynamic range kept below the maximum (librosa.power_to_db default)
    image_height: int = 224
    image_width: int = 224
    colormap: str = "viridis"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.sample_rate <= 0 or self.n_fft <= 0 or self.hop_length <= 0 or self.n_mels <= 0:
            raise ValueError(f"feature sizes must be positive: {self}")
        if not 0 <= self.fmin < self.fmax <= self.sample_rate / 2:
            raise ValueError(f"need 0 <= fmin < fmax <= sample_rate/2, got fmin={self.fmin} fmax={self.fmax}")
        if self.image_height < 8 or self.image_width < 8:
            raise ValueError(f"image must be at least 8x8, got {self.image_height}x{self.image_width}")
        if self.colormap != "viridis":
            raise ValueError(f"only the viridis colour map is bundled, got {self.colormap!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "FeatureConfig":
        check_known_fields(cls, values, "feature settings")
        values = dict(values)
        for key in ("mean", "std"):
            if key in values:
                values[key] = tuple(float(v) for v in values[key])
        return cls(**values)


def hz_to_mel(freq: np.ndarray | float) -> np.ndarray:
    """Slaney mel scale (linear below 1 kHz, logarithmic above), as librosa with htk=False."""
    freq = np.asarray(freq, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz, logstep = 1000.0, np.log(6.4) / 27.0
    mels = freq / f_sp
    log_region = freq >= min_log_hz
    return np.where(log_region, min_log_hz / f_sp + np.log(np.maximum(freq, 1e-10) / min_log_hz) / logstep, mels)


def mel_to_hz(mels: np.ndarray) -> np.ndarray:
    mels = np.asarray(mels, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz, logstep = 1000.0, np.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    return np.where(mels >= min_log_mel, min_log_hz * np.exp(logstep * (mels - min_log_mel)), f_sp * mels)


@functools.lru_cache(maxsize=8)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """Slaney-normalised triangular mel filters, shape (n_mels, n_fft // 2 + 1), float32."""
    fft_freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    mel_points = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    widths = np.diff(mel_points)
    ramps = mel_points[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_points[2:] - mel_points[:-2]))[:, None]
    weights = weights.astype(np.float32)
    weights.setflags(write=False)
    return weights


@functools.lru_cache(maxsize=8)
def _hann(n_fft: int) -> np.ndarray:
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)  # periodic
    window.setflags(write=False)
    return window


def mel_power_spectrogram(audio: np.ndarray, config: FeatureConfig) -> np.ndarray:
    """Mel power spectrogram (n_mels, frames) of a mono float waveform; centred frames, zero padding."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"expected mono audio (1-D), got shape {audio.shape}")
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    if not np.isfinite(peak):  # callers refuse NaN/inf; the features must not turn NaN anyway
        audio = np.nan_to_num(audio, nan=0.0, posinf=0.0, neginf=0.0)
        peak = float(np.abs(audio).max())
    if peak > 1.0:  # the image is relative to its own maximum, so gain changes nothing; huge values would overflow
        audio = audio / np.float32(peak)
    return stft_mel_power(audio, config)


def stft_mel_power(audio: np.ndarray, config: FeatureConfig) -> np.ndarray:
    """The plain transform (librosa.feature.melspectrogram's defaults: centred frames, zero padding, periodic
    Hann, Slaney mel, power 2) with no clean-up of the input: the voice encoder's front end needs it unchanged."""
    return mel_power_of_windows(centred(audio, config), config)


def centred(audio: np.ndarray, config: FeatureConfig) -> np.ndarray:
    """`audio` zero-padded by half a window on each side (librosa's centred frames), and to one whole window at
    least: what `mel_power_of_windows` cuts for `stft_mel_power`."""
    pad = config.n_fft // 2
    padded = np.pad(audio, (pad, pad))
    if padded.size < config.n_fft:
        padded = np.pad(padded, (0, config.n_fft - padded.size))
    return padded


def mel_power_of_windows(buffer: np.ndarray, config: FeatureConfig) -> np.ndarray:
    """Mel power (n_mels, frames) of `buffer` cut into n_fft windows at hop steps, as it is (no padding): the
    transform of `stft_mel_power` once padded, and of the voice front end's streaming STFT block by block."""
    return mel_power_of_spectra(spectra_of_windows(buffer, config), config)


def spectra_of_windows(buffer: np.ndarray, config: FeatureConfig) -> np.ndarray:
    """(frames, n_fft // 2 + 1) complex STFT of `buffer` cut into n_fft windows at hop steps (periodic Hann)."""
    frames = np.lib.stride_tricks.sliding_window_view(buffer, config.n_fft)[:: config.hop_length]
    return np.fft.rfft(frames * _hann(config.n_fft), axis=1)


def mel_power_of_spectra(spectra: np.ndarray, config: FeatureConfig) -> np.ndarray:
    """Mel power (n_mels, frames) of (frames, bins) complex STFT frames."""
    power = (spectra.real**2 + spectra.imag**2).astype(np.float32)
    fb = mel_filterbank(config.sample_rate, config.n_fft, config.n_mels, config.fmin, config.fmax)
    return fb @ power.T


def power_to_unit(mel_power: np.ndarray, top_db: float) -> np.ndarray:
    """dB relative to the maximum, floored at -top_db, then min-max scaled to [0, 1]."""
    peak = float(mel_power.max()) if mel_power.size else 0.0
    if peak <= 0:
        return np.zeros_like(mel_power, dtype=np.float32)
    db = 10.0 * np.log10(np.maximum(mel_power, 1e-10) / peak)
    db = np.maximum(db, -top_db)
    low = float(db.min())
    if low >= 0:
        return np.zeros_like(db, dtype=np.float32)
    return ((db - low) / -low).astype(np.float32)


@functools.lru_cache(maxsize=512)
def _resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Linear interpolation matrix (n_out, n_in), half-pixel centres (like PIL / torch align_corners=False)."""
    centres = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    centres = np.clip(centres, 0, n_in - 1)
    left = np.floor(centres).astype(int)
    right = np.minimum(left + 1, n_in - 1)
    frac = centres - left
    matrix = np.zeros((n_out, n_in), dtype=np.float32)
    np.add.at(matrix, (np.arange(n_out), left), 1 - frac)
    np.add.at(matrix, (np.arange(n_out), right), frac)
    matrix.setflags(write=False)
    return matrix


@functools.lru_cache(maxsize=1)
def viridis_lut() -> np.ndarray:
    """matplotlib's viridis as a (256, 3) float32 table (saved once from matplotlib; see test_features)."""
    with resources.files("ser_node.data").joinpath("viridis.npy").open("rb") as handle:
        lut = np.load(handle)
    lut.setflags(write=False)
    return lut


class FeatureExtractor:
    """Turns 16 kHz mono waveforms into normalised (3, H, W) DeepSpectrum images."""

    def __init__(self, config: FeatureConfig | None = None) -> None:
        self.config = config or FeatureConfig()
        cfg = self.config
        lut = viridis_lut()
        # Fold ImageNet normalisation into the colour table: one gather gives the network's input.
        self._normalised_lut = ((lut - np.array(cfg.mean, np.float32)) / np.array(cfg.std, np.float32)).astype(
            np.float32
        )

    def unit_image(self, audio: np.ndarray) -> np.ndarray:
        """The [0,1] spectrogram image (H, W), low frequencies at the bottom, before colour mapping."""
        cfg = self.config
        unit = power_to_unit(mel_power_spectrogram(audio, cfg), cfg.top_db)[::-1]
        rows = _resize_matrix(unit.shape[0], cfg.image_height)
        cols = _resize_matrix(unit.shape[1], cfg.image_width)
        return np.clip(rows @ unit @ cols.T, 0.0, 1.0)

    def rgb_image(self, audio: np.ndarray) -> np.ndarray:
        """The viridis image (H, W, 3) in [0, 1], as DeepSpectrum would save it (for plots and inspection)."""
        return viridis_lut()[self._lut_index(self.unit_image(audio))]

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        """Network input (3, H, W), float32, normalised with the backbone's mean and std."""
        image = self._normalised_lut[self._lut_index(self.unit_image(audio))]
        return np.ascontiguousarray(image.transpose(2, 0, 1))

    def batch(self, waveforms: Sequence[np.ndarray]) -> np.ndarray:
        """Stack of network inputs (N, 3, H, W)."""
        cfg = self.config
        out = np.empty((len(waveforms), 3, cfg.image_height, cfg.image_width), dtype=np.float32)
        for i, audio in enumerate(waveforms):
            out[i] = self(audio)
        return out

    @staticmethod
    def _lut_index(unit: np.ndarray) -> np.ndarray:
        return np.rint(unit * 255.0).astype(np.intp)


__all__ = [
    "FeatureConfig",
    "FeatureExtractor",
    "mel_filterbank",
    "mel_power_spectrogram",
    "power_to_unit",
    "stft_mel_power",
    "viridis_lut",
]
