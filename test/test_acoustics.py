"""The acoustic simulation (ser_node/train/acoustics.py) on real clips: SNR, RT60, determinism, babble hygiene, the
microphone chain, and training augmentation wired through TrainConfig."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("audiomentations", reason="acoustic simulation needs the train extra (audiomentations)")
pytest.importorskip("pyroomacoustics", reason="acoustic simulation needs the train extra (pyroomacoustics)")

from ser_node.audio.decode import load_audio  # noqa: E402
from ser_node.train.acoustics import (  # noqa: E402
    NOISE_KINDS,
    AcousticSimulator,
    Augmenter,
    AugmentRanges,
    BabbleSource,
    Condition,
    _measure_rt60,
    room_response,
    talker,
)
from ser_node.train.corpora import load_emomatch  # noqa: E402


@pytest.fixture(scope="module")
def clips(corpus_dir: Path):
    return load_emomatch(corpus_dir).clips


@pytest.fixture(scope="module")
def simulator(clips):
    return AcousticSimulator(clips)


def snr_of(clean: np.ndarray, mixed: np.ndarray) -> float:
    noise = mixed - clean
    return float(10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean(noise.astype(np.float64) ** 2)))


@pytest.mark.parametrize("kind", NOISE_KINDS)
def test_snr_is_what_was_asked_on_real_clips(kind, clips, simulator):
    """The mixing stage delivers the requested SNR; the full chain adds only the ADC's rail on top (loud events
    at low SNR can overload it, as a door slam overloads a robot's microphone)."""
    from ser_node.train.acoustics import microphone, mix_at_snr

    for clip in clips[::97]:  # a dozen clips of several speakers and emotions
        clean = load_audio(clip.path)
        noise = simulator.noise(kind, clean.size, seed=3, exclude_speakers=[talker(clip)])
        for snr in (20.0, 10.0, 5.0, 0.0):
            mixed = mix_at_snr(clean, noise, snr)
            assert abs(snr_of(clean, mixed) - snr) < 0.5, (clip.path.name, kind, snr)
            chain = simulator(clean, Condition(noise=kind, snr_db=snr), seed=3, exclude_speakers=[talker(clip)])
            np.testing.assert_array_equal(chain, microphone(mixed, Condition()))
            if np.abs(mixed).max() <= 1.0:
                assert abs(snr_of(clean, chain) - snr) < 0.5
    short = simulator.noise(kind, 4000, seed=1)  # shorter noise is tiled to the speech's length
    assert abs(snr_of(clean, mix_at_snr(clean, short, 5.0)) - 5.0) < 0.5


@pytest.mark.parametrize("rt60, distance", [(0.3, 1.0), (0.6, 2.0), (1.0, 4.0)])
def test_room_rt60_within_20_percent(rt60, distance):
    response = room_response(rt60, distance, seed=5)
    measured = _measure_rt60(response.rir.astype(np.float64))
    assert abs(measured - rt60) <= 0.2 * rt60, (measured, rt60)
    # The direct path comes first and is the loudest tap; farther sources have relatively more reverberation.
    assert int(np.argmax(np.abs(response.rir))) < 50


def test_reverberation_grows_with_distance(clips, simulator):
    def direct_to_reverberant_db(rir: np.ndarray) -> float:
        peak = int(np.argmax(np.abs(rir)))
        direct = slice(max(peak - 40, 0), peak + 40)  # +-2.5 ms around the direct path
        energy = rir.astype(np.float64) ** 2
        return float(10 * np.log10(energy[direct].sum() / (energy.sum() - energy[direct].sum())))

    ratios = [direct_to_reverberant_db(room_response(0.6, d, seed=0).rir) for d in (1.0, 2.0, 4.0)]
    assert ratios[0] > ratios[1] > ratios[2], ratios
    clean = load_audio(clips[0].path)
    heard = simulator(clean, Condition(rt60_s=0.6, distance_m=4.0))
    assert heard.shape == clean.shape and not np.allclose(heard, clean)
    assert np.sqrt(np.mean(heard ** 2)) == pytest.approx(np.sqrt(np.mean(clean ** 2)), rel=1e-3)


def test_same_seed_same_samples_other_seed_other_samples(clips, simulator):
    clean = load_audio(clips[5].path)
    condition = Condition(noise="babble", snr_db=5, rt60_s=0.6, distance_m=2.0, gain_db=-3)
    exclude = [talker(clips[5])]
    first = simulator(clean, condition, seed=11, exclude_speakers=exclude)
    again = AcousticSimulator(clips)(clean, condition, seed=11, exclude_speakers=exclude)  # a fresh simulator
    other = simulator(clean, condition, seed=12, exclude_speakers=exclude)
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).max() > 1e-3
    for kind in ("robot", "events"):
        a = simulator(clean, Condition(noise=kind, snr_db=10), seed=1)
        np.testing.assert_array_equal(a, simulator(clean, Condition(noise=kind, snr_db=10), seed=1))
        assert not np.array_equal(a, simulator(clean, Condition(noise=kind, snr_db=10), seed=2))


