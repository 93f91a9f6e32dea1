"""Cuts a 16 kHz mono stream into utterances from per-frame speech probabilities.

State machine with hysteresis: speech starts when a frame's probability reaches `threshold`, and ends after
`min_silence_s` of frames below `negative_threshold` (`short_silence_s` while it holds under `short_speech_s` of
speech: a sentence's first words are often followed by a pause, not its end). Utterances get `pre_roll_s` of
audio before the first speech frame and `post_roll_s` after the last; shorter than `min_speech_s` of speech is
discarded (counted); longer than `max_utterance_s` is cut into consecutive utterances, so no audio of a monologue
is lost. Times are source times
(seconds, from the audio message headers), never arrival times.

Each utterance carries a quality estimate: its SNR against the noise floor (the median power of the recent frames
the VAD called non-speech; it outlives gaps, since it belongs to the room, not the stream) and the share of its
samples at full scale. With `min_snr_db`, utterances not that far above the floor are dropped (counted): a robot's
steady fan noise that fooled the VAD sits near 0 dB. See bench/robustness.py for what each threshold costs.

With `foreground_db` (the background gate), a frame counts as speech only if its level (~100 ms smoothed) is that
far above the stream's background level: a low percentile of the levels of the last ~20 s, speech or not. A
television or a crowd talks all the time, so the VAD hears speech everywhere and a person's utterances would merge
with it into long utterances that are mostly not theirs; their level, though, becomes the background, and a person
near the robot stands out of it. In a quiet room the background is the room's noise, and the gate changes nothing.
Frames the gate takes from the VAD are counted (`background_frames`); bench/scenes.py measures what it costs.

A `listener` hears the utterance in progress while it is spoken, so work can start before its end (the voice
encoder, inference/voice_stream.py): `begin()`, then `audio(samples)` with every sample that is sure to belong to
the utterance (all of it except trailing silence that may still be cut), then `end(utterance)` with the utterance
as emitted (the same samples, in order) or `end(None)` when it was dropped. A listener with a `block_samples`
attribute gets the audio in pieces of at least that many samples, except the last and those before a `may_end()`.
A listener with a `may_end()` method hears it during a pause, PREPARE_LEAD_S before the silence would end the
utterance (and never before `post_roll_s`): it then holds all the audio the utterance will have if the pause turns
out to be its end, and can prepare that end while the VAD waits for the rest of the silence.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np

SAMPLE_RATE = 16000
NOISE_FLOOR_S = 10.0
MIN_FLOOR_FRAMES = 15  # ~0.5 s of non-speech before an SNR is estimated
BACKGROUND_S = 20.0  # the background gate's memory of the stream's levels
BACKGROUND_PERCENTILE = 10.0
MIN_BACKGROUND_S = 2.0  # no gating before this much of the stream was heard
LEVEL_FRAMES = 3  # ~100 ms of frames smooth a frame's level
# A listener's may_end() comes this long before the VAD would decide (never before the post-roll): the voice
# encoder prepares the end in ~3 ms. Later in a pause, fewer preparations are thrown away because speech resumed:
# 0.04 per uem-es utterance at 0.2 s against 0.11 at the post-roll (bench/pauses.py, 2026-12-07); in the node, CPU per
# second of speech x1.059 of model v0.6's against x1.077 at the post-roll (bench/performance.py --voice).
PREPARE_LEAD_S = 0.2


class FrameVad(Protocol):
    frame_samples: int

    def __call__(self, frame: np.ndarray) -> float: ...

    def reset(self) -> None: ...


class UtteranceListener(Protocol):
    def begin(self) -> None: ...

    def audio(self, samples: np.ndarray) -> None: ...

    def end(self, utterance: "Utterance | None") -> None: ...


@dataclass
class SegmenterConfig:
    threshold: float = 0.5
    negative_threshold: float = 0.35  # hysteresis: speech continues until probability drops below this
    min_speech_s: float = 0.25
    min_silence_s: float = 0.5  # bench/robustness.py --parts pauses: 5.1 % of clips cut in two at 0.3 s, 2.0 % at 0.5
    # An utterance with less than short_speech_s of speech so far ends only after short_silence_s: the pause that
    # cuts a sentence in two mostly follows its first words, and a pause after so little is rarely its end.
    # bench/robustness.py --parts pauses: 1.1 % of clips cut in two instead of 2.0 %, the same mean wait after the
    # speech (0.52 s) and no more merges of two sentences 0.6 s apart; longer settings merge them. 0 turns it off.
    short_speech_s: float = 1.0
    short_silence_s: float = 0.7  # never less than min_silence_s
    pre_roll_s: float = 0.2
    post_roll_s: float = 0.15
    max_utterance_s: float = 10.0
    min_snr_db: float | None = None  # drop utterances whose SNR estimate is below this (None = keep all)
    foreground_db: float | None = None  # speech only this far above the stream's background level (None = off)

    def validate(self) -> None:
        if not 0 < self.negative_threshold <= self.threshold < 1:
            raise ValueError("need 0 < negative_threshold <= threshold < 1")
        if min(self.min_speech_s, self.min_silence_s, self.pre_roll_s, self.post_roll_s, self.short_speech_s,
               self.short_silence_s) < 0:
            raise ValueError("durations must not be negative")
        if self.max_utterance_s <= self.min_speech_s:
            raise ValueError("max_utterance_s must exceed min_speech_s")
        if self.foreground_db is not None and not 0 < self.foreground_db <= 40:
            raise ValueError("foreground_db must lie in (0, 40] dB (or be None: off)")


@dataclass
class Utterance:
    audio: np.ndarray  # 16 kHz mono float32
    start: float  # source time of the first sample, seconds
    end: float  # source time just after the last sample
    reason: str  # silence | max_length | gap | flush
    snr_db: float | None = None  # voiced power over the noise floor; None until a floor is known
    clipped_ratio: float = 0.0  # share of samples at full scale (|x| >= 0.999)
    encoded: Any = None  # what the segmenter's listener computed while the utterance was spoken

    @property
    def duration(self) -> float:
        return self.audio.size / SAMPLE_RATE


@dataclass
class SegmenterStats:
    utterances: int = 0
    too_short: int = 0
    cut_at_max_length: int = 0
    gaps: int = 0
    low_snr: int = 0  # dropped by min_snr_db
    background_frames: int = 0  # frames the VAD called speech that the background gate took for background


class Segmenter:
    """Feed audio with `push(samples, start_time)`; completed utterances come back from each call."""

    def __init__(self, vad: FrameVad, config: SegmenterConfig | None = None,
                 on_speaking: Callable[[bool, float], None] | None = None,
                 listener: UtteranceListener | None = None,
                 on_dropped: Callable[[Utterance, str], None] | None = None) -> None:
        self.vad = vad
        self.on_dropped = on_dropped  # (utterance, reason): what a gate dropped, for whoever reports it
        self.listener = listener
        self.config = config or SegmenterConfig()
        self.config.validate()
        self.on_speaking = on_speaking
        self.stats = SegmenterStats()
        self.frame = vad.frame_samples
        # ~10 s of non-speech frame powers: the noise floor estimate.
        self._floor: deque[float] = deque(maxlen=int(NOISE_FLOOR_S * SAMPLE_RATE / self.frame))
        # the stream's recent frame levels (dB, smoothed), for the background gate
        self._levels: deque[float] = deque(maxlen=int(BACKGROUND_S * SAMPLE_RATE / self.frame))
        self._recent_power: deque[float] = deque(maxlen=LEVEL_FRAMES)
        self._background: float | None = None
        self._level_count = 0  # frames heard, for refreshing the background every few frames
        self.last_quality: tuple[float | None, float] | None = None  # (SNR dB, clipped share), last utterance
        self._speaking = False
        self.reset()

    # -- state
    def reset(self) -> None:
        """Forgets everything in flight (used after a gap or a format change)."""
        if self._speaking and self.listener is not None:
            self.listener.end(None)
        self.vad.reset()
        self._pending = np.zeros(0, dtype=np.float32)
        self._pending_time: float | None = None  # source time of _pending[0]
        pre_frames = int(np.ceil(self.config.pre_roll_s * SAMPLE_RATE / self.frame))
        self._history: deque[np.ndarray] = deque(maxlen=pre_frames)  # maxlen 0 keeps nothing
        self._speech: list[np.ndarray] = []
        self._speech_samples = 0  # sum of the sizes in _speech
        self._released = 0  # samples of _speech handed to the listener
        self._speech_start = 0.0
        self._voiced_samples = 0  # samples of frames at or above the negative threshold in this utterance
        self._voiced_energy = 0.0  # their summed squares
        self._silence_samples = 0  # trailing samples below the negative threshold
        self._speaking = False
        self._continuation = False  # the turn was already cut at max length: its tail is never "too short"

    @property
    def speaking(self) -> bool:
        return self._speaking

    def noise_floor(self) -> float | None:
        """Median power of the recent non-speech frames (None before ~0.5 s of them was heard)."""
        return float(np.median(self._floor)) if len(self._floor) >= MIN_FLOOR_FRAMES else None

    def background_level(self) -> float | None:
        """The stream's background level in dB (a low percentile of the recent frame levels; None too early)."""
        return self._background

    def _foreground(self, power: float) -> bool:
        """Tracks the stream's levels; whether this frame stands out of the background by foreground_db."""
        self._recent_power.append(power)
        level = 10 * math.log10(sum(self._recent_power) / len(self._recent_power) + 1e-12)
        self._levels.append(level)
        self._level_count += 1
        if self._level_count % 16 == 0 or self._background is None:  # a percentile every ~0.5 s is enough
            if len(self._levels) >= MIN_BACKGROUND_S * SAMPLE_RATE / self.frame:
                self._background = float(np.percentile(self._levels, BACKGROUND_PERCENTILE))
        margin = self.config.foreground_db
        return margin is None or self._background is None or level >= self._background + margin

    # -- input
    def push(self, samples: np.ndarray, start_time: float) -> list[Utterance]:
        if self._pending_time is None or self._pending.size == 0:
            self._pending_time = start_time - self._pending.size / SAMPLE_RATE
        self._pending = np.concatenate([self._pending, samples.astype(np.float32, copy=False)])
        out: list[Utterance] = []
        usable = (self._pending.size // self.frame) * self.frame
        for offset in range(0, usable, self.frame):
            frame = self._pending[offset : offset + self.frame]
            frame_time = self._pending_time + offset / SAMPLE_RATE
            utterance = self._step(frame, frame_time, self.vad(frame))
            if utterance is not None:
                out.append(utterance)
        self._pending = self._pending[usable:].copy()
        self._pending_time += usable / SAMPLE_RATE
        return out

    def close(self, reason: str = "flush") -> list[Utterance]:
        """Ends the stream (or a stretch before a gap): emits the utterance in progress if long enough."""
        out = []
        if self._speaking:
            utterance = self._finish(reason, keep_trailing=True)
            if utterance is not None:
                out.append(utterance)
        self.reset()
        return out

    def gap(self) -> list[Utterance]:
        """A discontinuity (dropped chunks, time jump, format change): close cleanly and start afresh."""
        self.stats.gaps += 1
        return self.close("gap")

    # -- machine
    def _step(self, frame: np.ndarray, time: float, probability: float) -> Utterance | None:
        cfg = self.config
        power = float(np.dot(frame, frame)) / frame.size
        if not self._foreground(power) and probability >= cfg.negative_threshold:
            self.stats.background_frames += 1
            probability = 0.0
        if probability < cfg.negative_threshold:
            self._floor.append(power)
        if not self._speaking:
            if probability >= cfg.threshold:
                self._speaking = True
                self._continuation = False
                self._speech = list(self._history)
                self._speech_samples = sum(f.size for f in self._speech)
                self._speech_start = time - self._speech_samples / SAMPLE_RATE
                self._voiced_samples = 0
                self._voiced_energy = 0.0
                self._silence_samples = 0
                self._begin()
                self._append(frame)
                self._voiced_samples += frame.size
                self._voiced_energy += power * frame.size
                self._history.clear()
                self._notify(True, self._speech_start)
                self._release(self._speech_samples, force=False)
            else:
                self._history.append(frame.copy())
            return None

        self._append(frame)
        if probability >= cfg.negative_threshold:
            self._voiced_samples += frame.size
            self._voiced_energy += power * frame.size
            self._silence_samples = 0
        else:
            self._silence_samples += frame.size
        if self._silence_samples >= self._silence_needed() * SAMPLE_RATE:
            return self._finish("silence", keep_trailing=False)
        if self._speech_samples >= cfg.max_utterance_s * SAMPLE_RATE:
            return self._cut_at_max_length()
        # Trailing silence beyond the post-roll may still be cut off: it waits until speech resumes.
        post_roll = int(cfg.post_roll_s * SAMPLE_RATE)
        # The frame at which the listener may prepare the end: the pause is past the post-roll (the utterance would
        # end with what is out) and PREPARE_LEAD_S short of the end. Not earlier: most shorter pauses are between
        # words, and each costs the listener's preparation when speech resumes.
        prepare_at = max(post_roll, int((self._silence_needed() - PREPARE_LEAD_S) * SAMPLE_RATE), 1)
        pause_reached = (hasattr(self.listener, "may_end")
                         and self._silence_samples - frame.size < prepare_at <= self._silence_samples)
        self._release(self._speech_samples - max(0, self._silence_samples - post_roll), force=pause_reached)
        if pause_reached:
            self.listener.may_end()
        return None

    def _silence_needed(self) -> float:
        """Seconds of silence that end the utterance in progress (longer while it holds little speech)."""
        cfg = self.config
        if self._voiced_samples < cfg.short_speech_s * SAMPLE_RATE and not self._continuation:
            return max(cfg.short_silence_s, cfg.min_silence_s)  # never shorter: min_silence_s raised raises both
        return cfg.min_silence_s

    def _append(self, frame: np.ndarray) -> None:
        self._speech.append(frame.copy())
        self._speech_samples += frame.size

    def _begin(self) -> None:
        self._released = 0
        if self.listener is not None:
            self.listener.begin()

    def _release(self, upto: int, force: bool = True) -> None:
        """Hands the listener samples [_released, upto) of the utterance in progress (a few frames at the end);
        unless `force`d, only once they amount to the listener's `block_samples` (fewer calls, same samples)."""
        if self.listener is None or upto <= self._released:
            return
        if not force and upto - self._released < getattr(self.listener, "block_samples", 0):
            return
        pieces, end = [], self._speech_samples
        for frame in reversed(self._speech):
            if end <= self._released:
                break
            start = end - frame.size
            low, high = max(start, self._released) - start, min(end, upto) - start
            if high > low:
                pieces.append(frame[low:high])
            end = start
        self._released = upto
        self.listener.audio(np.concatenate(pieces[::-1]))

    def _end(self, utterance: Utterance | None) -> Utterance | None:
        if self.listener is not None:
            self.listener.end(utterance)
        return utterance

    def _cut_at_max_length(self) -> Utterance | None:
        """Emits what was heard so far and goes on listening in the same speech turn."""
        audio = np.concatenate(self._speech)
        start = self._speech_start
        self._release(self._speech_samples)
        utterance = self._end(self._judge(Utterance(audio, start, start + audio.size / SAMPLE_RATE, "max_length")))
        self._speech = []
        self._speech_samples = 0
        self._begin()
        self._speech_start = start + audio.size / SAMPLE_RATE
        self._voiced_samples = 0
        self._voiced_energy = 0.0
        self._silence_samples = 0
        self._continuation = True
        if utterance is not None:
            self.stats.cut_at_max_length += 1
        return utterance

    def _finish(self, reason: str, keep_trailing: bool) -> Utterance | None:
        audio = np.concatenate(self._speech) if self._speech else np.zeros(0, np.float32)
        if not keep_trailing:
            post = int(self.config.post_roll_s * SAMPLE_RATE)
            drop = max(0, self._silence_samples - post)
            audio = audio[: audio.size - drop]
        start = self._speech_start
        end = start + audio.size / SAMPLE_RATE
        self._release(audio.size)
        self._speaking = False
        self._speech = []
        self._speech_samples = 0
        self._history.clear()
        self._notify(False, end)
        continuation, self._continuation = self._continuation, False
        too_short = self._voiced_samples < self.config.min_speech_s * SAMPLE_RATE
        if audio.size == 0 or (too_short and not (continuation and self._voiced_samples > 0)):
            self.stats.too_short += 1
            return self._end(None)
        return self._end(self._judge(Utterance(audio, start, end, reason)))

    def _judge(self, utterance: Utterance) -> Utterance | None:
        """Attaches the quality estimate; drops (and counts) an utterance below min_snr_db."""
        floor = self.noise_floor()
        if floor is not None and self._voiced_samples:
            voiced = self._voiced_energy / self._voiced_samples
            utterance.snr_db = float(10 * np.log10(max(voiced - floor, 1e-12) / max(floor, 1e-12)))
        utterance.clipped_ratio = float(np.mean(np.abs(utterance.audio) >= 0.999))
        self.last_quality = (utterance.snr_db, utterance.clipped_ratio)  # gated or not: for tuning the gate
        minimum = self.config.min_snr_db
        if minimum is not None and utterance.snr_db is not None and utterance.snr_db < minimum:
            self.stats.low_snr += 1
            if self.on_dropped is not None:
                self.on_dropped(utterance, "low_snr")
            return None
        self.stats.utterances += 1
        return utterance

    def _notify(self, speaking: bool, time: float) -> None:
        if self.on_speaking is not None:
            self.on_speaking(speaking, time)

