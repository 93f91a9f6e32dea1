"""What a robot's microphone hears: reverberant rooms, its own fan noise, babble, knocks and steps, gain and clipping,
cheap band-limited microphones. Core (no ROS): the robustness benchmark and training augmentation both use it, so
both see the same conditions.

Built on the field's libraries: pyroomacoustics simulates the rooms (image-source method, shoebox rooms), and
audiomentations supplies the SNR arithmetic, gain, clipping and the band-pass of a cheap microphone. Written here
is only what they lack: the robot's own noise, babble from other speakers' clips of the corpora, and non-speech
events. Everything is seeded: the same condition and seed give the same samples.

SNR is the ratio of whole-signal RMS values (as in audiomentations), so for sparse noise (events) 0 dB means very
loud events; for speech clips, which are mostly voiced, it is close to the active-speech SNR.
"""
from __future__ import annotations

import functools
import math
import zlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import signal

from ser_node.audio.decode import load_audio
from ser_node.train.corpora import Clip

RATE = 16000
NOISE_KINDS = ("robot", "babble", "events")


@dataclass(frozen=True)
class Condition:
    """One acoustic condition. Defaults are the clean, close-talk studio recording."""

    noise: str = "none"  # none | robot | babble | events
    snr_db: float = math.inf
    rt60_s: float = 0.0  # 0: no room (close-talk)
    distance_m: float = 1.0  # source to microphone, when there is a room
    gain_db: float = 0.0
    clipped_percent: float = 0.0  # share of samples beyond the clipping level (ADC overload)
    band_hz: tuple[float, float] | None = None  # a cheap microphone's pass band

    def __post_init__(self) -> None:
        if self.noise not in ("none",) + NOISE_KINDS:
            raise ValueError(f"unknown noise {self.noise!r}: choose none, {', '.join(NOISE_KINDS)}")
        if self.noise != "none" and not math.isfinite(self.snr_db):
            raise ValueError("a noise needs a finite snr_db")
        if self.rt60_s < 0 or self.distance_m <= 0 or not 0 <= self.clipped_percent < 50:
            raise ValueError("rt60_s >= 0, distance_m > 0 and 0 <= clipped_percent < 50 are required")

    @property
    def name(self) -> str:
        parts = [f"{self.noise} {self.snr_db:g} dB" if self.noise != "none" else "no noise"]
        if self.rt60_s > 0:
            parts.append(f"room RT60 {self.rt60_s:g} s at {self.distance_m:g} m")
        if self.gain_db:
            parts.append(f"gain {self.gain_db:+g} dB")
        if self.clipped_percent:
            parts.append(f"{self.clipped_percent:g}% clipped")
        if self.band_hz:
            parts.append(f"band {self.band_hz[0]:g}-{self.band_hz[1]:g} Hz")
        return ", ".join(parts)


def stable_seed(*parts: object) -> int:
    """A seed from any labels (clip path, condition name ...), the same in every process (unlike hash())."""
    return zlib.crc32("|".join(map(str, parts)).encode())


# ------------------------------------------------------------------ rooms


@dataclass(frozen=True)
class RoomResponse:
    rir: np.ndarray  # float32 impulse response, direct path first
    rt60_s: float  # measured on the impulse response (Schroeder, T30 extrapolated)
    room_m: tuple[float, float, float]
    distance_m: float


def _measure_rt60(rir: np.ndarray) -> float:
    import pyroomacoustics as pra

    return float(pra.experimental.measure_rt60(rir, fs=RATE, decay_db=30))


