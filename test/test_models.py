"""VGG16 / DS-FC / DS-AM shapes, attention maps, ImageNet-format weight loading from local files."""
import pytest

torch = pytest.importorskip("torch", reason="the models need the train extra (torch)")

from ser_node.train.networks import (  # noqa: E402
    DSAM,
    DSFC,
    ModelConfig,
    WeightsError,
    build_model,
    count_flops,
    load_imagenet_backbone,
)

TORCHVISION_VGG16_CONVS = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]


def torchvision_style_state_dict(width: float = 1.0) -> dict:
    """A state_dict with torchvision's VGG16 names and shapes (random values: no weights can be downloaded)."""
    channels = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    state, previous = {}, 3
    for index, out in zip(TORCHVISION_VGG16_CONVS, channels):
        out = int(round(out * width))
        state[f"features.{index}.weight"] = torch.randn(out, previous, 3, 3)
        state[f"features.{index}.bias"] = torch.randn(out)
        previous = out
    state["classifier.0.weight"] = torch.randn(4096, 512 * 49)
    state["classifier.0.bias"] = torch.randn(4096)
    state["classifier.3.weight"] = torch.randn(4096, 4096)
    state["classifier.3.bias"] = torch.randn(4096)
    state["classifier.6.weight"] = torch.randn(1000, 4096)
    state["classifier.6.bias"] = torch.randn(1000)
    return state


def test_backbone_uses_torchvision_layer_names():
    model = build_model(ModelConfig(variant="ds_fc", width=0.25, image_height=64, image_width=64))
    names = {k for k in model.state_dict() if k.startswith("backbone.features.")}
    expected = {f"backbone.features.{i}.{p}" for i in TORCHVISION_VGG16_CONVS for p in ("weight", "bias")}
    assert names == expected


@pytest.mark.parametrize("size", [64, 128])
def test_ds_am_shapes_and_attention_maps(size):
    model = DSAM(ModelConfig(variant="ds_am", width=0.125, image_height=size, image_width=size)).eval()
    x = torch.randn(3, 3, size, size)
    logits, (a4, a5) = model.forward_with_attention(x)
    assert logits.shape == (3, 7)
    assert a4.shape == (3, size // 16, size // 16) and a5.shape == (3, size // 32, size // 32)
    assert float(a4.min()) >= 0 and float(a4.max()) <= 1  # sigmoid maps
    model(x)
    assert model.last_attention is not None and model.last_attention[0].shape == a4.shape
    # The locally connected layer has one weight per position (unshared).
    assert model.attention4.locally_connected.weight.shape == (16, size // 16, size // 16)


def test_ds_fc_both_heads():
    small = DSFC(ModelConfig(variant="ds_fc", width=0.125, image_height=64, image_width=64))
    assert small(torch.randn(2, 3, 64, 64)).shape == (2, 7)
    paper = DSFC(ModelConfig(variant="ds_fc", width=0.125, image_height=64, image_width=64, vgg_classifier=True))
    assert paper(torch.randn(2, 3, 64, 64)).shape == (2, 7)


def test_full_vgg16_flops_match_the_published_figure():
    model = build_model(ModelConfig(variant="ds_fc", width=1.0, vgg_classifier=True))
    # torchvision reports 15.47 GMAC-ish for VGG16 at 224: ~30.9 GFLOP counting multiply and add.
    assert 30.0e9 < count_flops(model, 224, 224) < 31.5e9


def test_imagenet_weights_load_from_a_local_file(tmp_path):
    state = torchvision_style_state_dict()
    path = tmp_path / "vgg16-397923af.pth"
    torch.save(state, path)
    model = build_model(ModelConfig(variant="ds_fc", width=1.0, vgg_classifier=True, image_height=32, image_width=32))
    loaded = load_imagenet_backbone(model, path)
    assert "backbone.features.28.weight" in loaded and "classifier.3.weight" in loaded
    assert torch.equal(model.backbone.features[28].weight, state["features.28.weight"])
    assert torch.equal(model.classifier[0].weight, state["classifier.0.weight"])
    am = build_model(ModelConfig(variant="ds_am", width=1.0, image_height=64, image_width=64))
    load_imagenet_backbone(am, path)
    assert torch.equal(am.backbone.features[0].bias, state["features.0.bias"])


def test_wrong_weight_files_give_clear_errors(tmp_path):
    model = build_model(ModelConfig(variant="ds_am", width=0.5, image_height=64, image_width=64))
    with pytest.raises(WeightsError, match="not found"):
        load_imagenet_backbone(model, tmp_path / "missing.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(WeightsError, match="garbage.pth"):
        load_imagenet_backbone(model, garbage)
    other = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.randn(64, 3, 7, 7)}, other)
    with pytest.raises(WeightsError, match="not a torchvision VGG16"):
        load_imagenet_backbone(model, other)
    full = tmp_path / "vgg16.pth"
    torch.save(torchvision_style_state_dict(), full)
    with pytest.raises(WeightsError, match="width 1.0"):
        load_imagenet_backbone(model, full)


def test_unknown_variant_is_refused():
    with pytest.raises(ValueError, match="unknown model variant"):
        build_model(ModelConfig(variant="resnet"))


def test_batch_norm_backbone_follows_torchvision_vgg16_bn(tmp_path):
    """batch_norm=True is torchvision's vgg16_bn layout: conv, BN, ReLU; DS-AM still taps pool4 and pool5."""
    bn_convs = [0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40]
    model = build_model(ModelConfig(variant="ds_am", width=0.125, image_height=64, image_width=64, batch_norm=True))
    names = {k.rsplit(".", 1)[0] for k in model.state_dict() if k.startswith("backbone.features.")}
    assert names == {f"backbone.features.{i}" for i in bn_convs} | {f"backbone.features.{i + 1}" for i in bn_convs}
    assert model.backbone.pool4_index == 33
    logits, (a4, a5) = model.eval().forward_with_attention(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 7) and a4.shape == (2, 4, 4) and a5.shape == (2, 2, 2)
    plain_weights = tmp_path / "vgg16.pth"
    torch.save(torchvision_style_state_dict(0.125), plain_weights)
    with pytest.raises(WeightsError, match="batch_norm"):
        load_imagenet_backbone(model, plain_weights)


def test_batch_norm_model_exports_to_onnx_with_the_same_outputs(tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="needs onnxruntime")
    import numpy as np

    from ser_node.inference.features import FeatureConfig
    from ser_node.inference.model_file import ModelMetadata
    from ser_node.labels import EMOTIONS
    from ser_node.train.export import export_onnx

    config = ModelConfig(variant="ds_am", width=0.125, image_height=64, image_width=64, batch_norm=True)
    torch.manual_seed(0)
    model = build_model(config)
    model.train()
    with torch.no_grad():  # give the BN layers non-trivial running statistics, as training would
        for _ in range(3):
            model(torch.randn(8, 3, 64, 64) * 2 + 0.5)
    model.eval()
    features = FeatureConfig(image_height=64, image_width=64)
    path = export_onnx(model, ModelMetadata("bn-test", list(EMOTIONS), features, "ds_am", model=config.to_dict()),
                       tmp_path / "bn.onnx")
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        expected = torch.softmax(model(x), dim=1).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, expected, atol=1e-5)
