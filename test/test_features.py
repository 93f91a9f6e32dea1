"""DeepSpectrum features against librosa and matplotlib, on real speech."""
import numpy as np
import pytest
from conftest import corpus_clip

from ser_node.audio.decode import load_audio
from ser_node.inference.features import (
    FeatureConfig,
    FeatureExtractor,
    mel_filterbank,
    mel_power_spectrogram,
    viridis_lut,
)


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return load_audio(corpus_clip("s03", "Ira_02"))


def test_mel_matches_librosa_on_real_speech(speech):
    librosa = pytest.importorskip("librosa", reason="librosa is the reference implementation (test extra)")
    config = FeatureConfig()
    ours = mel_power_spectrogram(speech, config)
    reference = librosa.feature.melspectrogram(y=speech, sr=16000, n_fft=512, hop_length=256, n_mels=128,
                                               fmax=8000.0, power=2.0)
    assert ours.shape == reference.shape
    assert np.abs(ours - reference).max() <= 1e-5 * reference.max()
    filters = librosa.filters.mel(sr=16000, n_fft=512, n_mels=128, fmax=8000.0)
    np.testing.assert_allclose(mel_filterbank(16000, 512, 128, 0.0, 8000.0), filters, atol=1e-7)


def test_db_scaling_matches_librosa_power_to_db(speech):
    librosa = pytest.importorskip("librosa", reason="librosa is the reference implementation (test extra)")
    from ser_node.inference.features import power_to_unit

    mel = mel_power_spectrogram(speech, FeatureConfig())
    db = librosa.power_to_db(mel, ref=np.max, top_db=80.0)
    expected = (db - db.min()) / (db.max() - db.min())
    np.testing.assert_allclose(power_to_unit(mel, 80.0), expected, atol=1e-5)


def test_colour_table_is_matplotlib_viridis():
    matplotlib = pytest.importorskip("matplotlib", reason="matplotlib made the table (train extra)")
    expected = matplotlib.colormaps["viridis"](np.linspace(0, 1, 256))[:, :3]
    np.testing.assert_allclose(viridis_lut(), expected, atol=1e-6)


def test_image_shape_range_and_orientation(speech):
    config = FeatureConfig(image_height=96, image_width=160)
    extractor = FeatureExtractor(config)
    image = extractor(speech)
    assert image.shape == (3, 96, 160) and image.dtype == np.float32
    rgb = extractor.rgb_image(speech)
    assert rgb.shape == (96, 160, 3) and 0 <= rgb.min() and rgb.max() <= 1
    # Undo the ImageNet normalisation: the network input is the viridis image.
    restored = image.transpose(1, 2, 0) * np.array(config.std) + np.array(config.mean)
    np.testing.assert_allclose(restored, rgb, atol=1e-5)
    unit = extractor.unit_image(speech)
    # Speech energy sits in the low mel bands, drawn at the bottom of the image (as a plotted spectrogram).
    assert unit[-unit.shape[0] // 4 :].mean() > unit[: unit.shape[0] // 4].mean()


def test_silence_and_tiny_inputs_do_not_crash():
    extractor = FeatureExtractor(FeatureConfig(image_height=32, image_width=32))
    assert np.isfinite(extractor(np.zeros(16000, np.float32))).all()
    assert extractor(np.zeros(10, np.float32)).shape == (3, 32, 32)


def test_config_round_trip_and_validation():
    config = FeatureConfig(image_height=128, image_width=128, n_mels=64)
    assert FeatureConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="fmax"):
        FeatureConfig(fmax=9000.0)
    with pytest.raises(ValueError, match="unknown feature settings"):
        FeatureConfig.from_dict({**config.to_dict(), "bogus": 1})
