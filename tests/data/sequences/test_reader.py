"""The SequenceBatch contract of both readers: ids, lengths, resume, one global stream, evaluation."""

import collections
import dataclasses
from typing import List

import numpy as np
import pytest
import torch

from torchrec_me.data.sequence_batch import SequenceBatch
from torchrec_me.data.sequences.reader import ReadOptions, SequenceReader, all_windows
from torchrec_me.data.sequences.synthetic import SyntheticSequences
from torchrec_me.data.store import DatasetError

READERS = ["prepared", "synthetic_small"]
S = 8  # max_seq_len: shorter than most sequences, so windows and truncation happen


@pytest.fixture(params=READERS)
def reader(request: pytest.FixtureRequest) -> SequenceReader:
    return request.getfixturevalue(request.param)


def _rows(batch: SequenceBatch) -> List[List[int]]:
    return [r.tolist() for r in torch.split(batch.items.values(), batch.lengths.tolist())]


def _same(a: SequenceBatch, b: SequenceBatch) -> bool:
    return all(
        torch.equal(x, y)
        for x, y in [(a.items.values(), b.items.values()), (a.lengths, b.lengths), (a.timestamps, b.timestamps),
                     (a.ratings, b.ratings), (a.targets, b.targets), (a.users, b.users)]
    )  # fmt: skip


def test_training_batches_respect_the_contract(reader: SequenceReader) -> None:
    t = reader.table
    for batch in reader.train_batches(1, 2, batch_size=16, start=0, stop=5, max_seq_len=S):
        lengths = batch.lengths
        assert batch.items.keys() == ["item"] and lengths.shape == (16,)
        assert ((lengths >= 2) & (lengths <= S + 1)).all()
        values = batch.items.values()
        assert values.dtype == torch.int64 and 0 <= int(values.min()) and int(values.max()) < reader.num_items
        assert batch.timestamps.shape == values.shape == batch.ratings.shape
        assert (batch.targets == -1).all()
        for user, row in zip(batch.users.tolist(), _rows(batch)):
            train = t.items[t.offsets[user] : t.offsets[user] + t.train_len[user]].tolist()
            assert any(train[k : k + len(row)] == row for k in range(len(train) - len(row) + 1))  # a training window


def test_windows_predict_every_training_position_once(reader: SequenceReader) -> None:
    users, starts, ends = all_windows(reader.table.train_len, S)
    predicted = collections.Counter((u, p) for u, a, b in zip(users, starts, ends) for p in range(a + 1, b))
    expected = {(u, p) for u, n in enumerate(reader.table.train_len) for p in range(1, n)}
    assert set(predicted) == expected and set(predicted.values()) == {1}
    assert ((ends - starts) <= S + 1).all() and ((ends - starts) >= 2).all()


def test_resume_is_exact_and_deterministic(reader: SequenceReader) -> None:
    full = list(reader.train_batches(0, 2, batch_size=24, start=0, stop=12, max_seq_len=S))
    resumed = list(reader.train_batches(0, 2, batch_size=24, start=7, stop=12, max_seq_len=S))
    assert all(_same(a, b) for a, b in zip(full[7:], resumed)) and len(resumed) == 5
    other_rank = next(reader.train_batches(1, 2, batch_size=24, start=0, stop=1, max_seq_len=S))
    assert not _same(full[0], other_rank)


