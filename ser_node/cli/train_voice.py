"""`ser_train_voice`: train the default model (heads on the pretrained GE2E voice encoder and, with the recipe's
prosody_weight, on the utterance's prosody) and export it."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import yaml

from ..train.voice_recipe import VoiceRecipe, train_and_export


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ser_train_voice",
        description="Train the default model (heads on the pretrained GE2E voice encoder and, with the recipe's "
                    "prosody_weight, on the utterance's prosody; speaker-normalised) on every clip of the recipe's "
                    "corpora and export it as an ONNX model file. LOSO figures come from bench/voice.py and "
                    "bench/prosody.py.")
    parser.add_argument("--config", type=Path, default=None, help="YAML recipe (default: config/train_voice.yaml's "
                                                                  "settings)")
    parser.add_argument("--out", type=Path, required=True, help="folder for model.onnx, heads.npz, report.json")
    parser.add_argument("--copy-to", type=Path, default=None, help="also copy model.onnx here "
                                                                   "(e.g. models/ser_default.onnx)")
    args = parser.parse_args(argv)
    values = yaml.safe_load(args.config.read_text()) if args.config else {}
    try:
        recipe = VoiceRecipe.from_mapping(values or {})
    except (TypeError, ValueError) as error:
        print(f"ser_train_voice: {error}", file=sys.stderr)
        return 2
    base = args.config.resolve().parent.parent if args.config else Path.cwd()
    report = train_and_export(recipe, args.out, base)
    print(json.dumps({k: report[k] for k in ("clips", "speakers", "train_seconds", "model")}, indent=1))
    if args.copy_to:
        import shutil

        shutil.copyfile(args.out / "model.onnx", args.copy_to)
        print(f"copied to {args.copy_to}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
