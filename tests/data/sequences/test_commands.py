"""``prepare sequences`` on the command line, hooked under ``prepare`` as the CLI will hook it."""

import argparse
from pathlib import Path

import pytest

from tests.data.sequences.rawseq import random_log, write_pairs
from torchrec_me.data.sequences.commands import add_prepare_sequences_command, run_prepare_sequences
from torchrec_me.data.sequences.dataset import SequenceDataset


def prepare_parser() -> argparse.ArgumentParser:
    """``prepare DATASET`` with its own default ``func``, as torchrec_me.data.prepare.commands builds it."""
    top = argparse.ArgumentParser(prog="torchrec-me")
    sub = top.add_subparsers(dest="command", required=True)
    prepare = sub.add_parser("prepare")
    datasets = prepare.add_subparsers(dest="dataset", required=True)
    add_prepare_sequences_command(datasets)
    prepare.set_defaults(func=lambda args: pytest.fail("the prepare parser's func ran"))
    return top


def test_prepare_sequences_command(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    raw = write_pairs(tmp_path / "log.txt", random_log(n_users=12, seed=3))
    out = tmp_path / "seq"
    argv = ["prepare", "sequences", "--format", "pairs", "--input", str(raw), "--output", str(out),
            "--min-user-count", "2", "--row-group-size", "5"]  # fmt: skip
    args = prepare_parser().parse_args(argv)
    assert args.func is run_prepare_sequences
    assert args.func(args) == 0
    assert "prepared pairs sequences" in capsys.readouterr().out
    ds = SequenceDataset(str(out))
    assert ds.has_timestamps is False and ds.metadata["preprocessing"]["min_user_count"] == 2
    assert args.func(args) == 1  # the output exists now
    err = capsys.readouterr().err.strip()
    assert err.startswith("torchrec-me: error:") and "already exists" in err and "\n" not in err


def test_bad_split_choice_is_rejected_by_argparse(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        prepare_parser().parse_args(["prepare", "sequences", "--format", "pairs", "--input", "x", "--output", "y",
                                     "--split", "random"])  # fmt: skip
