"""Sharded Gram matrices on 2 gloo ranks against numpy's SVD of the gathered tables.

One spawn per module: each rank shards three embedding sets of the same fields, set 0
table-wise, set 1 column-wise and set 2 table-column-wise (dims 16 with small minimum
column partitions, so the column-wise tables really are split over both ranks), loads
the same weights, counts ids of its own batches and computes the collapse report and
raw Grams collectively. The parent gathers the shards both ranks returned and checks
every number against ``numpy.linalg.svd``.
"""

from typing import Any, Dict, List, Tuple

import numpy as np
import pytest
import torch

from tests.multiprocess import run_ranks

SET_SHARDING = ["table_wise", "column_wise", "table_column_wise"]
MIN_PARTITION = [None, 4, 8]
FIELDS = ["a", "b", "c"]
ROWS = [50, 37, 64]
DIM = 16
TRAINED_FRACTION = 0.6  # ids come from the first 60% of rows, which are low-rank
CHUNK_ROWS = 7


def _ids(rank: int, step: int, rows: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 * rank + step)
    return torch.randint(0, int(rows * TRAINED_FRACTION), (12,), generator=g)


def _worker(rank: int, world_size: int) -> Dict[str, Any]:
    from torch.distributed._shard.sharded_tensor import ShardedTensor
    from torchrec.distributed.planner.types import ParameterConstraints
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    from torchrec_me.analysis import IdFrequencyTracker, collapse_report, gram_matrices
    from torchrec_me.distributed.optimizers import apply_sparse_optimizer
    from torchrec_me.distributed.sharding import init_distributed, load_unsharded_state_dict, plan_and_shard
    from torchrec_me.modules.multi_embedding import MultiEmbeddingBagCollection
    from torchrec_me.modules.naming import set_table_name

    ctx = init_distributed("cpu")
    torch.manual_seed(0)
    ref = MultiEmbeddingBagCollection(FIELDS, ROWS, [DIM] * 3)
    full = {k: v.detach().clone() for k, v in ref.state_dict().items()}
    g = torch.Generator().manual_seed(7)
    for value in full.values():  # trained rows rank 2, the others random
        m = int(value.shape[0] * TRAINED_FRACTION)
        value[:m] = 0.3 * torch.randn(m, 2, generator=g) @ torch.randn(2, DIM, generator=g)
        value[m:] = torch.randn(value.shape[0] - m, DIM, generator=g)

    module = MultiEmbeddingBagCollection(FIELDS, ROWS, [DIM] * 3, device=torch.device("meta"))
    apply_sparse_optimizer(module, "sgd", 0.1)
    constraints = {
        set_table_name(k, f): ParameterConstraints(sharding_types=[st], compute_kernels=["fused"], min_partition=mp)
        for k, (st, mp) in enumerate(zip(SET_SHARDING, MIN_PARTITION))
        for f in FIELDS
    }
    dmp, plan = plan_and_shard(module, ctx, 8, constraints=constraints)
    load_unsharded_state_dict(dmp, full)

    tracker = IdFrequencyTracker.for_model(dmp)
    for step in range(3):
        ids = [_ids(rank, step, n) for n in ROWS]
        tracker.update(
            KeyedJaggedTensor.from_lengths_sync(
                keys=FIELDS, values=torch.cat(ids), lengths=torch.ones(sum(len(i) for i in ids), dtype=torch.int32)
            )
        )
    report = collapse_report(dmp, tracker, chunk_rows=CHUNK_ROWS)  # syncs the tracker itself
    synced = tracker.synced()
    groups = {f: [set_table_name(k, f) for k in range(3)] for f in FIELDS}
    grams = gram_matrices(
        dmp,
        groups,
        [None, {f: synced.row_mask(f) for f in FIELDS}, {f: synced.row_frequency(f) for f in FIELDS}],
        chunk_rows=CHUNK_ROWS,
    )
    # Without an all-rows variant, only rows with a count are sent and multiplied.
    freq_only = gram_matrices(dmp, groups, [{f: synced.row_frequency(f) for f in FIELDS}], chunk_rows=CHUNK_ROWS)
    try:  # different weights per rank must fail on every rank, not hang
        gram_matrices(dmp, {"x": ["set1__a"]}, [{"x": torch.full((ROWS[0],), float(rank))}])
        mismatch = ""
    except ValueError as e:
        mismatch = str(e)

    shards: Dict[str, List[Tuple[List[int], List[int], torch.Tensor]]] = {}
    placements: Dict[str, List[int]] = {}
    for key, value in dmp.state_dict().items():
        if isinstance(value, ShardedTensor):
            name = key.split("embedding_bags.")[1].split(".")[0]
            shards[name] = [
                (list(s.metadata.shard_offsets), list(s.metadata.shard_sizes), s.tensor.detach().clone())
                for s in value.local_shards()
            ]
            placements[name] = [s.placement.rank() for s in value.metadata().shards_metadata]
    return {
        "report": report,
        "grams": grams,
        "freq_only": freq_only,
        "local_counts": {f: tracker.counts(f) for f in FIELDS},
        "synced_counts": {f: synced.counts(f) for f in FIELDS},
        "shards": shards,
        "placements": placements,
        "mismatch": mismatch,
    }


@pytest.fixture(scope="module")
def ranks() -> List[Dict[str, Any]]:
    return run_ranks(_worker, world_size=2)


