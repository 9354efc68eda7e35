"""Ranking rows: what each token is, that no label or later item leaks into a row, the
labels and negatives, and the training and evaluation streams."""

from typing import List

import numpy as np
import pytest
import torch

from torchrec_me.data.sequences.dataset import SequenceDataset
from torchrec_me.data.sequences.ranking import UNKNOWN_ACTION, RankingOptions, RankingRows, action_bucket
from torchrec_me.data.sequences.synthetic import SyntheticSequences
from torchrec_me.data.store import DatasetError

S = 6  # tokens a row: 5 history items and the candidate


def _rows(values: torch.Tensor, lengths: torch.Tensor) -> List[np.ndarray]:
    return [r.numpy() for r in torch.split(values, lengths.tolist())]


def _check_rows(rows: RankingRows, batch, users: np.ndarray, positions: np.ndarray, copies: np.ndarray) -> None:
    t = rows.reader.table
    items, times, actions = (_rows(x, batch.lengths) for x in (batch.items.values(), batch.timestamps, batch.actions))
    for b, (u, p, c) in enumerate(zip(users, positions, copies)):
        start = t.offsets[u]
        history = slice(start + max(p - (S - 1), 0), start + p)  # strictly before the candidate
        assert np.array_equal(items[b][:-1], t.items[history])
        assert np.array_equal(times[b], np.r_[t.timestamps[history], t.timestamps[start + p]])
        assert np.array_equal(actions[b], np.r_[action_bucket(t.ratings[history]), UNKNOWN_ACTION])
        positive, rating = t.items[start + p], t.ratings[start + p]
        if c == 0:
            assert items[b][-1] == positive
            expected = 1.0 if rows.implicit else float(rating >= rows.options.positive_rating)
            assert batch.labels[b] == expected
        else:
            assert items[b][-1] != positive and batch.labels[b] == 0.0


def test_rated_rows_label_the_rating_and_hide_it(prepared: SequenceDataset) -> None:
    rows = RankingRows(prepared, RankingOptions(positive_rating=4.0, seed=1, max_seq_len=S))
    assert not rows.implicit and rows.negatives == 0
    users, positions = rows._train
    t = prepared.table
    assert np.all((positions >= 1) & (positions < t.train_len[users]))
    assert len(users) == int(np.maximum(t.train_len - 1, 0).sum())  # every training interaction with a history
    batch = next(rows.train_batches(0, 1, 64, 0, 1))
    example, copy = rows.stream_examples(0, 0, 1, 64)
    assert not copy.any()
    _check_rows(rows, batch, users[example], positions[example], copy)


def test_implicit_rows_get_sampled_negatives(synthetic_small: SyntheticSequences) -> None:
    rows = RankingRows(synthetic_small, RankingOptions(negatives=3, seed=2, max_seq_len=S))
    assert rows.implicit and rows.negatives == 3
    users, positions, copies = rows.eval_examples("test")
    assert np.array_equal(copies[:8], [0, 1, 2, 3, 0, 1, 2, 3])
    batch = rows.batch(users[:40], positions[:40], copies[:40], S)
    _check_rows(rows, batch, users[:40], positions[:40], copies[:40])
    assert batch.labels.sum() == 10
    again = rows.batch(users[:40], positions[:40], copies[:40], S)
    assert torch.equal(again.items.values(), batch.items.values())  # negatives are a function of the row
    with pytest.raises(DatasetError, match="implicit data"):
        RankingRows(synthetic_small, RankingOptions(negatives=0))


def test_eval_rows_are_each_users_target_and_nothing_after_it(prepared: SequenceDataset) -> None:
    rows = RankingRows(prepared, RankingOptions(max_seq_len=S))
    for split in ("val", "test"):
        users, positions, copies = rows.eval_examples(split)
        assert np.array_equal(positions, prepared.table.targets[split][users])
        seen = []
        for world_size in (1, 3):
            got = []
            for rank in range(world_size):
                for (batch, _, real), (lo, hi, _) in zip(rows.eval_batches(split, rank, world_size, 7),
                                                         rows.eval_ranges(split, rank, world_size, 7)):  # fmt: skip
                    if real:
                        _check_rows(rows, batch, users[lo:hi], positions[lo:hi], copies[lo:hi])
                        got += list(range(lo, hi))
            seen.append(sorted(got))
        assert seen[0] == seen[1] == list(range(len(users)))


@pytest.mark.parametrize("world_size", [2, 4])
def test_ranks_read_slices_of_one_global_stream_and_resume_exactly(synthetic_small: SyntheticSequences, world_size: int) -> None:
    rows = RankingRows(synthetic_small, RankingOptions(max_seq_len=S))
    whole = list(rows.train_batches(0, 1, 8 * world_size, 0, 3))
    for rank in range(world_size):
        parts = list(rows.train_batches(rank, world_size, 8, 0, 3))
        for step in range(3):
            assert torch.equal(parts[step].labels, whole[step].labels[rank * 8 : (rank + 1) * 8])
            assert torch.equal(parts[step].users, whole[step].users[rank * 8 : (rank + 1) * 8])
    resumed = next(rows.train_batches(0, 1, 8 * world_size, 2, 3))
    assert torch.equal(resumed.items.values(), whole[2].items.values())


def test_a_row_needs_a_history_and_a_candidate(prepared: SequenceDataset) -> None:
    with pytest.raises(DatasetError, match="max_seq_len >= 2"):
        next(RankingRows(prepared, RankingOptions(max_seq_len=1)).train_batches(0, 1, 4, 0, 1))
