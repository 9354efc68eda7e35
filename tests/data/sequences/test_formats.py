"""The five raw formats of ``prepare sequences``, on generated files with bad lines."""

import collections
import json
from pathlib import Path
from typing import Dict, List, Tuple

import pyarrow.parquet as pq
import pytest

from tests.data.sequences.rawseq import (
    Event, amazon_tokens, expected_sequences, random_log, time_ordered, write_amazon, write_lines, write_pairs,
    write_ratings_csv, write_ratings_dat, write_recbole, write_udata,
)  # fmt: skip
from torchrec_me.data.prepare.common import PrepareError, PrepareOptions
from torchrec_me.data.sequences.prepare import prepare_sequences

OPTIONS = PrepareOptions(summary=False, max_bad_fraction=0.05)
# name: (format, writer, file name, has timestamps, two bad lines and their reasons)
CASES = {
    "u.data": ("movielens", write_udata, "u.data", True, ["1\t2", "9\t10\tfive\t100"]),
    "ratings.dat": ("movielens", write_ratings_dat, "ratings.dat", True, ["1::2::3", "9::10::4::soon"]),
    "ratings.csv": ("movielens", write_ratings_csv, "ratings.csv", True, ["1,2", "9,10,five,100"]),
    "amazon": ("amazon", write_amazon, "ratings_Books.csv", True, [",0000000001,4.0,100", "AX,0000000001,five,100"]),
    "recbole": ("recbole", write_recbole, "ml.inter", True, ["1\t2\t3", "9\t10\t4\tx"]),
    "pairs": ("pairs", write_pairs, "log.txt", False, ["lonely", "1 2 3"]),
    "lines": ("lines", write_lines, "log.txt", False, ["lonely", "solo"]),
}
REASONS = {
    "u.data": {"wrong field count (expected 4)", "non-numeric rating"},
    "ratings.dat": {"wrong field count (expected 4)", "non-numeric timestamp"},
    "ratings.csv": {"wrong field count (expected 4)", "non-numeric rating"},
    "amazon": {"empty user or item id", "non-numeric rating"},
    "recbole": {"wrong field count (expected 4)", "non-numeric timestamp"},
    "pairs": {"wrong field count (expected 2)"},
    "lines": {"user without items"},
}

Rows = Dict[str, List[Tuple[str, int, float]]]


def read_back(out: Path) -> Rows:
    """user token -> [(item token, timestamp, rating)] as the prepared files hold them."""
    tokens = pq.read_table(out / "items.parquet").column("token").to_pylist()
    rows = pq.read_table(out / "users.parquet").to_pylist()
    return {r["token"]: list(zip([tokens[i] for i in r["items"]], r["timestamps"], r["ratings"])) for r in rows}


def _expected(name: str, events: List[Event]) -> Rows:
    if name == "amazon":
        events = [Event(*amazon_tokens(e), e.rating, e.timestamp) for e in events]
    has_time = CASES[name][3]
    expected = expected_sequences(events, has_time)
    return {u: [(i, t, r if has_time else 1.0) for i, t, r in rows] for u, rows in expected.items()}


@pytest.mark.parametrize("name", list(CASES))
def test_format_round_trip_with_bad_lines(name: str, tmp_path: Path) -> None:
    fmt, write, filename, has_time, bad = CASES[name]
    events = random_log(n_users=30, seed=len(name))
    events = events if has_time else time_ordered(events)
    raw = write(tmp_path / "raw" / filename, events, [(5, bad[0]), (40, bad[1])])
    meta = prepare_sequences(str(raw.parent), str(tmp_path / "out"), OPTIONS, fmt=fmt)
    assert read_back(tmp_path / "out") == _expected(name, events)
    assert meta["has_timestamps"] is has_time
    assert meta["skipped"]["total"] == 2 and set(meta["skipped"]["by_reason"]) == REASONS[name]
    assert meta["rows"] == {"input": len(events) + 2, "valid": len(events), "skipped": 2}
    assert meta["num_interactions"] == len(events) and meta["num_users"] == 30
    lines = [k for k, line in enumerate(raw.read_text().splitlines(), start=1) if line in bad]
    examples = [e for reason in meta["skipped"]["examples"].values() for e in reason]
    assert sorted(int(e.split(":")[0].split()[1]) for e in examples) == lines  # the lines of the file


@pytest.mark.parametrize("name", ["u.data", "lines"])
def test_lines_not_utf8_and_blank_are_counted(name: str, tmp_path: Path) -> None:
    fmt, write, filename, has_time, _ = CASES[name]
    events = random_log(n_users=30, seed=1)
    raw = write(tmp_path / filename, events if has_time else time_ordered(events), [(3, "\n")])
    data = raw.read_bytes().split(b"\n")
    data[9] = b"7\t\xff\xfe\t3\t100" if has_time else b"7 \xff\xfe"
    raw.write_bytes(b"\n".join(data))
    meta = prepare_sequences(str(raw), str(tmp_path / "out"), OPTIONS, fmt=fmt)
    assert meta["skipped"]["by_reason"] == {"not UTF-8": 1, "blank line": 2}
    assert meta["skipped"]["examples"]["not UTF-8"][0].startswith("line 10:")


