"""rosbag2 without the ROS CLI (pure Python, via `rosbags`): write evaluation bags, read audio from bags (sqlite3
and mcap, either audio_common_msgs generation, salvaging truncated files), reference labels. Evaluation is in
evaluate.py.

Reference labels come from a CSV sidecar (start,end,label in bag time, seconds) or from a label topic of
std_msgs/String whose data is JSON {"start": s, "end": s, "label": name}.
"""
from __future__ import annotations

import csv
import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..audio.wire import (
    RAW,
    RAW_AUDIO_MSG_DEFINITIONS,
    TYPED,
    TYPED_AUDIO_MSG_DEFINITIONS,
)
from ..labels import canonical_label

TYPED_TYPE = "audio_common_msgs/msg/AudioStamped"
RAW_TYPE = "audio_common_msgs/msg/AudioDataStamped"
RAW_UNSTAMPED_TYPE = "audio_common_msgs/msg/AudioData"
INFO_TYPE = "audio_common_msgs/msg/AudioInfo"
LABEL_TYPE = "std_msgs/msg/String"
DEFAULT_LABEL_TOPIC = "/reference_labels"


class BagError(RuntimeError):
    """A bag that cannot be evaluated as asked, with the reason."""


def audio_typestore(variant: str):
    """A rosbags typestore with the standard messages and one audio_common_msgs generation."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.LATEST)
    definitions = TYPED_AUDIO_MSG_DEFINITIONS if variant == TYPED else RAW_AUDIO_MSG_DEFINITIONS
    types: dict[str, Any] = {}
    for name, text in definitions.items():
        types.update(get_types_from_msg(text, name))
    store.register(types)
    return store


def _stamp(store: Any, seconds: float) -> Any:
    sec = int(np.floor(seconds))
    return store.types["builtin_interfaces/msg/Time"](sec=sec, nanosec=int(round((seconds - sec) * 1e9)) % 1_000_000_000)


# ------------------------------------------------------------------ writing

@dataclass
class Segment:
    start: float
    end: float
    label: str


def write_reference_csv(path: Path, segments: Sequence[Segment]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["start", "end", "label"])
        for s in segments:
            writer.writerow([f"{s.start:.4f}", f"{s.end:.4f}", s.label])


def read_reference_csv(path: str | Path) -> list[Segment]:
    with Path(path).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if rows and not {"start", "end", "label"} <= set(rows[0]):
        raise BagError(f"{path}: reference CSV needs columns start,end,label")
    return [Segment(float(r["start"]), float(r["end"]), canonical_label(r["label"]) or r["label"]) for r in rows]


def write_audio_bag(path: str | Path, stream16k: np.ndarray, *, variant: str = TYPED, storage: str = "mcap",
                    rate: int = 16000, channels: int = 1, sample_format: str = "int16", chunk_s: float = 0.02,
                    topic: str = "/audio", t0: float = 1_700_000_000.0, frame_id: str = "mic",
                    references: Sequence[Segment] = (), label_topic: str | None = DEFAULT_LABEL_TOPIC) -> Path:
    """Writes a 16 kHz mono stream as a robot would have recorded it: `rate`, `channels`, format, chunk size.

    Raw variant: AudioDataStamped on `topic` and an AudioInfo on `<topic>_info`; the format is S16LE or F32LE.
    `references` are in bag time (t0 + offset), as in the reference CSV; they go to `label_topic`.
    """
    from rosbags.rosbag2 import StoragePlugin, Writer

    from ..audio.decode import resample

    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} exists")
    if sample_format not in ("int16", "float32"):
        raise ValueError("sample_format must be int16 or float32")
    store = audio_typestore(variant)
    plugin = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}[storage]
    audio = resample(stream16k, 16000, rate)
    frames = np.stack([audio / (k + 1) for k in range(channels)], axis=1)
    per_chunk = max(1, int(round(chunk_s * rate)))
    Header = store.types["std_msgs/msg/Header"]
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        msgtype = TYPED_TYPE if variant == TYPED else RAW_TYPE
        audio_conn = writer.add_connection(topic, msgtype, typestore=store)
        if variant == RAW:
            info_conn = writer.add_connection(f"{topic}_info", INFO_TYPE, typestore=store)
            info = store.types[INFO_TYPE](channels=channels, sample_rate=rate,
                                          sample_format="S16LE" if sample_format == "int16" else "F32LE",
                                          bitrate=0, coding_format="wave")
            writer.write(info_conn, int(t0 * 1e9), store.serialize_cdr(info, INFO_TYPE))
        for start in range(0, frames.shape[0], per_chunk):
            block = frames[start : start + per_chunk]
            t = t0 + start / rate
            header = Header(stamp=_stamp(store, t), frame_id=frame_id)
            interleaved = block.reshape(-1)
            if sample_format == "int16":
                samples = np.clip(np.round(interleaved * 32767), -32768, 32767).astype(np.int16)
            else:
                samples = interleaved.astype(np.float32)
            if variant == TYPED:
                empty = {"float32_data": np.zeros(0, np.float32), "int32_data": np.zeros(0, np.int32),
                         "int16_data": np.zeros(0, np.int16), "int8_data": np.zeros(0, np.int8),
                         "uint8_data": np.zeros(0, np.uint8)}
                empty[f"{sample_format}_data"] = samples
                msg = store.types[TYPED_TYPE](header=header, audio=store.types["audio_common_msgs/msg/Audio"](
                    audio_data=store.types["audio_common_msgs/msg/AudioData"](**empty),
                    info=store.types[INFO_TYPE](format=8 if sample_format == "int16" else 1, channels=channels,
                                                rate=rate, chunk=block.shape[0])))
            else:
                payload = samples.astype("<i2" if sample_format == "int16" else "<f4").view(np.uint8)
                msg = store.types[RAW_TYPE](header=header, audio=store.types[RAW_UNSTAMPED_TYPE](data=payload))
            # Recorded as it arrived: the receive time trails the audio by one chunk.
            writer.write(audio_conn, int((t + chunk_s) * 1e9), store.serialize_cdr(msg, msgtype))
        if references and label_topic:
            label_conn = writer.add_connection(label_topic, LABEL_TYPE, typestore=store)
            for segment in references:
                data = json.dumps({"start": segment.start, "end": segment.end, "label": segment.label})
                writer.write(label_conn, int(segment.end * 1e9),
                             store.serialize_cdr(store.types[LABEL_TYPE](data=data), LABEL_TYPE))
    return path


# ------------------------------------------------------------------ reading

@dataclass
class BagMessage:
    topic: str
    msgtype: str
    timestamp_ns: int
    rawdata: bytes


@dataclass
class BagContents:
    topics: dict[str, str]  # topic -> type
    msgdefs: dict[str, str]  # topic -> message definition text, where the bag stores one
    messages: list[BagMessage]
    errors: list[str] = field(default_factory=list)  # what could not be read (truncation, corruption)


def _storage_files(path: Path) -> tuple[str, list[Path]]:
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(list(path.glob("*.mcap")) + list(path.glob("*.db3")))
    else:
        raise BagError(f"{path}: no such bag")
    if not files:
        raise BagError(f"{path}: no .mcap or .db3 storage file in the bag folder")
    kind = "mcap" if files[0].suffix == ".mcap" else "sqlite3"
    return kind, files


def read_bag(path: str | Path, topics: Sequence[str] | None = None) -> BagContents:
    """All messages (raw CDR) of the bag, in time order. A truncated or partly corrupt bag yields every message
    before the damage, and the damage is described in `errors` instead of an exception."""
    path = Path(path)
    kind, files = _storage_files(path)
    contents = BagContents({}, {}, [])
    for file in files:
        try:
            (_read_mcap if kind == "mcap" else _read_sqlite)(file, contents, set(topics) if topics else None)
        except BagError:
            raise
        except Exception as error:  # the storage libraries raise many types for damaged files
            contents.errors.append(f"{file.name}: {type(error).__name__}: {error}")
    if not contents.topics:
        detail = f" ({'; '.join(contents.errors)})" if contents.errors else ""
        raise BagError(f"{path}: no readable topics{detail}")
    contents.messages.sort(key=lambda m: m.timestamp_ns)
    return contents


def _read_mcap(file: Path, contents: BagContents, wanted: set[str] | None) -> None:
    """Streams the file record by record, so a missing footer or a cut-off chunk loses only what is cut off."""
    from mcap.exceptions import McapError
    from mcap.records import Channel, Message, Schema
    from mcap.stream_reader import StreamReader

    schemas: dict[int, Schema] = {}
    channels: dict[int, Channel] = {}
    with file.open("rb") as handle:
        try:
            for record in StreamReader(handle, skip_magic=False, emit_chunks=False).records:
                if isinstance(record, Schema):
                    schemas[record.id] = record
                elif isinstance(record, Channel):
                    channels[record.id] = record
                    schema = schemas.get(record.schema_id)
                    if schema is not None:
                        contents.topics[record.topic] = schema.name
                        contents.msgdefs[record.topic] = schema.data.decode(errors="replace")
                elif isinstance(record, Message):
                    channel = channels.get(record.channel_id)
                    if channel is None or (wanted and channel.topic not in wanted):
                        continue
                    contents.messages.append(BagMessage(channel.topic, contents.topics.get(channel.topic, ""),
                                                        record.log_time, bytes(record.data)))
        except (McapError, EOFError, ValueError, OSError) as error:
            contents.errors.append(f"{file.name}: stopped reading at damaged data ({type(error).__name__}: {error})")
            # Writers often put a whole recording in one large chunk: salvage the part that is there.
            salvaged = _salvage_mcap(file.read_bytes(), wanted)
            known = {(m.topic, m.timestamp_ns) for m in contents.messages}
            for topic, (schema_name, msgdef) in salvaged.channels.items():
                contents.topics.setdefault(topic, schema_name)
                contents.msgdefs.setdefault(topic, msgdef)
            extra = [m for m in salvaged.messages if (m.topic, m.timestamp_ns) not in known]
            contents.messages.extend(extra)
            if extra:
                contents.errors.append(f"{file.name}: salvaged {len(extra)} message(s) from a cut-off chunk")


@dataclass
class _Salvage:
    channels: dict[str, tuple[str, str]] = field(default_factory=dict)
    messages: list[BagMessage] = field(default_factory=list)


def _salvage_mcap(data: bytes, wanted: set[str] | None) -> _Salvage:
    """Minimal MCAP record walker (spec: mcap.dev/spec) that reads into an uncompressed chunk cut short and stops
    quietly at the first incomplete record."""
    import struct

    found = _Salvage()
    schemas: dict[int, tuple[str, str]] = {}
    channels: dict[int, str] = {}

    def text(buf: bytes, at: int) -> tuple[str, int]:
        (size,) = struct.unpack_from("<I", buf, at)
        return buf[at + 4 : at + 4 + size].decode(errors="replace"), at + 4 + size

    def walk(buf: bytes, at: int) -> None:
        while at + 9 <= len(buf):
            opcode = buf[at]
            (length,) = struct.unpack_from("<Q", buf, at + 1)
            body = buf[at + 9 : at + 9 + length]
            at += 9 + length
            try:
                if opcode == 0x03:  # Schema
                    (schema_id,) = struct.unpack_from("<H", body, 0)
                    name, pos = text(body, 2)
                    _encoding, pos = text(body, pos)
                    (size,) = struct.unpack_from("<I", body, pos)
                    schemas[schema_id] = (name, body[pos + 4 : pos + 4 + size].decode(errors="replace"))
                elif opcode == 0x04:  # Channel
                    channel_id, schema_id = struct.unpack_from("<HH", body, 0)
                    topic, _ = text(body, 4)
                    channels[channel_id] = topic
                    if schema_id in schemas:
                        found.channels[topic] = schemas[schema_id]
                elif opcode == 0x05 and len(body) == length:  # Message (complete ones only)
                    channel_id, _sequence, log_time, _publish = struct.unpack_from("<HIQQ", body, 0)
                    topic = channels.get(channel_id)
                    if topic and (not wanted or topic in wanted):
                        found.messages.append(BagMessage(topic, found.channels.get(topic, ("", ""))[0], log_time,
                                                         bytes(body[22:])))
                elif opcode == 0x06:  # Chunk: recurse into its records if uncompressed
                    compression, pos = text(body, 28)
                    if compression == "":
                        walk(body[pos + 8 :], 0)
            except struct.error:
                return

    if data[:8] == b"\x89MCAP0\r\n":
        walk(data, 8)
    return found


def _read_sqlite(file: Path, contents: BagContents, wanted: set[str] | None) -> None:
    """Reads topics, then messages row by row: a damaged page stops the read there, not the evaluation.
    A file cut short (a recorder killed mid-write) is read through a copy whose header states the pages it has."""
    import tempfile

    try:
        _read_sqlite_rows(file, contents, wanted)
        return
    except sqlite3.DatabaseError as error:
        first_error = error
    with tempfile.TemporaryDirectory() as tmp:
        patched = Path(tmp) / file.name
        if not _trim_sqlite(file.read_bytes(), patched):
            raise BagError(f"{file}: not a readable rosbag2 sqlite3 file ({first_error})")
        try:
            _read_sqlite_rows(patched, contents, wanted)
        except sqlite3.DatabaseError as error:
            raise BagError(f"{file}: not a readable rosbag2 sqlite3 file ({error})") from error
        contents.errors.append(f"{file.name}: file is cut short ({first_error}); read the pages it holds")


def _trim_sqlite(data: bytes, target: Path) -> bool:
    """Writes `data` cut to whole pages, with the header's page count set to match (SQLite file format §1.3)."""
    import struct

    if not data.startswith(b"SQLite format 3\x00") or len(data) < 100:
        return False
    (page_size,) = struct.unpack_from(">H", data, 16)
    page_size = 65536 if page_size == 1 else page_size
    pages = len(data) // page_size
    if pages < 2:
        return False
    trimmed = bytearray(data[: pages * page_size])
    struct.pack_into(">I", trimmed, 28, pages)
    target.write_bytes(bytes(trimmed))
    return True


