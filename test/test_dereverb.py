"""The late-reverberation suppressor (inference/dereverb.py): what it takes from a decaying tail and from steady
sound, that blocking does not change it, and that on real speech in a simulated room it gives back part of the
syllable-to-syllable contrast the room smears (front end 3 against 2). Whether that is worth it to the classifier
is measured in bench/voice.py --parts dereverb, not here."""
from __future__ import annotations

import numpy as np
import pytest

from ser_node.inference.dereverb import FRAME_S, LateReverbSuppressor


def test_free_decay_at_the_assumed_rt60_is_taken_to_the_floor():
    """A burst, then the room's free decay (60 dB per RT60): after the delay every tail frame is the late
    reverberation the model predicts, so only the floor is left; the burst's onset passes untouched."""
    suppressor = LateReverbSuppressor(rt60_s=0.5, delay_frames=5, floor=0.1)
    burst = np.ones((20, 40), np.float32)
    tail = 10.0 ** (-6.0 * np.arange(1, 61) * FRAME_S / 0.5)[:, None] * np.ones((1, 40), np.float32)
    out = suppressor(np.concatenate([burst, tail.astype(np.float32)]))
    np.testing.assert_array_equal(out[:5], burst[:5])  # nothing heard before: nothing to subtract
    np.testing.assert_allclose(out[25:], 0.1 * tail[5:], rtol=1e-4)  # the tail after the delay: the floor only


def test_steady_sound_loses_the_predicted_share_only():
    """Steady sound (a hum, a held vowel) is partly its own reverberation to the model: it loses the decayed
    share `scale` and no more."""
    suppressor = LateReverbSuppressor(rt60_s=0.5, delay_frames=5, floor=0.1)
    out = suppressor(np.full((50, 40), 2.0, np.float32))
    np.testing.assert_allclose(out[5:], 2.0 * (1 - suppressor.scale), rtol=1e-6)
    assert 0.2 < suppressor.scale < 0.3  # 50 ms of a 0.5 s RT60: -6 dB


def test_blocking_does_not_change_the_output():
    rng = np.random.default_rng(0)
    frames = rng.random((137, 40)).astype(np.float32) ** 4
    whole = LateReverbSuppressor()(frames)
    for sizes in ([1], [3, 7], [40], [2, 100]):
        suppressor, out, start, i = LateReverbSuppressor(), [], 0, 0
        while start < len(frames):
            out.append(suppressor(frames[start:start + sizes[i % len(sizes)]]))
            start += sizes[i % len(sizes)]
            i += 1
        np.testing.assert_array_equal(np.concatenate(out), whole)


def test_front_end_3_gives_back_contrast_a_room_smears(corpus_dir):
    """Real clips heard at 2 m in a room of RT60 0.6 s (the robustness bench's test room): the room flattens the
    log-mel frames over time; through front end 3 it flattens them less than through front end 2."""
    pytest.importorskip("pyroomacoustics", reason="the room is simulated with the train extra (pyroomacoustics)")
    pytest.importorskip("webrtcvad", reason="the front end trims pauses with WebRTC VAD")
    from ser_node.audio.decode import load_audio
    from ser_node.inference.voice_frontend import encoder_input
    from ser_node.train.acoustics import AcousticSimulator, Condition

    def contrast(frames: np.ndarray) -> float:  # mean over bands of the log power's spread over time
        return float(np.mean(np.std(np.log(frames + 1e-6), axis=0)))

    room = AcousticSimulator(room_seed=0)
    lost = {2: [], 3: []}
    for name in ("s00/Alegria_01", "s01/Miedo_02", "s02/Tristeza_09", "s05/Sorpresa_12", "s08/Sorpresa_07",
                 "s10/Asco_07"):
        clean = load_audio(corpus_dir / f"{name}.flac")
        far = room(clean, Condition(rt60_s=0.6, distance_m=2.0))
        for v in lost:
            lost[v].append(contrast(encoder_input(clean, v)) - contrast(encoder_input(far, v)))
    assert min(lost[2]) > 0.2, lost  # the room does smear every clip
    assert np.mean(lost[3]) < 0.9 * np.mean(lost[2]), lost
