"""`ser_export`: turns a finished training run into the ONNX model file(s) the node loads."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import yaml


def export_run(run_dir: str | Path, output: str | Path, int8: bool = True, fold: str = "all",
               model_id: str | None = None, calibration_clips: int = 200, version: str = "0.1.0") -> dict[str, Path]:
    """Exports the network of `run_dir/<fold>` to `output` (fp32) and, with int8, `<output stem>.int8.onnx`.

    Int8 is calibrated on feature images of real clips from the run's own corpus (a seeded, class-stratified
    sample), never on random data.
    """
    from .corpora import load_corpus
    from .export import export_onnx, quantize_int8
    from .features import FeatureExtractor
    from .labels import EMOTIONS
    from .model_file import ModelMetadata
    from .train_config import TrainConfig
    from .train_data import AudioBank
    from .train_loop import load_trained_network

    run_dir, output = Path(run_dir), Path(output)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} is not a training run: a run folder (written by ser_train --out) holds "
                                "config.yaml, folds.json, report.json and a folder per fold with model.pt")
    config = TrainConfig.from_mapping(yaml.safe_load((run_dir / "config.yaml").read_text()))
    if config.variant == "ds_svc":
        raise ValueError("DS-SVC runs keep a scikit-learn SVM; export DS-FC or DS-AM runs for the node")
    fold_dir = run_dir / fold
    if not (fold_dir / "model.pt").is_file():
        raise FileNotFoundError(f"{fold_dir / 'model.pt'} not found: is the run finished? (protocol 'all' trains "
                                "the deployable model on every clip)")
    model = load_trained_network(fold_dir, config)
    report_path = run_dir / "report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    metadata = ModelMetadata(
        model_id=model_id or f"{config.variant}-w{config.width:g}-{config.image_size}px-{run_dir.name}",
        classes=list(EMOTIONS), features=config.feature_config(), variant=config.variant, version=version,
        model=config.model_config().to_dict(),
        training={"corpus": None if config.corpora else config.corpus, "protocol": config.protocol,
                  "corpora": [{k: e[k] for k in ("name", "role", "weight", "clips", "speakers")}
                              for e in report.get("corpora", [])],
                  "speakers": config.speakers, "epochs": config.epochs, "run": run_dir.name,
                  # the pretrained backbone it started from: file hash and what that backbone was trained on
                  "backbone": report.get("backbone"),
                  "report": report.get("summary")},
    )
    paths = {"fp32": export_onnx(model, metadata, output)}
    if int8:
        if config.corpora:  # calibrate on real images from every corpus the model was trained on
            from .train_data import prepare_clips

            data = prepare_clips(config)
            clips = data.target + data.extra
        else:
            corpus = load_corpus(config.corpus)
            clips = [c for c in corpus.clips if not config.speakers or c.speaker in set(config.speakers)]
        rng = np.random.default_rng(config.seed)
        chosen = [clips[i] for i in rng.permutation(len(clips))[:calibration_clips]]
        bank = AudioBank()
        chosen = bank.load(chosen, "calibration audio")
        images = FeatureExtractor(config.feature_config()).batch([bank[c] for c in chosen])
        paths["int8"] = quantize_int8(output, output.with_name(output.stem + ".int8.onnx"), images)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ser_export", description=__doc__)
    parser.add_argument("run_dir", type=Path, help="folder written by ser_train")
    parser.add_argument("output", type=Path, help="fp32 model path, e.g. models/my_model.onnx")
    parser.add_argument("--fold", default="all", help="which fold's network to export (default: all)")
    parser.add_argument("--no-int8", action="store_true", help="skip the int8 model")
    parser.add_argument("--model-id", help="identifier published in diagnostics (default: from the run)")
    parser.add_argument("--calibration-clips", type=int, default=200, help="real clips used to calibrate int8")
    args = parser.parse_args(argv)
    try:
        paths = export_run(args.run_dir, args.output, not args.no_int8, args.fold, args.model_id,
                           args.calibration_clips)
    except (FileNotFoundError, ValueError) as error:
        print(f"ser_export: {error}", file=sys.stderr)
        return 2
    for precision, path in paths.items():
        print(f"{precision}: {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
