"""``prepare avazu`` on a small file of the real format, checked against plain Python."""

import collections
import datetime
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from tests.data.rawfiles import avazu_rows, write_avazu
from torchrec_me.data.prepare.avazu import COLUMNS, prepare_avazu
from torchrec_me.data.prepare.common import PrepareOptions, split_assignment

N = 1200


def _rows() -> list:
    rows = avazu_rows(N, seed=3)
    for k in range(4):  # site_id token seen exactly min_count (4) times: kept
        rows[10 * k + 1][5] = "5175a4e1"
    for k in range(3):  # ... and one seen 3 times: out of vocabulary
        rows[10 * k + 2][5] = "3bb3a4e2"
    return rows


def test_tokens_threshold_and_dropped_id(tmp_path: Path) -> None:
    rows = _rows()
    bad = [(7, ",".join(["1", "0", "14102x00"] + ["a"] * 21)), (50, "1,0,14102100")]
    raw = write_avazu(tmp_path / "train.csv", rows, bad)
    meta = prepare_avazu(str(raw), str(tmp_path / "o"), PrepareOptions(row_group_size=64, progress=False, summary=False))
    assert meta["rows"] == {"input": N + 2, "kept": N, "skipped": 2}
    assert meta["skipped"]["by_reason"] == {"hour not YYMMDDHH": 1, "wrong column count (expected 24)": 1}
    names = [f["name"] for f in meta["sparse_features"]]
    assert names == COLUMNS[2:] and "id" not in names and "click" not in names
    vocab = pq.read_table(tmp_path / "o" / "vocab.parquet").to_pylist()
    assign = split_assignment(N, "random", 0)
    train = pq.read_table(tmp_path / "o" / "train.parquet")
    for j, name in enumerate(names):
        counts = collections.Counter(r[2 + j] for r in rows)
        ids = {v["token"]: v["id"] for v in vocab if v["field"] == name}
        assert set(ids) == {t for t, c in counts.items() if c >= 4}, name
        want = [ids.get(r[2 + j], len(ids)) for r, a in zip(rows, assign) if a == 0]
        np.testing.assert_array_equal(train.column(name).to_numpy(), want)
    site = {v["token"] for v in vocab if v["field"] == "site_id"}
    assert "5175a4e1" in site and "3bb3a4e2" not in site
    np.testing.assert_array_equal(train.column("label").to_numpy(), [int(r[1]) for r, a in zip(rows, assign) if a == 0])


def test_hour_features(tmp_path: Path) -> None:
    rows = _rows()
    raw = write_avazu(tmp_path / "train.csv", rows)
    meta = prepare_avazu(
        str(raw), str(tmp_path / "o"), PrepareOptions(split="time", progress=False, summary=False),
        hour_features=True, min_count=1,
    )
    names = [f["name"] for f in meta["sparse_features"]]
    assert names[:2] == ["hour_of_day", "weekday"] and "hour" not in names
    vocab = pq.read_table(tmp_path / "o" / "vocab.parquet").to_pylist()
    token = {(v["field"], v["id"]): v["token"] for v in vocab}
    train = pq.read_table(tmp_path / "o" / "train.parquet")
    got_hour = [token["hour_of_day", i] for i in train.column("hour_of_day").to_numpy()]
    got_day = [token["weekday", i] for i in train.column("weekday").to_numpy()]
    first = rows[: int(0.8 * N)]  # time split keeps file order
    assert got_hour == [r[2][6:8] for r in first]
    assert got_day == [str(datetime.date(2000 + int(r[2][:2]), int(r[2][2:4]), int(r[2][4:6])).weekday()) for r in first]
    assert datetime.date(2014, 10, 21).weekday() == 1 and "1" in got_day  # 21 Oct 2014 was a Tuesday
