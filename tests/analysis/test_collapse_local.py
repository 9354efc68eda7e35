"""Gram matrices, id frequencies and the collapse report on plain (unsharded) tables."""

import json
from collections import Counter
from typing import Dict, List

import numpy as np
import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_me.analysis import (
    IdFrequencyTracker,
    collapse_report,
    find_embedding_tables,
    gram_matrices,
    ia_log_record,
)
from torchrec_me.modules.multi_embedding import MultiEmbeddingBagCollection


def _kjt(ids: Dict[str, List[List[int]]]) -> KeyedJaggedTensor:
    """KJT from per-key lists of bags (one list of ids per sample)."""
    keys = list(ids)
    values = [i for k in keys for bag in ids[k] for i in bag]
    lengths = [len(bag) for k in keys for bag in ids[k]]
    return KeyedJaggedTensor.from_lengths_sync(
        keys=keys, values=torch.tensor(values, dtype=torch.int64), lengths=torch.tensor(lengths, dtype=torch.int32)
    )


def _svd(e: np.ndarray) -> np.ndarray:
    return np.linalg.svd(e.astype(np.float64), compute_uv=False)


def _ia(s: np.ndarray) -> float:
    return float(s.sum() / s.max())


def _table(m: MultiEmbeddingBagCollection, k: int, feature: str) -> torch.Tensor:
    return m.ebcs[k].embedding_bags[f"set{k}__{feature}"].weight


def _fill(m: MultiEmbeddingBagCollection, generator: torch.Generator) -> None:
    """Every table of ``m`` to standard-normal values from ``generator``."""
    with torch.no_grad():
        for ebc in m.ebcs:
            for bag in ebc.embedding_bags.values():
                bag.weight.copy_(torch.randn(bag.weight.shape, generator=generator))


def test_tracker_counts_ids_per_feature() -> None:
    tracker = IdFrequencyTracker({"a": 10, "b": 4})
    batches = [
        {"a": [[1, 1], [3], []], "b": [[0], [3, 3, 3], [2]], "untracked": [[99], [5], []]},
        {"b": [[1], []], "a": [[9], [1]]},
    ]
    expected = {"a": Counter(), "b": Counter()}
    for batch in batches:
        tracker.update(_kjt(batch))
        for f in expected:
            expected[f].update(i for bag in batch[f] for i in bag)
    for f, n in (("a", 10), ("b", 4)):
        want = torch.tensor([expected[f][i] for i in range(n)])
        torch.testing.assert_close(tracker.counts(f), want)
    assert tracker.total_ids == 11
    torch.testing.assert_close(tracker.row_mask("set3__b"), torch.tensor([True, True, True, True]))
    freq = tracker.row_frequency("set0__a")
    torch.testing.assert_close(freq[[1, 3, 9, 0]], torch.tensor([3.0, 1, 1, 0], dtype=torch.float64))
    synced = tracker.synced()  # no process group: a snapshot with the same counts
    assert synced.is_synced and not tracker.is_synced
    torch.testing.assert_close(synced.counts("a"), tracker.counts("a"))
    with pytest.raises(RuntimeError):
        synced.update(_kjt({"a": [[1]]}))
    with pytest.raises(ValueError, match="'b'"):
        tracker.update(_kjt({"a": [[2]], "b": [[4]]}))
    with pytest.raises(KeyError):
        tracker.counts("untracked")


def test_tracker_for_model_uses_table_rows() -> None:
    m = MultiEmbeddingBagCollection(["a", "b"], [7, 5], [4, 8])
    tracker = IdFrequencyTracker.for_model(m)
    assert tracker.num_embeddings == {"a": 7, "b": 5}


