"""A bag evaluated offline with the node's own pipeline objects (StreamProcessor, Segmenter, Classifier): detected
utterances matched to reference segments, classification and segmentation scores, reports."""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..audio.segmenter import Segmenter, SegmenterConfig, Utterance
from ..audio.stream import ChunkError, StreamConfig, StreamProcessor
from ..audio.wire import TYPED, RawFormat, raw_to_chunk, typed_to_chunk
from .io import (
    DEFAULT_LABEL_TOPIC,
    INFO_TYPE,
    BagError,
    Segment,
    audio_typestore,
    audio_variant_of,
    find_audio_topic,
    read_bag,
    reference_from_bag,
)


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
    from ..train.reports import compute_metrics

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

    from ..audio.vad import make_vad
    from ..inference.classifier import classify_in_order

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
    from ..train.reports import plot_confusion, write_confusion_csv, write_json

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
