"""`ser_train`: train and evaluate DS-SVC / DS-FC / DS-AM on a corpus under a protocol, from YAML plus overrides.

Examples:
  ser_train --config config/train_default.yaml --out runs/default
  ser_train --set corpus.path=/data/EmoMatchSpanishDB --set variant=ds_svc --set protocol=speaker_kfold --out runs/svc
  ser_train --config my.yaml --out runs/x --resume      # after a crash: finished folds and epochs are kept
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import yaml

from ..train.config import build_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ser_train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="YAML file of TrainConfig settings")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting (repeatable), e.g. --set epochs=5 --set corpus.path=/data")
    parser.add_argument("--out", type=Path, required=True, help="run folder (created; must be empty unless --resume)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    parser.add_argument("--show-config", action="store_true", help="print the resolved settings and exit")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        config = build_config(args.config, args.overrides)
    except (ValueError, TypeError, OSError) as error:
        print(f"ser_train: {error}", file=sys.stderr)
        return 2
    if args.show_config:
        print(yaml.safe_dump(config.to_mapping(), sort_keys=True))
        return 0
    from ..train.experiment import run_experiment

    try:
        result = run_experiment(config, args.out, resume=args.resume)
    except (FileExistsError, FileNotFoundError, ValueError) as error:
        print(f"ser_train: {error}", file=sys.stderr)
        return 2
    print((result.run_dir / "summary.md").read_text())
    if result.problems:
        print(f"{len(result.problems)} file(s) were not used; they are listed in {result.run_dir / 'summary.md'}")
    print(f"report: {result.run_dir / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
