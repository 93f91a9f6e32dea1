"""The GE2E voice encoder's front end in numpy: what the robot computes before the encoder's ONNX graph.

The encoder's weights come from the `resemblyzer` wheel (a GE2E speaker encoder, Apache-2.0), and they only mean
something on input like the one they were trained on: the wheel's `preprocess_wav` (gain raised to -30 dBFS, pauses
longer than ~0.2 s cut with WebRTC VAD) and `wav_to_mel_spectrogram` (librosa mel, 25 ms / 10 ms, 40 bands, power,
no log). `preprocess` and `mel_frames` re-implement both without librosa or scipy (they would put numba and SciPy
on the robot); a test checks them against the wheel's own code on real clips.

The node does not wait for an utterance's end to start the encoder (inference/voice_stream.py), so what the model
reads is `StreamingFrontEnd`: the same steps made causal up to a 210 ms look-ahead. The gain is raised towards
-30 dBFS by the level heard so far in the utterance (up to 210 ms past the window it raises), not by the whole
utterance's; the pause trimming is the wheel's, decided as soon as its look-ahead has arrived; the STFT emits each
frame as soon as its samples are in. Models are trained on features computed by this same object over whole clips
(`encoder_input`), so live and offline features are equal. The weights' file is located in the installed wheel
without importing it (its package imports torch and librosa).
"""
from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import numpy as np

from ..files import sha256_of
from .dereverb import LateReverbSuppressor, OnlineWpe
from .features import FeatureConfig, centred, mel_power_of_spectra, spectra_of_windows, stft_mel_power

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
# Bump when this module changes what reaches the encoder: models record theirs, the node computes the one a model
# names and refuses a model naming one it cannot compute.
# 1: the wheel's whole-utterance preprocessing; 2: StreamingFrontEnd (gain and trimming with 210 ms look-ahead);
# 3: version 2's frames through a late-reverberation suppressor (inference/dereverb.py);
# 4: version 2 with the STFT frames through causal block-online WPE before the mel bands (inference/dereverb.py).
FRONTEND_VERSION = 2
COMPUTABLE_FRONTENDS = (2, 3, 4)  # what this code can still compute (1 only lives in old caches)
# The trimming's look-ahead in VAD windows: the smoothing reaches 4 windows ahead, the dilation 3 more.
LOOKAHEAD_WINDOWS = VAD_SMOOTHING // 2 + (VAD_MAX_SILENCE + 1) // 2
MAX_GAIN = 10.0 ** (40.0 / 20.0)  # +40 dB at most: the first windows (pre-roll silence) have almost no level


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