def test_babble_never_contains_the_speaker_under_test(clips):
    babble = BabbleSource(clips, talkers=4)
    for test_speaker in sorted({c.speaker for c in clips}):
        excluded = f"{clips[0].corpus}/{test_speaker}"
        seen: set[str] = set()
        for seed in range(6):
            noise, used = babble(16000 * 4, seed, exclude_speakers=[excluded])
            assert excluded not in used and used, (test_speaker, used)
            assert noise.shape == (16000 * 4,) and np.isfinite(noise).all()
            seen |= used
        assert len(seen) >= 4  # the talkers really vary
    with pytest.raises(ValueError, match="at least one speaker"):
        babble(16000, 0, exclude_speakers=[talker(c) for c in clips][: len(clips)])


def test_noises_have_their_character():
    from ser_node.train.acoustics import event_noise, robot_noise

    n = 16000 * 10
    robot = robot_noise(n, seed=0)
    spectrum = np.abs(np.fft.rfft(robot)) ** 2
    frequency = np.fft.rfftfreq(n, 1 / 16000)
    # Most of the fan's power lies below 1 kHz (hum, harmonics, rumble), as in a robot's torso.
    assert spectrum[frequency < 1000].sum() > 0.7 * spectrum.sum()
    events = event_noise(n, seed=0)
    frames = events[: n // 320 * 320].reshape(-1, 320)
    energy = (frames ** 2).mean(axis=1)
    # Events are sparse: the loudest 10 % of 20 ms frames hold most of the energy.
    assert np.sort(energy)[-len(energy) // 10:].sum() > 0.8 * energy.sum()


def test_microphone_gain_clipping_and_band(clips, simulator):
    clean = load_audio(clips[3].path)
    quieter = simulator(clean, Condition(gain_db=-6))
    assert np.sqrt(np.mean(quieter ** 2)) / np.sqrt(np.mean(clean ** 2)) == pytest.approx(10 ** (-6 / 20), rel=1e-3)
    clipped = simulator(clean, Condition(clipped_percent=10))
    level = np.abs(clipped).max()
    assert 0.05 < np.mean(np.abs(clipped) >= level - 1e-6) < 0.25  # about a tenth of the samples sit at the rail
    band = simulator(clean, Condition(band_hz=(300.0, 3400.0)))
    spectrum = lambda y: np.abs(np.fft.rfft(y)) ** 2  # noqa: E731
    frequency = np.fft.rfftfreq(clean.size, 1 / 16000)
    high = frequency > 5000
    assert spectrum(band)[high].sum() < 0.1 * spectrum(clean)[high].sum()
    assert np.abs(simulator(clean, Condition(gain_db=30))).max() <= 1.0  # what an ADC can deliver


def test_bad_conditions_are_refused():
    with pytest.raises(ValueError, match="unknown noise"):
        Condition(noise="traffic", snr_db=5)
    with pytest.raises(ValueError, match="finite snr_db"):
        Condition(noise="robot")
    with pytest.raises(ValueError):
        Condition(rt60_s=-1)


def test_augmenter_applies_the_configured_share(clips):
    clean = load_audio(clips[0].path)
    rng = np.random.default_rng(0)
    never = Augmenter(AugmentRanges(probability=0.0), clips)
    assert all(never(clean, clips[0], rng) is clean for _ in range(5))
    always = Augmenter(AugmentRanges(probability=1.0, noises=("robot", "events")), clips)
    changed = [always(clean, clips[0], rng) for _ in range(4)]
    assert all(c.shape == clean.shape and np.abs(c - clean).max() > 1e-3 for c in changed)


def test_training_augmentation_through_config(corpus_dir: Path, tmp_path: Path):
    """acoustic_augment in TrainConfig reaches the images of a real run; babble comes from the fold's training
    clips, never the test speaker, and a finished run reports the setting."""
    pytest.importorskip("torch", reason="training needs the train extra (torch)")
    import yaml

    from ser_node.inference.features import FeatureExtractor
    from ser_node.train.data import AudioBank, ImageMaker
    from ser_node.train.experiment import TrainConfig, run_experiment

    with pytest.raises(ValueError, match="probability"):
        TrainConfig(acoustic_augment=1.5).validate()
    with pytest.raises(ValueError, match="acoustic_noises"):
        TrainConfig(acoustic_noises=["traffic"]).validate()

    config = TrainConfig(corpus={"kind": "emomatch", "path": str(corpus_dir)}, speakers=["s00", "s01", "s02"],
                         protocol="loso", max_folds=1, image_size=64, width=0.125, epochs=1, batch_size=16,
                         spec_augment=False, speed_perturb=0.0, acoustic_augment=1.0, threads=1,
                         cache_dir=str(tmp_path / "cache"))
    clips = [c for c in load_emomatch(corpus_dir).clips if c.speaker in ("s01", "s02")][:6]
    bank = AudioBank()
    bank.load(clips)
    maker = ImageMaker(FeatureExtractor(config.feature_config()), bank, config, seed=0, babble_clips=clips)
    assert not np.allclose(maker.augmented(clips[0]), maker.clean(clips[0]))
    result = run_experiment(config, tmp_path / "run")
    saved = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert saved["acoustic_augment"] == 1.0
    assert (result.run_dir / "report.json").exists()
