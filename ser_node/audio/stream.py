"""From audio messages to utterances: chunk decoding, validation, down-mixing, streaming resampling, segmentation.

Pure Python (no ROS): the live node and the offline bag evaluator run this same object, so their results agree.
Bad chunks raise ChunkError after being counted by reason; the stream goes on with the next good chunk.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import soxr

from .decode import MODEL_RATE
from .segmenter import Segmenter, Utterance

# PortAudio sample format codes used by the typed audio_common_msgs (4.x) AudioInfo.format.
PORTAUDIO_FORMATS: dict[int, tuple[str, float]] = {
    1: ("float32_data", 1.0),
    2: ("int32_data", 2.0**31),
    8: ("int16_data", 2.0**15),
    16: ("int8_data", 2.0**7),
    32: ("uint8_data", 2.0**7),  # offset binary: 128 is silence
}

# GStreamer-style sample formats of the raw-bytes audio_common_msgs (ROS distros, ROS4HRI).
RAW_FORMATS: dict[str, tuple[str, float, float]] = {  # numpy dtype, scale, offset
    "S16LE": ("<i2", 2.0**15, 0.0), "S16BE": (">i2", 2.0**15, 0.0),
    "S32LE": ("<i4", 2.0**31, 0.0), "S32BE": (">i4", 2.0**31, 0.0),
    "F32LE": ("<f4", 1.0, 0.0), "F32BE": (">f4", 1.0, 0.0),
    "F64LE": ("<f8", 1.0, 0.0), "F64BE": (">f8", 1.0, 0.0),
    "S8": ("i1", 2.0**7, 0.0), "U8": ("u1", 2.0**7, 128.0),
}

MIN_RATE, MAX_RATE = 4000, 192000
# Valid sample range. Integer formats are scaled into [-1, 1] and cannot leave it. Float audio is nominally
# [-1, 1]: overs up to FLOAT_REFUSE_ABOVE (a hot gain stage, resampler ringing) are clipped to full scale and
# counted (chunks_clipped); a chunk peaking above it is not normalised float audio at all (int16 values sent as
# float, garbage) and is refused as `out_of_range`, like any other bad chunk.
FLOAT_REFUSE_ABOVE = 1000.0
# Results are stamped with their utterance's source time as builtin_interfaces/Time (int32 seconds): audio stamped
# so late that an utterance could end past 2038-01-19 is refused (bad_time) rather than published wrapped.
LAST_STAMP_S = 2.0**31 - 1
MAX_UTTERANCE_SPAN_S = 120.0


class ChunkError(ValueError):
    """A chunk that cannot be used; `reason` is a short key for counting (diagnostics)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass
class AudioChunk:
    samples: np.ndarray  # (frames, channels) float32 in [-1, 1]
    rate: int
    time: float  # source time of the first frame, seconds

    @property
    def duration(self) -> float:
        return self.samples.shape[0] / self.rate


def _check_layout(size: int, channels: int, rate: int) -> None:
    if channels < 1:
        raise ChunkError("bad_channels", f"channel count {channels}")
    if not MIN_RATE <= rate <= MAX_RATE:
        raise ChunkError("bad_rate", f"sample rate {rate} Hz outside {MIN_RATE}..{MAX_RATE}")
    if size == 0:
        raise ChunkError("empty", "no samples")
    if size % channels:
        raise ChunkError("bad_length", f"{size} samples is not a multiple of {channels} channels")


def decode_typed(format_code: int, channels: int, rate: int, arrays: dict[str, object], time: float) -> AudioChunk:
    """Typed audio_common_msgs: the array named by the PortAudio format code, samples interleaved."""
    if format_code not in PORTAUDIO_FORMATS:
        raise ChunkError("unknown_format", f"PortAudio format code {format_code}")
    name, scale = PORTAUDIO_FORMATS[format_code]
    filled = sorted(n for n, a in arrays.items() if a is not None and len(a))  # type: ignore[arg-type]
    if filled and name not in filled:
        raise ChunkError("format_mismatch", f"format code {format_code} names {name}, but {filled} hold the samples")
    if len(filled) > 1:
        raise ChunkError("several_arrays", f"{filled} all hold samples: which one is the audio is ambiguous")
    raw = arrays.get(name)
    data = np.asarray(raw if raw is not None else [], dtype=np.float32)
    _check_layout(data.size, channels, rate)
    if name == "uint8_data":
        data = data - 128.0
    return AudioChunk((data / scale).reshape(-1, channels), rate, time)


def decode_raw(data: bytes | np.ndarray, sample_format: str, channels: int, rate: int, time: float) -> AudioChunk:
    """Raw-bytes audio_common_msgs: interleaved samples in a GStreamer format such as S16LE or F32LE."""
    key = sample_format.strip().upper()
    if key not in RAW_FORMATS:
        raise ChunkError("unknown_format", f"sample format {sample_format!r}; known: {sorted(RAW_FORMATS)}")
    dtype, scale, offset = RAW_FORMATS[key]
    buffer = np.frombuffer(bytes(data) if not isinstance(data, (bytes, bytearray)) else data, dtype=np.uint8)
    width = np.dtype(dtype).itemsize
    if buffer.size % width:
        raise ChunkError("bad_length", f"{buffer.size} bytes is not a whole number of {key} samples")
    samples = buffer.view(dtype).astype(np.float32)
    _check_layout(samples.size, channels, rate)
    return AudioChunk(((samples - offset) / scale).reshape(-1, channels), rate, time)


