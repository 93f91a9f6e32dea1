"""Chunk decoding for both audio_common_msgs generations, validation, resampling and segmentation on real speech."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import corpus_clip
from ros_harness import encode, speech_stream

from ser_node.audio.decode import load_audio, resample
from ser_node.audio.segmenter import Segmenter, SegmenterConfig
from ser_node.audio.stream import AudioChunk, ChunkError, StreamProcessor, decode_raw, decode_typed
from ser_node.audio.vad import SileroVad, WebRtcVad, make_vad
from ser_node.audio.wire import RAW_AUDIO_MSG_DEFINITIONS, RawFormat, raw_to_chunk, typed_to_chunk


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    return [load_audio(corpus_clip("s09", name)) for name in ("Ira_04", "Tristeza_05", "Sorpresa_06")]


def run_stream(stream: np.ndarray, rate: int, channels: int, chunk_s: float, vad: str = "silero",
               config: SegmenterConfig | None = None, t0: float = 50.0):
    audio = resample(stream, 16000, rate)
    frames = np.stack([audio] * channels, axis=1)
    processor = StreamProcessor(Segmenter(make_vad(vad), config))
    return processor.feed_recording(frames, rate, chunk_s, t0), processor


@pytest.mark.parametrize("rate,channels,chunk_s", [(16000, 1, 0.02), (44100, 2, 0.1), (48000, 1, 0.256),
                                                   (8000, 1, 0.03)])
def test_real_speech_is_cut_into_one_utterance_per_clip(clips, rate, channels, chunk_s):
    stream, bounds = speech_stream(clips, silence_s=1.0)
    utterances, processor = run_stream(stream, rate, channels, chunk_s)
    assert len(utterances) == len(bounds)
    for utterance, (start, end) in zip(utterances, bounds):
        assert start - 0.45 <= utterance.start - 50.0 <= start + 0.6
        assert end - 0.6 <= utterance.end - 50.0 <= end + 0.45
        assert abs(utterance.duration - (utterance.end - utterance.start)) < 1e-6
    assert processor.stats.dropped == 0 and processor.segmenter.stats.gaps == 0


def test_typed_formats_decode_to_the_same_signal(clips):
    signal = clips[0][:4000]
    reference = decode_typed(1, 1, 16000, {"float32_data": signal}, 0.0).samples[:, 0]
    for fmt, code, tolerance in (("int16", 8, 1e-4), ("int32", 2, 1e-6), ("int8", 16, 2e-2), ("uint8", 32, 2e-2)):
        chunk = decode_typed(code, 1, 16000, {f"{fmt}_data": encode(signal, fmt)}, 0.0)
        assert np.abs(chunk.samples[:, 0] - reference).max() < tolerance, fmt
    stereo = decode_typed(8, 2, 16000, {"int16_data": encode(np.repeat(signal, 2), "int16")}, 0.0)
    assert stereo.samples.shape == (4000, 2)


def test_raw_bytes_formats_decode(clips):
    signal = clips[1][:3200]
    for name, dtype, scale, offset in (("S16LE", "<i2", 32767, 0), ("S32LE", "<i4", 2**31 - 1, 0),
                                       ("F32LE", "<f4", 1.0, 0), ("U8", "u1", 127, 128)):
        data = (np.round(signal * scale) + offset).astype(dtype).tobytes() if name != "F32LE" else signal.astype(
            dtype).tobytes()
        chunk = decode_raw(data, name, 1, 16000, 3.0)
        assert np.abs(chunk.samples[:, 0] - signal).max() < 1.5 / max(scale, 127) + 1e-6, name


def test_bad_chunks_raise_with_a_reason():
    cases = [
        (lambda: decode_typed(99, 1, 16000, {"int16_data": [0] * 10}, 0.0), "unknown_format"),
        (lambda: decode_typed(8, 2, 16000, {"int16_data": [1, 2, 3]}, 0.0), "bad_length"),
        (lambda: decode_typed(8, 1, 16000, {"int16_data": []}, 0.0), "empty"),
        (lambda: decode_typed(8, 1, 100, {"int16_data": [0] * 10}, 0.0), "bad_rate"),
        (lambda: decode_typed(8, 0, 16000, {"int16_data": [0] * 10}, 0.0), "bad_channels"),
        (lambda: decode_raw(b"\x00\x01\x02", "S16LE", 1, 16000, 0.0), "bad_length"),
        (lambda: decode_raw(b"\x00\x01", "MP3", 1, 16000, 0.0), "unknown_format"),
    ]
    for make, reason in cases:
        with pytest.raises(ChunkError) as error:
            make()
        assert error.value.reason == reason
    processor = StreamProcessor(Segmenter(WebRtcVad()))
    for samples, reason in ((np.full((320, 1), np.nan, np.float32), "non_finite"),
                            (np.zeros((16000 * 6, 1), np.float32), "too_large")):
        with pytest.raises(ChunkError, match=reason):
            processor.feed(AudioChunk(samples, 16000, 0.0))
    assert processor.stats.bad_chunks == {"non_finite": 1, "too_large": 1}


def test_raw_variant_messages_from_their_msg_definitions(clips):
    """The raw-bytes generation is not built here: its classes come from the .msg text via rosbags."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.LATEST)
    types = {}
    for name, text in RAW_AUDIO_MSG_DEFINITIONS.items():
        types.update(get_types_from_msg(text, name))
    store.register(types)
    AudioData = store.types["audio_common_msgs/msg/AudioData"]
    AudioDataStamped = store.types["audio_common_msgs/msg/AudioDataStamped"]
    AudioInfo = store.types["audio_common_msgs/msg/AudioInfo"]
    Header = store.types["std_msgs/msg/Header"]
    Time = store.types["builtin_interfaces/msg/Time"]

    signal = resample(clips[2][:8000], 16000, 48000)
    stereo = np.stack([signal, signal * 0.5], axis=1).reshape(-1)
    payload = np.frombuffer((np.round(stereo * 32767)).astype("<i2").tobytes(), dtype=np.uint8)
    info = AudioInfo(channels=2, sample_rate=48000, sample_format="S16LE", bitrate=0, coding_format="wave")
    msg = AudioDataStamped(header=Header(stamp=Time(sec=12, nanosec=500_000_000), frame_id="mic"),
                           audio=AudioData(data=payload))
    # Round trip through CDR, as in a bag, then into the node's converter.
    msg = store.deserialize_cdr(store.serialize_cdr(msg, AudioDataStamped.__msgtype__), AudioDataStamped.__msgtype__)
    chunk = raw_to_chunk(msg, RawFormat.from_info(info), fallback_time=0.0)
    assert chunk.rate == 48000 and chunk.samples.shape == (signal.size, 2) and chunk.time == 12.5
    np.testing.assert_allclose(chunk.samples[:, 1], signal * 0.5, atol=1e-4)
    unstamped = raw_to_chunk(AudioData(data=payload), RawFormat(2, 48000, "S16LE"), fallback_time=7.0)
    assert unstamped.time == 7.0
    with pytest.raises(ChunkError, match="coding format"):
        raw_to_chunk(msg, RawFormat(2, 48000, "S16LE", "mp3"), 0.0)


