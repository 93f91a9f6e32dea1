"""Dereverberation before the encoder: the room's tail taken out of what the encoder reads. Two ways, each a
front end a model may name: `LateReverbSuppressor` on mel power frames (front end 3) and `OnlineWpe` on the STFT
frames before the mel bands (front end 4).

In a reverberant room each sound keeps ringing after it stops; to the encoder a far, reverberant voice smears
every syllable into the next. The statistical model of Lebart et al. (2001) says the late reverberation at a
frame is the signal heard `delay` earlier, decayed as the room decays (60 dB per RT60), so it can be subtracted
from the power: what is left is kept, down to `floor` times the frame. It is causal (a frame needs only the
frames before it) and costs a subtraction per mel band, against WPE's per-frequency linear prediction (`OnlineWpe`
below: +3.2 ms of CPU per second of audio over front end 2; nara-wpe offline +13.8; bench/wpe_cost.py).

Measured (bench/voice.py --parts dereverb, models/MODEL_CARD.md "What we tried"): worse than front end 2 clean
and in the benchmark's room, so the shipped model does not use it; a recipe may (frontend_version: 3). WPE's
measurement is in `OnlineWpe`'s docstring.

The RT60 is assumed, not estimated: a blind estimate needs seconds of free decay, which the first utterances of
a voice do not have. Clean speech then loses some of its own decays too; models are trained on frames through
the same suppressor (every clean and degraded training clip), so what they learn is what the robot computes.
"""
from __future__ import annotations

import numpy as np

FRAME_S = 0.01  # the encoder's mel hop (10 ms)


class LateReverbSuppressor:
    """Streaming: call it on consecutive blocks of one utterance's frames; the output does not depend on how the
    frames are blocked. A new utterance takes a new suppressor."""

    def __init__(self, rt60_s: float = 0.5, delay_frames: int = 5, floor: float = 0.1) -> None:
        # power decays by 10^(-6 t / RT60): 60 dB per RT60
        self.scale = np.float32(10.0 ** (-6.0 * delay_frames * FRAME_S / rt60_s))
        self.delay = delay_frames
        self.floor = np.float32(floor)
        self._history: np.ndarray | None = None  # the last `delay` input frames

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        frames = np.asarray(frames, np.float32)
        if self._history is None:
            self._history = np.zeros((self.delay, frames.shape[1]), np.float32)
        stacked = np.concatenate([self._history, frames])
        late = self.scale * stacked[: len(frames)]
        self._history = stacked[len(frames):]
        return np.maximum(frames - late, self.floor * frames)


