"""The ``torchrec-me sweep`` and ``torchrec-me fit`` subcommands."""

import argparse
import sys
from typing import Any

from torchrec_me.command import run_command
from torchrec_me.scaling import fit, sweep
from torchrec_me.scaling.sweep import SweepInterrupted, SweepOptions, run_sweep


def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--grid", required=True, help="grid file (YAML: base, grid, zip)")
    parser.add_argument("--out", required=True, help="sweep directory (cells/, results.parquet, results.csv)")
    parser.add_argument("--slots", type=int, default=1, help="cells run at once (default 1)")
    parser.add_argument("--nproc-per-cell", type=int, default=1, help="ranks per cell; > 1 runs each cell under torchrun")
    parser.add_argument("--retries", type=int, default=1, help="extra attempts of a failed cell (default 1)")
    parser.add_argument("--retry-failed", action="store_true", help="run again the cells a previous sweep recorded as failed")
    parser.add_argument("--max-minutes", type=float, help="start no new cell after this many minutes (resume later)")
    parser.add_argument("--threads-per-cell", type=int, help="OMP threads per process (default: the cores shared out)")
    parser.add_argument("--launcher", default="local", choices=("local", "torchx"), help="cells as subprocesses or TorchX jobs")
    parser.add_argument("--scheduler", default="local_cwd", help="TorchX scheduler of --launcher torchx (default local_cwd)")
    parser.add_argument("--scheduler-args", help="torchx run -cfg of --launcher torchx, e.g. queue=default")
    parser.add_argument("--component", default="launch/components.py:train", help="TorchX component of a cell")


def run_sweep_from_args(args: argparse.Namespace) -> int:
    options = SweepOptions(
        grid=args.grid, out=args.out, slots=args.slots, nproc_per_cell=args.nproc_per_cell, retries=args.retries,
        retry_failed=args.retry_failed, max_minutes=args.max_minutes, threads_per_cell=args.threads_per_cell,
        launcher=args.launcher, scheduler=args.scheduler, scheduler_args=args.scheduler_args, component=args.component,
    )  # fmt: skip

    def job() -> None:
        path = run_sweep(options)
        print(f"results: {path} and {path.with_suffix('.csv')}")

    try:
        return run_command(job)
    except (KeyboardInterrupt, SweepInterrupted):
        print(f"torchrec-me: sweep interrupted; the same command resumes it (--out {args.out})", file=sys.stderr)
        return 130


def add_scaling_commands(subparsers: Any) -> None:
    """Add ``sweep`` and ``fit``; each sets ``func``."""
    sweep_p = subparsers.add_parser("sweep", help="train every cell of a grid (resumable)", description=sweep.__doc__,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
    add_sweep_arguments(sweep_p)
    sweep_p.set_defaults(func=run_sweep_from_args)
    fit_p = subparsers.add_parser("fit", help="fit scaling laws to a sweep's results", description=fit.__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    fit.add_fit_arguments(fit_p)
    fit_p.set_defaults(func=fit.run_from_args)
