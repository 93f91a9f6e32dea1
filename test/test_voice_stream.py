"""The encoder run while people speak: the causal front end, the stepped graph and the segmenter's listener give
the same features live as offline, on real speech, in any chunking."""
from __future__ import annotations

import numpy as np
import pytest

from ser_node.audio.decode import load_audio
from ser_node.audio.segmenter import Segmenter, SegmenterConfig
from ser_node.audio.stream import StreamProcessor
from ser_node.audio.vad import make_vad
from ser_node.inference.voice_frontend import StreamingFrontEnd, encoder_input

pytest.importorskip("resemblyzer", reason="the encoder's weights come from the resemblyzer wheel")

NAMES = ["Ira_04", "Asco_03", "Miedo_03", "Alegria_09", "Neutro_05", "Tristeza_05", "Sorpresa_03"]


@pytest.fixture(scope="module")
def clips(corpus_dir):
    return [load_audio(corpus_dir / f"s{i:02d}" / f"{NAMES[i % 7]}.flac") for i in range(8)]


def streamed(front: StreamingFrontEnd, audio: np.ndarray, sizes: list[int]) -> np.ndarray:
    out, start, i = [], 0, 0
    while start < audio.size:
        out.append(front.push(audio[start:start + sizes[i % len(sizes)]]))
        start += sizes[i % len(sizes)]
        i += 1
    return np.concatenate(out + [front.finish()])


