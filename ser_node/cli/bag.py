"""`ser_bag`: rosbag2 evaluation tools, no ROS CLI needed.

  ser_bag make --corpus ../shared/data/uem-es --speakers s02,s09 --out eval_bag      # labelled robot-like bag
  ser_bag evaluate eval_bag --out results/eval                                         # offline, same pipeline
  ser_bag replay eval_bag --speed 4 --out results/live         # into a running ser_node, with latency
  ser_bag record /audio --duration 30 --out my_session                                 # record an audio topic
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _classifier(model: str):
    from ..inference.classifier import Classifier
    from ..inference.model_file import default_model_path

    return Classifier(model or default_model_path())


def _reference(args: argparse.Namespace, bag: Path):
    from ..bags.io import read_reference_csv

    if args.labels:
        return read_reference_csv(args.labels)
    sidecar = Path(str(bag).rstrip("/") + ".csv")
    return read_reference_csv(sidecar) if sidecar.exists() else None


def _print_summary(title: str, utterances, metrics, segmentation, extra: dict, start_time: float = 0.0) -> None:
    """Every utterance, times in seconds from the bag's first audio sample, then the scores."""
    print(f"{title}: {len(utterances)} utterance(s); times in s from the bag's start")
    print(f"  {'start':>8}   {'end':>8}  {'label':<9} {'score':>5}  reference")
    for u in utterances:
        reference = getattr(u, "reference", None)
        mark = "" if reference is None else f"{reference}{'' if reference == u.label else '  (miss)'}"
        print(f"  {u.start - start_time:8.2f} - {u.end - start_time:8.2f}  {u.label:<9} {max(u.scores):5.2f}  {mark}")
    if segmentation:
        print(f"segmentation: precision {segmentation['precision']:.3f} recall {segmentation['recall']:.3f} "
              f"start error {segmentation['start_error_s'] or 0:.3f} s end error {segmentation['end_error_s'] or 0:.3f} s")
    if metrics:
        print(f"classification over {metrics['n']} matched: accuracy {metrics['accuracy']:.3f} UA {metrics['ua']:.3f} "
              f"macro-F1 {metrics['macro_f1']:.3f}")
    for key, value in extra.items():
        print(f"{key}: {value}")


def _adaptation(args: argparse.Namespace) -> dict:
    return {"speaker_adaptation": args.speaker_adaptation, "warmup": args.adaptation_warmup,
            "reset_s": args.adaptation_reset_s}


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..audio.wire import RawFormat
    from ..bags.evaluate import evaluate_bag, write_evaluation

    classifier = _classifier(args.model)
    raw = RawFormat(args.raw_channels, args.raw_rate, args.raw_format) if args.raw_format else None
    evaluation = evaluate_bag(args.bag, classifier, topic=args.topic, vad_backend=args.vad, raw_format=raw,
                              reference=_reference(args, args.bag), label_topic=args.label_topic, progress=True,
                              adaptation=_adaptation(args))
    out = write_evaluation(evaluation, args.out, classifier.classes) if args.out else None
    _print_summary("offline evaluation", evaluation.utterances, evaluation.metrics, evaluation.segmentation, {
        "audio": f"{evaluation.audio_seconds:.1f} s ({evaluation.variant} audio_common_msgs on {evaluation.audio_topic})",
        "speed": f"{1 / max(evaluation.real_time_factor, 1e-9):.0f}x real time",
        "dropped chunks": evaluation.chunks_dropped or "none", "bag problems": evaluation.errors or "none",
        "report": out / "report.json" if out else "(no --out)"}, evaluation.start_time)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    import rclpy

    from ..bags.evaluate import evaluate_bag
    from ..ros.replay import replay_bag

    classifier = _classifier(args.model)
    reference = _reference(args, args.bag)
    offline = evaluate_bag(args.bag, classifier, topic=args.topic, reference=reference,
                           adaptation=_adaptation(args))
    rclpy.init()
    node = rclpy.create_node("ser_bag_replay")
    try:
        live = replay_bag(args.bag, node, executor_running=False, topic=args.topic, target_topic=args.target_topic,
                          ser_namespace=args.namespace, speed=args.speed, offline=offline.utterances,
                          reference=reference, classes=classifier.classes)
    finally:
        node.destroy_node()
        rclpy.shutdown()
    agree = (len(live.utterances) == len(offline.utterances)
             and all(a.label == b.label and abs(a.start - b.start) < 1e-6
                     for a, b in zip(sorted(live.utterances, key=lambda u: u.start), offline.utterances)))
    _print_summary("live replay", live.utterances, live.metrics, live.segmentation, {
        "latency ms (utterance end -> arrival)": {k: round(v, 1) for k, v in live.latency_percentiles().items()},
        "agrees with offline evaluation": agree}, offline.start_time)
    if args.out:
        from ..train.reports import write_json

        Path(args.out).mkdir(parents=True, exist_ok=True)
        write_json(Path(args.out) / "live.json", {"latency_ms": live.latencies_ms, **live.latency_percentiles(),
                                                  "metrics": live.metrics, "segmentation": live.segmentation,
                                                  "agrees_with_offline": agree, "published": live.published})
    return 0 if agree else 1