def test_typed_message_conversion_with_real_classes(clips):
    pytest.importorskip("audio_common_msgs", reason="needs the interface packages built by scripts/setup.sh")
    from ros_harness import typed_chunks

    msg = typed_chunks(clips[0][:1600], 44100, 2, "int16", 0.1, 99.25)[0]
    chunk = typed_to_chunk(msg, fallback_time=0.0)
    assert chunk.rate == 44100 and chunk.samples.shape[1] == 2 and abs(chunk.time - 99.25) < 1e-6


def test_long_monologue_is_cut_without_losing_audio(clips):
    monologue = np.concatenate(clips)  # about 8 s of continuous speech, no silence between clips
    config = SegmenterConfig(max_utterance_s=2.0, min_silence_s=1.0)
    stream = np.concatenate([np.zeros(8000, np.float32), monologue, np.zeros(24000, np.float32)])
    utterances, processor = run_stream(stream, 16000, 1, 0.02, config=config, t0=50.0)
    assert processor.segmenter.stats.cut_at_max_length >= 3
    assert all(u.duration <= 2.0 + 0.04 for u in utterances)
    for previous, following in zip(utterances, utterances[1:]):
        if previous.reason == "max_length":
            assert abs(following.start - previous.end) < 1e-6  # consecutive: nothing between them is lost
    covered = utterances[-1].end - utterances[0].start
    assert covered >= monologue.size / 16000 - 0.6
    # sample for sample: the utterances laid end to end are the input between the first start and the last end
    first = int(round((utterances[0].start - 50.0) * 16000))
    joined = np.concatenate([u.audio for u in utterances])
    np.testing.assert_allclose(joined, stream[first:first + joined.size], atol=1e-6)