@functools.lru_cache(maxsize=64)
def room_response(rt60_s: float, distance_m: float, seed: int = 0) -> RoomResponse:
    """A shoebox room (size drawn by seed) with its reverberation time calibrated to `rt60_s`.

    Sabine's formula (pra.inverse_sabine) gives absorption for a target RT60, but the image-source tail of a
    shoebox decays more slowly than Sabine predicts (0.6 s asked -> ~0.8 s measured), so the target is corrected
    from the measured RT60 until it is within 5 %.
    """
    import pyroomacoustics as pra

    rng = np.random.default_rng(seed)
    dims = np.array([rng.uniform(6.5, 9.0), rng.uniform(5.0, 7.0), rng.uniform(2.6, 3.2)])
    source = np.array([rng.uniform(1.0, 2.0), rng.uniform(1.0, dims[1] - 1.0), rng.uniform(1.4, 1.8)])
    azimuth = rng.uniform(-0.6, 0.6)  # towards the far wall
    robot_height = rng.uniform(1.0, 1.3)
    horizontal = math.sqrt(max(distance_m ** 2 - (source[2] - robot_height) ** 2, 0.01))
    mic = source + np.array([horizontal * math.cos(azimuth), horizontal * math.sin(azimuth), 0.0])
    mic[2] = robot_height
    if not np.all((mic > 0.3) & (mic < dims - 0.3)):
        raise ValueError(f"distance {distance_m} m does not fit the simulated room {dims.round(1).tolist()}")
    target, best = rt60_s, None
    for _ in range(6):
        absorption, max_order = pra.inverse_sabine(target, dims.tolist())
        room = pra.ShoeBox(dims.tolist(), fs=RATE, materials=pra.Material(absorption), max_order=max_order)
        room.add_source(source.tolist())
        room.add_microphone(mic.tolist())
        room.compute_rir()
        rir = np.asarray(room.rir[0][0], dtype=np.float64)
        measured = _measure_rt60(rir)
        if best is None or abs(measured - rt60_s) < abs(best[1] - rt60_s):
            best = (rir, measured)
        if abs(measured - rt60_s) <= 0.05 * rt60_s:
            break
        target *= rt60_s / measured
    rir, measured = best
    start = max(int(np.argmax(np.abs(rir))) - 40, 0)  # drop the propagation delay: times stay comparable
    return RoomResponse(rir[start:].astype(np.float32), measured, tuple(float(d) for d in dims.round(2)), distance_m)


def reverberate(audio: np.ndarray, response: RoomResponse) -> np.ndarray:
    """The signal as heard at the microphone, same length and RMS as the input (gain is a separate knob)."""
    wet = signal.fftconvolve(audio, response.rir)[: audio.size]
    return _match_rms(wet, audio)


# ------------------------------------------------------------------ noises


def _rms(x: np.ndarray) -> float:
    from audiomentations.core.utils import calculate_rms

    return float(calculate_rms(x))


def _match_rms(x: np.ndarray, reference: np.ndarray) -> np.ndarray:
    level = _rms(x)
    return (x * (_rms(reference) / level if level > 0 else 0.0)).astype(np.float32)


def _unit_rms(x: np.ndarray) -> np.ndarray:
    level = _rms(x)
    return (x / level if level > 0 else x).astype(np.float32)