def test_item_ids_are_dense_most_frequent_first(tmp_path: Path) -> None:
    events = random_log(n_users=50, seed=11)
    raw = write_udata(tmp_path / "u.data", events)
    meta = prepare_sequences(str(raw), str(tmp_path / "out"), OPTIONS, fmt="movielens")
    items = pq.read_table(tmp_path / "out" / "items.parquet").to_pylist()
    counts = collections.Counter(e.item for e in events)
    first = {}
    for k, e in enumerate(events):
        first.setdefault(e.item, k)
    assert [r["token"] for r in items] == sorted(counts, key=lambda t: (-counts[t], first[t]))
    assert [r["item"] for r in items] == list(range(meta["num_items"])) and meta["num_items"] == len(counts)
    assert [r["count"] for r in items] == [counts[r["token"]] for r in items]
    users = pq.read_table(tmp_path / "out" / "users.parquet").to_pylist()
    assert [r["token"] for r in users] == list(dict.fromkeys(e.user for e in events))  # first appearance


def test_movielens_variant_detected_from_content(tmp_path: Path) -> None:
    events = random_log(n_users=5, seed=2)
    raw = write_ratings_dat(tmp_path / "ml10m-ratings.txt", events)
    meta = prepare_sequences(str(raw), str(tmp_path / "out"), OPTIONS, fmt="movielens")
    assert meta["input_variant"] == "ratings.dat" and meta["num_interactions"] == len(events)


def test_recbole_without_timestamps(tmp_path: Path) -> None:
    raw = tmp_path / "x.inter"
    raw.write_text("user_id:token\titem_id:token\n1\ta\n1\tb\n2\ta\n1\tc\n")
    meta = prepare_sequences(str(raw), str(tmp_path / "out"), OPTIONS, fmt="recbole")
    assert meta["has_timestamps"] is False
    assert read_back(tmp_path / "out")["1"] == [("a", 0, 1.0), ("b", 0, 1.0), ("c", 0, 1.0)]


def test_metadata_json_matches_the_returned_metadata(tmp_path: Path) -> None:
    raw = write_udata(tmp_path / "u.data", random_log(n_users=8, seed=4))
    meta = prepare_sequences(str(raw), str(tmp_path / "out"), OPTIONS, fmt="movielens", min_user_count=2)
    assert json.loads((tmp_path / "out" / "metadata.json").read_text()) == meta
    for key in ("num_users", "num_items", "num_interactions", "has_timestamps", "fingerprint", "split", "skipped"):
        assert key in meta
    assert meta["preprocessing"]["min_user_count"] == 2 and meta["preprocessing"]["rating_threshold"] is None


@pytest.mark.parametrize(
    "fmt, filename, text, message",
    [
        ("movielens", "u.data", "".join(f"{k}\t1\t5\t9\n" for k in range(18)) + "1\tx\n2\tx\n", "malformed"),
        ("movielens", "ratings.csv", "1,2,3.0,4\n", "expected the header"),
        ("movielens", "notes.txt", "hello world\n", "not a MovieLens ratings file"),
        ("recbole", "a.inter", "user:token\tthing:token\n1\t2\n", "needs user_id and item_id"),
        ("amazon", "missing/ratings.csv", None, "does not exist"),
        ("lines", "log.txt", "u1\nu2\n", "no valid"),
        ("imdb", "log.txt", "1 2\n", "unknown sequence format"),
        ("pairs", "log.txt", "1 2\n", "min_item_count must be >= 0"),
    ],
)  # fmt: skip
def test_bad_inputs_give_one_clear_error(tmp_path: Path, fmt: str, filename: str, text: str, message: str) -> None:
    raw = tmp_path / filename
    if text is not None:
        raw.write_text(text)
    bad_count = {"min_item_count": -1} if "min_item_count" in message else {}
    with pytest.raises(PrepareError, match=message) as e:
        prepare_sequences(str(raw), str(tmp_path / "out"), OPTIONS, fmt=fmt, **bad_count)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_directory_with_two_candidates_is_refused(tmp_path: Path) -> None:
    for name in ("a.csv", "b.csv"):
        write_amazon(tmp_path / "raw" / name, random_log(n_users=2))
    with pytest.raises(PrepareError, match="exactly one"):
        prepare_sequences(str(tmp_path / "raw"), str(tmp_path / "out"), OPTIONS, fmt="amazon")


def test_temporal_split_needs_timestamps(tmp_path: Path) -> None:
    raw = write_pairs(tmp_path / "log.txt", time_ordered(random_log(n_users=5)))
    with pytest.raises(PrepareError, match="needs timestamps"):
        prepare_sequences(str(raw), str(tmp_path / "out"), OPTIONS, fmt="pairs", split="temporal")


def test_fields_are_trimmed(tmp_path: Path) -> None:
    raw = tmp_path / "r.csv"
    raw.write_text("A1 , b1, 4.0 ,100\nA1,b2,5, 200\n")
    prepare_sequences(str(raw), str(tmp_path / "out"), OPTIONS, fmt="amazon")
    assert read_back(tmp_path / "out") == {"A1": [("b1", 100, 4.0), ("b2", 200, 5.0)]}
