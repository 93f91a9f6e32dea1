"""The ser_node lifecycle node: audio topic -> VAD utterances -> emotion messages.

This module is the node's life: its parameters (table in parameters.py) and their live changes, the model's load,
swap and reload, and the lifecycle transitions. The work happens in rooms, each creating and destroying the ROS
endpoints it owns:
  intake.py       audio subscriptions, decoding and segmenting (StreamProcessor), the batched intake thread
  worker.py       the bounded queue of closed utterances and the classification thread
  voice_state.py  speaker normalisation (per voice or reset after silence), its services and the voices file
  outputs.py      expression, classification, label info, is_speaking, utterance audio
  moods.py        a steady mood per voice and per ROS4HRI person, what behaviours read
  listening.py    whom it listens to: not the robot's own speech or voice; optionally engaged people only
  hri_voices.py   ROS4HRI voices: per-voice audio in, per-voice expressions out
  diagnostics.py  /diagnostics from each room's values; spin.py starts and stops the process in order
Data path: intake -> worker -> voice_state -> outputs (and hri_voices per voice) -> moods.
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy: BLAS threads would fight ONNX Runtime's
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.exceptions import InvalidParameterValueException, ParameterException
from rclpy.executors import SingleThreadedExecutor
from rclpy.lifecycle import LifecycleState, TransitionCallbackReturn
from rclpy.lifecycle import Node as LifecycleNode
from std_srvs.srv import Trigger

from ..audio.segmenter import Segmenter, SegmenterConfig
from ..audio.stream import StreamConfig, StreamProcessor
from ..audio.vad import VadError, make_vad
from ..audio.wire import TYPED, RawFormat
from ..inference.classifier import Classifier
from ..inference.model_file import ModelFileError, default_model_path
from ..inference.voice_stream import UtteranceEncoder
from . import diagnostics
from .hri_voices import MODES as HRI_MODES
from .hri_voices import HriVoices
from .intake import AudioIntake
from .listening import LISTEN_TO, Listening
from .messages import detect_audio_variant
from .moods import OWN_STREAM, Moods
from .outputs import Outputs
from .parameters import PARAMETERS, SNR_GATE_OFF
from .spin import init_rclpy_with_ordered_shutdown, spin_until_done, start_node
from .voice_state import VoiceState
from .worker import Worker

NODE_NAME = "ser_node"


class SerNode(LifecycleNode):
    """Speech emotion recognition lifecycle node: composes the rooms and drives their life."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self.live_names = {name for name, (_, _, live) in PARAMETERS.items() if live}
        for name, (default, descriptor, _) in PARAMETERS.items():
            self.declare_parameter(name, default, descriptor)
        self.add_on_set_parameters_callback(self._on_parameters)
        self.variant, self.audio_class, self.info_class = detect_audio_variant()
        self.get_logger().info(f"audio_common_msgs variant: {self.variant} "
                               f"({self.audio_class.__module__}.{self.audio_class.__name__})")
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.classifier: Classifier | None = None
        self.model_error = ""
        self.encoder_errors = 0  # streaming encoder steps that failed (the worker encoded those utterances)
        # utterances encoded while spoken, and those whose end was ready when the VAD decided (the rest cost the
        # last block's encoding after the decision, on the latency path: diagnostics)
        self.stream_ends = self.stream_ends_prepared = 0
        self.reload_srv: Any = None
        self.hri: HriVoices | None = None  # ROS4HRI voices (hri_voices.py), while active
        self.outputs = Outputs(self)
        self.voice_state = VoiceState(self, self.p, lambda: self.classifier)
        self.voice_state.on_own_voices = lambda held: self.hri.own_voices_changed(held) if self.hri else None
        self.moods = Moods(self, self.p)
        self.voice_state.on_forget = self.moods.forget_voices
        self.worker = Worker(self.p, self.voice_state.judge, self.voice_state.adapt, self.outputs.build, self._send,
                             lambda text: self.get_logger().error(text, throttle_duration_sec=5.0))
        self.listening = Listening(self, self.p)
        self.voice_state.reject = self.listening.reject
        self.worker.on_rejected = lambda item, reason: self.listening.count(
            reason, item.utterance.start, item.utterance.end, item.voice_id)
        self.intake = AudioIntake(self, self.variant, self.audio_class, self.info_class, self.worker.enqueue,
                                  self.listening.robot_speaking,
                                  lambda u, voice: self.listening.count("robot_speaking", u.start, u.end, voice))
        self._diag_timer = self.create_timer(float(self.p("diagnostics_period_s")), self._publish_diagnostics)

    # ------------------------------------------------------------ parameters
    def state_label(self) -> str:
        return self._state_machine.current_state[1]

    def p(self, name: str) -> Any:
        return self.get_parameter(name).value

    def _on_parameters(self, changes: list[Any]) -> SetParametersResult:
        values = {c.name: c.value for c in changes}
        for name in values:
            if name in PARAMETERS and name not in self.live_names and self.state_label() == "active":
                return SetParametersResult(successful=False,
                                           reason=f"{name} can only change while the node is not active")
        if values.get("hri_voices", "follow") not in HRI_MODES:
            return SetParametersResult(successful=False, reason=f"hri_voices must be one of {', '.join(HRI_MODES)}")
        if values.get("listen_to", "everyone") not in LISTEN_TO:
            return SetParametersResult(successful=False, reason=f"listen_to must be one of {', '.join(LISTEN_TO)}")
        try:  # the segmenter settings must stay consistent with each other, not only within their ranges
            self._segmenter_config(values).validate()
        except ValueError as error:
            return SetParametersResult(successful=False, reason=str(error))
        if "model_path" in values and self.classifier is not None:
            try:
                self._swap_model(values["model_path"])
            except (ModelFileError, ValueError) as error:
                return SetParametersResult(successful=False, reason=str(error))
        if self.intake.stream is not None:
            self._apply_live(values)
        return SetParametersResult(successful=True)

    def _segmenter_config(self, overrides: dict[str, Any] | None = None) -> SegmenterConfig:
        get = (lambda n: (overrides or {}).get(n, self.p(n)))
        gate = get("min_snr_db")
        return SegmenterConfig(threshold=get("vad_threshold"), negative_threshold=get("vad_negative_threshold"),
                               min_speech_s=get("min_speech_s"), min_silence_s=get("min_silence_s"),
                               short_speech_s=get("short_speech_s"),
                               short_silence_s=get("short_silence_s"),
                               pre_roll_s=get("pre_roll_s"), post_roll_s=get("post_roll_s"),
                               max_utterance_s=get("max_utterance_s"),
                               min_snr_db=None if gate <= SNR_GATE_OFF else gate,
                               foreground_db=get("foreground_db") or None)

    def _apply_live(self, values: dict[str, Any]) -> None:
        """Segmenter thresholds are read frame by frame, so replacing the config object is safe."""
        stream = self.intake.stream
        stream.segmenter.config = self._segmenter_config(values)
        stream.config = StreamConfig(channel=values.get("channel", self.p("channel")),
                                          max_chunk_s=values.get("max_chunk_s", self.p("max_chunk_s")),
                                          gap_tolerance_s=values.get("gap_tolerance_s", self.p("gap_tolerance_s")))
        if any(k.startswith("raw_") for k in values):
            self.intake.raw_format = RawFormat(values.get("raw_channels", self.p("raw_channels")),
                                        values.get("raw_sample_rate", self.p("raw_sample_rate")),
                                        values.get("raw_sample_format", self.p("raw_sample_format")))

    # ------------------------------------------------------------ model
    def _load_classifier(self, path: str) -> Classifier:
        classifier = Classifier(path or default_model_path(), device=self.p("device"), threads=self.p("threads"),
                                warn=self.get_logger().warning)
        self.get_logger().info(f"model {classifier.model_id} ({classifier.metadata.variant}, "
                               f"{classifier.metadata.precision}) from {classifier.path} on {classifier.providers[0]}")
        return classifier

    def _swap_model(self, path: str) -> None:
        new = self._load_classifier(path)
        self.classifier = new
        self.worker.set_classifier(new)
        self.voice_state.model_changed()  # what it averaged belongs to the old model's feature space
        self.model_error = ""
        if self.intake.active:
            self.worker.ensure_running()

    def _reload_service(self, _request: Any, response: Any) -> Any:
        try:
            self._swap_model(self.p("model_path"))
            response.success = True
            response.message = f"loaded {self.classifier.model_id}"  # type: ignore[union-attr]
        except (ModelFileError, ValueError) as error:
            self.model_error = str(error)
            self.get_logger().error(f"reload failed, keeping the current model: {error}")
            response.success = False
            response.message = str(error)
        return response

    def _new_stream(self, vad: Any = None) -> StreamProcessor:
        """A segmenter with the node's current settings around `vad` (an upstream voice's released VAD, reset) or
        a new VAD. The node's own stream also reports is_speaking (set in configure)."""
        vad = vad or make_vad(self.p("vad_backend"), webrtc_aggressiveness=self.p("webrtc_aggressiveness"))
        encoder = UtteranceEncoder(lambda: self.classifier if self.p("encode_while_speaking") else None,
                                   self._encoder_error, self._encoded_end)
        dropped = (lambda utterance, reason: self.listening.count(reason, utterance.start, utterance.end))
        return StreamProcessor(Segmenter(vad, self._segmenter_config(), listener=encoder, on_dropped=dropped),
                               StreamConfig(self.p("channel"), self.p("max_chunk_s"), self.p("gap_tolerance_s")))

    def _encoded_end(self, prepared: bool) -> None:
        """An utterance encoded while spoken reached its end (any stream's encoder; the intake thread)."""
        self.stream_ends += 1
        self.stream_ends_prepared += prepared

    def _encoder_error(self, text: str) -> None:
        """A streaming step failed: that utterance is encoded by the worker at its end instead (none is lost)."""
        self.encoder_errors += 1
        self.get_logger().error(text, throttle_duration_sec=5.0)

    # ------------------------------------------------------------ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self.classifier = self._load_classifier(self.p("model_path"))
            vad = make_vad(self.p("vad_backend"), webrtc_aggressiveness=self.p("webrtc_aggressiveness"))
            if self.p("hri_voices") not in HRI_MODES:
                raise ValueError(f"hri_voices must be one of {', '.join(HRI_MODES)}, got {self.p('hri_voices')!r}")
        except (ModelFileError, VadError, ValueError) as error:
            self.model_error = str(error)
            self.get_logger().error(f"configure failed: {error}")
            self._publish_diagnostics()
            return TransitionCallbackReturn.FAILURE
        self.model_error = ""
        self.worker.set_classifier(self.classifier)
        self.voice_state.load()
        self.intake.stream = self._new_stream(vad)
        self.intake.stream.segmenter.on_speaking = self.outputs.on_speaking
        self.intake.raw_format = RawFormat(self.p("raw_channels"), self.p("raw_sample_rate"),
                                           self.p("raw_sample_format"))
        utterance_class = None
        if self.p("publish_utterance"):
            if self.variant == TYPED:
                utterance_class = self.audio_class
            else:
                self.get_logger().warning("publish_utterance needs the typed audio_common_msgs; not publishing")
        self.outputs.create(utterance_class)
        self.reload_srv = self.create_service(Trigger, "~/reload_model", self._reload_service)
        self.voice_state.create_services()
        self.get_logger().info("configured")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = super().on_activate(state)
        if self.classifier is not None:
            self.outputs.publish_label_info(self.classifier.classes)
        self.hri = HriVoices(self, str(self.p("hri_voices")), int(self.p("max_voices")),
                             self.intake.voice_audio_class(), self.intake.qos(), self._new_stream,
                             self._on_voice_audio, self.voice_state.forget)
        if self.classifier is not None:
            self.moods.create(self.classifier.classes)
            self.listening.create(self.classifier.model_id)
        self.worker.ensure_running()
        self.intake.subscribe()
        self.get_logger().info(f"active: listening on {self.resolve_topic_name('audio')}"
                               f"{' (batched intake)' if self.intake.batched is not None else ''}")
        return result

    def _on_voice_audio(self, voice_id: str, msg: Any) -> None:
        """One upstream voice's audio message (executor thread, as are opening and releasing voices)."""
        hri = self.hri
        stream = hri.stream(voice_id) if hri is not None else None
        if stream is not None:
            self.intake.on_voice_audio(voice_id, msg, stream)

    def _send(self, item: Any, probabilities: Any, messages: tuple[Any, ...]) -> None:
        """One classified utterance out: its messages, its voice's ROS4HRI expression, the moods."""
        voice_id = item.voice_id or item.heard_as
        if self.p("listen_to") == "engaged" and not self.moods.engaged(voice_id):
            self.listening.count("not_engaged", item.utterance.start, item.utterance.end, voice_id)
            return
        self.outputs.send(messages)
        hri = self.hri
        if hri is not None and voice_id:
            hri.publish_expression(voice_id, messages[1])
        self.moods.observe(voice_id or OWN_STREAM, probabilities)

    def stop_threads(self) -> None:
        """Stops and joins the intake and worker threads (before the node and rclpy are torn down)."""
        if self.intake.active or self.intake.batched is not None or self.worker.thread is not None:
            self._stop_listening()

    def _stop_listening(self) -> None:
        """In this order: ROS4HRI voices, audio intake and subscriptions, the worker, the moods; then, if it was
        listening, the voices are saved to voices_file (deactivate, shutdown, and a signal, which ends the process
        without the lifecycle)."""
        was_active = self.intake.active
        if self.hri is not None:
            self.hri.close()
            self.hri = None
        self.intake.unsubscribe()
        self.worker.stop()
        self.moods.destroy()
        self.listening.destroy()
        if was_active:
            self.voice_state.save()

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_listening()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_listening()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _release(self) -> None:
        self.outputs.destroy()
        if self.reload_srv is not None:
            self.destroy_service(self.reload_srv)
            self.reload_srv = None
        self.voice_state.destroy_services()
        self.classifier = None
        self.worker.set_classifier(None)
        self.intake.stream = None
        self.worker.clear()

    # ------------------------------------------------------------ diagnostics
    def diagnostic_values(self) -> tuple[int, str, dict[str, str]]:
        """Level, message and key/values of the node's health (see diagnostics.py; also used by tests)."""
        return diagnostics.health(self)

    def _publish_diagnostics(self) -> None:
        diagnostics.publish(self)