def cmd_make(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from ..audio.decode import AudioError, load_audio
    from ..bags.io import BagError, concatenate_clips, write_audio_bag, write_reference_csv
    from ..train.corpora import load_corpus

    corpus = load_corpus({"kind": args.kind, "path": args.corpus})
    wanted = [s.strip() for s in args.speakers.split(",") if s.strip()] if args.speakers else []
    unknown = sorted(set(wanted) - set(corpus.speakers))
    if unknown:
        raise BagError(f"speaker(s) {unknown} not in {args.corpus}; its speakers are {corpus.speakers}")
    clips = [c for c in corpus.clips if not wanted or c.speaker in wanted]
    if not clips:
        raise BagError(f"no usable clips in {args.corpus} ({len(corpus.problems)} file(s) could not be used)")
    rng = np.random.default_rng(args.seed)
    clips = [clips[i] for i in rng.permutation(len(clips))[: args.max_clips or len(clips)]]
    waveforms, labels = [], []
    for clip in tqdm(clips, desc="clips", unit="clip"):
        try:
            waveforms.append(load_audio(clip.path))
            labels.append(clip.label)
        except AudioError as error:
            print(f"skipping {error}", file=sys.stderr)
    stream, segments = concatenate_clips(waveforms, labels, args.silence, args.noise_db, args.seed)
    path = write_audio_bag(args.out, stream, variant=args.variant, storage=args.storage, rate=args.rate,
                           channels=args.channels, sample_format=args.format, chunk_s=args.chunk_ms / 1000,
                           topic=args.topic, t0=args.t0,
                           references=[type(s)(s.start + args.t0, s.end + args.t0, s.label) for s in segments])
    write_reference_csv(Path(str(path) + ".csv"), [type(s)(s.start + args.t0, s.end + args.t0, s.label)
                                                   for s in segments])
    print(f"wrote {path} ({stream.size / 16000:.1f} s, {len(segments)} utterances) and {path}.csv")
    return 0


def cmd_record(args: argparse.Namespace) -> int:
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    import time

    import rclpy
    from rosbags.rosbag2 import StoragePlugin, Writer

    from ..audio.wire import TYPED
    from ..bags.io import audio_typestore
    from ..ros.messages import detect_audio_variant

    rclpy.init()
    node = rclpy.create_node("ser_bag_record")
    try:
        deadline = time.monotonic() + 10
        types: list[str] = []
        while not types and time.monotonic() < deadline:
            types = dict(node.get_topic_names_and_types()).get(args.topic, [])
            rclpy.spin_once(node, timeout_sec=0.1)
        if not types:
            print(f"ser_bag: topic {args.topic} not found", file=sys.stderr)
            return 2
        msgtype = types[0]
        variant, _, _ = detect_audio_variant()
        store = audio_typestore(variant)
        if msgtype not in store.types:
            print(f"ser_bag: cannot record {msgtype}: only audio and standard messages are known", file=sys.stderr)
            return 2
        from ..ros.replay import message_class

        cls = message_class(msgtype)
        plugin = StoragePlugin.MCAP if args.storage == "mcap" else StoragePlugin.SQLITE3
        count = 0
        with Writer(args.out, version=9, storage_plugin=plugin) as writer:
            connection = writer.add_connection(args.topic, msgtype, typestore=store)

            def on_message(raw: bytes) -> None:
                nonlocal count
                writer.write(connection, node.get_clock().now().nanoseconds, raw)
                count += 1

            node.create_subscription(cls, args.topic, on_message, 200, raw=True)
            end = time.monotonic() + args.duration
            while time.monotonic() < end:
                rclpy.spin_once(node, timeout_sec=0.1)
        print(f"wrote {count} message(s) of {msgtype} ({variant if variant else TYPED}) to {args.out}")
    finally:
        node.destroy_node()
        rclpy.shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ser_bag", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("bag", type=Path, help="rosbag2 folder or .mcap/.db3 file")
        p.add_argument("--topic", help="audio topic (default: the only audio topic in the bag)")
        p.add_argument("--model", default="", help="ONNX model (default: the shipped default)")
        p.add_argument("--labels", type=Path, help="reference CSV start,end,label (default: <bag>.csv if present)")
        p.add_argument("--out", type=Path, help="folder for the report")
        p.add_argument("--no-speaker-adaptation", dest="speaker_adaptation", action="store_false",
                       help="score every utterance on its own (the node's speaker_adaptation: false); by default "
                            "each is judged against the speaker's earlier ones, as the node does by default")
        p.add_argument("--adaptation-warmup", type=int, default=0,
                       help="the node's adaptation_warmup (0: the model's own)")
        p.add_argument("--adaptation-reset-s", type=float, default=30.0, help="the node's adaptation_reset_s")

    evaluate = sub.add_parser("evaluate", help="run the node's pipeline over a bag, offline, faster than real time")
    common(evaluate)
    evaluate.add_argument("--label-topic", default="/reference_labels", help="std_msgs/String JSON label topic")
    evaluate.add_argument("--vad", default="silero", choices=["silero", "webrtc"])
    evaluate.add_argument("--raw-format", help="raw-bytes bags without AudioInfo: S16LE, F32LE, ...")
    evaluate.add_argument("--raw-rate", type=int, default=16000)
    evaluate.add_argument("--raw-channels", type=int, default=1)
    evaluate.set_defaults(run=cmd_evaluate)

    replay = sub.add_parser("replay", help="play a bag into a running ser_node and measure it live")
    common(replay)
    replay.add_argument("--target-topic", default="audio", help="topic ser_node listens to")
    replay.add_argument("--namespace", default="/ser_node", help="ser_node's namespace + name")
    replay.add_argument("--speed", type=float, default=1.0, help="x real time")
    replay.set_defaults(run=cmd_replay)

    make = sub.add_parser("make", help="make a labelled evaluation bag from a corpus")
    make.add_argument("--corpus", required=True, help="corpus folder")
    make.add_argument("--kind", default="emomatch", help="corpus kind (emomatch, folders, ...)")
    make.add_argument("--speakers", help="comma-separated speakers to use")
    make.add_argument("--max-clips", type=int, default=0,
                      help="use at most this many clips, drawn at random with --seed (0 = all)")
    make.add_argument("--out", type=Path, required=True,
                      help="bag folder to create, e.g. eval_bag (the reference labels go to <out>.csv); about "
                           "1 MB per 10 s of 16 kHz mono int16 audio, scaled by --rate and --channels")
    make.add_argument("--variant", default="typed", choices=["typed", "raw"],
                      help="audio_common_msgs generation: typed (AudioStamped, 4.x) or raw bytes (the distros')")
    make.add_argument("--storage", default="mcap", choices=["mcap", "sqlite3"], help="rosbag2 storage plugin")
    make.add_argument("--rate", type=int, default=16000, help="sample rate of the recorded audio, Hz")
    make.add_argument("--channels", type=int, default=1, help="channels (channel k is the audio scaled by 1/(k+1))")
    make.add_argument("--format", default="int16", choices=["int16", "float32"], help="sample format")
    make.add_argument("--chunk-ms", type=float, default=20.0, help="audio per message, milliseconds")
    make.add_argument("--silence", type=float, default=1.0, help="seconds between utterances")
    make.add_argument("--noise-db", type=float, help="add white noise at this dBFS")
    make.add_argument("--topic", default="/audio", help="audio topic name in the bag")
    make.add_argument("--t0", type=float, default=1_700_000_000.0,
                      help="header time of the first sample, seconds since the epoch")
    make.add_argument("--seed", type=int, default=0, help="seed of the clip order, the --max-clips draw and noise")
    make.set_defaults(run=cmd_make)

    record = sub.add_parser("record", help="record an audio topic to a rosbag2")
    record.add_argument("topic")
    record.add_argument("--out", type=Path, required=True)
    record.add_argument("--duration", type=float, default=10.0, help="seconds")
    record.add_argument("--storage", default="mcap", choices=["mcap", "sqlite3"])
    record.set_defaults(run=cmd_record)

    args = parser.parse_args(argv)
    from ..bags.io import BagError
    from ..inference.model_file import ModelFileError

    try:
        return args.run(args)
    except (BagError, ModelFileError, FileExistsError, FileNotFoundError) as error:
        print(f"ser_bag: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