@dataclass
class StreamConfig:
    channel: int = -1  # -1: mean of all channels; otherwise the 0-based channel to keep
    max_chunk_s: float = 5.0  # larger chunks are absurd for a live stream and are refused
    gap_tolerance_s: float = 0.1  # header time jumps beyond this close the utterance in progress


@dataclass
class StreamStats:
    chunks: int = 0
    seconds: float = 0.0
    bad_chunks: Counter = field(default_factory=Counter)
    chunks_clipped: int = 0  # float chunks with samples beyond [-1, 1], clipped

    @property
    def dropped(self) -> int:
        return sum(self.bad_chunks.values())


class StreamProcessor:
    """Validates chunks, mixes to mono, resamples to 16 kHz (soxr, streaming) and feeds the segmenter."""

    def __init__(self, segmenter: Segmenter, config: StreamConfig | None = None) -> None:
        self.segmenter = segmenter
        self.config = config or StreamConfig()
        self.stats = StreamStats()
        self._resampler: soxr.ResampleStream | None = None
        self._rate: int | None = None
        self._channels: int | None = None
        self._expected_time: float | None = None  # source time the next chunk should start at
        self._out_time = 0.0  # source time of the next 16 kHz sample
        self._out_count = 0

    def feed(self, chunk: AudioChunk) -> list[Utterance]:
        try:
            mono = self._validate(chunk)
        except ChunkError as error:
            self.stats.bad_chunks[error.reason] += 1
            raise
        out: list[Utterance] = []
        channels = chunk.samples.shape[1]
        jumped = (self._expected_time is not None
                  and abs(chunk.time - self._expected_time) > self.config.gap_tolerance_s)
        if self._rate != chunk.rate or self._channels != channels or jumped:
            if self._rate is not None:
                out += self.segmenter.gap()
            self._start(chunk)
        self.stats.chunks += 1
        self.stats.seconds += chunk.duration
        self._expected_time = chunk.time + chunk.duration
        out += self._push(self._resample(mono, last=False))
        return out

    def feed_recording(self, samples: np.ndarray, rate: int = MODEL_RATE, chunk_s: float = 0.02,
                       t0: float = 0.0) -> list[Utterance]:
        """A whole recording (mono, or frames x channels) fed as a live stream of `chunk_s` messages from time `t0`,
        then flushed: the utterances the node would cut from it (offline tools, benchmarks, tests)."""
        frames = samples.reshape(samples.shape[0], -1)
        step = max(1, int(round(chunk_s * rate)))
        out: list[Utterance] = []
        for start in range(0, frames.shape[0], step):
            out += self.feed(AudioChunk(frames[start:start + step], rate, t0 + start / rate))
        return out + self.flush()

    def flush(self) -> list[Utterance]:
        """End of stream: drains the resampler and closes the utterance in progress."""
        out: list[Utterance] = []
        if self._resampler is not None:
            out += self._push(self._resample(np.zeros(0, np.float32), last=True))
        out += self.segmenter.close("flush")
        self._rate = None
        self._expected_time = None
        return out

    def _validate(self, chunk: AudioChunk) -> np.ndarray:
        samples = chunk.samples
        if samples.ndim != 2 or samples.shape[0] == 0:
            raise ChunkError("empty", "no samples")
        if chunk.duration > self.config.max_chunk_s:
            raise ChunkError("too_large", f"{chunk.duration:.1f} s chunk exceeds max_chunk_s={self.config.max_chunk_s}")
        peak = float(np.abs(samples).max())  # one pass: NaN and inf make the peak non-finite
        if not np.isfinite(peak):
            raise ChunkError("non_finite", "NaN or infinite samples")
        if not np.isfinite(chunk.time):
            raise ChunkError("bad_time", "non-finite timestamp")
        if not (0.0 <= chunk.time and chunk.time + chunk.duration + MAX_UTTERANCE_SPAN_S < LAST_STAMP_S):
            raise ChunkError("bad_time", f"stamp {chunk.time:.3f} s is outside what a published "
                                         "builtin_interfaces/Time (int32 seconds) can carry")
        if peak > FLOAT_REFUSE_ABOVE:
            raise ChunkError("out_of_range", f"sample peak {peak:.3g} is far outside float audio's [-1, 1]")
        if peak > 1.0:
            samples = np.clip(samples, -1.0, 1.0)
            self.stats.chunks_clipped += 1
        channel = self.config.channel
        if channel < 0:
            return samples.mean(axis=1, dtype=np.float32) if samples.shape[1] > 1 else samples[:, 0]
        if channel >= samples.shape[1]:
            raise ChunkError("bad_channels", f"channel {channel} requested, chunk has {samples.shape[1]}")
        return np.ascontiguousarray(samples[:, channel])

    def _start(self, chunk: AudioChunk) -> None:
        self._rate = chunk.rate
        self._channels = chunk.samples.shape[1]
        self._resampler = (None if chunk.rate == MODEL_RATE else
                           soxr.ResampleStream(chunk.rate, MODEL_RATE, 1, dtype="float32", quality="HQ"))
        self._out_time = chunk.time
        self._out_count = 0

    def _resample(self, mono: np.ndarray, last: bool) -> np.ndarray:
        if self._resampler is None:
            return mono.astype(np.float32, copy=False)
        return self._resampler.resample_chunk(mono.astype(np.float32, copy=False), last=last)

    def _push(self, samples: np.ndarray) -> list[Utterance]:
        if samples.size == 0:
            return []
        time = self._out_time + self._out_count / MODEL_RATE
        self._out_count += samples.size
        return self.segmenter.push(samples, time)
