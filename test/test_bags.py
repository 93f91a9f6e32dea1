"""Bag tools on real speech: make bags (both storages, both message generations), evaluate offline and live,
and survive truncated, corrupt and foreign bags."""
from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("rosbags", reason="the bag tools need the train extra (rosbags, mcap)")

from conftest import ROOT  # noqa: E402

from ser_node.audio.decode import load_audio  # noqa: E402
from ser_node.bags.evaluate import evaluate_bag, write_evaluation  # noqa: E402
from ser_node.bags.io import (BagError, Segment, concatenate_clips, read_bag, read_reference_csv,  # noqa: E402
                              write_audio_bag, write_reference_csv)
from ser_node.inference.classifier import Classifier  # noqa: E402
from ser_node.labels import EMOTIONS  # noqa: E402

T0 = 1_700_000_000.0
NAMES = ["Ira_01", "Tristeza_02", "Alegria_03", "Neutro_04", "Miedo_05", "Sorpresa_06", "Asco_07"]


@pytest.fixture(scope="module")
def labelled_stream(corpus_dir):
    from ser_node.labels import canonical_label

    clips = [load_audio(corpus_dir / "s09" / f"{n}.flac") for n in NAMES]
    stream, segments = concatenate_clips(clips, [canonical_label(n.split("_")[0]) for n in NAMES], silence_s=1.0)
    return stream, [Segment(s.start + T0, s.end + T0, s.label) for s in segments]


@pytest.fixture(scope="module")
def default_classifier():
    return Classifier(ROOT / "models" / "ser_default.onnx")


@pytest.mark.parametrize("variant,storage,rate,channels,fmt", [
    ("typed", "mcap", 48000, 2, "int16"), ("typed", "sqlite3", 16000, 1, "float32"),
    ("raw", "mcap", 44100, 1, "int16"), ("raw", "sqlite3", 48000, 2, "float32")])
def test_offline_evaluation_matches_the_known_reference(labelled_stream, default_classifier, tmp_path, variant,
                                                        storage, rate, channels, fmt):
    stream, references = labelled_stream
    bag = write_audio_bag(tmp_path / "bag", stream, variant=variant, storage=storage, rate=rate, channels=channels,
                          sample_format=fmt, t0=T0, references=references)
    evaluation = evaluate_bag(bag, default_classifier)  # references from the bag's label topic
    assert evaluation.variant == variant and evaluation.chunks_dropped == {} and evaluation.errors == []
    assert len(evaluation.utterances) == len(NAMES)
    seg = evaluation.segmentation
    assert seg["precision"] == 1.0 and seg["recall"] == 1.0 and seg["start_error_s"] < 0.4 and seg["end_error_s"] < 0.4
    metrics = evaluation.metrics
    assert metrics["n"] == len(NAMES) and sum(map(sum, metrics["confusion"])) == len(NAMES)
    expected = np.mean([u.label == r.label for u, r in zip(evaluation.utterances, references)])
    assert abs(metrics["accuracy"] - expected) < 1e-9
    out = write_evaluation(evaluation, tmp_path / "report", default_classifier.classes)
    assert (out / "confusion.png").exists() and (out / "utterances.csv").read_text().count("\n") == len(NAMES) + 1


def test_reference_csv_round_trip(labelled_stream, tmp_path):
    _, references = labelled_stream
    write_reference_csv(tmp_path / "ref.csv", references)
    again = read_reference_csv(tmp_path / "ref.csv")
    assert [(r.label, round(r.start, 3)) for r in again] == [(r.label, round(r.start, 3)) for r in references]


def test_truncated_bags_still_yield_their_utterances(labelled_stream, default_classifier, tmp_path):
    stream, references = labelled_stream
    for storage, suffix in (("mcap", ".mcap"), ("sqlite3", ".db3")):
        bag = write_audio_bag(tmp_path / storage, stream, storage=storage, t0=T0, references=references)
        (file,) = list(bag.glob(f"*{suffix}"))
        data = file.read_bytes()
        cut = tmp_path / f"cut_{storage}"
        cut.mkdir()
        (cut / file.name).write_bytes(data[: int(len(data) * 0.6)])
        evaluation = evaluate_bag(cut, default_classifier, reference=references)
        held = [r for r in references if r.end - T0 < 0.5 * stream.size / 16000]
        assert len(evaluation.utterances) >= len(held) - 1, storage
        assert evaluation.utterances and evaluation.errors, storage  # partial results and the damage named
        assert evaluation.segmentation["precision"] >= 0.8