@pytest.fixture(scope="module")
def gathered(ranks: List[Dict[str, Any]]) -> Dict[str, np.ndarray]:
    """Full tables assembled in the parent from both ranks' shards (each cell once)."""
    tables: Dict[str, np.ndarray] = {}
    hits: Dict[str, np.ndarray] = {}
    for r in ranks:
        for name, pieces in r["shards"].items():
            f = name.split("__")[1]
            shape = (ROWS[FIELDS.index(f)], DIM)
            tables.setdefault(name, np.zeros(shape))
            hits.setdefault(name, np.zeros(shape, dtype=int))
            for (r0, c0), (nr, nc), t in pieces:
                tables[name][r0 : r0 + nr, c0 : c0 + nc] = t.double().numpy()
                hits[name][r0 : r0 + nr, c0 : c0 + nc] += 1
    assert len(tables) == 9 and all((h == 1).all() for h in hits.values())
    return tables


def _svd(e: np.ndarray) -> np.ndarray:
    """All D singular values (zeros past rank when there are fewer rows than columns)."""
    s = np.linalg.svd(e, compute_uv=False)
    return np.concatenate([s, np.zeros(e.shape[1] - s.size)])


def _ia(s: np.ndarray) -> float:
    return float(s.sum() / s.max())


def _counts(ranks: List[Dict[str, Any]], f: str) -> np.ndarray:
    return ranks[0]["synced_counts"][f].double().numpy()


def _variants(e: np.ndarray, counts: np.ndarray) -> Dict[str, np.ndarray]:
    """The three row selections/weightings of a table, as dense matrices for numpy."""
    return {"all_rows": e, "trained_rows": e[counts > 0], "freq_weighted": np.sqrt(counts)[:, None] * e}


def _close_sv(got: np.ndarray, want: np.ndarray) -> None:
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * want[0])


def test_plan_splits_columns_over_both_ranks(ranks: List[Dict[str, Any]]) -> None:
    placements = ranks[0]["placements"]
    for f in FIELDS:
        assert len(placements[f"set0__{f}"]) == 1
        for k in (1, 2):
            assert len(placements[f"set{k}__{f}"]) >= 2 and set(placements[f"set{k}__{f}"]) == {0, 1}, placements


def test_tracker_sync_sums_rank_counts(ranks: List[Dict[str, Any]]) -> None:
    for i, (f, n) in enumerate(zip(FIELDS, ROWS)):
        want = [torch.bincount(torch.cat([_ids(r, s, n) for s in range(3)]), minlength=n) for r in range(2)]
        for r in range(2):
            torch.testing.assert_close(ranks[r]["local_counts"][f], want[r])
            torch.testing.assert_close(ranks[r]["synced_counts"][f], want[0] + want[1])


def test_ranks_agree(ranks: List[Dict[str, Any]]) -> None:
    assert ranks[0]["report"] == ranks[1]["report"]
    for f in FIELDS:
        for a, b in zip(ranks[0]["grams"][f], ranks[1]["grams"][f]):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("k,sharding", list(enumerate(SET_SHARDING)))
def test_sharded_singular_values_match_numpy(
    ranks: List[Dict[str, Any]], gathered: Dict[str, np.ndarray], k: int, sharding: str
) -> None:
    from torchrec_me.analysis import singular_values_from_gram

    report = ranks[0]["report"]
    for f in FIELDS:
        name = f"set{k}__{f}"
        entry = report["sets"][k]["tables"][name]
        for v, (variant, dense) in enumerate(_variants(gathered[name], _counts(ranks, f)).items()):
            want = _svd(dense)
            block = ranks[0]["grams"][f][v][k * DIM : (k + 1) * DIM, k * DIM : (k + 1) * DIM]
            _close_sv(singular_values_from_gram(block).numpy(), want)
            assert entry[f"ia_{variant}"] == pytest.approx(_ia(want), rel=1e-6), (name, variant)
            np.testing.assert_allclose(entry[f"spectrum_{variant}"], want / want[0], rtol=1e-6, atol=1e-6)
        # The low-rank trained rows are what makes the variants differ.
        assert entry["ia_all_rows"] > 6 and entry["ia_trained_rows"] < 2 + 1e-5


def test_concatenated_field_ia_matches_numpy(ranks: List[Dict[str, Any]], gathered: Dict[str, np.ndarray]) -> None:
    from torchrec_me.analysis import singular_values_from_gram

    report = ranks[0]["report"]
    for f in FIELDS:
        concat = np.concatenate([gathered[f"set{k}__{f}"] for k in range(3)], axis=1)
        for v, (variant, dense) in enumerate(_variants(concat, _counts(ranks, f)).items()):
            want = _svd(dense)
            _close_sv(singular_values_from_gram(ranks[0]["grams"][f][v]).numpy(), want)
            assert report["fields"][f][f"ia_concat_{variant}"] == pytest.approx(_ia(want), rel=1e-6), (f, variant)
        assert report["fields"][f]["trained_rows"] == int((_counts(ranks, f) > 0).sum())


def test_skipping_untrained_rows_gives_the_same_gram(ranks: List[Dict[str, Any]]) -> None:
    for r in ranks:
        for f in FIELDS:
            torch.testing.assert_close(r["freq_only"][f][0], r["grams"][f][2], rtol=1e-12, atol=1e-12)


def test_rank_dependent_weights_fail_everywhere(ranks: List[Dict[str, Any]]) -> None:
    assert all("differ between ranks" in r["mismatch"] for r in ranks)
