from typing import List, Tuple

import pytest
import torch

from torchrec_me.config import DataConfig
from torchrec_me.data.synthetic import CRITEO_CARDINALITIES, SyntheticCriteo


def _ids(batch) -> torch.Tensor:
    kjt = batch.sparse_features
    return kjt.values().view(len(kjt.keys()), -1).t()  # (B, F)


def test_shape_and_kjt_layout() -> None:
    ds = SyntheticCriteo(DataConfig())
    batch, prob = ds.batch("train", 0, 64)
    assert len(ds.feature_names) == len(CRITEO_CARDINALITIES) == 39
    kjt = batch.sparse_features
    assert kjt.keys() == ds.feature_names and kjt.lengths().eq(1).all()
    ids = _ids(batch)
    assert ids.shape == (64, 39) and ids.min() >= 0
    assert (ids < torch.tensor(ds.num_embeddings)).all()
    assert batch.labels.shape == prob.shape == (64,)
    assert set(batch.labels.unique().tolist()) <= {0.0, 1.0}


def test_deterministic_given_seed() -> None:
    a, b = SyntheticCriteo(DataConfig(seed=3)), SyntheticCriteo(DataConfig(seed=3))
    (ba, pa), (bb, pb) = a.batch("train", 5, 128), b.batch("train", 5, 128)
    assert torch.equal(_ids(ba), _ids(bb)) and torch.equal(ba.labels, bb.labels) and torch.equal(pa, pb)
    other = SyntheticCriteo(DataConfig(seed=4)).batch("train", 5, 128)[0]
    assert not torch.equal(_ids(ba), _ids(other))


def _rows(batches) -> List[Tuple[int, ...]]:
    """One record per sample: its 39 ids and its label (a sample's identity here)."""
    return [tuple(ids) + (int(y),) for b in batches for ids, y in zip(_ids(b).tolist(), b.labels.tolist())]


def test_rank_streams_are_slices_of_the_global_batch() -> None:
    # Step s is global batch s of G = 2 * 32 samples; rank r takes rows [32r, 32r + 32).
    # (Until 2026-11-30 rank r took whole global batches r, r + W, ...: a stream that
    # depended on W, so a restart at another world size re-read some samples.)
    ds = SyntheticCriteo(DataConfig())
    r0 = [_ids(b) for b in ds.train_batches(0, 2, 32, 0, 3)]
    r1 = [_ids(b) for b in ds.train_batches(1, 2, 32, 0, 3)]
    single = [_ids(b) for b in ds.train_batches(0, 1, 64, 0, 3)]
    rows0 = {tuple(r) for t in r0 for r in t.tolist()}
    rows1 = {tuple(r) for t in r1 for r in t.tolist()}
    assert not rows0 & rows1
    for s in range(3):
        assert torch.equal(torch.cat([r0[s], r1[s]]), single[s])
    resumed = [_ids(b) for b in ds.train_batches(1, 2, 32, 2, 3)]
    assert torch.equal(resumed[0], r1[2])
    assert not torch.equal(single[0], _ids(next(ds.train_batches(0, 1, 32, 0, 1))))  # another G, another stream


def test_slice_of_a_batch_equals_the_whole_batch_sliced() -> None:
    ds = SyntheticCriteo(DataConfig(seed=2))
    whole, prob = ds.batch("train", 4, 96)
    part, part_prob = ds.batch("train", 4, 96, rows=(40, 72))
    assert _rows([part]) == _rows([whole])[40:72] and torch.equal(part_prob, prob[40:72])


@pytest.mark.parametrize("k", [1, 3])
def test_restart_at_another_world_size_continues_the_global_stream(k: int) -> None:
    # 2 ranks of batch 32 for steps [0, k), then 1 rank of batch 64 (the same global
    # batch) for [k, 5): the samples read are the one-process stream's, each once.
    ds = SyntheticCriteo(DataConfig())
    before = [_rows(ds.train_batches(r, 2, 32, 0, k)) for r in range(2)]
    after = _rows(ds.train_batches(0, 1, 64, k, 5))
    read = before[0] + before[1] + after
    uninterrupted = _rows(ds.train_batches(0, 1, 64, 0, 5))
    assert sorted(read) == sorted(uninterrupted) and len(set(read)) == len(read) == 5 * 64
    assert [r for s in range(k) for r in before[0][32 * s : 32 * s + 32] + before[1][32 * s : 32 * s + 32]] == uninterrupted[: 64 * k]


def test_positive_rate_zipf_and_teacher_signal() -> None:
    ds = SyntheticCriteo(DataConfig())
    batch, prob = ds.batch("val", 0, 20000)
    assert abs(batch.labels.mean().item() - 0.25) < 0.02
    ids = _ids(batch)
    field = 15  # C16, one of the large fields
    counts = torch.bincount(ids[:, field], minlength=ds.num_embeddings[field]).sort(descending=True).values
    assert counts[0] > 20 * counts[100].clamp(min=1)  # heavy head
    # The teacher separates the labels it drew: positives have higher probability.
    assert prob[batch.labels == 1].mean() > prob[batch.labels == 0].mean() + 0.1


def test_eval_batches_are_equal_in_number_per_rank() -> None:
    ds = SyntheticCriteo(DataConfig(val_samples=5 * 16))
    per_rank = [list(ds.eval_batches("val", r, 2, 16)) for r in range(2)]
    assert [len(p) for p in per_rank] == [3, 3]
    real = [sum(flag for _, _, flag in p) for p in per_rank]
    assert real == [3, 2]
    assert all(b.labels.numel() == 16 for p in per_rank for b, _, _ in p)
