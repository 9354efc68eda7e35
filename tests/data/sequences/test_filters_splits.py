"""k-core against a brute-force loop, the rating threshold, and the two splits' properties."""

import collections
import json
import random
from pathlib import Path
from typing import List, Set, Tuple

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.data.sequences.rawseq import random_log, write_udata
from torchrec_me.data.prepare.common import PrepareOptions
from torchrec_me.data.sequences.filters import filter_interactions
from torchrec_me.data.sequences.prepare import prepare_sequences

QUIET = PrepareOptions(summary=False)


def brute_force_kcore(pairs: List[Tuple[int, int]], min_user: int, min_item: int) -> Set[int]:
    """Indices kept: remove one violating user or item at a time until none is left."""
    alive = set(range(len(pairs)))
    while True:
        users = collections.Counter(pairs[k][0] for k in alive)
        items = collections.Counter(pairs[k][1] for k in alive)
        bad_users = [u for u, c in users.items() if c < min_user]
        bad_items = [i for i, c in items.items() if c < min_item]
        if not bad_users and not bad_items:
            return alive
        if bad_users:
            alive = {k for k in alive if pairs[k][0] != bad_users[0]}
        else:
            alive = {k for k in alive if pairs[k][1] != bad_items[0]}


@pytest.mark.parametrize("seed, min_user, min_item", [(0, 5, 5), (1, 3, 8), (2, 10, 2), (3, 0, 4), (4, 1, 1)])
def test_kcore_matches_brute_force(seed: int, min_user: int, min_item: int) -> None:
    rng = random.Random(seed)
    pairs = [(int(rng.paretovariate(1.2)) % 60, int(rng.paretovariate(1.0)) % 80) for _ in range(1500)]
    users, items = (np.array(c, dtype=np.int64) for c in zip(*pairs))
    result = filter_interactions(users, items, np.ones(len(pairs), np.float32), None, min_user, min_item)
    assert set(np.flatnonzero(result.keep).tolist()) == brute_force_kcore(pairs, min_user, min_item)
    assert result.removed_by_kcore == len(pairs) - int(result.keep.sum())
    assert (result.rounds > 0) == (result.removed_by_kcore > 0)


def test_rating_threshold_then_kcore(tmp_path: Path) -> None:
    events = random_log(n_users=60, seed=9)
    raw = write_udata(tmp_path / "u.data", events)
    out = tmp_path / "out"
    meta = prepare_sequences(str(raw), str(out), QUIET, fmt="movielens", rating_threshold=4, min_user_count=3)
    positive = [e for e in events if e.rating >= 4]
    per_user = collections.Counter(e.user for e in positive)
    kept = [e for e in positive if per_user[e.user] >= 3]  # items unconstrained: one round suffices
    assert meta["num_interactions"] == len(kept)
    assert meta["interactions"]["below_rating_threshold"] == len(events) - len(positive)
    assert meta["interactions"]["removed_by_kcore"] == len(positive) - len(kept)
    assert meta["preprocessing"]["kcore_rounds"] == (1 if len(kept) < len(positive) else 0)
    assert min(r for row in _users(out) for r in row["ratings"]) >= 4


def _users(out: Path) -> List[dict]:
    return pq.read_table(out / "users.parquet").to_pylist()


def test_leave_one_out_positions_and_short_users(prepared_dir: Path) -> None:
    meta = json.loads((prepared_dir / "metadata.json").read_text())
    short = 0
    for row in _users(prepared_dir):
        n, ts = len(row["items"]), row["timestamps"]
        assert ts == sorted(ts)
        if n < 3:
            short += 1
            assert (row["train_len"], row["val_index"], row["test_index"]) == (n, -1, -1)
            continue
        assert (row["train_len"], row["val_index"], row["test_index"]) == (n - 2, n - 2, n - 1)
        for target in (row["val_index"], row["test_index"]):
            assert max(ts[:target]) <= ts[target]  # history never later than its target
    assert short > 0 and meta["split"]["users_train_only"] == short
    assert meta["split"]["users_with_test"] == meta["num_users"] - short


def test_temporal_split_has_no_leakage(tmp_path: Path) -> None:
    raw = write_udata(tmp_path / "u.data", random_log(n_users=80, max_len=20, seed=5))
    meta = prepare_sequences(str(raw), str(tmp_path / "out"), QUIET, fmt="movielens", split="temporal")
    split = meta["split"]
    all_ts = np.sort([t for row in _users(tmp_path / "out") for t in row["timestamps"]])
    n = len(all_ts)
    assert (split["val_cut"], split["test_cut"]) == (all_ts[int(0.8 * n)], all_ts[int(0.9 * n)])
    seen_val = seen_test = 0
    for row in _users(tmp_path / "out"):
        ts, train_len, val, test = row["timestamps"], row["train_len"], row["val_index"], row["test_index"]
        assert all(t < split["val_cut"] for t in ts[:train_len])
        assert all(t >= split["val_cut"] for t in ts[train_len:])
        if val >= 0:
            seen_val += 1
            assert val == max(train_len, 1) and split["val_cut"] <= ts[val] < split["test_cut"]  # the first one
        if test >= 0:
            seen_test += 1
            assert test == max(sum(t < split["test_cut"] for t in ts), 1) and ts[test] >= split["test_cut"]
    assert seen_val == split["users_with_val"] > 0 and seen_test == split["users_with_test"] > 0
