"""`ser_demo`: the node on its default model, fed with the bundled demo audio over real ROS topics.

Starts ser_node and a small audio publisher in one process (loopback-only discovery, a private domain id),
streams the WAV in 20 ms AudioStamped chunks at real time (or faster), and prints every expression published.
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path


def demo_audio_path() -> Path:
    for candidate in (Path(sys.prefix) / "share" / "ser_node" / "demo" / "demo_es.wav",
                      Path(__file__).resolve().parents[2] / "demo" / "demo_es.wav"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("demo/demo_es.wav not found: reinstall ser_node")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ser_demo", description=__doc__)
    parser.add_argument("audio", nargs="*", type=Path, help="WAV/FLAC files to play (default: bundled demo)")
    parser.add_argument("--model", default="", help="ONNX model (default: the shipped default model)")
    parser.add_argument("--speed", type=float, default=1.0, help="playback speed, x real time (default 1)")
    parser.add_argument("--vad", default="silero", choices=["silero", "webrtc"])
    parser.add_argument("--no-behaviour", action="store_true",
                        help="without the example empathic behaviour (ser_empathy on the voices' moods)")
    args = parser.parse_args(argv)

    # Demo traffic stays on this machine, in its own domain unless the user chose one.
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ.setdefault("ROS_DOMAIN_ID", str(150 + os.getpid() % 80))
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import numpy as np
    import rclpy
    from audio_common_msgs.msg import AudioStamped
    from hri_msgs.msg import Expression
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from vision_msgs.msg import Classification

    from ..audio.decode import AudioError, load_audio
    from ..inference.model_file import default_model_path
    from .node import SerNode

    files = args.audio or [demo_audio_path()]
    model = args.model or default_model_path()
    if not Path(model).is_file():
        print(f"ser_demo: no model at {model}. The trained default model is not shipped yet; train one with "
              "ser_train and export it with ser_export, then pass --model.", file=sys.stderr)
        return 2
    rclpy.init()
    node = SerNode(parameter_overrides=[Parameter("model_path", value=str(model)),
                                                  Parameter("vad_backend", value=args.vad),
                                                  Parameter("reliability", value="reliable")])
    player = rclpy.create_node("ser_demo_player")
    behaviour = None
    # The example behaviour, as empathy_demo.launch.py target:=voices starts it; the demo's synthetic voice carries
    # little emotion, so the behaviour here answers a mood of confidence 0.2 (its default is 0.25).
    if not args.no_behaviour:
        from std_msgs.msg import String

        from .empathy import make_behaviour_class

        behaviour = make_behaviour_class()(parameter_overrides=[Parameter("target", value="voices"),
                                                                Parameter("require_engagement", value=False),
                                                                Parameter("hold_s", value=3.0),
                                                                Parameter("min_confidence", value=0.2)])
        player.create_subscription(String, "/ser_empathy/suggested_response",
                                   lambda msg: print(f"           robot (ser_empathy): \"{msg.data}\"", flush=True), 10)
    scores: dict[tuple[int, int], list[float]] = {}

    def on_classification(msg: Classification) -> None:
        scores[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = [r.score for r in msg.results]

    def on_expression(msg: Expression) -> None:
        start = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        top = scores.get((msg.header.stamp.sec, msg.header.stamp.nanosec), [])
        ranking = ""
        if top:
            order = np.argsort(top)[::-1][:3]
            ranking = "  (" + ", ".join(f"{node.classifier.classes[i]} {top[i]:.2f}" for i in order) + ")"
        print(f"[{start:7.2f} s] {msg.expression:<10} confidence {msg.confidence:.2f}  valence {msg.valence:+.2f}  "
              f"arousal {msg.arousal:+.2f}{ranking}", flush=True)

    player.create_subscription(Classification, "/ser_node/classification", on_classification, 10)
    player.create_subscription(Expression, "/ser_node/expression", on_expression, 10)
    publisher = player.create_publisher(AudioStamped, "audio", QoSProfile(depth=100,
                                                                         reliability=ReliabilityPolicy.RELIABLE))
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    executor.add_node(player)
    if behaviour is not None:
        executor.add_node(behaviour)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        node.trigger_configure()
        if node.state_label() != "inactive":
            return 2
        node.trigger_activate()
        meta = node.classifier.metadata
        print(f"model {meta.model_id} ({meta.variant}, {meta.precision}); emotions are printed as they are published",
              flush=True)
        while publisher.get_subscription_count() == 0:
            time.sleep(0.05)
        clock = 0.0
        for path in files:
            try:
                audio = load_audio(path)
            except AudioError as error:
                print(f"ser_demo: skipping {error}", file=sys.stderr)
                continue
            print(f"playing {path} ({audio.size / 16000:.1f} s)", flush=True)
            began = time.monotonic()
            for offset in range(0, audio.size, 320):
                block = audio[offset : offset + 320]
                msg = AudioStamped()
                t = clock + offset / 16000
                msg.header.stamp.sec, msg.header.stamp.nanosec = int(t), int(round((t - int(t)) * 1e9))
                msg.header.frame_id = "demo"
                msg.audio.info.format, msg.audio.info.channels, msg.audio.info.rate = 8, 1, 16000
                msg.audio.info.chunk = block.size
                msg.audio.audio_data.int16_data = (np.clip(block, -1, 1) * 32767).astype(np.int16).tolist()
                publisher.publish(msg)
                ahead = (offset + block.size) / 16000 / args.speed - (time.monotonic() - began)
                if ahead > 0:
                    time.sleep(ahead)
            clock += audio.size / 16000 + 1.0
        time.sleep(1.5 if behaviour is None else 4.0)  # the last utterance closes, is classified (and acted on)
        _level, _message, values = node.diagnostic_values()
        print(f"done: {values.get('utterances_classified')} utterance(s) classified, "
              f"median latency {values.get('latency_ms_p50', '-')} ms")
    except KeyboardInterrupt:
        pass
    finally:
        if node.state_label() == "active":
            node.trigger_deactivate()  # stops the inference worker thread
        executor.shutdown(timeout_sec=2.0)
        spinner.join(timeout=2.0)
        node.destroy_node()
        player.destroy_node()
        if behaviour is not None:
            behaviour.destroy_node()
        rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
