"""The ``torchrec-me prepare DATASET`` and ``torchrec-me fetch NAME`` subcommands.

Each dataset module (:mod:`.criteo`, :mod:`.avazu`, :mod:`.movielens`) contributes
``add_prepare_arguments(parser)`` for its own flags and
``prepare_from_args(args, options)``; they are listed in :data:`PREPARE_REGISTRY`, so a
new format is one more entry. The flags every dataset shares become one
:class:`~torchrec_me.data.prepare.common.PrepareOptions` (:func:`prepare_options`).
"""

import argparse
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, Dict, Optional, Sequence

from torchrec_me.data.prepare import avazu, criteo, movielens
from torchrec_me.data.prepare.common import DEFAULT_ROW_GROUP_SIZE, SPLIT_MODES, PrepareError, PrepareOptions, report_errors
from torchrec_me.data.prepare.fetch import fetch_movielens_100k
from torchrec_me.data.sequences.commands import FETCH_COMMANDS, add_fetch_arguments, add_prepare_sequences_command
from torchrec_me.data.sequences.ranking_ctr import add_prepare_ranking_rows_command

__all__ = ["PREPARE_REGISTRY", "add_fetch_command", "add_prepare_command", "prepare_options"]


@dataclass(frozen=True)
class PrepareCommand:
    """One ``prepare`` dataset: its help, input help, default min count and row-group size."""

    module: ModuleType
    help: str
    input_help: str
    min_count: int
    row_group_size: int = DEFAULT_ROW_GROUP_SIZE


PREPARE_REGISTRY: Dict[str, PrepareCommand] = {
    "criteo": PrepareCommand(
        criteo, "Criteo Kaggle train.txt (label, I1-I13, C1-C26; tab-separated)",
        "Criteo train.txt (path or URI; .gz/.bz2/.zst are decompressed on the fly)", criteo.DEFAULT_MIN_COUNT,
    ),
    "avazu": PrepareCommand(
        avazu, "Avazu train.csv (id, click, hour, C1, ..., C21; with header)",
        "Avazu train.csv (path or URI; may be compressed)", avazu.DEFAULT_MIN_COUNT,
    ),
    "movielens": PrepareCommand(
        movielens, "MovieLens 100k/1M (GroupLens or RecBole atomic files); a rating >= 4 is a click",
        "directory with u.data/u.user/u.item, ratings.dat/users.dat/movies.dat, or NAME.inter/.user/.item",
        movielens.DEFAULT_MIN_COUNT, movielens.DEFAULT_ROW_GROUP_SIZE,
    ),
}  # fmt: skip


def add_prepare_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``prepare {criteo,avazu,movielens}`` to argparse ``subparsers``; sets ``func``."""
    p = subparsers.add_parser(
        "prepare", help="convert raw Criteo / Avazu / MovieLens files into a Parquet dataset",
        description="Convert a raw dataset into the Parquet layout that `torchrec-me train data.path=DIR` reads.",
    )  # fmt: skip
    datasets = p.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    for name, cmd in PREPARE_REGISTRY.items():
        d = datasets.add_parser(name, help=cmd.help, description=(cmd.module.__doc__ or "").split("\n\n")[0])
        d.add_argument("--input", required=True, help=cmd.input_help)
        d.add_argument("--output", required=True, help="dataset directory to create (written atomically)")
        d.add_argument(
            "--min-count", type=int, default=cmd.min_count,
            help=f"tokens seen fewer times share one out-of-vocabulary id per field (default {cmd.min_count})",
        )  # fmt: skip
        d.add_argument(
            "--split", choices=SPLIT_MODES, default="random",
            help="random: seeded random 80/10/10 (the paper's protocol); time: the first 80%% of the rows "
            "are train, the next 10%% validation, the last 10%% test",
        )  # fmt: skip
        d.add_argument("--seed", type=int, default=0, help="seed of the random split (default 0)")
        d.add_argument(
            "--row-group-size", type=int, default=cmd.row_group_size,
            help=f"rows per Parquet row group, the reader's unit of work (default {cmd.row_group_size})",
        )  # fmt: skip
        d.add_argument("--overwrite", action="store_true", help="replace an existing output once the new one is complete")
        d.add_argument("--no-progress", action="store_true", help="disable the progress bars")
        cmd.module.add_prepare_arguments(d)
    add_prepare_sequences_command(datasets)  # sets its own func
    add_prepare_ranking_rows_command(datasets)  # sets its own func
    p.set_defaults(func=run_prepare)
    return p


def prepare_options(args: argparse.Namespace) -> PrepareOptions:
    """The options of a parsed ``prepare`` command line."""
    return PrepareOptions(
        split=args.split, seed=args.seed, row_group_size=args.row_group_size, overwrite=args.overwrite,
        progress=not args.no_progress,
    )  # fmt: skip


def run_prepare(args: argparse.Namespace) -> int:
    """Run ``prepare``; on bad input print one error line and return 1."""

    def prepare() -> None:
        if args.min_count < 1:
            raise PrepareError(f"--min-count must be >= 1, got {args.min_count}")
        PREPARE_REGISTRY[args.dataset].module.prepare_from_args(args, prepare_options(args))

    return report_errors(prepare, "no dataset was written")


def add_fetch_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``fetch movielens-100k [--output DIR]``; sets ``func``."""
    p = subparsers.add_parser(
        "fetch", help="download MovieLens-100k (RecBole atomic files from the recbole==1.2.1 wheel)",
        description="Runs `pip download --no-deps recbole==1.2.1` into a temporary directory and extracts "
        "recbole/dataset_example/ml-100k/. Then: torchrec-me prepare movielens --input DIR --output OUT.",
    )  # fmt: skip
    p.add_argument("name", choices=tuple(FETCH_RUNNERS), help="what to fetch")
    p.add_argument("--output", default=None, help="directory to create (default: per name, e.g. ./ml-100k, ./ml-1m)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds allowed for pip download (default 300)")
    add_fetch_arguments(p)
    p.set_defaults(func=lambda args: FETCH_RUNNERS[args.name](args))
    return p


def run_fetch(args: argparse.Namespace) -> int:
    """Run ``fetch``; on failure print one error line and return 1."""

    def fetch() -> None:
        path = fetch_movielens_100k(args.output or "ml-100k", overwrite=args.overwrite, timeout=args.timeout)
        print(f"fetched MovieLens-100k (RecBole atomic files) -> {path}")
        print(f"next: torchrec-me prepare movielens --input {path} --output {path}-prepared")

    return report_errors(fetch, "nothing was written")


# ``fetch NAME``: MovieLens-100k from the recbole wheel, the sequence datasets from their hosts.
FETCH_RUNNERS: Dict[str, Callable[[argparse.Namespace], int]] = {"movielens-100k": run_fetch, **FETCH_COMMANDS}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m torchrec_me.data.prepare.commands {prepare,fetch} ...``, the same as ``torchrec-me``."""
    parser = argparse.ArgumentParser(prog="python -m torchrec_me.data.prepare.commands")
    sub = parser.add_subparsers(dest="command", required=True)
    add_prepare_command(sub)
    add_fetch_command(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
