"""rosbag2 tools without the ROS CLI (pure Python, via `rosbags`): write evaluation bags, read audio from bags
(sqlite3 and mcap, either audio_common_msgs generation), and evaluate a bag offline with the node's own pipeline.

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

from .labels import canonical_label
from .audio_messages import (RAW, RAW_AUDIO_MSG_DEFINITIONS, TYPED, TYPED_AUDIO_MSG_DEFINITIONS, RawFormat,
                             raw_to_chunk, typed_to_chunk)
from .segmenter import Segmenter, SegmenterConfig, Utterance
from .stream import ChunkError, StreamConfig, StreamProcessor

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

    from .audio import resample

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
    from mcap.stream_reader import StreamReader
    from mcap.records import Channel, Message, Schema

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


# ------------------------------------------------------------------ evaluation

@dataclass
class DetectedUtterance:
    start: float
    end: float
    label: str
    scores: list[float]
    reference: str | None = None  # label of the reference segment it matched, if any


@dataclass
class BagEvaluation:
    audio_topic: str
    variant: str
    audio_seconds: float
    processing_seconds: float
    utterances: list[DetectedUtterance]
    chunks_dropped: dict[str, int]
    errors: list[str]
    metrics: dict | None = None  # classification, over matched utterances
    segmentation: dict | None = None
    start_time: float = 0.0  # source time of the first audio chunk: reports show times relative to it

    @property
    def real_time_factor(self) -> float:
        return self.processing_seconds / max(self.audio_seconds, 1e-9)


def match_segments(detected: Sequence[tuple[float, float]], reference: Sequence[Segment],
                   min_overlap: float = 0.5) -> list[tuple[int, int]]:
    """Greedy one-to-one matching by overlap; a pair needs overlap >= min_overlap x the shorter of the two."""
    pairs = []
    for i, (start, end) in enumerate(detected):
        for j, ref in enumerate(reference):
            overlap = min(end, ref.end) - max(start, ref.start)
            shorter = min(end - start, ref.end - ref.start)
            if shorter > 0 and overlap >= min_overlap * shorter:
                pairs.append((overlap, i, j))
    used_i, used_j, matched = set(), set(), []
    for _overlap, i, j in sorted(pairs, reverse=True):
        if i not in used_i and j not in used_j:
            used_i.add(i)
            used_j.add(j)
            matched.append((i, j))
    return sorted(matched)


def score_against_reference(utterances: Sequence[DetectedUtterance], reference: Sequence[Segment],
                            classes: Sequence[str]) -> tuple[dict, dict]:
    from .reports import compute_metrics

    pairs = match_segments([(u.start, u.end) for u in utterances], reference)
    segmentation = {
        "references": len(reference), "detected": len(utterances), "matched": len(pairs),
        "precision": len(pairs) / len(utterances) if utterances else 0.0,
        "recall": len(pairs) / len(reference) if reference else 0.0,
        "start_error_s": float(np.mean([abs(utterances[i].start - reference[j].start) for i, j in pairs])) if pairs else None,
        "end_error_s": float(np.mean([abs(utterances[i].end - reference[j].end) for i, j in pairs])) if pairs else None,
    }
    metrics = compute_metrics([reference[j].label for _, j in pairs], [utterances[i].label for i, _ in pairs],
                              classes) if pairs else None
    return metrics, segmentation


def evaluate_bag(path: str | Path, classifier: Any, *, topic: str | None = None, vad_backend: str = "silero",
                 segmenter_config: SegmenterConfig | None = None, stream_config: StreamConfig | None = None,
                 raw_format: RawFormat | None = None, reference: Sequence[Segment] | None = None,
                 label_topic: str = DEFAULT_LABEL_TOPIC, progress: bool = False,
                 adaptation: dict[str, Any] | None = None) -> BagEvaluation:
    """Runs the bag's audio through the node's pipeline objects (StreamProcessor, Segmenter, Classifier).

    `adaptation`: speaker_adaptation, warmup, reset_s (classifier.classify_in_order), as the node's parameters
    speaker_adaptation, adaptation_warmup and adaptation_reset_s; default: the node's defaults."""
    import time

    from tqdm import tqdm

    from .classifier import classify_in_order

    from .vad import make_vad

    began = time.perf_counter()
    contents = read_bag(path)
    audio_topic = find_audio_topic(contents, topic)
    variant = audio_variant_of(contents.topics[audio_topic], contents.msgdefs.get(audio_topic))
    store = audio_typestore(variant)
    fmt = raw_format or RawFormat()
    processor = StreamProcessor(Segmenter(make_vad(vad_backend), segmenter_config), stream_config)
    found: list[Utterance] = []
    audio_messages = [m for m in contents.messages if m.topic in (audio_topic, f"{audio_topic}_info")]
    start_time: float | None = None
    for message in tqdm(audio_messages, desc="bag audio", unit="msg", disable=not progress):
        try:
            msg = store.deserialize_cdr(message.rawdata, message.msgtype)
        except Exception as error:  # a damaged message: count it, keep going
            processor.stats.bad_chunks["undecodable"] += 1
            contents.errors.append(f"{message.topic} at {message.timestamp_ns}: {error}")
            continue
        if message.msgtype == INFO_TYPE:
            if raw_format is None:
                fmt = RawFormat.from_info(msg)
            continue
        try:
            chunk = (typed_to_chunk(msg, message.timestamp_ns * 1e-9) if variant == TYPED
                     else raw_to_chunk(msg, fmt, message.timestamp_ns * 1e-9))
        except ChunkError as error:
            processor.stats.bad_chunks[error.reason] += 1
            continue
        try:
            found += processor.feed(chunk)
        except ChunkError:
            continue
        if start_time is None:
            start_time = chunk.time
    found += processor.flush()
    if processor.stats.chunks == 0:
        counts = {t: sum(1 for m in contents.messages if m.topic == t) for t in contents.topics}
        raise BagError(f"{path}: no usable audio on {audio_topic} ({processor.stats.dropped} bad chunk(s)); "
                       f"messages per topic in the bag: {counts}")
    probabilities = classify_in_order(classifier, [(u.start, u.end, u.audio) for u in found], **(adaptation or {}))
    utterances = []
    for u, row in zip(found, probabilities):
        utterances.append(DetectedUtterance(u.start, u.end, classifier.classes[int(np.argmax(row))],
                                            [float(v) for v in row]))
    evaluation = BagEvaluation(audio_topic, variant, processor.stats.seconds, 0.0, utterances,
                               dict(processor.stats.bad_chunks), contents.errors, start_time=start_time or 0.0)
    refs = list(reference) if reference is not None else reference_from_bag(contents, label_topic)
    if refs:
        evaluation.metrics, evaluation.segmentation = score_against_reference(utterances, refs, classifier.classes)
        for i, j in match_segments([(u.start, u.end) for u in utterances], refs):
            utterances[i].reference = refs[j].label
    evaluation.processing_seconds = time.perf_counter() - began
    return evaluation