class OnlineWpe:
    """Weighted prediction error (WPE, Nakatani et al. 2010; Yoshioka & Nakatani 2012) on one utterance's STFT
    frames, causal and block-online: the late reverberation of each frequency bin is predicted from the bin's
    frames `delay` to `delay + taps - 1` hops earlier and subtracted. The prediction filter of frames in block b
    (`block` frames, counted from the utterance's first frame) is solved from the weighted correlations of every
    frame before block b, so a frame's output never depends on later frames nor on how the frames arrive. Until
    `warmup` frames are in, frames pass unchanged: a filter of `taps` coefficients solved from fewer frames
    overfits them and adds distortion (tried on simulated rooms other than the benchmark's: with a warm-up of 25
    frames and light loading the output was further from the early-reflection signal than the input was).

    Hand-written rather than nara-wpe (MIT): nara-wpe is offline (every frame's filter from the whole utterance,
    iterated), so the encoder could only start at the utterance's end, and it needs SciPy, which the robot does
    not install. Here the filter is solved twice a second and the correlations are accumulated once per frame:
    +3.2 ms of CPU per second of audio over front end 2, against +13.8 for nara-wpe (bench/wpe_cost.py,
    2026-12-06 02:51, one thread). One pass: each frame is weighted by the inverse of its own power (floored),
    WPE's first iteration, as online WPE does. With the filter from the whole utterance (not causal) it gives
    nara-wpe's first iteration (largest difference 0.2 % of the largest value on a real clip in a simulated room;
    checked by hand against nara-wpe 0.0.11, the power floors differ).

    Measured (bench/voice.py --parts wpe, 2026-12-06 02:48): under the shipped recipe it changes nothing in the
    benchmark's room (normalised UA +0.000, 5 of 12 speakers better) nor clean (+0.002); most utterances are
    over before the warm-up's second of statistics has made the filter useful. Not shipped (frontend_version: 4
    selects it). The defaults below are part of front end 4 (models and feature caches name only the version):
    other settings are another front end version."""

    def __init__(self, taps: int = 10, delay: int = 3, block: int = 50, floor: float = 1e-3,
                 loading: float = 0.03, warmup: int = 100) -> None:
        self.taps, self.delay, self.block, self.warmup = taps, delay, block, warmup
        self.floor = floor  # λ never below this share of the mean power heard so far (silence does not dominate)
        self.loading = loading  # diagonal loading of the correlation matrix, relative to its mean diagonal
        self._past: np.ndarray | None = None  # (delay + taps - 1, bins): the frames before the next one
        self._filter: np.ndarray | None = None  # (bins, taps) of the current block, None before the first solve
        self._corr: np.ndarray | None = None  # (bins, taps, taps) Σ x̃ x̃ᴴ / λ
        self._cross: np.ndarray | None = None  # (bins, taps) Σ x̃ x* / λ
        self._seen = 0  # frames so far
        self._power = 0.0  # Σ of every frame's mean power so far

    def __call__(self, spectra: np.ndarray) -> np.ndarray:
        """(frames, bins) complex STFT frames in, the same frames with their predicted late reverberation out."""
        spectra = np.asarray(spectra, np.complex64)
        if not len(spectra):
            return spectra
        if self._past is None:
            bins = spectra.shape[1]
            self._past = np.zeros((self.delay + self.taps - 1, bins), np.complex64)
            # statistics in double precision: blocks summed in any grouping (any chunking of the audio) agree
            self._corr = np.zeros((bins, self.taps, self.taps), np.complex128)
            self._cross = np.zeros((bins, self.taps), np.complex128)
        out, start = [], 0
        while start < len(spectra):  # one stretch per block: the filter is constant inside it
            stop = min(len(spectra), start + self.block - self._seen % self.block)
            out.append(self._stretch(spectra[start:stop]))
            start = stop
            if self._seen % self.block == 0 and self._seen >= self.warmup:
                self._solve()
        return np.concatenate(out)

    def _stretch(self, frames: np.ndarray) -> np.ndarray:
        stacked = np.concatenate([self._past, frames])
        n, reach = len(frames), self.delay + self.taps - 1
        # x̃_t = [x_{t-delay}, ..., x_{t-delay-taps+1}] per frame and bin: (bins, frames, taps)
        windows = np.lib.stride_tricks.sliding_window_view(stacked[: n + self.taps - 1], self.taps, axis=0)
        delayed = np.ascontiguousarray(windows[:, :, ::-1].transpose(1, 0, 2))
        result = frames if self._filter is None else \
            frames - (delayed @ self._filter.conj()[:, :, None])[:, :, 0].T
        power = (frames.real**2 + frames.imag**2).astype(np.float64)
        # the mean power of every frame so far, this one included (not the later ones of this call)
        heard = self._power + np.cumsum(power.mean(axis=1))
        mean = heard / (self._seen + np.arange(1, n + 1))
        self._power = float(heard[-1])
        self._seen += n
        power = np.maximum(power, self.floor * mean[:, None]).T  # (bins, frames)
        # digital silence (all zeros so far, e.g. a padded clip's start) carries no statistics: weight 0, not 1/0
        weight = np.divide(1.0, power, out=np.zeros_like(power), where=power > 0)
        weighted = delayed * weight.astype(np.float32)[:, :, None]
        self._corr += weighted.transpose(0, 2, 1) @ delayed.conj()
        self._cross += (weighted.transpose(0, 2, 1) @ frames.T.conj()[:, :, None])[:, :, 0]
        self._past = stacked[-reach:] if reach else stacked[:0]
        return result

    def _solve(self) -> None:
        load = self.loading * np.trace(self._corr, axis1=1, axis2=2).real / self.taps + 1e-12
        corr = self._corr + load[:, None, None] * np.eye(self.taps, dtype=np.complex64)
        # the normal equations of min Σ |x_t - gᴴ x̃_t|² / λ_t: R g = r
        self._filter = np.linalg.solve(corr, self._cross[:, :, None])[:, :, 0].astype(np.complex64)
