"""`ser_export`: turns a finished training run into the ONNX model file(s) the node loads."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..inference.model_file import ModelFileError
from ..train.export import export_run, requantize


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ser_export", description=__doc__,
        epilog="ser_export runs/mine models/mine.onnx writes models/mine.onnx and models/mine.int8.onnx; "
               "ser_export --requantize models/ser_ds_am.onnx writes models/ser_ds_am.int8.onnx again from the fp32 "
               "file, calibrated on the corpus its metadata names.")
    parser.add_argument("run_dir", type=Path, nargs="?", help="folder written by ser_train")
    parser.add_argument("output", type=Path, nargs="?", help="fp32 model path, e.g. models/my_model.onnx")
    parser.add_argument("--fold", default="all", help="which fold's network to export (default: all)")
    parser.add_argument("--no-int8", action="store_true", help="skip the int8 model")
    parser.add_argument("--model-id", help="identifier published in diagnostics (default: from the run)")
    parser.add_argument("--calibration-clips", type=int, default=200, help="real clips used to calibrate int8")
    parser.add_argument("--requantize", type=Path, metavar="FP32_MODEL",
                        help="only (re)write the int8 version of an exported fp32 model file, beside it")
    args = parser.parse_args(argv)
    if args.requantize is None and (args.run_dir is None or args.output is None):
        parser.error("give a run folder and an output path, or --requantize FP32_MODEL")
    try:
        if args.requantize is not None:
            paths = {"int8": requantize(args.requantize, args.calibration_clips)}
        else:
            paths = export_run(args.run_dir, args.output, not args.no_int8, args.fold, args.model_id,
                               args.calibration_clips)
    except (FileNotFoundError, ValueError, ModelFileError) as error:
        print(f"ser_export: {error}", file=sys.stderr)
        return 2
    for precision, path in paths.items():
        print(f"{precision}: {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