def _global_rows(reader: SequenceReader, world_size: int, batch_size: int, start: int, stop: int) -> List[int]:
    """Window ids of steps ``start..stop-1``, each step's ranks in rank order."""
    return [w for s in range(start, stop) for r in range(world_size)
            for w in reader.train_rows(s, r, world_size, batch_size, S).tolist()]  # fmt: skip


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_rank_batches_are_slices_of_one_global_stream(reader: SequenceReader, world_size: int) -> None:
    # Rank r reads positions [s*G + r*b, s*G + (r+1)*b) of one stream of epoch permutations,
    # G = W*b. (Until 2026-11-30 rank r of W read perm[r::W]: a stream of (W, r), so a
    # restart at another world size read some windows twice and others never.)
    n = len(reader.windows(S)[0])
    b = 7
    steps = -(-2 * n // (world_size * b))  # two epochs
    rows = _global_rows(reader, world_size, b, 0, steps)
    assert rows == _global_rows(reader, 1, world_size * b, 0, steps)
    assert sorted(rows[:n]) == list(range(n)) and sorted(rows[n : 2 * n]) == list(range(n))  # each epoch once
    assert rows[:n] != sorted(rows[:n]) and rows[:n] != rows[n : 2 * n]  # shuffled, anew each epoch
    users, _, _ = reader.windows(S)
    batch = next(reader.train_batches(world_size - 1, world_size, b, start=1, stop=2, max_seq_len=S))
    assert batch.users.tolist() == users[reader.train_rows(1, world_size - 1, world_size, b, S)].tolist()


@pytest.mark.parametrize("k", [1, 4])
def test_restart_at_another_world_size_reads_every_window_once(reader: SequenceReader, k: int) -> None:
    # 2 ranks of batch 8 for steps [0, k), then 1 rank of batch 16 (the same global batch):
    # the windows read are the one-process stream's, none twice within the epoch.
    n = len(reader.windows(S)[0])
    steps = n // 16
    read = _global_rows(reader, 2, 8, 0, k) + _global_rows(reader, 1, 16, k, steps)
    assert read == _global_rows(reader, 1, 16, 0, steps) and len(set(read)) == len(read) == 16 * steps


def test_synthetic_is_deterministic(synthetic_small: SyntheticSequences) -> None:
    again = SyntheticSequences(synthetic_small.cfg)
    assert again.fingerprint == synthetic_small.fingerprint
    assert np.array_equal(again.table.items, synthetic_small.table.items)
    a = next(again.train_batches(0, 1, batch_size=8, max_seq_len=S))
    b = next(synthetic_small.train_batches(0, 1, batch_size=8, max_seq_len=S))
    assert _same(a, b)


@pytest.mark.parametrize("split", ["val", "test"])
@pytest.mark.parametrize("world_size, batch_size", [(1, 16), (2, 16), (3, 7), (4, 1000)])
def test_eval_covers_every_user_once(reader: SequenceReader, split: str, world_size: int, batch_size: int) -> None:
    t = reader.table
    per_rank = [list(reader.eval_batches(split, r, world_size, batch_size, max_seq_len=S)) for r in range(world_size)]
    assert len({len(p) for p in per_rank}) == 1
    assert len({tuple(len(b.users) for b, _ in p) for p in per_rank}) == 1  # the same batch sizes on every rank
    real = [u for p in per_rank for b, ok in p if ok for u in b.users.tolist()]
    assert sorted(real) == np.flatnonzero(t.targets[split] >= 0).tolist()
    for batch, _ in per_rank[-1]:
        for user, row, target, when in zip(batch.users.tolist(), _rows(batch), batch.targets.tolist(),
                                           batch.target_timestamps.tolist()):  # fmt: skip
            start, at = int(t.offsets[user]), int(t.offsets[user] + t.targets[split][user])
            assert row == t.items[start:at].tolist()[-S:] and target == t.items[at]
            assert when == t.timestamps[at] >= t.timestamps[start:at].max()  # no history after its target


def test_seen_items_are_the_whole_history(reader: SequenceReader) -> None:
    t = reader.table
    batch, _ = next(reader.eval_batches("test", 0, 1, batch_size=32, max_seq_len=S))
    seen = reader.seen_items("test", batch.users)
    assert seen.lengths().shape == (32,)
    for user, row in zip(batch.users.tolist(), seen.to_dense()):
        pos = int(t.targets["test"][user])
        assert row.tolist() == sorted(set(t.items[t.offsets[user] : t.offsets[user] + pos].tolist()))
    assert (seen.lengths() >= batch.lengths).any() and (seen.lengths() > S).any()  # not truncated


def test_item_counts_are_training_popularity(reader: SequenceReader) -> None:
    t = reader.table
    expected = np.zeros(reader.num_items, np.int64)
    for u in range(reader.num_users):
        np.add.at(expected, t.items[t.offsets[u] : t.offsets[u] + t.train_len[u]], 1)
    assert torch.equal(reader.item_counts, torch.from_numpy(expected))


def test_last_window_and_bad_arguments(prepared: SequenceReader) -> None:
    last = SequenceReader(prepared.table, prepared.num_items, True, ReadOptions(train_windows="last"))
    users, starts, ends = last.windows(S)
    assert np.array_equal(ends, prepared.table.train_len[users]) and len(set(users.tolist())) == len(users)
    with pytest.raises(DatasetError, match="unknown train_windows"):
        ReadOptions(train_windows="random")
    with pytest.raises(DatasetError, match="max_seq_len"):
        next(prepared.train_batches(0, 1, 4, max_seq_len=0))
    no_windows = dataclasses.replace(prepared.table, train_len=np.minimum(prepared.table.train_len, 1))
    with pytest.raises(DatasetError, match="there is no training window"):
        next(SequenceReader(no_windows, prepared.num_items, True).train_batches(0, 1, 4, max_seq_len=S))
    with pytest.raises(DatasetError, match="rank 2 is outside a world of 2"):
        next(prepared.train_batches(2, 2, 4, max_seq_len=S))
    with pytest.raises(DatasetError, match="unknown evaluation split"):
        next(prepared.eval_batches("train", 0, 1, 4))
    train_only = int(np.flatnonzero(prepared.table.targets["val"] < 0)[0])
    with pytest.raises(DatasetError, match="no val target"):
        prepared.seen_items("val", [train_only])


def test_train_on_val_adds_the_validation_targets(prepared: SequenceReader) -> None:
    t = prepared.table
    reference = SequenceReader(t, prepared.num_items, True, ReadOptions(train_on_val=True))
    has_val = t.targets["val"] >= 0
    assert np.array_equal(reference.table.train_len, np.where(has_val, t.targets["val"] + 1, t.train_len))
    val_items = t.items[t.offsets[:-1][has_val] + t.targets["val"][has_val]]
    assert torch.equal(reference.item_counts - prepared.item_counts, torch.bincount(torch.from_numpy(val_items),
                                                                                     minlength=prepared.num_items))
    assert np.array_equal(reference.eval_users("test"), prepared.eval_users("test"))


def test_a_share_of_the_users_trains_and_every_user_is_evaluated(reader: SequenceReader) -> None:
    t = reader.table
    parts = {f: SequenceReader(t, reader.num_items, True, ReadOptions(train_user_fraction=f)) for f in (0.1, 0.3, 1.0)}
    kept = {f: set(np.flatnonzero(r.training_users()).tolist()) for f, r in parts.items() if f < 1}
    assert parts[1.0].training_users() is None
    assert len(kept[0.1]) == max(1, round(0.1 * reader.num_users)) and kept[0.1] <= kept[0.3]
    for f, r in parts.items():
        users = set(r.windows(S)[0].tolist())
        assert users == (kept[f] if f < 1 else set(reader.windows(S)[0].tolist())) & set(reader.windows(S)[0].tolist())
        assert np.array_equal(r.eval_users("test"), reader.eval_users("test"))
    mask = parts[0.3].training_users()
    expected = np.zeros(reader.num_items, np.int64)
    for u in np.flatnonzero(mask):
        np.add.at(expected, t.items[t.offsets[u] : t.offsets[u] + t.train_len[u]], 1)
    assert torch.equal(parts[0.3].item_counts, torch.from_numpy(expected))  # popularity of the same users
    with pytest.raises(DatasetError, match="train_user_fraction"):
        ReadOptions(train_user_fraction=0.0)