def test_gaps_and_rate_changes_close_the_utterance(clips):
    processor = StreamProcessor(Segmenter(SileroVad()))
    speech = clips[0]
    half = speech.size // 2
    out = processor.feed(AudioChunk(speech[:half, None], 16000, 10.0))
    assert processor.segmenter.speaking
    # 2 s of audio missing (dropped chunks): the first half is closed as its own utterance.
    out += processor.feed(AudioChunk(speech[half:, None], 16000, 10.0 + half / 16000 + 2.0))
    assert len(out) == 1 and out[0].reason == "gap" and out[0].end <= 10.0 + half / 16000 + 1e-6
    # A rate change is a discontinuity too.
    out += processor.feed(AudioChunk(resample(speech, 16000, 48000)[:, None], 48000, 30.0))
    assert processor.segmenter.stats.gaps == 2


def test_hysteresis_and_min_speech():
    class Scripted:
        frame_samples = 512

        def __init__(self, probabilities):
            self.values = iter(probabilities)

        def reset(self):
            pass

        def __call__(self, frame):
            return next(self.values)

    frame_s = 512 / 16000
    # Starts at 0.6, stays through 0.4 (above the negative threshold 0.35), ends after 10 quiet frames.
    probabilities = [0.1] * 5 + [0.6] * 10 + [0.4] * 5 + [0.6] * 5 + [0.1] * 12 + [0.9] * 2 + [0.1] * 12
    segmenter = Segmenter(Scripted(probabilities), SegmenterConfig(min_silence_s=10 * frame_s - 1e-6,
                                                                   pre_roll_s=0.0, post_roll_s=0.0,
                                                                   short_speech_s=0.0))
    out = segmenter.push(np.zeros(512 * len(probabilities), np.float32), 0.0)
    assert len(out) == 1
    assert abs(out[0].start - 5 * frame_s) < 1e-9 and abs(out[0].duration - 20 * frame_s) < 1e-9
    assert segmenter.stats.too_short == 1  # the two-frame blip


def test_vad_backends_tell_speech_from_silence(clips):
    for vad in (SileroVad(), WebRtcVad(2)):
        n = vad.frame_samples
        speech = np.array([vad(clips[0][i : i + n]) for i in range(0, clips[0].size - n, n)])
        vad.reset()
        silence = np.array([vad(np.zeros(n, np.float32)) for _ in range(30)])
        assert speech.mean() > 0.4 and silence.mean() < 0.1, type(vad).__name__


