"""The command-line side of the sequence data: ``prepare sequences`` and three ``fetch`` names.

Both plug into the existing commands of :mod:`torchrec_me.data.prepare.commands`
without this module importing it (that module imports this one):

* ``add_prepare_sequences_command(datasets)`` adds ``sequences`` beside ``criteo``,
  ``avazu`` and ``movielens`` under ``prepare``; the subparser sets its own ``func``
  (:func:`run_prepare_sequences`), which argparse prefers to the ``prepare`` parser's.
* :data:`FETCH_COMMANDS` maps each name of
  :data:`~torchrec_me.data.sequences.fetch.FETCH_REGISTRY` to :func:`run_fetch_sequences`,
  and :func:`add_fetch_arguments` adds the flag those names take (``--url``).

``python -m torchrec_me.data.sequences.commands {prepare sequences,fetch} ...`` runs the
same commands on their own.
"""

import argparse
import sys
from typing import Any, Callable, Dict, Optional, Sequence

from torchrec_me.data.prepare.common import PrepareError, PrepareOptions, report_errors
from torchrec_me.data.sequences.fetch import DEFAULT_TIMEOUT, FETCH_REGISTRY, fetch_dataset
from torchrec_me.data.sequences.formats import FORMATS
from torchrec_me.data.sequences.prepare import DEFAULT_USERS_PER_ROW_GROUP, prepare_sequences
from torchrec_me.data.sequences.splits import SPLIT_REGISTRY

__all__ = ["FETCH_COMMANDS", "add_fetch_arguments", "add_prepare_sequences_command", "run_fetch_sequences",
           "run_prepare_sequences"]  # fmt: skip


def add_prepare_sequences_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``sequences`` to the ``prepare`` subparsers ``subparsers``; sets ``func``."""
    formats = "; ".join(f"{name}: {f.help}" for name, f in FORMATS.items())
    d = subparsers.add_parser(
        "sequences", help="user interaction logs -> per-user item sequences (HSTU, SASRec, Llama-style)",
        description="Write one Parquet row per user (time-ordered items, timestamps, ratings), the item "
        "vocabulary with counts, and metadata.json, atomically. Formats: " + formats + ".",
    )  # fmt: skip
    d.add_argument("--format", required=True, choices=tuple(FORMATS), help="input format (see above)")
    d.add_argument("--input", required=True, help="the raw file, or a directory holding it (path or file:// URI)")
    d.add_argument("--output", required=True, help="dataset directory to create (written atomically)")
    d.add_argument("--min-user-count", type=int, default=0, help="k-core: least interactions per user (default 0: off)")
    d.add_argument("--min-item-count", type=int, default=0, help="k-core: least interactions per item (default 0: off)")
    d.add_argument(
        "--rating-threshold", type=float, default=None,
        help="keep only interactions rated at least this (default: keep all)",
    )  # fmt: skip
    d.add_argument(
        "--split", choices=tuple(SPLIT_REGISTRY), default="leave_one_out",
        help="leave_one_out: last item test, the one before validation (default); temporal: a global time "
        "cut at the 80%% and 90%% quantiles of the interaction times (needs timestamps)",
    )  # fmt: skip
    d.add_argument(
        "--row-group-size", type=int, default=DEFAULT_USERS_PER_ROW_GROUP,
        help=f"users per Parquet row group (default {DEFAULT_USERS_PER_ROW_GROUP})",
    )  # fmt: skip
    d.add_argument(
        "--max-bad-fraction", type=float, default=PrepareOptions.max_bad_fraction,
        help="refuse the input when more of its lines are malformed (default %(default)s)",
    )  # fmt: skip
    d.add_argument("--overwrite", action="store_true", help="replace an existing output once the new one is complete")
    d.set_defaults(func=run_prepare_sequences)
    return d


def run_prepare_sequences(args: argparse.Namespace) -> int:
    """Run ``prepare sequences``; on bad input print one error line and return 1."""
    options = PrepareOptions(
        row_group_size=args.row_group_size, overwrite=args.overwrite, max_bad_fraction=args.max_bad_fraction
    )

    def prepare() -> None:
        prepare_sequences(
            args.input, args.output, options, fmt=args.format, min_user_count=args.min_user_count,
            min_item_count=args.min_item_count, rating_threshold=args.rating_threshold, split=args.split,
        )  # fmt: skip

    return report_errors(prepare, "no dataset was written")


def add_fetch_arguments(parser: argparse.ArgumentParser) -> None:
    """The flag the sequence ``fetch`` names add to the ``fetch`` parser: ``--url``."""
    parser.add_argument("--url", default=None, help="a mirror of the same file (size and sha256 are still checked)")


def run_fetch_sequences(args: argparse.Namespace) -> int:
    """Run ``fetch NAME`` for a name of :data:`FETCH_REGISTRY`; on failure one error line and 1.

    Reads ``args.name``, ``args.output`` (None: the name's default directory),
    ``args.overwrite``, ``args.timeout`` and ``args.url``.
    """
    remote = FETCH_REGISTRY[args.name]
    output = args.output or remote.directory
    url = getattr(args, "url", None)

    def fetch() -> None:
        print(f"fetching {args.name} from {url or remote.url}", file=sys.stderr)
        path = fetch_dataset(args.name, output, url=url, timeout=args.timeout, overwrite=args.overwrite)
        print(f"fetched {args.name} -> {path} (sha256 recorded in {path}/fetch.json)")
        fmt = remote.prepare_format
        print(f"next: torchrec-me prepare sequences --format {fmt} --input {path} --output {path}-seq")

    return report_errors(fetch, "the partial download is kept; run the same command again to resume")


FETCH_COMMANDS: Dict[str, Callable[[argparse.Namespace], int]] = {name: run_fetch_sequences for name in FETCH_REGISTRY}


def build_parser() -> argparse.ArgumentParser:
    """``prepare sequences`` and ``fetch NAME`` on their own, as the ``torchrec-me`` commands will hold them."""
    parser = argparse.ArgumentParser(prog="python -m torchrec_me.data.sequences.commands")
    sub = parser.add_subparsers(dest="command", required=True)
    prepare = sub.add_parser("prepare", help="convert a raw dataset")
    add_prepare_sequences_command(prepare.add_subparsers(dest="dataset", required=True, metavar="DATASET"))
    fetch = sub.add_parser("fetch", help="download a raw sequence dataset from its official host")
    fetch.add_argument("name", choices=tuple(FETCH_COMMANDS), help="what to fetch")
    fetch.add_argument("--output", default=None, help="directory to create (default: per name, e.g. ml-1m)")
    fetch.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    fetch.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds to wait for the server")
    add_fetch_arguments(fetch)
    fetch.set_defaults(func=lambda args: FETCH_COMMANDS[args.name](args))
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse ``argv`` with :func:`build_parser` and run the command."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