@pytest.mark.parametrize("version", [2, 3, 4])
def test_front_end_live_equals_offline_in_any_chunking(clips, version):
    """20 ms messages, odd sizes (1, 7, 333, 4801 samples) and whole: the same frames, on real speech with a
    quiet pre-roll, a long pause and a trailing silence; front ends 3 (late reverberation suppressed) and 4 (WPE) too."""
    rng = np.random.default_rng(0)
    for clip in clips:
        audio = np.concatenate([1e-3 * rng.standard_normal(3200), clip, np.zeros(12000), clip[: clip.size // 2],
                                1e-3 * rng.standard_normal(2400)]).astype(np.float32)
        offline = encoder_input(audio, version)
        assert offline.shape[1] == 40 and np.isfinite(offline).all()
        for sizes in ([320], [1, 7, 333, 4801], [audio.size]):
            live = streamed(StreamingFrontEnd(version), audio, sizes)
            np.testing.assert_allclose(live, offline, rtol=1e-5, atol=1e-6 * float(offline.max()))
        # the long pause is trimmed as the wheel trims it: well under the audio's 10 ms frames
        assert offline.shape[0] < audio.size // 160 - 50


@pytest.mark.parametrize("version", [2, 3, 4])
def test_front_end_is_causal(clips, version):
    """What comes out after pushing a prefix never changes when more audio follows: the frames of a prefix are
    the first frames of the whole (the gain is the level heard so far, the trimming waits for its look-ahead)."""
    audio = np.concatenate(clips[:2])
    whole = encoder_input(audio, version)
    for cut in (4000, 16000, 31234):
        front = StreamingFrontEnd(version)
        early = front.push(audio[:cut])
        assert 0 < len(early) < len(whole)
        np.testing.assert_allclose(early, whole[: len(early)], rtol=1e-5, atol=1e-6 * float(whole.max()))


@pytest.mark.parametrize("version", [2, 3, 4])
def test_a_previewed_end_changes_nothing(clips, version):
    """finish_preview() at a pause gives what finish() gives there, and the front end goes on as if it had never
    been asked: the frames of the whole utterance are those of a front end never previewed (bit for bit)."""
    audio = np.concatenate([clips[0], np.zeros(4800, np.float32), clips[1]])
    plain = streamed(StreamingFrontEnd(version), audio, [1600])
    front, out = StreamingFrontEnd(version), []
    for start in range(0, audio.size, 1600):
        out.append(front.push(audio[start:start + 1600]))
        if start in (clips[0].size // 1600 * 1600, 32000):
            ended_here = streamed(StreamingFrontEnd(version), audio[:start + 1600], [1600])
            np.testing.assert_array_equal(np.concatenate(out + [front.finish_preview()]), ended_here)
    np.testing.assert_array_equal(np.concatenate(out + [front.finish()]), plain)


def test_an_end_prepared_at_a_pause_is_the_end(voice_model, clips):
    """VoiceStream.prepare_end() at a pause: finish() then returns exactly the prepared state, which is the state
    the utterance ends with unprepared; and when the person goes on, the prepared end is dropped and the state
    at the real end is the one of a stream never prepared."""
    from ser_node.inference.classifier import Classifier
    from ser_node.inference.voice_stream import VoiceStream

    classifier = Classifier(voice_model["path"])
    audio = np.concatenate([clips[2], np.zeros(4000, np.float32), clips[3]])
    pause = clips[2].size + 2400

    def stream(pieces: list[np.ndarray], prepare_after: int | None) -> tuple[VoiceStream, object]:
        voice, prepared = VoiceStream(classifier), None
        for i, piece in enumerate(pieces):
            voice.push(piece)
            if i == prepare_after:
                prepared = voice.prepare_end()
        return voice, prepared

    def same_state(a, b) -> None:
        assert a.frames == b.frames
        for x, y in ((a.h, b.h), (a.c, b.c), (a.sums, b.sums)):
            np.testing.assert_allclose(x, y, rtol=0, atol=1e-5 * float(np.abs(y).max()))

    blocks = lambda a: [a[i:i + 1600] for i in range(0, a.size, 1600)]  # noqa: E731
    head = blocks(audio[:pause])
    voice, prepared = stream(head, len(head) - 1)
    assert voice.end_prepared and voice.finish() is prepared
    unprepared = stream(head, None)[0].finish()
    same_state(prepared, unprepared)  # the graph stepped in other chunks: float32 rounding apart
    voice, _ = stream(head + blocks(audio[pause:]), len(head) - 1)
    assert not voice.end_prepared
    went_on, never = voice.finish(), stream(head + blocks(audio[pause:]), None)[0].finish()
    same_state(went_on, never)


@pytest.mark.parametrize("version", [2, 3, 4])
def test_front_end_keeps_what_the_vad_rejects_whole(version):
    """Silence, noise and utterances shorter than one VAD window still give finite frames (the wheel's rule: an
    utterance trimmed to nothing is kept whole), and the same frames chunked."""
    rng = np.random.default_rng(1)
    for audio in (np.zeros(8000, np.float32), 0.01 * rng.standard_normal(16000).astype(np.float32),
                  0.2 * rng.standard_normal(300).astype(np.float32), np.zeros(1, np.float32)):
        offline = encoder_input(audio, version)
        assert offline.shape[0] >= 1 and np.isfinite(offline).all()
        np.testing.assert_allclose(streamed(StreamingFrontEnd(version), audio, [160]), offline, rtol=1e-5, atol=1e-9)


class Recorder:
    """A segmenter listener that keeps what it was told."""

    def __init__(self) -> None:
        self.current: list[np.ndarray] | None = None
        self.ended: list[tuple[np.ndarray, object]] = []

    def begin(self) -> None:
        assert self.current is None, "begin() twice without end()"
        self.current = []
        self.before_pause: set[int] = set()  # pieces handed over just before a may_end() (may be short)

    def audio(self, samples: np.ndarray) -> None:
        self.current.append(samples.copy())

    def end(self, utterance) -> None:
        if self.current and getattr(self, "block_samples", 0):
            assert all(piece.size >= self.block_samples for i, piece in enumerate(self.current[:-1])
                       if i not in self.before_pause)
        heard = np.concatenate(self.current) if self.current else np.zeros(0, np.float32)
        self.ended.append((heard, utterance))
        self.current = None


class PauseRecorder(Recorder):
    """A listener that also hears the pauses (`may_end`): notes how much audio it held at each, and whether audio
    came after the last one."""

    def begin(self) -> None:
        super().begin()
        self.pauses: list[int] = []
        self.after_pause = False

    def audio(self, samples: np.ndarray) -> None:
        self.after_pause = True
        super().audio(samples)

    def may_end(self) -> None:
        self.pauses.append(sum(piece.size for piece in self.current))
        self.before_pause.add(len(self.current) - 1)
        self.after_pause = False

    def end(self, utterance) -> None:
        self.ended_at_pause = (self.pauses[-1] if self.pauses and not self.after_pause else None)
        super().end(utterance)
        self.ended[-1] += (self.ended_at_pause,)


def speech_with_pauses(clips: list[np.ndarray]) -> np.ndarray:
    rng = np.random.default_rng(2)
    parts = []
    for clip in clips + [clips[0][4000:10000]]:  # and a short piece, which min_speech_s 0.8 drops
        parts += [clip, np.zeros(int(rng.uniform(0.1, 1.2) * 16000), np.float32)]
    audio = np.concatenate(parts)
    return (audio + 1e-3 * rng.standard_normal(audio.size)).astype(np.float32)


@pytest.mark.parametrize("listener", [Recorder, PauseRecorder], ids=["listener", "pauses_heard"])
@pytest.mark.parametrize("block", [0, 3200], ids=["every_frame", "blocks"])
@pytest.mark.parametrize("config", [SegmenterConfig(), SegmenterConfig(max_utterance_s=1.0),
                                    SegmenterConfig(min_speech_s=0.8), SegmenterConfig(post_roll_s=0.0)],
                         ids=["default", "max_length", "too_short", "no_post_roll"])
def test_the_listener_hears_each_utterance_exactly(clips, config, block, listener):
    """Every utterance the segmenter emits was handed to its listener sample for sample while it was spoken (in
    pieces of at least `block_samples` but the last, when the listener asks for blocks); utterances it drops (too
    short) end with None; begin/end always pair. A listener that hears pauses (`may_end`) held, at the last pause
    of every utterance that silence ended, exactly the utterance's audio, and nothing came after."""
    recorder = listener()
    recorder.block_samples = block
    utterances = StreamProcessor(Segmenter(make_vad("silero"), config, listener=recorder)).feed_recording(
        speech_with_pauses(clips), 16000)
    emitted = [(heard, u) for heard, u, *_ in recorder.ended if u is not None]
    assert [u for _, u in emitted] == utterances and len(utterances) >= 4
    for heard, utterance in emitted:
        np.testing.assert_array_equal(heard, utterance.audio)
    if listener is PauseRecorder:
        ends = [(u, at_pause) for _, u, at_pause in recorder.ended if u is not None]
        assert all(at_pause == u.audio.size for u, at_pause in ends if u.reason == "silence")
        assert sum(u.reason == "silence" for u, _ in ends) >= 2
    dropped = [heard for heard, u, *_ in recorder.ended if u is None]
    if config.min_speech_s > 0.5:
        assert dropped, "a min_speech_s this long drops some of these clips"
    if config.max_utterance_s < 2:
        assert any(u.reason == "max_length" for u in utterances)


def test_encoded_while_spoken_equals_encoded_after(voice_model, clips):
    """The node's path (the encoder listening to the segmenter, 20 ms messages) against the classifier encoding
    each emitted utterance's audio afterwards: the same features, probabilities and speaker embedding; and almost
    all of each utterance's frames were stepped before its end."""
    from ser_node.inference.classifier import Classifier
    from ser_node.inference.voice_stream import UtteranceEncoder

    classifier = Classifier(voice_model["path"])
    encoder = UtteranceEncoder(lambda: classifier)
    utterances = StreamProcessor(Segmenter(make_vad("silero"), listener=encoder)).feed_recording(
        speech_with_pauses(clips), 16000)
    assert len(utterances) >= 6 and encoder.errors == 0
    offsets = [np.zeros(1536, np.float32), np.full(1536, 0.1, np.float32)]
    for utterance in utterances:
        live = utterance.encoded
        assert live is not None and live.model is classifier
        after = classifier.prepare([utterance.audio])[0]
        assert live.frames == after.frames
        for offset in offsets:
            (a,), (b,) = classifier.infer([live], [offset]), classifier.infer([after], [offset])
            np.testing.assert_allclose(a.features, b.features, atol=1e-4)
            np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-5)
            np.testing.assert_allclose(a.speaker_embedding, b.speaker_embedding, atol=1e-5)


def test_worker_encodes_again_when_the_model_changed(voice_model, clips):
    """A state made by another model (swapped mid-utterance) or none at all (streaming off or failed): the worker
    encodes the audio with the model in use, so the utterance is still classified."""
    from ser_node.audio.segmenter import Utterance
    from ser_node.inference.classifier import Classifier
    from ser_node.ros.worker import Pending, Worker

    old, new = Classifier(voice_model["path"]), Classifier(voice_model["path"])
    utterance = Utterance(clips[0], 0.0, clips[0].size / 16000, "silence")
    utterance.encoded = old.encode(clips[0])
    item = Pending(utterance, "mic", 0.0)
    assert Worker._encoded(item, old) is utterance.encoded
    again = Worker._encoded(item, new)
    assert again is not utterance.encoded and again.model is new and again.frames == utterance.encoded.frames
    utterance.encoded = None
    assert Worker._encoded(item, new).model is new


def test_a_failing_step_loses_no_utterance(voice_model, clips):
    """A model that fails while stepping (its session gone mid-utterance): the error is counted and reported once
    per utterance, the utterance comes out without a state, and the next utterance is encoded again."""
    from ser_node.inference.classifier import Classifier
    from ser_node.inference.voice_stream import UtteranceEncoder

    classifier, errors = Classifier(voice_model["path"]), []
    encoder = UtteranceEncoder(lambda: classifier, errors.append)
    segmenter = Segmenter(make_vad("silero"), listener=encoder)
    session = classifier.session
    processor = StreamProcessor(segmenter)
    first = processor.feed_recording(np.concatenate([clips[0][:16000], np.zeros(16000, np.float32)]), 16000)
    classifier.session = None  # from now on every step raises
    broken = processor.feed_recording(np.concatenate([clips[1], np.zeros(16000, np.float32)]), 16000, t0=10.0)
    classifier.session = session
    healed = processor.feed_recording(np.concatenate([clips[2], np.zeros(16000, np.float32)]), 16000, t0=20.0)
    assert [u.encoded is not None for u in first + broken + healed] == [True, False, True]
    assert encoder.errors == 1 and len(errors) == 1 and "streaming encoder" in errors[0]
