"""``prepare criteo`` on a small file of the real format, checked against plain Python."""

import collections
import json
import math
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.data.rawfiles import criteo_rows, write_criteo
from torchrec_me.data.prepare.common import PrepareOptions, split_assignment, split_sizes
from torchrec_me.data.prepare.criteo import bin_int, prepare_criteo

N = 2400
BAD = [  # (position among the lines, text, reason)
    (3, "just garbage", "wrong column count (expected 40)"),
    (500, "1\t2\t3", "wrong column count (expected 40)"),
    (900, "\t".join(["0", "1.5"] + [""] * 38), "non-integer value in I1"),
    (1500, "\t".join(["1", "", "x7"] + [""] * 37), "non-integer value in I2"),
    (1800, "\t".join(["2", "5"] + [""] * 38), "label not 0/1"),
    (2000, "", "blank line"),
]


def expected_int_token(raw: str) -> str:
    """The paper's binning, written independently: int(log(v)^2) for v > 2, else v - 2."""
    if raw == "":
        return "NULL"
    v = int(raw)
    return str(math.floor(math.log(v) * math.log(v))) if v > 2 else str(v - 2)


def _rows() -> List[List[str]]:
    rows = criteo_rows(N, seed=1)
    for k in range(10):  # C1 token seen exactly min_count times: kept
        rows[100 + 7 * k][14] = "abcdef10"
    for k in range(9):  # ... and one seen min_count - 1 times: out of vocabulary
        rows[200 + 11 * k][14] = "abcdef09"
    rows[5][1], rows[6][1] = "3", "2"  # the binning's edges: int(log(3)^2) = 1, 2 -> 0
    return rows


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    tmp = tmp_path_factory.mktemp("criteo")
    rows = _rows()
    raw = write_criteo(tmp / "train.txt", rows, [(p, t) for p, t, _ in BAD])
    meta = prepare_criteo(str(raw), str(tmp / "out"), PrepareOptions(row_group_size=100, progress=False, summary=False))
    return {"tmp": tmp, "rows": rows, "meta": meta, "out": tmp / "out"}


def _split_rows(out: Path, split: str) -> Dict[str, np.ndarray]:
    t = pq.read_table(out / f"{split}.parquet")
    return {c: t.column(c).to_numpy() for c in t.column_names}


def test_row_counts_and_skipped_lines(prepared: Dict[str, Any]) -> None:
    meta = prepared["meta"]
    assert meta["rows"] == {"input": N + len(BAD), "kept": N, "skipped": len(BAD)}
    assert meta["skipped"]["by_reason"] == dict(collections.Counter(reason for _, _, reason in BAD))
    # Examples name the physical line: BAD entries were inserted highest position first.
    lines = sorted(p for p, _, _ in BAD)
    expected_lines = [p + 1 + k for k, p in enumerate(lines)]
    shown = [e for ex in meta["skipped"]["examples"].values() for e in ex]
    assert sorted(int(e.split(":")[0].split()[1]) for e in shown) == expected_lines
    assert json.loads((prepared["out"] / "metadata.json").read_text()) == meta


def test_split_sizes_and_positive_rates(prepared: Dict[str, Any]) -> None:
    meta, rows = prepared["meta"], prepared["rows"]
    assert [meta["splits"][s]["rows"] for s in ("train", "val", "test")] == [1920, 240, 240] == list(split_sizes(N))
    assign = split_assignment(N, "random", 0)
    for k, s in enumerate(("train", "val", "test")):
        labels = [int(r[0]) for r, a in zip(rows, assign) if a == k]
        np.testing.assert_array_equal(_split_rows(prepared["out"], s)["label"], labels)
        assert meta["splits"][s]["positive_rate"] == pytest.approx(np.mean(labels))
    groups = pq.ParquetFile(prepared["out"] / "train.parquet").metadata
    assert [groups.row_group(i).num_rows for i in range(groups.num_row_groups)] == [100] * 19 + [20]


def test_encoding_matches_an_independent_formula(prepared: Dict[str, Any]) -> None:
    rows, out, meta = prepared["rows"], prepared["out"], prepared["meta"]
    names = [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]
    tokens = [[expected_int_token(r[1 + j]) if j < 13 else r[1 + j] for j in range(39)] for r in rows]
    counts = [collections.Counter(t[j] for t in tokens) for j in range(39)]
    vocab = pq.read_table(out / "vocab.parquet").to_pylist()
    assign = split_assignment(N, "random", 0)
    for j, name in enumerate(names):
        kept = {tok for tok, c in counts[j].items() if c >= 10}
        ids = {v["token"]: v["id"] for v in vocab if v["field"] == name}
        assert set(ids) == kept, name
        assert sorted(ids.values()) == list(range(len(kept)))
        by_id = sorted(ids, key=ids.get)
        assert [counts[j][t] for t in by_id] == sorted((counts[j][t] for t in by_id), reverse=True)
        feat = meta["sparse_features"][j]
        assert feat["name"] == name and feat["vocab_size"] == len(kept) + 1 and feat["oov_id"] == len(kept)
        for k, s in enumerate(("train", "val", "test")):
            want = [ids.get(t[j], len(kept)) for t, a in zip(tokens, assign) if a == k]
            np.testing.assert_array_equal(_split_rows(out, s)[name], want, err_msg=f"{name} {s}")
    c1 = {v["token"] for v in vocab if v["field"] == "C1"}
    assert "abcdef10" in c1 and "abcdef09" not in c1  # the threshold is >= min_count


def test_binning_edges() -> None:
    assert [expected_int_token(v) for v in ("", "-3", "0", "1", "2", "3", "7", "100")] == [
        "NULL", "-5", "-2", "-1", "0", "1", "3", "21",
    ]  # fmt: skip
    for v in ["", *map(str, range(-5, 3000))]:
        assert bin_int(v) == expected_int_token(v)


def test_dense_log_convention(tmp_path: Path) -> None:
    rows = criteo_rows(400, seed=2)
    raw = write_criteo(tmp_path / "t.txt", rows)
    options = PrepareOptions(split="time", progress=False, summary=False)
    meta = prepare_criteo(str(raw), str(tmp_path / "o"), options, dense_log=True)
    assert meta["dense_features"] == [f"I{i}" for i in range(1, 14)]
    assert [f["name"] for f in meta["sparse_features"]] == [f"C{i}" for i in range(1, 27)]
    train = _split_rows(tmp_path / "o", "train")  # time split: the first 80% rows, in order
    for j in range(13):
        want = [math.log(1 + max(int(r[1 + j]), 0)) if r[1 + j] else 0.0 for r in rows[:320]]
        np.testing.assert_allclose(train[f"I{j + 1}"], want, rtol=1e-6)
    np.testing.assert_array_equal(_split_rows(tmp_path / "o", "test")["label"], [int(r[0]) for r in rows[360:]])


@pytest.mark.parametrize("first", ["", "2\t5", "\t".join(["x"] + [""] * 39)])
def test_labels_survive_a_bad_first_line(tmp_path: Path, first: str) -> None:
    """A malformed line before a block's first click must not shift the other rows' labels."""
    rows = criteo_rows(300, seed=3)
    raw = write_criteo(tmp_path / "t.txt", rows, [(0, first)])
    options = PrepareOptions(split="time", progress=False, summary=False)
    meta = prepare_criteo(str(raw), str(tmp_path / "o"), options, min_count=1)
    assert meta["rows"]["skipped"] == 1
    labels = np.concatenate([_split_rows(tmp_path / "o", s)["label"] for s in ("train", "val", "test")])
    np.testing.assert_array_equal(labels, [int(r[0]) for r in rows])
