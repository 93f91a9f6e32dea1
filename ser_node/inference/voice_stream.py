"""The voice encoder run while people speak: each utterance's state stepped chunk by chunk as its audio arrives.

The encoder is recurrent, so it need not wait for the utterance's end: `UtteranceEncoder` listens to the segmenter
(audio/segmenter.py's listener) and steps the model's encoder graph on the frames the causal front end
(voice_frontend.StreamingFrontEnd) makes final; the pooling is kept as running sums inside the state. At the end of
the utterance only the front end's last frames, one step and the heads remain, so the time from the VAD's decision
to the result no longer grows with the utterance's length. Even those are done before the decision: late in a
pause (segmenter.PREPARE_LEAD_S before the silence would end the utterance) the utterance would end with the audio
heard so far, so its end is computed then (`may_end`), while the VAD waits for the rest of the silence; at the
decision only the heads remain. Should the person go on, the prepared end is dropped. The state an utterance ends with travels on the Utterance
(`encoded`) to the worker, which runs the heads under the speaker normalisation.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .prosody import ProsodyTracker
from .voice_frontend import StreamingFrontEnd

log = logging.getLogger(__name__)

# The voice model graph (train/voice_encoder.py, VoiceEmotionModel): a step and the heads in one graph.
STEP_INPUTS = ("frames", "h", "c", "sums", "count", "speaker_offset")
PROSODY_INPUT = "prosody"  # models with a prosody head: the utterance's prosody block (1, PROSODY_SIZE)
SCALE_INPUT = "speaker_scale"  # models trained with speaker_scale: each candidate voice's spread, like speaker_offset
STEP_OUTPUTS = ("h_next", "c_next", "sums_next", "count_next")
HEAD_OUTPUTS = ("probabilities", "probabilities_plain", "features", "speaker_embedding")
LAYERS, HIDDEN = 3, 256
STEP_FRAMES = 40  # frames (10 ms each) gathered before a step of the graph
PUSH_SAMPLES = 6400  # audio (400 ms at 16 kHz) gathered before the front end runs


@dataclass
class EncoderState:
    """Where the encoder stands in an utterance: LSTM states and the running sums of every layer's outputs.
    `model` is the classifier that made it (a state from another model means nothing to the current one)."""

    h: np.ndarray = field(default_factory=lambda: np.zeros((LAYERS, 1, HIDDEN), np.float32))
    c: np.ndarray = field(default_factory=lambda: np.zeros((LAYERS, 1, HIDDEN), np.float32))
    sums: np.ndarray = field(default_factory=lambda: np.zeros((2, LAYERS * HIDDEN), np.float64))
    count: np.ndarray = field(default_factory=lambda: np.zeros(1, np.float64))
    model: Any = None
    prosody: np.ndarray | None = None  # (1, PROSODY_SIZE) at the utterance's end, for models with a prosody head

    @property
    def frames(self) -> int:
        return int(self.count[0])


class VoiceStream:
    """One utterance being encoded: `push(samples)` as they arrive, `finish()` for the final state.

    Work is done in blocks: audio goes to the front end once PUSH_SAMPLES have gathered, and frames to the graph
    once STEP_FRAMES have. A graph run costs ~0.15 ms of overhead against ~0.05 ms per frame, and the front end's
    numpy and the segmenter's hand-over have a fixed cost per call too. The node's CPU per second of speech
    (bench/performance.py --voice, each against the previous whole-utterance code in the same run): a step per
    20 ms message on two threads 51 against 40 ms; 100 ms blocks on one thread 41 against 38; 200 ms blocks 38
    against 36 and 40 against 38. In this process (one thread, 40 uem-es clips) 200 ms blocks cost 9.4 ms per
    second of audio, 400 ms blocks 8.5. They would leave up to ~0.4 s of audio (~3 ms of work) for the end, which
    is why the end is prepared during the pause before it (prepare_end). The front end's output does not depend on
    how its input is chunked, so neither does the state."""

    def __init__(self, classifier: Any) -> None:
        self.classifier = classifier
        self.front = StreamingFrontEnd(classifier.frontend_version)
        self.state = EncoderState(model=classifier)
        self._audio: list[np.ndarray] = []
        self._samples = 0
        self._frames: list[np.ndarray] = []
        self._count = 0
        # Measured frame by frame as the audio arrives, like the encoder, so the end has only statistics left.
        self.prosody = ProsodyTracker() if classifier.prosody_size else None
        self._prepared: EncoderState | None = None  # the end, should no more audio come (prepare_end)

    def push(self, samples: np.ndarray) -> None:
        self._prepared = None
        if self.prosody is not None:
            self.prosody.push(samples)
        self._audio.append(samples)
        self._samples += samples.size
        if self._samples < PUSH_SAMPLES:
            return
        self._to_front_end()
        if self._count >= STEP_FRAMES:
            self._step()

    def finish(self) -> EncoderState:
        """The state the utterance ends with: the one prepare_end() made, unless audio came since."""
        return self._prepared if self._prepared is not None else self.prepare_end()

    @property
    def end_prepared(self) -> bool:
        return self._prepared is not None

    def prepare_end(self) -> EncoderState:
        """Computes (and returns) the state the utterance ends with if no more audio comes, so that finish() is
        free until push() is called again. Nothing is committed: the audio so far goes through the front end for
        good, but the frames not yet stepped, the front end's last frames and the prosody statistics (~3 ms on one
        core) make the end's state only, so should the person go on, the stream goes on as if never asked."""
        self._to_front_end()
        end = self.classifier.step(self.state, np.concatenate(self._frames + [self.front.finish_preview()]))
        if self.prosody is not None:
            end.prosody = self.prosody.finish().astype(np.float32)[None]
        self._prepared = end
        return end

    def _to_front_end(self) -> None:
        if self._audio:
            frames = self.front.push(np.concatenate(self._audio))
            self._audio, self._samples = [], 0
            if len(frames):
                self._frames.append(frames)
                self._count += len(frames)

    def _step(self) -> None:
        self.state = self.classifier.step(self.state, np.concatenate(self._frames))
        self._frames, self._count = [], 0


