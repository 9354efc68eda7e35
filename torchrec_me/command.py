"""What every ``torchrec-me`` subcommand shares: argument parsing and one error wrapper.

A user error (bad config, bad dataset, a missing or unwritable path, a failed training
run) ends as one line ``torchrec-me: error: ...`` on stderr with exit code 2, never a
traceback, and the process group is torn down either way.
"""

import argparse
import sys
import warnings
from typing import Callable, Optional, Sequence

import torch.distributed as dist

from torchrec_me.config import ConfigError
from torchrec_me.data.store import DatasetError
from torchrec_me.distributed.checkpoint import CorruptCheckpointError
from torchrec_me.loop import TrainingError

# TorchRec's sharded modules still build ShardedTensor; torch warns once per process that
# DTensor replaces it. The analysis reads ShardedTensor shards (torchrec_me/analysis/sharded.py),
# so the warning is known and tested there; the CLI does not repeat it to users.
_SHARDED_TENSOR_DEPRECATION = ".*DTensor instead.*"

# Errors of the user's input or environment; anything else is a bug and keeps its traceback.
USER_ERRORS = (ConfigError, DatasetError, TrainingError, CorruptCheckpointError, OSError)


def run_command(job: Callable[[], None]) -> int:
    """Run ``job``; a user error becomes one line on stderr and exit code 2."""
    warnings.filterwarnings("ignore", message=_SHARDED_TENSOR_DEPRECATION)
    try:
        job()
    except USER_ERRORS as e:
        print(f"torchrec-me: error: {_one_line(e)}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


def _one_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    first = text.splitlines()[0]
    return first if isinstance(e, (ConfigError, DatasetError, TrainingError, CorruptCheckpointError)) else f"{type(e).__name__}: {first}"


def parse_with_overrides(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse ``argv``, accepting ``KEY=VALUE`` overrides anywhere among the flags
    (argparse alone takes positionals only before the first flag)."""
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args