def test_utterance_snr_estimate_tracks_the_true_snr(clips):
    """SNR over the noise floor, on real speech in a robot's fan noise: within 1.5 dB of the true per-clip SNR
    for voiced clips; for a clip with long quiet stretches the estimate (voiced frames only) is higher."""
    pytest.importorskip("audiomentations", reason="the noise comes from ser_node.train.acoustics (train extra)")
    from ser_node.train.acoustics import mix_at_snr, robot_noise

    stream, bounds = speech_stream(clips, silence_s=1.5)
    speech_rms = float(np.sqrt(np.mean(np.concatenate(clips) ** 2)))
    for snr in (20.0, 10.0):
        noisy = mix_at_snr(stream, robot_noise(stream.size, 0), snr, speech_rms=speech_rms)
        noise = noisy - stream
        true = [10 * np.log10(np.mean(c ** 2) / np.mean(noise[int(a * 16000) : int(b * 16000)] ** 2))
                for c, (a, b) in zip(clips, bounds)]
        utterances, processor = run_stream(noisy, 16000, 1, 0.02)
        assert len(utterances) == len(bounds)
        estimates = [u.snr_db for u in utterances]
        assert abs(estimates[0] - true[0]) < 1.5 and abs(estimates[2] - true[2]) < 1.5, (estimates, true)
        assert estimates[1] >= true[1] - 1.5
        assert all(u.clipped_ratio == 0.0 for u in utterances)
        floor_db = 10 * np.log10(processor.segmenter.noise_floor())
        assert abs(floor_db - 10 * np.log10(np.mean(noise ** 2))) < 2.0


class ScriptedVad:
    """Says `speech` for the frames between two times: a VAD fooled by whatever plays then (here: noise)."""

    frame_samples = 512

    def __init__(self, speech_from_s: float, speech_to_s: float) -> None:
        self.window, self.t = (speech_from_s, speech_to_s), 0.0

    def __call__(self, frame: np.ndarray) -> float:
        self.t += frame.size / 16000
        return 1.0 if self.window[0] <= self.t < self.window[1] else 0.0

    def reset(self) -> None:
        pass


def test_snr_gate_drops_noise_the_vad_took_for_speech(clips):
    """A steady noise that fooled the VAD has no power above its own floor: min_snr_db drops it (counted);
    without the gate it is an utterance; a loud clipped clip is kept and reports its clipped share."""
    rng = np.random.default_rng(0)
    noise = (0.02 * rng.standard_normal(16000 * 4)).astype(np.float32)
    for gate, kept in ((None, 1), (3.0, 0)):
        segmenter = Segmenter(ScriptedVad(2.0, 3.0), SegmenterConfig(min_snr_db=gate))
        out = segmenter.push(noise, 0.0) + segmenter.close()
        assert len(out) == kept and segmenter.stats.low_snr == 1 - kept
        if out:
            assert out[0].snr_db < 1.0  # no speech power above the floor (ideally -inf)
    loud = np.concatenate([noise[:32000], np.clip(clips[0] * 20, -1, 1), noise[:16000]])
    segmenter = Segmenter(ScriptedVad(2.0, 2.0 + clips[0].size / 16000), SegmenterConfig(min_snr_db=3.0))
    out = segmenter.push(loud, 0.0) + segmenter.close()
    assert len(out) == 1 and out[0].snr_db > 20 and out[0].clipped_ratio > 0.05