def main(argv: list[str] | None = None) -> int:
    """Console script: runs the node, configured and activated unless --no-autostart."""

    parser = argparse.ArgumentParser(
        prog="ser_node",
        description="Speech emotion recognition node: subscribes to `audio` (audio_common_msgs), publishes "
                    "~/expression (hri_msgs/Expression), ~/classification (vision_msgs), ~/is_speaking and "
                    "/diagnostics; follows ROS4HRI voices (/humans/voices/tracked, per-voice audio in and "
                    "expression out; hri_voices parameter) and persons (/humans/persons/tracked, voice_id); "
                    "publishes steady moods on ~/mood and /humans/voices|persons/<id>/mood; ignores the robot's "
                    "own speech (robot_speaking, self_voice_file). ROS arguments follow --ros-args (e.g. "
                    "--ros-args --params-file config/ser_node.yaml -r audio:=/robot/mic).")
    parser.add_argument("--no-autostart", action="store_true",
                        help="stay unconfigured; drive the lifecycle with the usual lifecycle services")
    parser.add_argument("--wait-for-model", action="store_true",
                        help="if configure fails (missing or broken model), stay up and retry every 5 s until the "
                             "model_path file is fixed; without it the process exits with status 1 and the reason, "
                             "so systemd, a supervisor or a launch file's respawn can see the failure")
    args = parser.parse_args(rclpy.utilities.remove_ros_args(argv if argv is not None else sys.argv)[1:])
    stop = init_rclpy_with_ordered_shutdown(argv)

    try:
        node = SerNode()
    except (InvalidParameterValueException, ParameterException) as error:  # one line, not a traceback
        print(f"ser_node: {str(error).split('Reason: ')[-1]}", file=sys.stderr)
        rclpy.shutdown()
        return 2
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    if not args.no_autostart and not start_node(node):
        if not args.wait_for_model:
            node.get_logger().error(f"exiting: configure failed ({node.model_error}); fix model_path, or run with "
                                    "--wait-for-model to stay up and retry")
            node.destroy_node()
            rclpy.shutdown()
            return 1
        node.get_logger().error("configure failed; retrying every 5 s (--wait-for-model)")
        node.create_timer(5.0, lambda: node.state_label() == "unconfigured" and start_node(node))
    spin_until_done(node, executor, stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
