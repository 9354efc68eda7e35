"""The ``torchrec-me`` command."""

import argparse
import sys
from typing import Optional, Sequence

from torchrec_me import analyze, predict
from torchrec_me.data.prepare.commands import add_fetch_command, add_prepare_command
from torchrec_me.command import parse_with_overrides
from torchrec_me.scaling.commands import add_scaling_commands
from torchrec_me.train import add_train_arguments, run_from_args


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="torchrec-me", description="Multi-embedding recommendation models on TorchRec.")
    sub = parser.add_subparsers(dest="command", required=True)
    train_p = sub.add_parser("train", help="train a model (same as python -m torchrec_me.train)")
    add_train_arguments(train_p)
    train_p.set_defaults(func=run_from_args)
    analyze_p = sub.add_parser("analyze", help="embedding-collapse analysis of a checkpoint or run")
    analyze.add_analyze_arguments(analyze_p)
    analyze_p.set_defaults(func=analyze.run_from_args)
    predict_p = sub.add_parser("predict", help="score a prepared dataset with a checkpoint (Parquet out)")
    predict.add_predict_arguments(predict_p)
    predict_p.set_defaults(func=predict.run_from_args)
    add_prepare_command(sub)
    add_fetch_command(sub)
    add_scaling_commands(sub)
    args = parse_with_overrides(parser, argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