def test_foreground_gate_hears_the_person_over_a_crowd(clips, corpus_dir):
    """Four other speakers talk all the time, 15 dB below the person at 2.5 m: the VAD hears speech everywhere and,
    without the gate, the person's sentences drown in long utterances that are mostly the crowd. With
    foreground_db the crowd's level becomes the background and each sentence comes out on its own, with bounds
    close to the clip's (what fragments of the crowd remain is counted by bench/scenes.py, not here)."""
    from ser_node.train.acoustics import BabbleSource, reverberate, room_response
    from ser_node.train.corpora import load_corpus_entry

    pool = [c for c in load_corpus_entry({"name": "uem-es", "kind": "emomatch", "path": str(corpus_dir)}).corpus.clips
            if c.speaker.endswith(("s01", "s02", "s03", "s05"))]
    lead = np.zeros(6 * 16000, np.float32)  # the crowd alone first: the gate learns the background
    clean, bounds = speech_stream(clips, silence_s=3.0)
    clean, bounds = np.concatenate([lead, clean]), [(a + 6.0, b + 6.0) for a, b in bounds]
    babble = reverberate(BabbleSource(pool, talkers=4)(clean.size, seed=3)[0], room_response(0.5, 2.5, seed=7))
    scale = np.sqrt(np.mean(np.concatenate(clips) ** 2) / np.mean(babble[: clean.size] ** 2)) * 10 ** (-15 / 20)
    stream = (clean + scale * babble[: clean.size]).astype(np.float32)

    def overlap(utterances) -> list[float]:
        """Per clip: intersection over union with the utterance that covers most of it."""
        return [max([max(0.0, min(end, u.end - 50) - max(start, u.start - 50))
                     / (max(end, u.end - 50) - min(start, u.start - 50)) for u in utterances] or [0.0])
                for start, end in bounds]

    without, processor = run_stream(stream, 16000, 1, 0.1)
    assert min(overlap(without)) < 0.3 and processor.segmenter.stats.background_frames == 0  # a clip drowned
    gated, processor = run_stream(stream, 16000, 1, 0.1, config=SegmenterConfig(foreground_db=6.0))
    assert min(overlap(gated)) > 0.65, overlap(gated)  # every sentence on its own, mostly the person
    assert processor.segmenter.stats.background_frames > 100  # > 3 s of the crowd's speech taken for background
    level = processor.segmenter.background_level()
    assert level is not None and abs(level - 10 * np.log10(np.mean((scale * babble) ** 2))) < 6
    # In a quiet room the background is the room's silence: the gate changes nothing (a frame at most).
    quiet, _ = run_stream(clean, 16000, 1, 0.1, config=SegmenterConfig(foreground_db=6.0))
    plain, _ = run_stream(clean, 16000, 1, 0.1)
    assert len(quiet) == len(plain) and min(overlap(quiet)) > 0.65
    assert np.abs(np.array([(u.start, u.end) for u in quiet]) - [(u.start, u.end) for u in plain]).max() < 0.07
    with pytest.raises(ValueError, match="foreground_db"):
        SegmenterConfig(foreground_db=0.0).validate()


def test_a_pause_after_few_words_does_not_end_the_sentence(clips):
    """Real clips that a pause after their first words cuts in two at min_silence_s 0.5 alone (bench/robustness.py
    --parts pauses) come out whole with the defaults (an utterance with under 1 s of speech waits 0.7 s); after
    more speech than that, a 0.6 s pause between two sentences still ends the first at 0.5 s."""
    waiting = SegmenterConfig()
    assert (waiting.min_silence_s, waiting.short_speech_s, waiting.short_silence_s) == (0.5, 1.0, 0.7)
    for speaker, name in (("s10", "Ira_11"), ("s11", "Tristeza_11"), ("s08", "Tristeza_11"), ("s06", "Miedo_03")):
        stream = np.concatenate([load_audio(corpus_clip(speaker, name)), np.zeros(24000, np.float32)])
        cut = run_stream(stream, 16000, 1, 0.02, config=SegmenterConfig(short_speech_s=0.0))[0]
        assert len(cut) == 2, name  # min_silence_s alone: cut in two
        whole = run_stream(stream, 16000, 1, 0.02, config=waiting)[0]
        assert len(whole) == 1 and whole[0].duration > 1.5, name
    two = np.concatenate([np.zeros(8000, np.float32), clips[0], np.zeros(9600, np.float32), clips[1],
                          np.zeros(24000, np.float32)])
    assert len(run_stream(two, 16000, 1, 0.02, config=waiting)[0]) == 2
    # a short_silence_s under min_silence_s waits min_silence_s: raising min_silence_s never shortens a wait
    stream = np.concatenate([load_audio(corpus_clip("s10", "Ira_11")), np.zeros(24000, np.float32)])
    assert len(run_stream(stream, 16000, 1, 0.02, config=SegmenterConfig(short_silence_s=0.3))[0]) == 2
    assert len(run_stream(stream, 16000, 1, 0.02, config=SegmenterConfig(min_silence_s=0.8,
                                                                          short_silence_s=0.3))[0]) == 1
