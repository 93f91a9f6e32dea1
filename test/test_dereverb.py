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


def in_blocks(process, frames: np.ndarray, sizes: list[int]) -> np.ndarray:
    """`process` called on consecutive blocks of `frames`, of the sizes in turn."""
    out, start, i = [], 0, 0
    while start < len(frames):
        out.append(process(frames[start:start + sizes[i % len(sizes)]]))
        start += sizes[i % len(sizes)]
        i += 1
    return np.concatenate(out)


def test_blocking_does_not_change_the_output():
    rng = np.random.default_rng(0)
    frames = rng.random((137, 40)).astype(np.float32) ** 4
    whole = LateReverbSuppressor()(frames)
    for sizes in ([1], [3, 7], [40], [2, 100]):
        np.testing.assert_array_equal(in_blocks(LateReverbSuppressor(), frames, sizes), whole)


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


# ------------------------------------------------------------------ online WPE (front end 4)

def test_wpe_blocking_does_not_change_the_output():
    """Frames pushed one by one, in odd blocks or whole: the same output (filters change on fixed frame counts,
    and each frame's weight uses only the frames up to it)."""
    from ser_node.inference.dereverb import OnlineWpe

    rng = np.random.default_rng(0)
    frames = ((rng.standard_normal((333, 201)) + 1j * rng.standard_normal((333, 201)))
              * rng.gamma(0.5, size=(333, 1))).astype(np.complex64)
    whole = OnlineWpe()(frames)
    for sizes in ([1], [7, 49], [150, 2]):
        np.testing.assert_allclose(in_blocks(OnlineWpe(), frames, sizes), whole, rtol=1e-4,
                                   atol=1e-4 * float(np.abs(whole).max()))


def test_wpe_takes_out_a_known_reverberation_after_its_warm_up():
    """Per bin, a source of varying power (speech-like) through a known recursive late reverberation:
    x_t = s_t + Σ_k g_k x_{t-3-k}. Before the warm-up the frames pass unchanged; after it the output is much
    closer to the source than the input is, because WPE's prediction filter is that recursion."""
    from ser_node.inference.dereverb import OnlineWpe

    rng = np.random.default_rng(3)
    n, bins = 400, 16
    source = ((rng.standard_normal((n, bins)) + 1j * rng.standard_normal((n, bins)))
              * rng.gamma(0.3, size=(n, 1)) ** 2)
    g = 0.25 * 0.8 ** np.arange(10) * np.exp(1j * rng.uniform(0, 2 * np.pi, (bins, 10)))
    heard = np.zeros_like(source)
    for t in range(n):
        late = sum(g[:, k] * heard[t - 3 - k] for k in range(10) if t - 3 - k >= 0)
        heard[t] = source[t] + late
    wpe = OnlineWpe(taps=10, delay=3)
    out = wpe(heard.astype(np.complex64))
    np.testing.assert_array_equal(out[: wpe.warmup], heard[: wpe.warmup].astype(np.complex64))

    def error(x: np.ndarray) -> float:
        return float(np.sum(np.abs(x[200:] - source[200:]) ** 2) / np.sum(np.abs(source[200:]) ** 2))

    assert error(heard) > 0.2  # the reverberation is a large part of what is heard
    assert error(out) < 0.2 * error(heard), (error(out), error(heard))


def test_wpe_brings_real_speech_in_a_room_closer_to_its_early_sound(corpus_dir):
    """Real clips heard at 2 m in the robustness bench's room (RT60 0.6 s): on the encoder's STFT, WPE's output is
    closer to the direct sound and early reflections (first 50 ms of the response) than the reverberant input,
    in log-mel bands; and it leaves a clean clip nearly as it was."""
    pytest.importorskip("pyroomacoustics", reason="the room is simulated with the train extra (pyroomacoustics)")
    from scipy.signal import fftconvolve

    from ser_node.audio.decode import load_audio
    from ser_node.inference.dereverb import OnlineWpe
    from ser_node.inference.features import mel_power_of_spectra, spectra_of_windows
    from ser_node.inference.voice_frontend import MEL_CONFIG
    from ser_node.train.acoustics import room_response

    response = room_response(0.6, 2.0, seed=0)
    early = response.rir.copy()
    early[int(0.05 * 16000):] = 0.0

    def spectra(x: np.ndarray) -> np.ndarray:
        return spectra_of_windows(np.pad(x, (200, 200)).astype(np.float32), MEL_CONFIG)

    def distance(a: np.ndarray, b: np.ndarray) -> float:  # mean |log-mel difference| in dB, levels aligned
        la, lb = (10 * np.log10(mel_power_of_spectra(s, MEL_CONFIG) + 1e-10) for s in (a, b))
        la, lb = np.maximum(la, la.max() - 60), np.maximum(lb, lb.max() - 60)
        return float(np.mean(np.abs((la - la.mean()) - (lb - lb.mean()))))

    before, after, clean = [], [], []
    for name in ("s00/Alegria_01", "s01/Miedo_02", "s02/Tristeza_09", "s05/Sorpresa_12", "s08/Sorpresa_07",
                 "s10/Asco_07"):
        audio = load_audio(corpus_dir / f"{name}.flac")
        target = spectra(fftconvolve(audio, early)[: audio.size])
        far = spectra(fftconvolve(audio, response.rir)[: audio.size])
        before.append(distance(far, target))
        after.append(distance(OnlineWpe()(far), target))
        clean.append(distance(OnlineWpe()(spectra(audio)), spectra(audio)))
    assert np.mean(after) < np.mean(before) - 0.05, (after, before)
    assert np.mean(clean) < 0.25 * np.mean(before), (clean, before)


def test_wpe_after_digital_silence_stays_finite():
    """A clip padded with exact zeros (emodb's are) gives frames of zero power: they carry no statistics and must
    not turn the filter into NaN (1/0 weights did, on 349 training clips, before this test)."""
    from ser_node.inference.dereverb import OnlineWpe

    rng = np.random.default_rng(2)
    speech = ((rng.standard_normal((300, 201)) + 1j * rng.standard_normal((300, 201)))
              * rng.gamma(0.5, size=(300, 1))).astype(np.complex64)
    frames = np.concatenate([np.zeros((150, 201), np.complex64), speech, np.zeros((60, 201), np.complex64)])
    out = OnlineWpe()(frames)
    assert np.isfinite(out).all()
    assert not np.array_equal(out[200:450], frames[200:450])  # the filter is on once speech has been heard