class StreamingFrontEnd:
    """One utterance's encoder input, computed as its audio arrives: `push(samples)` returns the mel frames that
    are final so far, `finish()` the rest. Fed whole or in any chunking, the frames are the same.

    Per 30 ms window: WebRTC VAD on the window raised by the gain that brings the utterance's RMS so far (this
    window included) up to -30 dBFS (never down, at most +40 dB); the wheel's smoothing and dilation, which need the
    flags of the next LOOKAHEAD_WINDOWS windows (zeros past the end, as the wheel pads). A window is decided when
    that look-ahead is in, and a kept one is raised by the gain of the utterance up to the end of its look-ahead:
    210 ms more of the utterance than the window itself (fewer at the end), which brings the speech onsets much
    closer to the wheel's whole-utterance gain (a gain up to the window alone cost 1.6 UA points, this one 0.6:
    bench/voice.py --parts frontend) at no extra delay. Kept windows go through a streaming STFT that reproduces
    `mel_frames`' centred, zero-padded framing. As in `preprocess`, an utterance the VAD keeps (almost) nothing of
    is kept whole, raised by its whole gain; the frames then all come from `finish()`."""

    def __init__(self, version: int = FRONTEND_VERSION) -> None:
        if version not in COMPUTABLE_FRONTENDS:
            raise ValueError(f"front end version {version} is not one this code computes {COMPUTABLE_FRONTENDS}")
        self._dereverb = LateReverbSuppressor() if version == 3 else None
        self._wpe = OnlineWpe() if version == 4 else None
        self._vad = _fresh_vad()
        self._pending = np.zeros(0, np.float32)  # raw samples short of a whole window
        self._energy = 0.0  # sum of squares of the windows so far (float64)
        self._count = 0
        self._flags: list[float] = []  # VAD flag per window, all of them (a byte per 30 ms)
        self._gains: list[np.float32] = []  # per window: the gain of the utterance up to and with it
        self._smoothed: list[bool] = []  # per window whose look-ahead is in: the wheel's smoothed flag
        self._decided = 0  # windows decided so far; _raw[_decided:] wait for their look-ahead
        self._raw: list[np.ndarray] = []  # every window (raw): the whole utterance, should nothing be kept
        self._stft = np.zeros(MEL_CONFIG.n_fft // 2, np.float32)  # from the next frame's first sample (zero pad)
        self.kept = 0  # samples that passed the trimming

    def push(self, samples: np.ndarray) -> np.ndarray:
        self._pending = np.concatenate([self._pending, np.asarray(samples, dtype=np.float32)])
        whole = self._pending.size // VAD_WINDOW * VAD_WINDOW
        for start in range(0, whole, VAD_WINDOW):
            self._add_window(self._pending[start:start + VAD_WINDOW])
        self._pending = self._pending[whole:]
        return self._out(self._release(final=False))

    def finish(self) -> np.ndarray:
        """The remaining frames (at least one). The last partial window is dropped, as the wheel drops it."""
        frames = self._release(final=True)
        if self.kept < MEL_CONFIG.hop_length:  # nothing (or under 10 ms) was speech to the VAD: keep it whole
            whole = np.concatenate(self._raw + [self._pending])
            whole = normalise_volume(whole) if whole.size else np.zeros(1, np.float32)
            return self._out(self._mel(centred(whole, MEL_CONFIG)))  # mel_frames, through this front end's WPE
        pad = np.zeros(MEL_CONFIG.n_fft // 2, np.float32)
        return self._out(np.concatenate([frames, self._frames(np.concatenate([self._stft, pad]), final=True)]))

    def finish_preview(self) -> np.ndarray:
        """What finish() would return now, leaving this front end as it was, so that more audio can still follow
        (an utterance's end prepared while the person pauses: voice_stream.VoiceStream.prepare_end). finish()
        rebinds the buffers it changes but appends to the smoothed flags and steps the dereverberation's state,
        so only those are copied: the windows so far (the whole utterance) are shared, not copied."""
        preview = copy.copy(self)
        preview._smoothed = list(self._smoothed)
        preview._dereverb, preview._wpe = copy.deepcopy(self._dereverb), copy.deepcopy(self._wpe)
        return preview.finish()

    def _out(self, frames: np.ndarray) -> np.ndarray:
        return frames if self._dereverb is None or not len(frames) else self._dereverb(frames)

    @staticmethod
    def _gain(energy: float, count: int) -> np.float32:
        """Raise-only gain to -30 dBFS for an RMS of sqrt(energy / count), at most MAX_GAIN."""
        rms = np.sqrt(energy / count) if count else 0.0
        return np.float32(np.clip(10.0 ** (TARGET_DBFS / 20.0) / rms, 1.0, MAX_GAIN) if rms > 0 else MAX_GAIN)

    def _add_window(self, window: np.ndarray) -> None:
        window = window.copy()
        self._energy += float(np.dot(window.astype(np.float64), window))
        self._count += window.size
        gain = self._gain(self._energy, self._count)
        self._gains.append(gain)  # window j's decision uses the gain of window j + LOOKAHEAD_WINDOWS
        gained = window * gain
        pcm = np.clip(np.round(gained * INT16_MAX), -INT16_MAX - 1, INT16_MAX).astype("<i2")
        self._flags.append(float(self._vad.is_speech(pcm.tobytes(), SAMPLE_RATE)))
        self._raw.append(window)

    def _smooth(self, final: bool) -> None:
        """The wheel's smoothed flag (at least 5 of the 8 windows around it: numpy rounds 4/8 to even, 0) of every
        window whose 4 windows ahead are in (all of them at the end: flags past it count as zeros)."""
        n = len(self._flags)
        before, after = (VAD_SMOOTHING - 1) // 2, VAD_SMOOTHING // 2
        while len(self._smoothed) < n and (final or len(self._smoothed) + after < n):
            j = len(self._smoothed)
            self._smoothed.append(bool(round(sum(self._flags[max(0, j - before):j + after + 1]) / VAD_SMOOTHING)))

    def _release(self, final: bool) -> np.ndarray:
        n = len(self._flags)
        self._smooth(final)
        ready = n if final else max(0, n - LOOKAHEAD_WINDOWS)
        reach = (VAD_MAX_SILENCE + 1) // 2
        kept = []
        while self._decided < ready:
            i = self._decided
            if any(self._smoothed[max(0, i - reach):i + reach + 1]):  # the wheel's dilation: 3 windows either side
                kept.append(self._raw[i] * self._gains[min(i + LOOKAHEAD_WINDOWS, n - 1)])
            self._decided += 1
        if not kept:
            return np.zeros((0, MEL_CONFIG.n_mels), np.float32)
        self.kept += sum(k.size for k in kept)
        self._stft = np.concatenate([self._stft] + kept)
        return self._frames(self._stft, final=False)

    def _frames(self, buffer: np.ndarray, final: bool) -> np.ndarray:
        """Mel frames of every whole n_fft window in `buffer` at hop steps; keeps the rest for the next call."""
        n_fft, hop = MEL_CONFIG.n_fft, MEL_CONFIG.hop_length
        count = 0 if buffer.size < n_fft else (buffer.size - n_fft) // hop + 1
        if not final:
            self._stft = buffer[count * hop:]
        if count == 0:
            return np.zeros((0, MEL_CONFIG.n_mels), np.float32)
        return self._mel(buffer[: (count - 1) * hop + n_fft])

    def _mel(self, buffer: np.ndarray) -> np.ndarray:
        """(frames, n_mels) mel power of every whole window of `buffer` at hop steps (no padding)."""
        spectra = spectra_of_windows(buffer, MEL_CONFIG)
        if self._wpe is not None:
            spectra = self._wpe(spectra)
        return np.ascontiguousarray(mel_power_of_spectra(spectra, MEL_CONFIG).T, dtype=np.float32)


def encoder_input(wav: np.ndarray, version: int = FRONTEND_VERSION) -> np.ndarray:
    """What the model reads for a whole clip: the StreamingFrontEnd fed in one go (training, offline tools)."""
    front = StreamingFrontEnd(version)
    frames = front.push(wav)
    return np.concatenate([frames, front.finish()])


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