def coloured_noise(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Noise with power spectral density ~ 1/f^exponent (0 white, 1 pink, 2 brown), unit RMS."""
    spectrum = rng.standard_normal(n // 2 + 1) + 1j * rng.standard_normal(n // 2 + 1)
    frequency = np.fft.rfftfreq(n, 1 / RATE)
    frequency[0] = frequency[1]
    return _unit_rms(np.fft.irfft(spectrum / frequency ** (exponent / 2), n))


def robot_noise(n: int, seed: int) -> np.ndarray:
    """A robot's own noise: a cooling fan's hum (blade-pass tone with harmonics and slow speed wobble), motor
    whine, and broadband airflow (pink) with rumble (brown). Unit RMS."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / RATE
    f0 = rng.uniform(90, 160)
    wobble = 1 + 0.01 * np.sin(2 * np.pi * rng.uniform(0.1, 0.5) * t + rng.uniform(0, 2 * np.pi))
    phase = 2 * np.pi * f0 * np.cumsum(wobble) / RATE
    hum = sum(np.sin(k * phase + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 7))
    whine = 0.2 * np.sin(2 * np.pi * rng.uniform(900, 1800) * t)
    air = coloured_noise(n, 1.0, rng) + 0.5 * coloured_noise(n, 2.0, rng)
    return _unit_rms(0.6 * _unit_rms(hum) + 0.15 * whine + air)


def _impulse_event(kind: str, rng: np.random.Generator) -> np.ndarray:
    """One non-speech event from a filtered impulse: a door knock, a click or a footstep."""
    if kind == "knock":  # 2-3 raps of a damped wooden resonance
        f, decay = rng.uniform(150, 400), rng.uniform(0.02, 0.05)
        t = np.arange(int(0.12 * RATE)) / RATE
        rap = np.sin(2 * np.pi * f * t) * np.exp(-t / decay) + 0.3 * rng.standard_normal(t.size) * np.exp(-t / 0.005)
        gap = int(rng.uniform(0.15, 0.25) * RATE)
        out = np.zeros(gap * 3 + rap.size)
        for k in range(int(rng.integers(2, 4))):
            out[k * gap : k * gap + rap.size] += rap
        return out
    if kind == "click":  # a switch or a dropped object: a few ms of high-passed impulse
        b, a = signal.butter(2, 2000, "highpass", fs=RATE)
        burst = rng.standard_normal(int(0.004 * RATE)) * np.exp(-np.arange(int(0.004 * RATE)) / 20)
        return signal.lfilter(b, a, np.concatenate([burst, np.zeros(200)]))
    # steps: 3-6 low-passed thumps half a second apart
    b, a = signal.butter(2, 250, "lowpass", fs=RATE)
    thump = signal.lfilter(b, a, rng.standard_normal(int(0.08 * RATE)) * np.exp(-np.arange(int(0.08 * RATE)) / 300))
    gap = int(rng.uniform(0.45, 0.6) * RATE)
    count = int(rng.integers(3, 7))
    out = np.zeros(gap * count + thump.size)
    for k in range(count):
        out[k * gap : k * gap + thump.size] += thump * rng.uniform(0.7, 1.0)
    return out


def event_noise(n: int, seed: int, events_per_s: float = 0.3) -> np.ndarray:
    """Knocks, clicks and footsteps at random times over a faint room tone (-40 dB). Unit RMS."""
    rng = np.random.default_rng(seed)
    out = 0.01 * coloured_noise(n, 1.0, rng)
    count = max(1, rng.poisson(events_per_s * n / RATE))
    for _ in range(count):
        event = _unit_rms(_impulse_event(str(rng.choice(["knock", "click", "steps"])), rng))
        event = event * rng.uniform(0.3, 1.0) * (4.0 if event.size < 400 else 1.0)  # clicks are short but sharp
        at = int(rng.integers(0, max(n - 1, 1)))
        length = min(event.size, n - at)
        out[at : at + length] += event[:length]
    return _unit_rms(out)


def talker(clip: Clip) -> str:
    """A speaker's identity across corpora (speaker ids are unique only within a corpus; multi-corpus runs have
    namespaced them already)."""
    return clip.speaker if clip.speaker.startswith(f"{clip.corpus}/") else f"{clip.corpus}/{clip.speaker}"


class BabbleSource:
    """Several talkers at once, cut from corpus clips; the speakers to leave out (`talker` ids) are named per
    call, so the person under test is never in their own background."""

    def __init__(self, clips: Sequence[Clip], talkers: int = 4) -> None:
        if not clips:
            raise ValueError("babble needs a pool of speech clips")
        self.clips = list(clips)
        self.talkers = talkers

    def __call__(self, n: int, seed: int, exclude_speakers: Sequence[str] = ()) -> tuple[np.ndarray, set[str]]:
        """(unit-RMS babble, the talkers it contains)."""
        excluded = set(exclude_speakers)
        pool = [c for c in self.clips if talker(c) not in excluded]
        if not pool:
            raise ValueError("babble needs clips of at least one speaker besides those excluded")
        rng = np.random.default_rng(seed)
        mixture, used = np.zeros(n, dtype=np.float64), set()
        for _ in range(self.talkers):
            voice, filled, first = [], 0, True
            while filled < n:
                clip = pool[int(rng.integers(len(pool)))]
                used.add(talker(clip))
                audio = _unit_rms(_load_cached(str(clip.path)))
                if first:  # talkers start at different points of their speech
                    audio, first = audio[int(rng.integers(0, audio.size // 2)):], False
                voice.append(audio)
                filled += audio.size
            mixture += np.concatenate(voice)[:n]
        return _unit_rms(mixture), used


@functools.lru_cache(maxsize=4096)
def _load_cached(path: str) -> np.ndarray:
    return load_audio(path)


# ------------------------------------------------------------------ the chain


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float, speech_rms: float | None = None) -> np.ndarray:
    """speech + noise scaled so that RMS(speech) / RMS(noise) is `snr_db`; the noise is tiled or cut to fit.
    For a stream with pauses, pass the RMS of its speech parts as `speech_rms` (the pauses get noise too)."""
    from audiomentations.core.utils import calculate_desired_noise_rms

    if noise.size < speech.size:
        noise = np.tile(noise, int(np.ceil(speech.size / noise.size)))
    noise = noise[: speech.size]
    if _rms(noise) == 0:
        raise ValueError("the noise is silent: no SNR can be set")
    wanted = calculate_desired_noise_rms(_rms(speech) if speech_rms is None else speech_rms, snr_db)
    return (speech + noise * (wanted / _rms(noise))).astype(np.float32)


class AcousticSimulator:
    """Applies a `Condition` to 16 kHz mono audio: room, then noise at the SNR, then microphone (band, gain,
    clipping). The same (audio, condition, seed) always gives the same output."""

    def __init__(self, babble_clips: Sequence[Clip] = (), room_seed: int = 0) -> None:
        self.babble = BabbleSource(babble_clips) if babble_clips else None
        self.room_seed = room_seed
        self.last_babble_speakers: set[str] = set()

    def noise(self, kind: str, n: int, seed: int, exclude_speakers: Sequence[str] = ()) -> np.ndarray:
        if kind == "robot":
            return robot_noise(n, seed)
        if kind == "events":
            return event_noise(n, seed)
        if kind == "babble":
            if self.babble is None:
                raise ValueError("babble noise needs babble_clips (speech of other speakers)")
            noise, self.last_babble_speakers = self.babble(n, seed, exclude_speakers)
            return noise
        raise ValueError(f"unknown noise {kind!r}")

    def __call__(self, audio: np.ndarray, condition: Condition, seed: int = 0,
                 exclude_speakers: Sequence[str] = ()) -> np.ndarray:
        out = np.asarray(audio, dtype=np.float32)
        if condition.rt60_s > 0:
            out = reverberate(out, room_response(condition.rt60_s, condition.distance_m, self.room_seed))
        if condition.noise != "none":
            out = mix_at_snr(out, self.noise(condition.noise, out.size, seed, exclude_speakers), condition.snr_db)
        return microphone(out, condition)


def microphone(audio: np.ndarray, condition: Condition) -> np.ndarray:
    """Band-limiting, gain and clipping with audiomentations' transforms (fixed parameters: deterministic)."""
    from audiomentations import ClippingDistortion, Gain, HighPassFilter, LowPassFilter

    out = audio
    if condition.band_hz:
        low, high = condition.band_hz
        out = HighPassFilter(min_cutoff_freq=low, max_cutoff_freq=low, p=1.0)(out, RATE)
        out = LowPassFilter(min_cutoff_freq=high, max_cutoff_freq=high, p=1.0)(out, RATE)
    if condition.gain_db:
        out = Gain(min_gain_db=condition.gain_db, max_gain_db=condition.gain_db, p=1.0)(out, RATE)
    if condition.clipped_percent:
        percentile = int(round(condition.clipped_percent))
        out = ClippingDistortion(min_percentile_threshold=percentile, max_percentile_threshold=percentile,
                                 p=1.0)(out, RATE)
    return np.clip(out, -1.0, 1.0).astype(np.float32)  # what a 16-bit ADC can deliver


# ------------------------------------------------------------------ training augmentation


@dataclass(frozen=True)
class AugmentRanges:
    """What training augmentation draws from (TrainConfig.acoustic_augment* fields)."""

    probability: float = 0.0
    snr_db: tuple[float, float] = (0.0, 30.0)
    # Rooms are drawn from a small set: each impulse response costs up to seconds to simulate, so it is
    # computed once per (RT60, distance, room) and reused.
    rt60_s: tuple[float, ...] = (0.3, 0.6, 0.9)
    distance_m: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
    noises: tuple[str, ...] = NOISE_KINDS
    rooms: int = 2


def random_condition(ranges: AugmentRanges, rng: np.random.Generator) -> tuple[Condition, int]:
    """A condition drawn from the ranges, and the room seed to use (one of `ranges.rooms`)."""
    room = rng.random() < 0.5
    noise = str(rng.choice(list(ranges.noises))) if ranges.noises else "none"
    rt60 = float(rng.choice(ranges.rt60_s)) if room else 0.0
    distance = float(rng.choice(ranges.distance_m)) if room else 1.0
    return (Condition(noise=noise, snr_db=float(rng.uniform(*ranges.snr_db)) if noise != "none" else math.inf,
                      rt60_s=rt60, distance_m=distance, gain_db=float(rng.uniform(-6, 6))),
            int(rng.integers(ranges.rooms)))


class Augmenter:
    """Training-time acoustic augmentation: with probability `ranges.probability`, a random condition."""

    def __init__(self, ranges: AugmentRanges, babble_clips: Sequence[Clip]) -> None:
        if "babble" in ranges.noises and not babble_clips:
            ranges = AugmentRanges(**{**ranges.__dict__, "noises": tuple(n for n in ranges.noises if n != "babble")})
        self.ranges = ranges
        self.simulators: dict[int, AcousticSimulator] = {}
        self.babble_clips = babble_clips

    def __call__(self, audio: np.ndarray, clip: Clip, rng: np.random.Generator) -> np.ndarray:
        if rng.random() >= self.ranges.probability:
            return audio
        condition, room = random_condition(self.ranges, rng)
        simulator = self.simulators.setdefault(room, AcousticSimulator(self.babble_clips, room_seed=room))
        return simulator(audio, condition, seed=int(rng.integers(2**31)), exclude_speakers=[talker(clip)])