def write_evaluation(evaluation: BagEvaluation, out_dir: str | Path, classes: Sequence[str]) -> Path:
    """utterances.csv, report.json and, with references, confusion.png / .csv in out_dir."""
    from .reports import plot_confusion, write_confusion_csv, write_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "utterances.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        # times from the bag's first audio sample, and the absolute source stamps; reference and match are empty
        # for utterances that matched no reference segment (or when the bag has no references)
        writer.writerow(["start_s", "end_s", "start_stamp", "end_stamp", "label", "reference", "match", *classes])
        for u in evaluation.utterances:
            match = "" if u.reference is None else ("yes" if u.reference == u.label else "no")
            writer.writerow([f"{u.start - evaluation.start_time:.3f}", f"{u.end - evaluation.start_time:.3f}",
                             f"{u.start:.3f}", f"{u.end:.3f}", u.label, u.reference or "", match,
                             *(f"{s:.4f}" for s in u.scores)])
    report = {k: v for k, v in evaluation.__dict__.items() if k != "utterances"}
    report["utterance_count"] = len(evaluation.utterances)
    report["real_time_factor"] = evaluation.real_time_factor
    write_json(out / "report.json", report)
    if evaluation.metrics:
        write_confusion_csv(evaluation.metrics["confusion"], classes, out / "confusion.csv")
        plot_confusion(evaluation.metrics["confusion"], classes, out / "confusion.png",
                       f"bag evaluation · {evaluation.segmentation['matched']} matched utterances")
    return out


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