def _read_sqlite_rows(file: Path, contents: BagContents, wanted: set[str] | None) -> None:
    db = sqlite3.connect(f"file:{file}?mode=ro", uri=True)
    try:
        names = {row[0]: (row[1], row[2]) for row in db.execute("SELECT id, name, type FROM topics")}
        for name, msgtype in names.values():
            contents.topics[name] = msgtype
        try:
            for topic_id, timestamp, data in db.execute("SELECT topic_id, timestamp, data FROM messages ORDER BY id"):
                name, msgtype = names.get(topic_id, ("", ""))
                if name and (not wanted or name in wanted):
                    contents.messages.append(BagMessage(name, msgtype, int(timestamp), bytes(data)))
        except sqlite3.DatabaseError as error:
            contents.errors.append(f"{file.name}: stopped reading at damaged data ({error})")
    finally:
        db.close()


def audio_variant_of(msgtype: str, msgdef: str | None) -> str:
    """Which generation a bag's audio topic uses, from its type name and, where stored, its definition."""
    if msgtype == TYPED_TYPE:
        return TYPED
    if msgtype == RAW_TYPE:
        return RAW
    if msgtype == RAW_UNSTAMPED_TYPE:
        if msgdef is not None and "float32_data" in msgdef:
            raise BagError("bare typed audio_common_msgs/AudioData carries no format: record AudioStamped")
        return RAW
    raise BagError(f"unknown audio message type {msgtype!r}: expected {TYPED_TYPE}, {RAW_TYPE} or "
                   f"{RAW_UNSTAMPED_TYPE}")


