"""Multi-corpus training on tiny real data from ../shared/data: namespaced speakers, label masks, the balanced
sampler, pretrain -> backbone -> fine-tune -> export, the openSMILE teacher, LOCO folds, and the guarantee that a
LOSO test speaker never helped pretrain the backbone."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training needs the train extra (torch)")

from ser_node.inference.classifier import Classifier  # noqa: E402
from ser_node.labels import EMOTIONS  # noqa: E402
from ser_node.train.corpora import load_corpus_entry  # noqa: E402
from ser_node.train.data import CorpusMix, prepare_clips  # noqa: E402
from ser_node.train.experiment import TrainConfig, run_experiment  # noqa: E402
from ser_node.train.export import export_run  # noqa: E402
from ser_node.train.loop import masked_logits  # noqa: E402
from ser_node.train.networks import ModelConfig, build_model  # noqa: E402
from ser_node.train.protocols import leave_one_corpus_out  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TINY = dict(image_size=64, width=0.125, epochs=1, batch_size=16, threads=1, seed=3)


@pytest.fixture(scope="module")
def data_dir() -> Path:
    if not all((DATA / name).is_dir() for name in ("uem-es", "emovo", "emodb", "ased")):
        pytest.skip(f"the four corpora are not under {DATA}")
    return DATA


def entries(data: Path, role_of_others: str = "train") -> list[dict]:
    return [{"name": "uem-es", "kind": "emomatch", "path": str(data / "uem-es")},
            {"name": "emovo", "kind": "manifest", "path": str(data / "emovo"), "role": role_of_others},
            {"name": "emodb", "kind": "manifest", "path": str(data / "emodb"), "role": role_of_others,
             "label_map": {"boredom": None}},
            {"name": "ased", "kind": "manifest", "path": str(data / "ased"), "role": role_of_others, "weight": 0.5}]


# A few speakers per corpus keep every run here to seconds.
FEW = ["uem-es/s00", "uem-es/s01", "uem-es/s02", "emovo/f1", "emodb/spk03", "emodb/spk08", "ased/spk01",
       "ased/spk02"]


def test_corpora_load_with_namespaced_speakers_and_labels(data_dir):
    ased = load_corpus_entry({"name": "ased", "kind": "manifest", "path": str(data_dir / "ased"), "weight": 0.5})
    assert ased.role == "train" and ased.weight == 0.5
    assert all(c.speaker.startswith("ased/spk") and c.corpus == "ased" for c in ased.corpus.clips)
    assert ased.labels == ["anger", "fear", "joy", "neutral", "sadness"]
    emodb = load_corpus_entry({"name": "emodb", "kind": "manifest", "path": str(data_dir / "emodb"),
                               "label_map": {"boredom": None}})
    assert "boredom" not in emodb.labels and len(emodb.corpus.clips) == 535 - 81
    assert sum("left out by label_map" in p.reason for p in emodb.corpus.problems) == 81
    # The same speaker id in two corpora stays two speakers.
    data = prepare_clips(TrainConfig(corpora=entries(data_dir), speakers=FEW))
    assert {c.speaker for c in data.target} == {"uem-es/s00", "uem-es/s01", "uem-es/s02"}
    assert {c.corpus for c in data.extra} == {"emovo", "emodb", "ased"}
    with pytest.raises(ValueError, match="role"):
        load_corpus_entry({"kind": "manifest", "path": str(data_dir / "ased"), "role": "teach"})
    with pytest.raises(ValueError, match="unique"):
        prepare_clips(TrainConfig(corpora=entries(data_dir)[:2] + [{**entries(data_dir)[1]}]))


def test_a_masked_class_receives_no_gradient(data_dir):
    ased = load_corpus_entry({"name": "ased", "kind": "manifest", "path": str(data_dir / "ased")}).corpus.clips
    clips = [next(c for c in ased if c.label == label) for label in ("anger", "fear", "joy", "neutral")]
    mix = CorpusMix.of(ased)  # what the corpus can express: all its clips' labels
    mask = torch.from_numpy(mix.mask(clips))
    assert not mask[:, EMOTIONS.index("surprise")].any() and not mask[:, EMOTIONS.index("disgust")].any()
    model = build_model(ModelConfig(variant="ds_am", width=0.125, image_height=64, image_width=64))
    logits = model(torch.randn(4, 3, 64, 64))
    y = torch.tensor([EMOTIONS.index(c.label) for c in clips])
    torch.nn.functional.cross_entropy(masked_logits(logits, mask), y).backward()
    last = model.head[-1]
    for name in ("surprise", "disgust"):
        k = EMOTIONS.index(name)
        assert torch.all(last.weight.grad[k] == 0) and last.bias.grad[k] == 0
    assert all(last.bias.grad[EMOTIONS.index(n)] != 0 for n in ("anger", "fear", "joy", "neutral", "sadness"))


def test_sampler_gives_each_corpus_its_weight_and_balances_classes(data_dir):
    data = prepare_clips(TrainConfig(corpora=entries(data_dir), speakers=FEW))
    clips = data.target + data.extra
    p = CorpusMix.of(clips, data.weights).sampling_probabilities(clips)
    share = {name: p[[c.corpus == name for c in clips]].sum() for name in ("uem-es", "emovo", "emodb", "ased")}
    # weights 1, 1, 1, 0.5 -> 2/7 each and 1/7 for ased, whatever the clip counts
    assert share["ased"] == pytest.approx(1 / 7) and share["uem-es"] == pytest.approx(2 / 7)
    assert share["emovo"] == pytest.approx(2 / 7) and share["emodb"] == pytest.approx(2 / 7)
    emodb = [c.corpus == "emodb" for c in clips]
    per_class = {label: p[[e and c.label == label for e, c in zip(emodb, clips)]].sum() for label in
                 {c.label for c in clips if c.corpus == "emodb"}}
    assert np.allclose(list(per_class.values()), share["emodb"] / len(per_class))  # classes equal within a corpus
    rng = np.random.default_rng(0)
    drawn = rng.choice(len(clips), size=20000, p=p)
    assert np.mean([clips[i].corpus == "ased" for i in drawn]) == pytest.approx(1 / 7, abs=0.01)


def test_loco_folds_are_disjoint_by_corpus(data_dir):
    data = prepare_clips(TrainConfig(corpora=entries(data_dir), speakers=FEW, protocol="loco"))
    clips = data.target + data.extra
    folds = leave_one_corpus_out(clips, validation_fraction=0.2)
    assert sorted(f.name for f in folds) == ["corpus_ased", "corpus_emodb", "corpus_emovo", "corpus_uem-es"]
    for fold in folds:
        held_out = fold.name.removeprefix("corpus_")
        assert {clips[i].corpus for i in fold.test} == {held_out}
        assert held_out not in {clips[i].corpus for i in fold.train + fold.validation}
        assert fold.speaker_disjoint
    # uem-es has surprise; emovo also has it, so the uem-es fold keeps it; emodb held out loses nothing it has
    uem = next(f for f in folds if f.name == "corpus_uem-es")
    assert len(uem.test) == sum(c.corpus == "uem-es" for c in clips)


@pytest.fixture(scope="module")
def pretrained(data_dir, tmp_path_factory):
    """A tiny backbone pretrained with the openSMILE teacher on the three other corpora (few speakers)."""
    pytest.importorskip("opensmile", reason="the teacher needs opensmile (requirements/train.txt)")
    out = tmp_path_factory.mktemp("pretrain")
    config = TrainConfig(corpora=entries(data_dir, "pretrain"), speakers=FEW, stage="pretrain", variant="ds_am",
                         balance="sampler", teacher_weight=0.5, teacher_pca=8, validation_fraction=0.3,
                         cache_dir=str(out / "cache"), **TINY)
    run_experiment(config, out / "run")
    return out / "run"


def test_pretrain_writes_a_torchvision_named_backbone_with_provenance(pretrained):
    state = torch.load(pretrained / "backbone.pt", weights_only=True)
    assert set(state) and all(k.startswith("features.") for k in state)
    provenance = json.loads((pretrained / "backbone.json").read_text())
    assert {e["name"] for e in provenance["corpora"]} == {"emovo", "emodb", "ased"}
    assert provenance["teacher_sets"] == ["eGeMAPSv02", "ComParE_2016"]
    assert not any(s.startswith("uem-es/") for s in provenance["speakers"])
    assert (pretrained.parent / "cache" / "opensmile").is_dir()  # functionals cached by clip content
    rows = (pretrained / "pretrain" / "metrics.csv").read_text().splitlines()
    assert "mix" in rows[0] and "ased" in rows[1]  # the effective corpus mix of each epoch


def test_pretrain_finetune_export_round_trip(pretrained, data_dir, tmp_path):
    backbone = pretrained / "backbone.pt"
    config = TrainConfig(corpus={"kind": "emomatch", "path": str(data_dir / "uem-es")}, speakers=["s00", "s01", "s02"],
                         protocol="loso", max_folds=1, variant="ds_am", backbone_weights=str(backbone), **TINY)
    run_experiment(config, tmp_path / "ft")
    report = json.loads((tmp_path / "ft" / "report.json").read_text())
    sha = json.loads((pretrained / "backbone.json").read_text())["sha256"]
    assert report["backbone"]["sha256"] == sha
    config = TrainConfig(corpora=entries(data_dir), speakers=FEW, protocol="all", variant="ds_am",
                         backbone_weights=str(backbone), balance="sampler", validation_fraction=0.34, **TINY)
    run_experiment(config, tmp_path / "deploy")
    paths = export_run(tmp_path / "deploy", tmp_path / "m.onnx", int8=False)
    metadata = Classifier(paths["fp32"]).metadata
    assert metadata.training["backbone"]["sha256"] == sha
    assert {e["name"] for e in metadata.training["corpora"]} == {"uem-es", "emovo", "emodb", "ased"}


def test_teacher_head_is_absent_from_the_export(pretrained, data_dir, tmp_path):
    import onnx

    config = TrainConfig(corpora=entries(data_dir), speakers=["uem-es/s00", "uem-es/s01", "emovo/f1", "ased/spk01"],
                         protocol="all", variant="ds_am", teacher_weight=1.0, teacher_pca=8,
                         cache_dir=str(pretrained.parent / "cache"),
                         validation_fraction=0.34, **TINY)
    run_experiment(config, tmp_path / "run")
    state = torch.load(tmp_path / "run" / "all" / "model.pt", weights_only=True)
    assert not any("_teacher" in k for k in state)
    checkpoint = torch.load(tmp_path / "run" / "all" / "checkpoint.pt", weights_only=True)
    assert any("_teacher" in k for k in checkpoint["model"])  # it did train (and resumes) with the model
    path = export_run(tmp_path / "run", tmp_path / "t.onnx", int8=False)["fp32"]
    graph = onnx.load(str(path)).graph
    assert [o.name for o in graph.output] == ["probabilities"]
    assert graph.output[0].type.tensor_type.shape.dim[1].dim_value == len(EMOTIONS)
    assert not any("_teacher" in i.name for i in graph.initializer)


def test_a_test_speaker_seen_in_pretraining_is_refused(pretrained, data_dir, tmp_path):
    """Under LOSO the backbone must never have seen the test speaker: the trainer checks, fold by fold."""
    backbone = pretrained / "backbone.pt"
    provenance = json.loads((pretrained / "backbone.json").read_text())
    # Honest: uem-es test speakers are absent from every stage (pretraining saw only the other corpora).
    config = TrainConfig(corpus={"kind": "emomatch", "path": str(data_dir / "uem-es")},
                         speakers=["s00", "s01", "s02"], protocol="loso", max_folds=1, variant="ds_am",
                         backbone_weights=str(backbone), **TINY)
    run_experiment(config, tmp_path / "ok")
    folds = json.loads((tmp_path / "ok" / "folds.json").read_text())
    seen = set(provenance["files"])
    for fold in folds:
        assert not {str(Path(p).resolve()) for p in fold["test_files"]} & seen
    # Dishonest: LOSO over emovo with a backbone that pretrained on emovo's speakers.
    leaky = TrainConfig(corpora=[entries(data_dir)[1] | {"role": "train"}], speakers=["emovo/f1", "emovo/m1"],
                        protocol="loso", variant="ds_am", backbone_weights=str(backbone), **TINY)
    with pytest.raises(ValueError, match="pretrained on test"):
        run_experiment(leaky, tmp_path / "leaky")


def test_clean_images_are_cached_on_disk_by_content_and_settings(data_dir, tmp_path):
    from ser_node.inference.features import FeatureConfig, FeatureExtractor
    from ser_node.train.data import AudioBank, ImageCache, ImageMaker

    clips = load_corpus_entry({"name": "emovo", "kind": "manifest", "path": str(data_dir / "emovo")}).corpus.clips[:3]
    bank = AudioBank()
    bank.load(clips)
    small, large = FeatureConfig(image_height=32, image_width=32), FeatureConfig(image_height=48, image_width=48)
    cache = ImageCache(tmp_path, small)
    maker = ImageMaker(FeatureExtractor(small), bank, TrainConfig(), 0, cache)
    first = maker.clean(clips[0])
    stored = cache.path(clips[0])
    assert stored.exists() and np.array_equal(np.load(stored), first)
    copy = tmp_path / "renamed.flac"  # the same content under another name hits the same entry
    copy.write_bytes(clips[0].path.read_bytes())
    assert cache.path(type(clips[0])(copy, clips[0].label, "x", "emovo")) == stored
    assert ImageCache(tmp_path, large).folder != cache.folder  # other settings, other images
    stored.write_bytes(b"damaged")
    again = ImageMaker(FeatureExtractor(small), bank, TrainConfig(), 0, ImageCache(tmp_path, small)).clean(clips[0])
    assert np.array_equal(again, first)  # recomputed, not trusted