def test_corrupt_empty_and_foreign_bags_give_clear_errors(labelled_stream, default_classifier, tmp_path):
    stream, _ = labelled_stream
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "garbage_0.mcap").write_bytes(np.random.default_rng(1).bytes(5000))
    with pytest.raises(BagError, match="no readable topics"):
        evaluate_bag(garbage, default_classifier)
    sqlite_garbage = tmp_path / "sqlite_garbage"
    sqlite_garbage.mkdir()
    (sqlite_garbage / "x_0.db3").write_bytes(b"SQLite format 3\x00" + bytes(3000))
    with pytest.raises(BagError):
        evaluate_bag(sqlite_garbage, default_classifier)
    with pytest.raises(BagError, match="no such bag"):
        evaluate_bag(tmp_path / "nowhere", default_classifier)

    from rosbags.rosbag2 import StoragePlugin, Writer

    from ser_node.bags.io import audio_typestore

    store = audio_typestore("typed")
    only_labels = tmp_path / "labels_only"
    with Writer(only_labels, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        connection = writer.add_connection("/chatter", "std_msgs/msg/String", typestore=store)
        writer.write(connection, 1, store.serialize_cdr(store.types["std_msgs/msg/String"](data="hi"),
                                                        "std_msgs/msg/String"))
    with pytest.raises(BagError, match="no audio topic"):
        evaluate_bag(only_labels, default_classifier)
    with pytest.raises(BagError, match="unknown audio message type"):
        evaluate_bag(only_labels, default_classifier, topic="/chatter")
    with pytest.raises(BagError, match="not in the bag"):
        evaluate_bag(only_labels, default_classifier, topic="/audio")


def test_live_replay_refuses_the_generation_that_is_not_installed(labelled_stream, tmp_path):
    pytest.importorskip("rclpy", reason="needs the ROS 2 wheels")
    from ros_harness import SideNode

    from ser_node.ros.replay import replay_bag

    stream, _ = labelled_stream
    bag = write_audio_bag(tmp_path / "raw", stream[:16000], variant="raw", storage="mcap", t0=T0)
    side = SideNode("replay_refusal")
    try:
        with pytest.raises(BagError, match="raw audio_common_msgs generation, this install has the typed"):
            replay_bag(bag, side.node, executor_running=False)
    finally:
        side.close()


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_offline_and_live_replay_agree(labelled_stream, tmp_path, storage):
    pytest.importorskip("rclpy", reason="needs the ROS 2 wheels")
    from ros_harness import Harness

    from ser_node.ros.replay import replay_bag

    stream, references = labelled_stream
    bag = write_audio_bag(tmp_path / "bag", stream, storage=storage, rate=48000, t0=T0, references=references)
    classifier = Classifier(ROOT / "models" / "ser_default.onnx")
    offline = evaluate_bag(bag, classifier)
    again = evaluate_bag(bag, classifier)  # deterministic: the same bag gives the same answer
    assert [(u.start, u.label, u.scores) for u in again.utterances] == [
        (u.start, u.label, u.scores) for u in offline.utterances]
    harness = Harness({"reliability": "reliable"})  # default model, default segmentation: as offline
    try:
        live = replay_bag(bag, harness.tester, executor_running=True, speed=4.0, offline=offline.utterances,
                          classes=list(EMOTIONS))
    finally:
        harness.close()
    assert live.published == len([m for m in read_bag(bag).messages if m.topic == "/audio"])
    assert len(live.utterances) == len(offline.utterances) == len(NAMES)
    for a, b in zip(sorted(live.utterances, key=lambda u: u.start), offline.utterances):
        assert abs(a.start - b.start) < 1e-6 and a.label == b.label
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
    assert live.metrics["accuracy"] == offline.metrics["accuracy"]
    assert live.segmentation == offline.segmentation
    assert len(live.latencies_ms) == len(NAMES) and all(0 < v < 5000 for v in live.latencies_ms)


def test_cli_make_and_evaluate(corpus_dir, tmp_path):
    env_python = [sys.executable, "-m", "ser_node.cli.bag"]
    help_text = subprocess.run(env_python + ["--help"], capture_output=True, text=True, cwd=ROOT)
    assert help_text.returncode == 0 and "evaluate" in help_text.stdout and "record" in help_text.stdout
    made = subprocess.run(env_python + ["make", "--corpus", str(corpus_dir), "--speakers", "s02", "--max-clips", "4",
                                        "--out", str(tmp_path / "eval"), "--variant", "raw", "--storage", "sqlite3",
                                        "--rate", "44100"], capture_output=True, text=True, cwd=ROOT)
    assert made.returncode == 0, made.stderr[-1500:]
    assert (tmp_path / "eval.csv").exists()
    evaluated = subprocess.run(env_python + ["evaluate", str(tmp_path / "eval"), "--out", str(tmp_path / "report")],
                               capture_output=True, text=True, cwd=ROOT)
    assert evaluated.returncode == 0, evaluated.stderr[-1500:]
    assert "4 utterance(s)" in evaluated.stdout and "recall 1.000" in evaluated.stdout
    rows = [line for line in evaluated.stdout.splitlines() if " - " in line and line.startswith("  ")]
    assert len(rows) == 4 and 0 < float(rows[0].split()[0]) < 30  # every row, times from the bag's start
    assert (tmp_path / "report" / "report.json").exists()
    with (tmp_path / "report" / "utterances.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 4 and {"start_s", "start_stamp", "reference", "match", "anger", "surprise"} <= set(table[0])
    assert all(r["reference"] and r["match"] in ("yes", "no") for r in table)
    assert abs(float(table[0]["start_stamp"]) - 1_700_000_000.0 - float(table[0]["start_s"])) < 0.05
    missing = subprocess.run(env_python + ["evaluate", str(tmp_path / "absent")], capture_output=True, text=True,
                             cwd=ROOT)
    assert missing.returncode == 2 and "no such bag" in missing.stderr


def test_cli_refuses_unknown_speakers_and_empty_bags(corpus_dir, tmp_path):
    env_python = [sys.executable, "-m", "ser_node.cli.bag"]
    typo = subprocess.run(env_python + ["make", "--corpus", str(corpus_dir), "--speakers", "s99",
                                        "--out", str(tmp_path / "typo")], capture_output=True, text=True, cwd=ROOT)
    assert typo.returncode == 2 and "['s99'] not in" in typo.stderr and "'s00'" in typo.stderr
    assert not (tmp_path / "typo").exists()
    from ser_node.bags.io import write_audio_bag

    write_audio_bag(tmp_path / "silent", np.zeros(0, np.float32), topic="/audio")  # a bag with no audio at all
    empty = subprocess.run(env_python + ["evaluate", str(tmp_path / "silent")], capture_output=True, text=True,
                           cwd=ROOT)
    assert empty.returncode == 2 and "no usable audio on /audio" in empty.stderr, empty.stderr[-800:]


def test_record_an_audio_topic(labelled_stream, default_classifier, tmp_path):
    pytest.importorskip("rclpy", reason="needs the ROS 2 wheels")
    import time

    from audio_common_msgs.msg import AudioStamped
    from conftest import child_env
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from ros_harness import SideNode, typed_chunks

    stream, _ = labelled_stream
    out = tmp_path / "recorded"
    recorder = subprocess.Popen([sys.executable, "-m", "ser_node.cli.bag", "record", "/mic", "--out", str(out),
                                 "--duration", "8"], env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    side = SideNode("record_source")
    try:
        publisher = side.node.create_publisher(AudioStamped, "/mic",
                                               QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE))
        assert side.wait_for_subscriber(publisher, timeout=20)
        messages = typed_chunks(stream[: 16000 * 6], 16000, 1, "int16", 0.05, T0)
        for msg in messages:
            publisher.publish(msg)
            time.sleep(0.005)
    finally:
        side.close()
    stdout, stderr = recorder.communicate(timeout=60)
    assert recorder.returncode == 0, stderr[-1500:]
    assert f"wrote {len(messages)} message(s)" in stdout
    evaluation = evaluate_bag(out, default_classifier)
    assert abs(evaluation.audio_seconds - 6.0) < 0.06 and len(evaluation.utterances) >= 2