class UtteranceEncoder:
    """The segmenter's listener that encodes each utterance while it is spoken (see the module docstring).

    `classifier()` gives the model in use when an utterance begins; nothing is done for DeepSpectrum models. An
    error while stepping (a model that fails at run time) is counted and logged, and that utterance goes to the
    worker without a state: the worker then encodes it from its audio, so no utterance is lost."""

    block_samples = PUSH_SAMPLES  # the segmenter hands audio over in such blocks (fewer calls; see VoiceStream)

    def __init__(self, classifier: Callable[[], Any], on_error: Callable[[str], None] | None = None,
                 on_end: Callable[[bool], None] | None = None) -> None:
        self._classifier = classifier
        self._on_error = on_error or log.warning
        self._on_end = on_end  # told, per utterance encoded while spoken, whether its end was prepared (diagnostics)
        self._stream: VoiceStream | None = None
        self.errors = 0
        self.steps = 0  # audio blocks and utterance ends this encoder worked on
        self.prepared_ends = 0  # utterances whose end was ready when the VAD decided (may_end)

    def begin(self) -> None:
        classifier = self._classifier()
        self._stream = VoiceStream(classifier) if classifier is not None and classifier.is_voice_model else None

    def audio(self, samples: np.ndarray) -> None:
        if self._stream is not None:
            self._guard(self._stream.push, samples)

    def may_end(self) -> None:
        """The segmenter's word that the utterance ends with the audio handed over so far, should the silence
        now begun last: the end is prepared (VoiceStream.prepare_end) while the VAD waits to be sure."""
        if self._stream is not None:
            self._guard(self._stream.prepare_end)

    def end(self, utterance: Any) -> None:
        stream, self._stream = self._stream, None
        if stream is not None and utterance is not None:
            prepared = stream.end_prepared
            self.prepared_ends += prepared
            utterance.encoded = self._guard(stream.finish)
            if self._on_end is not None and utterance.encoded is not None:
                self._on_end(prepared)

    def _guard(self, work: Callable[..., Any], *args: Any) -> Any:
        self.steps += 1
        try:
            return work(*args)
        except Exception as error:  # ORT raises several types; the worker encodes from the audio instead
            self.errors += 1
            self._stream = None
            self._on_error(f"streaming encoder: {type(error).__name__}: {error}; the utterance is encoded at its end")
            return None
