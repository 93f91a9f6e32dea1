"""Who is speaking, as the node keeps it: the speaker normalisation state, its services and the voices file.

Voice models are judged per voice (inference/voices.py: a tracker of speaker embeddings and one normalisation state
per voice) or with one state reset after silence; DeepSpectrum models adapt their log-probabilities the same way.
This room owns that state and its lock (the worker judges, a service call forgets), `~/reset_adaptation` and
`~/forget_voices`, and the optional voices file. Not to be confused with inference/voices.py (the ROS-free tracker
it uses) or ros/hri_voices.py (the ROS4HRI topics of upstream voices).
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Callable

import numpy as np
from std_srvs.srv import Trigger

from ..inference.adaptation import DEFAULT_WARMUP, SpeakerAdapter, adapt_log_probabilities, starts_new_speaker
from ..inference.classifier import Classifier, Inference
from ..inference.voices import VoiceNormaliser, VoiceSettings, VoiceTracker, load_voices, save_voices
from .worker import Pending


class VoiceState:
    """`param` reads the node's parameters, `classifier` gives the model in use; `on_own_voices` hears the ids of
    the voices the node's own tracker holds whenever they may have changed (ROS4HRI publish mode)."""

    def __init__(self, node: Any, param: Callable[[str], Any], classifier: Callable[[], Classifier | None]) -> None:
        self.node, self.p, self._classifier = node, param, classifier
        self.lock = threading.Lock()  # the worker adapts, a service call resets
        self.adapter = SpeakerAdapter(warmup=self._warmup())
        self.voices: VoiceNormaliser | None = None  # the voices heard (memory only unless voices_file)
        self.on_own_voices: Callable[[list[str]], None] = lambda _held: None
        self.on_forget: Callable[[list[str] | None], None] = lambda _ids: None  # what else forgets voices (moods)
        self.reject: Callable[[Inference], str] | None = None  # the robot's own voice (ros/listening.py)
        self.last_voice = ""
        self.voices_file_error = ""
        self._last_utterance_end = -float("inf")
        self._services: list[Any] = []

    # ------------------------------------------------------------ services
    def create_services(self) -> None:
        self._services.append(self.node.create_service(Trigger, "~/reset_adaptation", self._reset_service))
        try:  # ~/forget_voices (ser_node_interfaces/ForgetVoices), if that package is installed (see interfaces/)
            from ser_node_interfaces.srv import ForgetVoices
        except ImportError:
            self.node.get_logger().warning("ser_node_interfaces is not installed: no ~/forget_voices service "
                                           "(~/reset_adaptation still forgets every voice)")
            return
        self._services.append(self.node.create_service(ForgetVoices, "~/forget_voices", self._forget_service))

    def destroy_services(self) -> None:
        for service in self._services:
            self.node.destroy_service(service)
        self._services.clear()

    def _reset_service(self, _request: Any, response: Any) -> Any:
        """Forgets the speaker state: the single adapter and every tracked voice (embeddings and statistics)."""
        with self.lock:
            heard = self.adapter.count + (self.voices.utterances if self.voices else 0)
            voices = len(self.voices.tracker.voices) if self.voices else 0
        self.forget(None)
        response.success = True
        response.message = (f"forgot {heard} utterance(s) of the previous speaker"
                            + (f" ({voices} voice(s))" if voices else ""))
        return response

    def _forget_service(self, request: Any, response: Any) -> Any:
        wanted = None if request.all_voices else list(request.voice_ids)
        response.forgotten = self.forget(wanted)
        missing = [] if wanted is None else [v for v in wanted if v not in response.forgotten]
        response.success = not missing
        response.message = (f"forgot {len(response.forgotten)} voice(s)"
                            + (f"; not held: {', '.join(missing[:10])}" if missing else ""))
        return response

    # ------------------------------------------------------------ state
    def forget(self, voice_ids: list[str] | None) -> list[str]:
        """Drops voices' embeddings and statistics; None: every voice and the single adapter too (a fresh start,
        ~/reset_adaptation). Returns the ids that were held."""
        with self.lock:
            gone = self.voices.tracker.forget(voice_ids) if self.voices is not None else []
            if voice_ids is None:
                self.adapter = self._new_adapter()
                self.voices = None
            held = list(self.voices.tracker.voices) if self.voices is not None else []
        if gone or voice_ids is None:
            self.on_own_voices(held)
            self.save()  # forgotten means forgotten on disk too
        self.on_forget(None if voice_ids is None else list(voice_ids))
        return gone

    def model_changed(self) -> None:
        """What the state averaged belongs to the old model's feature space: start afresh."""
        with self.lock:
            self.adapter = self._new_adapter()
            self.voices = None

    def _warmup(self) -> int:
        """The adaptation_warmup parameter, or with 0 the model's own (Classifier.recommended_warmup)."""
        chosen = int(self.p("adaptation_warmup"))
        if chosen:
            return chosen
        classifier = self._classifier()
        return classifier.recommended_warmup if classifier else DEFAULT_WARMUP

    def _new_adapter(self) -> SpeakerAdapter:
        """Warm-up from the parameter (or the model); history, shrinkage and balance from a voice model's metadata
        (what its LOSO figures were measured with; balance from its parameter where set), the log-probability
        adapter's own defaults otherwise."""
        return SpeakerAdapter(warmup=self._warmup(), **self._adapter_settings())

    def _adapter_settings(self) -> dict:
        """History, shrinkage and balance from a voice model's metadata, balance overridden by the
        adaptation_balance parameter where it is not -1."""
        classifier = self._classifier()
        settings = dict(classifier.adapter_settings) if classifier else {}
        if float(self.p("adaptation_balance")) >= 0:
            settings["balance"] = float(self.p("adaptation_balance"))
        return settings

    def _current_adapter(self, item: Pending) -> SpeakerAdapter:
        """The current speaker's adapter (call with the lock held): a fresh one after `adaptation_reset_s` without
        an utterance (a new speaker is likely), or when its settings changed."""
        changed = (self.adapter.warmup != self._warmup()
                   or self.adapter.balance != self._adapter_settings().get("balance", 0.0))
        if changed or starts_new_speaker(item.utterance.start, self._last_utterance_end,
                                         float(self.p("adaptation_reset_s"))):
            self.adapter = self._new_adapter()
        self._last_utterance_end = item.utterance.end
        return self.adapter

    def _settings(self) -> VoiceSettings:
        return VoiceSettings(threshold=float(self.p("voice_threshold")),
                             same_turn_threshold=min(float(self.p("voice_same_turn_threshold")),
                                                     float(self.p("voice_threshold"))),
                             confident_similarity=float(self.p("voice_confident_similarity")),
                             merge_threshold=float(self.p("voice_merge_threshold")),
                             pool_threshold=float(self.p("voice_pool_threshold")),
                             max_voices=int(self.p("max_voices")), warmup=self._warmup(),
                             **self._adapter_settings())

    def _normaliser(self) -> VoiceNormaliser:
        """The voices heard so far (call with the lock held); forgotten when their settings change."""
        settings = self._settings()
        if self.voices is None or self.voices.tracker.settings != settings:
            self.voices = VoiceNormaliser(settings)
        return self.voices

    # ------------------------------------------------------------ judging (the worker's thread)
    def judge(self, classifier: Classifier, encoded: Any, item: Pending) -> Inference:
        """Voice models: the probabilities to publish under the node's speaker normalisation: per tracked voice
        (voice_tracking), one state reset after silence, or none (speaker_adaptation off)."""
        if not self.p("speaker_adaptation"):
            item.heard_as = item.voice_id
            result = classifier.infer([encoded])[0]
            result.rejected = self.reject(result) if self.reject is not None else ""
            return result
        with self.lock:
            if item.voice_id:  # an upstream module named the voice: robot_speaking gates it, not the embedding
                result, voice = self._normaliser().judge_named(classifier, encoded, item.voice_id, item.utterance.end)
            elif self.p("voice_tracking"):
                result, voice = self._normaliser().judge(classifier, encoded, item.utterance.start,
                                                         item.utterance.end, self.reject)
                if voice is None:  # rejected (the robot's own voice): no voice opened or changed
                    return result
            else:
                return classifier.infer_adapted(encoded, self._current_adapter(item), self.reject)
            item.heard_as = self.last_voice = voice.id
            held = list(self.voices.tracker.voices) if self.voices is not None else []
        if not item.voice_id:
            self.on_own_voices(held)
        return result

    def adapt(self, item: Pending, probabilities: np.ndarray) -> np.ndarray:
        """DeepSpectrum models: the same SpeakerAdapter over log-probabilities that bench/accuracy.py
        --methods adaptation measured."""
        if not self.p("speaker_adaptation"):
            return probabilities
        with self.lock:
            if item.voice_id:  # an upstream voice: its own state
                item.heard_as = item.voice_id
                voice = self._normaliser().tracker.named(item.voice_id, item.utterance.end)
                return adapt_log_probabilities(voice.adapter, probabilities)
            return adapt_log_probabilities(self._current_adapter(item), probabilities)

    # ------------------------------------------------------------ the voices file
    def load(self) -> None:
        """The voices saved in voices_file for this model (configure); none, with a warning, if it cannot be read."""
        path, self.voices_file_error = str(self.p("voices_file")), ""
        classifier = self._classifier()
        if not path or classifier is None or not os.path.exists(path):
            return
        try:
            with self.lock:
                count = load_voices(self._normaliser().tracker, Path(path), classifier.model_id)
            self.node.get_logger().info(f"remembered {count} voice(s) from {path}")
        except ValueError as error:
            self.voices_file_error = str(error)
            self.voices = None
            self.node.get_logger().warning(f"voices_file: {error}; starting with no voice")

    def save(self) -> None:
        """Writes the voices to voices_file, if one is named (deactivate, shutdown, and every forget)."""
        path = str(self.p("voices_file"))
        classifier = self._classifier()
        if not path or classifier is None:
            return
        try:
            with self.lock:
                save_voices(self.voices.tracker if self.voices is not None else VoiceTracker(), Path(path),
                            classifier.model_id)
            self.voices_file_error = ""
        except OSError as error:
            self.voices_file_error = f"{path}: cannot write ({error})"
            self.node.get_logger().error(f"voices_file: {self.voices_file_error}")

    def values(self) -> dict[str, str]:
        values: dict[str, str] = {}
        if self.p("speaker_adaptation"):
            voices = self.voices if self.p("voice_tracking") else None
            if voices is not None:
                values.update(adaptation_utterances=str(voices.utterances),
                              voices_tracked=str(len(voices.tracker.voices)),
                              voices_forgotten=str(voices.tracker.forgotten),
                              voices_merged=str(voices.tracker.merged), last_voice=self.last_voice)
            else:
                values["adaptation_utterances"] = str(self.adapter.count)
            values["adaptation_active"] = str(self.adapter.active)
            classifier = self._classifier()
            if classifier is not None:
                values["adaptation_space"] = "features" if classifier.is_voice_model else "log-probabilities"
        if self.voices_file_error:
            values["voices_file_error"] = self.voices_file_error
        return values
