"""Audio message wire formats: the two audio_common_msgs generations, read and written without ROS.

Two generations of audio_common_msgs exist and only one is installed in a given workspace:
- typed (audio_common 4.x): AudioStamped{header, Audio{AudioData{float32_data, int32_data, ...}, AudioInfo}};
- raw bytes (ROS distros' audio_common_msgs, used by ROS4HRI / REP-155): AudioData{uint8[] data},
  AudioDataStamped{header, AudioData}, with the format on an AudioInfo topic (channels, sample_rate, sample_format).
The functions below read either from any object with those attributes (rclpy classes, or rosbags' classes
generated from the .msg text), so the node (ser_node.ros) and the offline bag tools share them, and both
conversions are tested against real message structures.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .stream import AudioChunk, decode_raw, decode_typed

TYPED, RAW = "typed", "raw"


def stamp_to_seconds(stamp: Any) -> float:
    return float(stamp.sec) + float(stamp.nanosec) * 1e-9


def seconds_to_stamp(seconds: float, stamp_class: Any) -> Any:
    sec = int(np.floor(seconds))
    nanosec = int(round((seconds - sec) * 1e9))
    if nanosec >= 1_000_000_000:
        sec, nanosec = sec + 1, nanosec - 1_000_000_000
    return stamp_class(sec=sec, nanosec=nanosec)


def typed_to_chunk(msg: Any, fallback_time: float) -> AudioChunk:
    """audio_common_msgs/AudioStamped (typed) -> AudioChunk. A zero header stamp uses fallback_time."""
    audio = msg.audio
    info = audio.info
    data = audio.audio_data
    arrays = {name: getattr(data, name) for name in
              ("float32_data", "int32_data", "int16_data", "int8_data", "uint8_data")}
    time = stamp_to_seconds(msg.header.stamp) or fallback_time
    return decode_typed(int(info.format), int(info.channels), int(info.rate), arrays, time)


@dataclass
class RawFormat:
    """Stream format of the raw-bytes variant, from its AudioInfo topic or from parameters."""

    channels: int = 1
    sample_rate: int = 16000
    sample_format: str = "S16LE"
    coding_format: str = "wave"

    @classmethod
    def from_info(cls, info: Any) -> "RawFormat":
        return cls(int(info.channels), int(info.sample_rate), str(info.sample_format) or "S16LE",
                   str(getattr(info, "coding_format", "wave")) or "wave")


def raw_to_chunk(msg: Any, fmt: RawFormat, fallback_time: float) -> AudioChunk:
    """audio_common_msgs/AudioDataStamped or AudioData (raw bytes) -> AudioChunk."""
    if fmt.coding_format.lower() not in ("wave", "raw", "pcm", ""):
        from .stream import ChunkError

        raise ChunkError("unknown_format", f"coding format {fmt.coding_format!r}: only uncompressed wave is read")
    header = getattr(msg, "header", None)
    data = msg.audio.data if hasattr(msg, "audio") else msg.data
    time = (stamp_to_seconds(header.stamp) if header is not None else 0.0) or fallback_time
    return decode_raw(np.asarray(data, dtype=np.uint8).tobytes(), fmt.sample_format, fmt.channels,
                      fmt.sample_rate, time)


def typed_audio_message(msg_class: Any, samples: np.ndarray, rate: int, start: float, frame_id: str,
                        header_class: Any, time_class: Any) -> Any:
    """Typed AudioStamped carrying mono float32 samples (for `~/utterance`)."""
    msg = msg_class()
    msg.header = header_class(stamp=seconds_to_stamp(start, time_class), frame_id=frame_id)
    msg.audio.info.format = 1
    msg.audio.info.channels = 1
    msg.audio.info.rate = rate
    msg.audio.info.chunk = int(samples.size)
    msg.audio.audio_data.float32_data = samples.astype(np.float32).tolist()
    return msg


# The raw-bytes generation's definitions (audio_common_msgs as released in the ROS 2 distros), for tools that
# must read or write it without it being installed (rosbags typestores in the bag tools and tests).
RAW_AUDIO_MSG_DEFINITIONS: dict[str, str] = {
    "audio_common_msgs/msg/AudioData": "uint8[] data\n",
    "audio_common_msgs/msg/AudioDataStamped": "std_msgs/Header header\naudio_common_msgs/AudioData audio\n",
    "audio_common_msgs/msg/AudioInfo": ("uint8 channels\nuint32 sample_rate\nstring sample_format\nuint32 bitrate\n"
                                        "string coding_format\n"),
}

# The typed generation (audio_common 4.x), as built from interfaces/audio_common_msgs (fields only).
TYPED_AUDIO_MSG_DEFINITIONS: dict[str, str] = {
    "audio_common_msgs/msg/AudioInfo": "int32 format\nint32 channels\nint32 rate\nint32 chunk\n",
    "audio_common_msgs/msg/AudioData": ("float32[] float32_data\nint32[] int32_data\nint16[] int16_data\n"
                                        "int8[] int8_data\nuint8[] uint8_data\n"),
    "audio_common_msgs/msg/Audio": "audio_common_msgs/AudioData audio_data\naudio_common_msgs/AudioInfo info\n",
    "audio_common_msgs/msg/AudioStamped": "std_msgs/Header header\naudio_common_msgs/Audio audio\n",
}