def test_gram_matrices_match_dense_and_ignore_chunking(generator: torch.Generator) -> None:
    m = MultiEmbeddingBagCollection(["a", "b"], [53, 20], [8, 12, 4])
    _fill(m, generator)
    ea = torch.cat([_table(m, k, "a") for k in range(3)], 1).detach().double()
    w = torch.zeros(53, dtype=torch.float64)
    w[[0, 5, 6, 30, 52]] = torch.tensor([1.0, 3.0, 0.5, 2.0, 7.0], dtype=torch.float64)
    groups = {"field_a": ["set0__a", "set1__a", "set2__a"], "b1": ["set1__b"]}
    wb = torch.ones(20, dtype=torch.float64)
    results = [
        gram_matrices(m, groups, [None, {"field_a": w, "b1": wb}], chunk_rows=c)
        for c in (1, 7, 1 << 20)
    ]
    want_a = ea.T @ ea
    want_aw = ea.T @ (w[:, None] * ea)
    eb = _table(m, 1, "b").detach().double()
    for r in results:
        assert r["field_a"][0].shape == (24, 24)
        torch.testing.assert_close(r["field_a"][0], want_a, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(r["field_a"][1], want_aw, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(r["b1"][0], eb.T @ eb, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(r["b1"][1], eb.T @ eb, rtol=1e-12, atol=1e-12)
    # Only weighted variants: rows with zero weight are skipped, same answer.
    only = gram_matrices(m, {"field_a": groups["field_a"]}, [{"field_a": w}], chunk_rows=4)
    torch.testing.assert_close(only["field_a"][0], want_aw, rtol=1e-12, atol=1e-12)
    default = gram_matrices(m)
    assert sorted(default) == sorted(find_embedding_tables(m))
    with pytest.raises(ValueError):
        gram_matrices(m, {"x": ["set0__a"]}, [{"x": torch.ones(52)}])
    with pytest.raises(ValueError):
        gram_matrices(m, {"x": ["set0__a", "set0__b"]})
    with pytest.raises(KeyError):
        gram_matrices(m, {"x": ["set9__a"]})


def test_trained_rows_ia_ignores_untouched_rows() -> None:
    g = torch.Generator().manual_seed(1)
    m = MultiEmbeddingBagCollection(["a"], [300], [16])
    touched = list(range(0, 300, 7))  # 43 rows
    with torch.no_grad():
        w = _table(m, 0, "a")
        w.copy_(torch.randn(300, 16, generator=g))
        w[touched] = torch.randn(len(touched), 1, generator=g) @ torch.randn(1, 16, generator=g)
    tracker = IdFrequencyTracker.for_model(m)
    tracker.update(_kjt({"a": [[i] * (1 + i % 3) for i in touched]}))
    report = collapse_report(m, tracker, chunk_rows=32)
    entry = report["sets"][0]["tables"]["set0__a"]
    full = w.detach().numpy()
    assert entry["ia_all_rows"] == pytest.approx(_ia(_svd(full)), rel=1e-6)
    assert entry["ia_all_rows"] > 8
    assert entry["ia_trained_rows"] == pytest.approx(1.0, abs=1e-5)
    assert entry["ia_freq_weighted"] == pytest.approx(1.0, abs=1e-5)
    assert entry["trained_rows"] == len(touched)
    assert entry["spectrum_trained_rows"][0] == 1.0 and entry["spectrum_trained_rows"][1] < 1e-5


def test_freq_weighted_ia_weights_rows_by_count() -> None:
    g = torch.Generator().manual_seed(2)
    m = MultiEmbeddingBagCollection(["a"], [40], [8])
    with torch.no_grad():
        _table(m, 0, "a").copy_(torch.randn(40, 8, generator=g))
    tracker = IdFrequencyTracker.for_model(m)
    ids = [[i] for i in range(10) for _ in range(1 + 5 * (i % 2))] + [[35]]
    tracker.update(_kjt({"a": ids}))
    entry = collapse_report(m, tracker)["sets"][0]["tables"]["set0__a"]
    e = _table(m, 0, "a").detach().double().numpy()
    f = tracker.counts("a").double().numpy()
    trained = e[f > 0]
    weighted = np.sqrt(f)[:, None] * e
    assert entry["ia_trained_rows"] == pytest.approx(_ia(_svd(trained)), rel=1e-6)
    assert entry["ia_freq_weighted"] == pytest.approx(_ia(_svd(weighted)), rel=1e-6)
    assert abs(entry["ia_freq_weighted"] - entry["ia_trained_rows"]) > 1e-3
    sv = _svd(weighted)
    np.testing.assert_allclose(entry["spectrum_freq_weighted"], sv / sv[0], rtol=1e-6, atol=1e-9)


def test_collapse_report_layout_and_concat_ia(generator: torch.Generator) -> None:
    m = MultiEmbeddingBagCollection(["a", "b", "c"], [30, 25, 41], [8, 8])
    _fill(m, generator)
    with torch.no_grad():  # set 1 of field b copies set 0: the concatenation gains nothing
        _table(m, 1, "b").copy_(_table(m, 0, "b"))
    report = collapse_report(m)
    json.dumps(report, allow_nan=False)
    assert report["num_sets"] == 2 and set(report["variants"]) >= {"all_rows", "trained_rows", "freq_weighted"}
    assert [s["set"] for s in report["sets"]] == [0, 1]
    numpy_mean_ia = {}
    for s in report["sets"]:
        k = s["set"]
        assert sorted(s["tables"]) == [f"set{k}__a", f"set{k}__b", f"set{k}__c"]
        for name, entry in s["tables"].items():
            e = _table(m, k, entry["feature"]).detach().numpy()
            sv = _svd(e)
            assert entry["dim"] == 8 and entry["num_rows"] == e.shape[0]
            assert entry["ia_all_rows"] == pytest.approx(_ia(sv), rel=1e-6)
            np.testing.assert_allclose(entry["spectrum_all_rows"], sv / sv[0], rtol=1e-6)
            assert entry["ia_trained_rows"] is None and entry["spectrum_trained_rows"] is None
        numpy_mean_ia[f"set{k}"] = np.mean([_ia(_svd(_table(m, k, f).detach().numpy())) for f in "abc"])
        assert s["mean_ia_all_rows"] == pytest.approx(numpy_mean_ia[f"set{k}"], rel=1e-6)
        assert s["mean_ia_trained_rows"] is None
    for f, field in report["fields"].items():
        e = torch.cat([_table(m, k, f) for k in range(2)], 1).detach().numpy()
        assert field["ia_concat_all_rows"] == pytest.approx(_ia(_svd(e)), rel=1e-6)
        assert field["dims"] == [8, 8] and field["sets"] == [0, 1]
        assert field["ia_concat_trained_rows"] is None
    fa, fb = report["fields"]["a"], report["fields"]["b"]
    assert fb["ia_concat_all_rows"] == pytest.approx(fb["ia_per_set_all_rows"][0], rel=1e-6)
    assert fa["ia_concat_all_rows"] > max(fa["ia_per_set_all_rows"]) + 1
    record = ia_log_record(5, report)
    assert record["step"] == 5 and record["ia"] == pytest.approx(numpy_mean_ia, rel=1e-6)


def test_state_dict_input_with_unequal_rows_skips_concat() -> None:
    g = torch.Generator().manual_seed(4)
    state = {
        "m.ebcs.0.embedding_bags.set0__x.weight": torch.randn(10, 4, generator=g),
        "m.ebcs.1.embedding_bags.set1__x.weight": torch.randn(12, 4, generator=g),
        "m.other.weight": torch.randn(3, 3, generator=g),
    }
    report = collapse_report(state)
    assert report["fields"]["x"]["ia_concat_all_rows"] is None
    sv = _svd(state["m.ebcs.1.embedding_bags.set1__x.weight"].numpy())
    assert report["sets"][1]["tables"]["set1__x"]["ia_all_rows"] == pytest.approx(_ia(sv), rel=1e-6)
