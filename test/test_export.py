"""ONNX export: parity with torch on real audio, int8 agreement, metadata round trip, bad model files."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="export needs the train extra (torch)")
onnx = pytest.importorskip("onnx", reason="export needs the train extra (onnx)")

from conftest import ROOT  # noqa: E402

from ser_node.inference.classifier import Classifier, resolve_providers  # noqa: E402
from ser_node.inference.features import FeatureExtractor  # noqa: E402
from ser_node.inference.model_file import METADATA_KEY, ModelFileError, read_metadata  # noqa: E402
from ser_node.labels import EMOTIONS  # noqa: E402
from ser_node.train.loop import load_trained_network  # noqa: E402


def test_onnx_matches_torch_on_real_audio(trained_run, exported_models, real_waveforms):
    config, run_dir = trained_run
    model = load_trained_network(run_dir / "all", config)
    classifier = Classifier(exported_models["fp32"])
    images = FeatureExtractor(config.feature_config()).batch(real_waveforms)
    with torch.no_grad():
        expected = torch.softmax(model(torch.from_numpy(images)), dim=1).numpy()
    got = classifier.predict(real_waveforms)
    assert got.shape == (len(real_waveforms), 7)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)
    # The trained model is not a constant: different clips get different rankings.
    assert len({tuple(np.round(row, 3)) for row in got}) > 1


def test_int8_agrees_with_fp32_on_real_audio(exported_models, real_waveforms):
    """int8 stays close to fp32 in probability, and never changes the top class where fp32 is clearly decided.
    (The tiny test model is often near-uniform, so top-1 agreement over all clips measures ties, not int8.)"""
    fp32 = Classifier(exported_models["fp32"]).predict(real_waveforms)
    int8 = Classifier(exported_models["int8"]).predict(real_waveforms)
    agreement = float(np.mean(fp32.argmax(1) == int8.argmax(1)))
    print(f"int8 vs fp32 top-1 agreement on {len(real_waveforms)} real clips: {agreement:.2%}; "
          f"max |dp| {np.abs(fp32 - int8).max():.3f}")
    assert np.abs(fp32 - int8).max() < 0.25
    assert np.abs(fp32 - int8).mean() < 0.05
    top2 = np.sort(fp32, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 0.1
    assert np.array_equal(fp32.argmax(1)[clear], int8.argmax(1)[clear])


def test_requantize_rewrites_the_int8_file_from_the_fp32_one(exported_models, real_waveforms, tmp_path, capsys):
    """ser_export --requantize: the int8 model again from an fp32 file alone (calibrated on the corpus its
    metadata names), as export_run makes it; a missing file is a clear error, not a traceback."""
    import shutil

    from ser_node.cli.export import main

    fp32 = tmp_path / "copy.onnx"
    shutil.copy(exported_models["fp32"], fp32)
    assert main(["--requantize", str(fp32), "--calibration-clips", "40"]) == 0
    int8 = tmp_path / "copy.int8.onnx"
    assert read_metadata(int8).precision == "int8"
    assert read_metadata(int8).model_id == read_metadata(exported_models["int8"]).model_id
    got = Classifier(int8).predict(real_waveforms)
    expected = Classifier(exported_models["int8"]).predict(real_waveforms)
    np.testing.assert_allclose(got, expected, atol=1e-6)  # the same seeded calibration clips as export_run's
    assert main(["--requantize", str(tmp_path / "absent.onnx")]) == 2
    assert "absent.onnx" in capsys.readouterr().err


def test_metadata_round_trip(trained_run, exported_models):
    config, _ = trained_run
    for precision, path in exported_models.items():
        metadata = read_metadata(path)
        assert metadata.precision == precision
        assert metadata.features == config.feature_config()
        assert metadata.classes == list(EMOTIONS)
        assert metadata.variant == "ds_am" and metadata.model_id == "test-tiny-ds-am"
        assert metadata.model["width"] == config.width


def test_batch_axis_is_dynamic(exported_models, real_waveforms):
    classifier = Classifier(exported_models["fp32"])
    single = np.stack([classifier.predict([w])[0] for w in real_waveforms[:3]])
    np.testing.assert_allclose(classifier.predict(real_waveforms[:3]), single, atol=1e-5)
    assert classifier.predict([]).shape == (0, 7)


def test_missing_and_corrupt_model_files_name_the_file(tmp_path):
    with pytest.raises(ModelFileError, match=r"nothing\.onnx: model file not found"):
        Classifier(tmp_path / "nothing.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage" * 50)
    with pytest.raises(ModelFileError, match=r"corrupt\.onnx: not a loadable ONNX model"):
        Classifier(corrupt)


def test_truncated_model_file(exported_models, tmp_path):
    data = exported_models["fp32"].read_bytes()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="truncated.onnx"):
        Classifier(truncated)


def _rewrite_metadata(source, target, change):
    proto = onnx.load(str(source))
    for prop in proto.metadata_props:
        if prop.key == METADATA_KEY:
            values = json.loads(prop.value)
            change(values)
            prop.value = json.dumps(values)
    onnx.save(proto, str(target))


def test_foreign_and_mismatched_models_are_refused(exported_models, tmp_path):
    proto = onnx.load(str(exported_models["fp32"]))
    del proto.metadata_props[:]
    foreign = tmp_path / "foreign.onnx"
    onnx.save(proto, str(foreign))
    with pytest.raises(ModelFileError, match="not exported by ser_node"):
        Classifier(foreign)

    wrong_size = tmp_path / "wrong_size.onnx"
    _rewrite_metadata(exported_models["fp32"], wrong_size, lambda v: v["features"].update(image_height=224))
    with pytest.raises(ModelFileError, match="does not match the feature settings"):
        Classifier(wrong_size)

    wrong_classes = tmp_path / "wrong_classes.onnx"
    _rewrite_metadata(exported_models["fp32"], wrong_classes, lambda v: v.update(classes=["a", "b"]))
    with pytest.raises(ModelFileError, match="2 classes"):
        Classifier(wrong_classes)

    future = tmp_path / "future.onnx"
    _rewrite_metadata(exported_models["fp32"], future, lambda v: v.update(format_version=99))
    with pytest.raises(ModelFileError, match="format_version"):
        Classifier(future)


def test_unavailable_providers_fall_back_to_cpu():
    providers, warning = resolve_providers("tensorrt,cuda")
    assert providers[-1] == "CPUExecutionProvider"
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        assert warning and "falling back" in warning
    with pytest.raises(ValueError, match="unknown device"):
        resolve_providers("tpu")


def _cuda_session_starts() -> bool:
    """ONNX Runtime's CUDA provider is in the build and a session really starts on it (the libraries load)."""
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        return False
    return Classifier(ROOT / "models" / "ser_ds_am.onnx", device="cuda").providers[0] == "CUDAExecutionProvider"


@pytest.mark.skipif(not _cuda_session_starts(), reason="needs onnxruntime-gpu with a working CUDA provider (a GPU)")
def test_cuda_provider_runs_the_model_like_the_cpu(exported_models, real_waveforms):
    classifier = Classifier(exported_models["fp32"], device="cuda")
    assert classifier.providers[0] == "CUDAExecutionProvider"
    on_cpu = Classifier(exported_models["fp32"], device="cpu").predict(real_waveforms[:4])
    np.testing.assert_allclose(classifier.predict(real_waveforms[:4]), on_cpu, atol=2e-3)
