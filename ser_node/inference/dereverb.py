"""Late-reverberation suppression on mel power frames: the room's tail taken out before the encoder reads them.

In a reverberant room each sound keeps ringing after it stops; to the encoder a far, reverberant voice smears
every syllable into the next. The statistical model of Lebart et al. (2001) says the late reverberation at a
frame is the signal heard `delay` earlier, decayed as the room decays (60 dB per RT60), so it can be subtracted
from the power: what is left is kept, down to `floor` times the frame. It is causal (a frame needs only the
frames before it) and costs a subtraction per mel band, against WPE's per-frequency linear prediction (nara-wpe:
21-25 ms of CPU per second of audio, bench/wpe_cost.py, over half again what the whole node spends).

Measured (bench/voice.py --parts dereverb, models/MODEL_CARD.md "What we tried"): worse than front end 2 clean
and in the benchmark's room, so the shipped model does not use it; a recipe may (frontend_version: 3).

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
