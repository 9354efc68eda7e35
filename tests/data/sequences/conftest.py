"""Fixtures of the sequence-data tests: one prepared dataset and one small synthetic one per session."""

from pathlib import Path

import pytest

from tests.data.sequences.rawseq import random_log, write_udata
from torchrec_me.data.prepare.common import PrepareOptions
from torchrec_me.data.sequences.dataset import SequenceDataset
from torchrec_me.data.sequences.prepare import prepare_sequences
from torchrec_me.data.sequences.reader import ReadOptions
from torchrec_me.data.sequences.synthetic import SyntheticSequenceConfig, SyntheticSequences

QUIET = PrepareOptions(summary=False)


@pytest.fixture(scope="session")
def prepared_dir(session_dir: Path) -> Path:
    """A leave-one-out dataset of 120 users with 1..30 events each, 4 users per row group."""
    raw = write_udata(session_dir / "seq-raw" / "u.data", random_log(n_users=120, n_items=60, max_len=30, seed=3))
    out = session_dir / "seq-prepared"
    prepare_sequences(str(raw), str(out), PrepareOptions(summary=False, row_group_size=4), fmt="movielens")
    return out


@pytest.fixture(scope="session")
def prepared(prepared_dir: Path) -> SequenceDataset:
    return SequenceDataset(str(prepared_dir), ReadOptions(seed=7))


@pytest.fixture(scope="session")
def synthetic_small() -> SyntheticSequences:
    """512 users, 256 items: fast enough for the batch-contract tests."""
    cfg = SyntheticSequenceConfig(num_users=512, num_items=256, num_topics=8, mean_length=20, seed=5)
    return SyntheticSequences(cfg)