def find_audio_topic(contents: BagContents, topic: str | None) -> str:
    if topic:
        if topic not in contents.topics:
            raise BagError(f"topic {topic} is not in the bag; it has {sorted(contents.topics)}")
        return topic
    candidates = [t for t, ty in contents.topics.items() if ty in (TYPED_TYPE, RAW_TYPE, RAW_UNSTAMPED_TYPE)]
    if not candidates:
        raise BagError(f"no audio topic in the bag (topics: {contents.topics})")
    if len(candidates) > 1:
        raise BagError(f"several audio topics {candidates}: choose one with --topic")
    return candidates[0]


def reference_from_bag(contents: BagContents, label_topic: str = DEFAULT_LABEL_TOPIC) -> list[Segment]:
    if label_topic not in contents.topics:
        return []
    store = audio_typestore(TYPED)
    segments = []
    for message in contents.messages:
        if message.topic == label_topic:
            data = json.loads(store.deserialize_cdr(message.rawdata, LABEL_TYPE).data)
            segments.append(Segment(float(data["start"]), float(data["end"]),
                                    canonical_label(data["label"]) or data["label"]))
    return segments


def concatenate_clips(waveforms: Sequence[np.ndarray], labels: Sequence[str], silence_s: float = 1.0,
                      noise_db: float | None = None, seed: int = 0) -> tuple[np.ndarray, list[Segment]]:
    """A robot-like stream: clips separated by silence, optional white noise at `noise_db` dBFS."""
    gap = np.zeros(int(silence_s * 16000), np.float32)
    parts, segments, t = [gap], [], silence_s
    for audio, label in zip(waveforms, labels):
        parts += [audio, gap]
        segments.append(Segment(t, t + audio.size / 16000, label))
        t += audio.size / 16000 + silence_s
    stream = np.concatenate(parts)
    if noise_db is not None:
        rng = np.random.default_rng(seed)
        stream = stream + rng.normal(0, 10 ** (noise_db / 20), stream.size).astype(np.float32)
    return np.clip(stream, -1, 1).astype(np.float32), segments

