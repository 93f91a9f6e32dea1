"""The node's parameters: name, default, descriptor (description, range, read-only) and whether it is live.

Live parameters take effect at once; the others at the next configure (or activation). config/ser_node.yaml
documents the same table for users.
"""
from __future__ import annotations

from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

from ..audio.segmenter import SegmenterConfig


def describe(text: str, *, low: float | None = None, high: float | None = None, integer: bool = False,
             read_only: bool = False, choices: str = "") -> ParameterDescriptor:
    descriptor = ParameterDescriptor(description=text, read_only=read_only, additional_constraints=choices)
    if low is not None and high is not None:
        if integer:
            descriptor.integer_range = [IntegerRange(from_value=int(low), to_value=int(high), step=1)]
        else:
            descriptor.floating_point_range = [FloatingPointRange(from_value=float(low), to_value=float(high))]
    return descriptor

SNR_GATE_OFF = -100.0
SHORT_SPEECH_S, SHORT_SILENCE_S = SegmenterConfig.short_speech_s, SegmenterConfig.short_silence_s

# name: (default, descriptor, live) -- live parameters take effect at once, others at the next configure.
PARAMETERS: dict[str, tuple[Any, ParameterDescriptor, bool]] = {
    "model_path": ("", describe("ONNX model exported by ser_export; empty = the shipped default model. "
                                "Changing it reloads the model (kept on failure)."), True),
    "device": ("cpu", describe("ONNX Runtime provider preference: cpu, cuda, tensorrt or a comma list; "
                               "unavailable ones fall back to CPU with a warning",
                               choices="cpu|cuda|tensorrt"), False),
    "threads": (0, describe("ONNX Runtime intra-op threads (0 = min(2, cores) for DeepSpectrum models, 1 for voice models)", low=0, high=64,
                            integer=True), False),
    "vad_backend": ("silero", describe("voice-activity detector: silero (ONNX) or webrtc",
                                       choices="silero|webrtc"), False),
    "webrtc_aggressiveness": (2, describe("WebRTC VAD aggressiveness", low=0, high=3, integer=True), False),
    "vad_threshold": (0.5, describe("speech starts at this VAD probability", low=0.01, high=0.99), True),
    "vad_negative_threshold": (0.35, describe("speech continues until the probability falls below this",
                                              low=0.01, high=0.99), True),
    "min_speech_s": (0.25, describe("shorter speech is ignored", low=0.0, high=5.0), True),
    "min_silence_s": (0.5, describe("silence that ends an utterance", low=0.03, high=5.0), True),
    "short_speech_s": (SHORT_SPEECH_S, describe("an utterance with less speech than this so far ends only after "
                                                "short_silence_s (a pause after a sentence's first words is rarely "
                                                "its end; 0 = off)", low=0.0, high=5.0), True),
    "short_silence_s": (SHORT_SILENCE_S, describe("silence that ends an utterance holding under short_speech_s of "
                                                  "speech (min_silence_s when that is longer)", low=0.03, high=5.0),
                        True),
    "min_snr_db": (SNR_GATE_OFF, describe("drop utterances whose SNR estimate over the noise floor is below this "
                                          f"({SNR_GATE_OFF:g} = off; bench/robustness.py measures each setting)",
                                          low=SNR_GATE_OFF, high=60.0), True),
    "foreground_db": (0.0, describe("a frame is speech only this far above the stream's background level (a low "
                                    "percentile of the last 20 s), so a crowd or a TV that talks all the time is not "
                                    "a person (0 = off; bench/scenes.py measures each setting)", low=0.0, high=40.0),
                      True),
    "pre_roll_s": (0.2, describe("audio kept before speech onset", low=0.0, high=2.0), False),
    "post_roll_s": (0.15, describe("audio kept after speech end", low=0.0, high=2.0), True),
    "max_utterance_s": (10.0, describe("longer speech is cut into consecutive utterances", low=1.0,
                                       high=60.0), True),
    "channel": (-1, describe("-1 = mix all channels down; else the 0-based channel to use", low=-1, high=63,
                             integer=True), True),
    "max_chunk_s": (5.0, describe("audio messages longer than this are refused as absurd", low=0.05,
                                  high=60.0), True),
    "gap_tolerance_s": (0.1, describe("header time jumps beyond this close the current utterance",
                                      low=0.001, high=10.0), True),
    "reliability": ("best_effort", describe("audio subscription reliability", choices="best_effort|reliable"),
                    False),
    "qos_depth": (500, describe("audio subscription history depth (500 = 10 s of 20 ms chunks: room for a "
                                "stalled machine or a fast bag replay)", low=1, high=10000, integer=True), False),
    "idle_batch_s": (0.25, describe("while nobody speaks, take audio messages in batches this often (saves CPU; "
                                   "delays only the detection of speech onset, not the result); 0 = take "
                                   "each message through the executor (from 0 to >0 at the next activation)",
                                   low=0.0, high=1.0), True),
    "queue_size": (8, describe("utterances waiting for classification; when full the oldest is dropped",
                               low=1, high=256, integer=True), False),
    "max_batch": (8, describe("queued utterances classified together in one batch", low=1, high=64,
                              integer=True), True),
    "min_confidence": (0.0, describe("below this top-class probability, publish low_confidence_expression",
                                     low=0.0, high=1.0), True),
    "low_confidence_expression": ("neutral", describe("expression published below min_confidence"), True),
    "publish_utterance": (False, describe("also publish each utterance's audio on ~/utterance (typed "
                                          "audio_common_msgs, 16 kHz float32) for downstream ASR"), False),
    "raw_sample_rate": (16000, describe("raw-bytes variant without AudioInfo: sample rate", low=4000,
                                        high=192000, integer=True), True),
    "raw_channels": (1, describe("raw-bytes variant without AudioInfo: channels", low=1, high=64,
                                 integer=True), True),
    "raw_sample_format": ("S16LE", describe("raw-bytes variant without AudioInfo: S16LE, F32LE, ..."), True),
    "raw_stamped": (True, describe("raw-bytes variant: subscribe AudioDataStamped (else AudioData, "
                                   "timestamped on arrival)"), False),
    "encode_while_speaking": (True, describe("voice-encoder models: run the encoder on the audio while the "
                                             "utterance is spoken, so only its last frames and the heads wait "
                                             "for its end (same result; false: all of it after the end)"), True),
    "stage_timing": (False, describe("report per-stage times (intake, wake, features, inference, build, publish; "
                                     "p50/p95 ms over the last 500 utterances) in diagnostics"), True),
    "diagnostics_period_s": (1.0, describe("period of /diagnostics", low=0.1, high=60.0), False),
    "speaker_adaptation": (True, describe("speaker normalisation: judge each utterance against the current "
                                          "speaker's earlier ones. Voice-encoder models (the default): their "
                                          "features minus the running mean of the speaker's earlier features, "
                                          "read by the head trained that way (+0.13 UA in LOSO, model card); "
                                          "DeepSpectrum models: the running mean of log-probabilities removed. "
                                          "Until adaptation_warmup utterances are in, results are unnormalised"),
                           True),
    "adaptation_warmup": (0, describe("utterances heard before adaptation starts (until then: unadapted); 0: the "
                                      "model's own (a voice model's recipe warm-up, in its metadata; 5 for "
                                      "other models)", low=0, high=100, integer=True), True),
    "adaptation_balance": (-1.0, describe("voice models: a voice's offset as the class-balanced mean of its history "
                                          "(each utterance weighed by the plain head's class probabilities, this "
                                          "the smoothing), so a mostly calm person's history is not read as their "
                                          "usual self: +5.7 UA at 70 % neutral, -2.2 on balanced speech; 0: the "
                                          "plain mean; -1: the model's own (its metadata; 0 if it does not say). "
                                          "README Accuracy, bench/voice.py --parts balance",
                                          low=-1.0, high=100.0), True),
    "voice_tracking": (True, describe("voice-encoder models: keep a normalisation state per voice, told apart by "
                                      "the model's speaker embedding (ser_node/inference/voices.py; "
                                      "bench/conversations.py), "
                                      "instead of one state reset after adaptation_reset_s of silence. Embeddings "
                                      "stay in memory; ~/reset_adaptation forgets every voice"), True),
    "voice_threshold": (0.8, describe("cosine similarity to a voice's centroid that joins it (calibrated on uem-es "
                                       "conversations, bench/conversations.py)", low=-1.0, high=1.0), True),
    "voice_same_turn_threshold": (0.65, describe("the same for the voice just heard, when the utterance follows it "
                                                 "within 1 s (a turn continues); at most voice_threshold",
                                                 low=-1.0, high=1.0), True),
    "voice_confident_similarity": (0.75, describe("below this cosine to its voice's centroid, an utterance still "
                                                  "joins the voice but is judged by the plain head (a doubtful "
                                                  "assignment must not judge somebody by another person's mean)",
                                                  low=-1.0, high=1.0), True),
    "voice_merge_threshold": (1.0, describe("two voices whose centroids (each over 3 utterances or more) are this "
                                            "similar become one (1.0: never)", low=-1.0, high=1.0), True),
    "voice_pool_threshold": (0.9, describe("voices whose centroids (the other over 3 utterances or more) are this "
                                           "similar share their histories for normalisation, their ids kept apart: "
                                           "a person the tracker split is still judged by one mean (1.0: never)",
                                           low=-1.0, high=1.0), True),
    "max_voices": (8, describe("voices kept (the node's own and upstream ROS4HRI voices together); the least "
                               "recently heard is forgotten beyond this, and upstream ids beyond it are not "
                               "subscribed to (counted in diagnostics)", low=1, high=64, integer=True), True),
    "voices_file": ("", describe("empty (default): voices (speaker embeddings, normalisation statistics) live in "
                                 "memory only. A path: they are loaded from it at configure (for the same model) and "
                                 "written to it at deactivate, shutdown and after every forget, so a robot remembers "
                                 "its people across restarts; ~/forget_voices removes them from the file too"),
                    False),
    "hri_voices": ("follow", describe(
        "ROS4HRI voices (REP 155). follow: subscribe to /humans/voices/tracked and to each tracked voice's "
        "/humans/voices/<id>/audio, normalise by that id, publish /humans/voices/<id>/expression (nothing happens "
        "without an upstream voice module). publish: no upstream module; publish the node's own voice ids there "
        "(off by default because they are estimates: a voice can split or two people merge, see "
        "bench/results/conversations.md, and another node may own /humans/voices). off: neither. Takes effect "
        "at the next activation", choices="follow|publish|off"), False),
    "mood_time_constant_s": (20.0, describe("moods (~/mood, /humans/voices|persons/<id>/mood): an utterance's "
                                            "evidence counts e^-1 as much after this long (bench/mood.py)",
                                            low=1.0, high=3600.0), False),
    "mood_expiry_s": (60.0, describe("moods: this long without an utterance and the mood is unknown", low=1.0,
                                     high=86400.0), False),
    "mood_evidence": (1.5, describe("moods: evidence (confident utterances just heard) at which the confidence's "
                                    "evidence term is one half", low=0.1, high=100.0), False),
    "mood_rate_hz": (2.0, describe("moods are published at this rate (and on every utterance)", low=0.1,
                                   high=50.0), False),
    "follow_persons": (True, describe("ROS4HRI persons: follow /humans/persons/tracked and each person's "
                                      "voice_id, and publish /humans/persons/<id>/mood"), False),
    "max_persons": (16, describe("persons followed at most (more ids are counted in diagnostics, not followed)",
                                 low=1, high=256, integer=True), False),
    "robot_speaking_topic": ("robot_speaking", describe("std_msgs/Bool, true while the robot's own text-to-speech "
                                                        "plays: what is heard then is not classified"), False),
    "robot_speaking_hangover_s": (0.3, describe("after robot_speaking turns false, audio is still taken as the "
                                                "robot's for this long (the room's echo tail)", low=0.0, high=5.0),
                                  True),
    "robot_speaking_timeout_s": (30.0, describe("robot_speaking true for longer than this is not trusted (a lost "
                                                "false must not deafen the node): the node listens again and "
                                                "diagnostics warn", low=1.0, high=3600.0), True),
    "self_voice_file": ("", describe("the robot's own voice, enrolled with ser_enroll_voice: utterances at least "
                                     "self_voice_threshold similar to it are not classified (voice-encoder models)"),
                        False),
    "self_voice_threshold": (0.8, describe("cosine of an utterance's speaker embedding to the enrolled robot voice "
                                            "at which it is taken for the robot's (bench/scenes.py)", low=-1.0,
                                            high=1.0), True),
    "listen_to": ("everyone", describe("everyone: every voice heard; engaged: publish only for voices matched to a "
                                       "ROS4HRI person whose engagement_status is ENGAGED (needs follow_persons)",
                                       choices="everyone|engaged"), True),
    "publish_rejected": (False, describe("publish what is not classified or published (the robot's speech, its "
                                         "voice, not engaged, below min_snr_db) on ~/rejected (std_msgs/String, "
                                         "JSON) for debugging"),
                         False),
    "adaptation_reset_s": (30.0, describe("no utterance for this long: assume a new speaker, forget the estimate "
                                          "(also ~/reset_adaptation)", low=1.0, high=3600.0), True),
}
