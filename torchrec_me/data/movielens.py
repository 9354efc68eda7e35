"""MovieLens ratings as a CTR dataset: a rating >= 4 is a click.

Inputs (one directory; ``fmt="auto"`` detects which):

* ``grouplens-100k``: ``u.data`` (``user<TAB>item<TAB>rating<TAB>timestamp``),
  ``u.user`` (``user|age|gender|occupation|zip``) and ``u.item``
  (``item|title|release|video release|url|`` then 19 genre flags), latin-1;
* ``grouplens-1m``: ``ratings.dat`` (``user::item::rating::timestamp``), ``users.dat``
  (``user::gender::age::occupation::zip``) and ``movies.dat``
  (``item::title::Genre1|Genre2``), latin-1;
* ``recbole``: RecBole atomic files ``NAME.inter``, ``NAME.user``, ``NAME.item``,
  tab-separated with typed headers (``user_id:token``, ``rating:float``,
  ``class:token_seq``, ...), as shipped in the ``recbole==1.2.1`` wheel (see
  :mod:`.fetch`).

Features of each rating: ``user_id``, ``item_id``, ``age`` (the 1M age buckets 1, 18,
25, 35, 45, 50, 56; 100k's raw ages are bucketed the same way), ``gender``,
``occupation``, ``zip`` (the first ``zip_prefix`` characters) and ``genres``, a
multi-hot bag of the movie's genres (0 to 6 ids per row, pooled by the model's
EmbeddingBag). A user or movie missing from the side files gets empty tokens.
Lines with a wrong field count or a non-numeric rating are skipped and reported.

The files are small (1M ratings at most) and are read into memory. ``split="time"``
orders the ratings by timestamp before the contiguous 80/10/10 split.
"""

import argparse
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Tuple

import numpy as np
import pyarrow as pa

from torchrec_me.data.prepare import (
    SPLITS, FeatureSpec, PrepareError, SkipLog, print_summary, split_assignment, write_tables,
)  # fmt: skip
from torchrec_me.data.store import PATH_MANAGER
from torchrec_me.data.vocab import Vocab

AGE_BUCKETS: Tuple[int, ...] = (1, 18, 25, 35, 45, 50, 56)
GENRES_100K: Tuple[str, ...] = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
FEATURES: List[FeatureSpec] = [
    FeatureSpec("user_id", "sparse", "user", "token"),
    FeatureSpec("item_id", "sparse", "item", "token"),
    FeatureSpec("age", "sparse", "user", "age bucket (1, 18, 25, 35, 45, 50, 56)"),
    FeatureSpec("gender", "sparse", "user", "token"),
    FeatureSpec("occupation", "sparse", "user", "token"),
    FeatureSpec("zip", "sparse", "user", "first zip_prefix characters"),
    FeatureSpec("genres", "bag", "item", "multi-hot genre names"),
]
DEFAULT_MIN_COUNT = 1
DEFAULT_ROW_GROUP_SIZE = 4096

Ratings = Tuple[List[str], List[str], np.ndarray, np.ndarray]  # users, items, ratings, timestamps
UserTokens = Tuple[str, str, str, str]  # age bucket, gender, occupation, zip prefix
Tables = Tuple[Ratings, Dict[str, UserTokens], Dict[str, List[str]]]  # ratings, users, item genres


def age_bucket(raw: str) -> str:
    """The 1M age bucket of an age (a 1M bucket code maps to itself); empty stays empty."""
    try:
        age = int(float(raw))
    except ValueError:
        return raw
    return str(max([b for b in AGE_BUCKETS if age >= b], default=AGE_BUCKETS[0]))


def _lines(path: str, encoding: str) -> List[str]:
    with PATH_MANAGER.open(path, "r", encoding=encoding, errors="replace") as f:
        return f.read().splitlines()


def _split_lines(path: str, sep: str, encoding: str = "latin-1", header: bool = False) -> List[Tuple[int, List[str]]]:
    """(line number, fields) of every line of ``path``, the header excepted."""
    lines = _lines(path, encoding)
    return [(k, line.split(sep)) for k, line in enumerate(lines[int(header) :], start=1 + int(header))]


def _parse_ratings(
    rows: Sequence[Tuple[int, List[str]]], width: int, idx: Sequence[int], name: str, skips: SkipLog
) -> Ratings:
    """Ratings from split lines; ``idx`` are the user, item, rating and timestamp fields."""
    users: List[str] = []
    items: List[str] = []
    ratings: List[float] = []
    stamps: List[int] = []
    sep = "\t"
    for number, fields in rows:
        if len(fields) != width:
            skips.add(f"wrong field count in {name} (expected {width})", number, sep.join(fields))
            continue
        try:
            rating, stamp = float(fields[idx[2]]), int(float(fields[idx[3]]))
        except ValueError:
            skips.add(f"non-numeric rating or timestamp in {name}", number, sep.join(fields))
            continue
        users.append(fields[idx[0]].strip())
        items.append(fields[idx[1]].strip())
        ratings.append(rating)
        stamps.append(stamp)
    return users, items, np.asarray(ratings, dtype=np.float64), np.asarray(stamps, dtype=np.int64)


def _user_tokens(age: str, gender: str, occupation: str, zip_code: str, zip_prefix: int) -> UserTokens:
    return age_bucket(age.strip()), gender.strip(), occupation.strip(), zip_code.strip()[:zip_prefix]


def _read_grouplens_100k(d: str, skips: SkipLog, zip_prefix: int) -> Tables:
    ratings = _parse_ratings(_split_lines(os.path.join(d, "u.data"), "\t"), 4, (0, 1, 2, 3), "u.data", skips)
    users = {  # u.user: user|age|gender|occupation|zip
        f[0]: _user_tokens(*f[1:5], zip_prefix) for _, f in _split_lines(os.path.join(d, "u.user"), "|") if len(f) >= 5
    }
    items = {  # u.item: item|title|release|video release|url|19 genre flags
        f[0]: [g for g, flag in zip(GENRES_100K, f[5:]) if flag.strip() == "1"]
        for _, f in _split_lines(os.path.join(d, "u.item"), "|")
        if len(f) >= 5 + len(GENRES_100K)
    }
    return ratings, users, items


def _read_grouplens_1m(d: str, skips: SkipLog, zip_prefix: int) -> Tables:
    ratings = _parse_ratings(_split_lines(os.path.join(d, "ratings.dat"), "::"), 4, (0, 1, 2, 3), "ratings.dat", skips)
    users = {  # users.dat: UserID::Gender::Age::Occupation::Zip-code
        f[0]: _user_tokens(f[2], f[1], f[3], f[4], zip_prefix)
        for _, f in _split_lines(os.path.join(d, "users.dat"), "::")
        if len(f) >= 5
    }
    items = {  # movies.dat: MovieID::Title::Genre1|Genre2
        f[0]: [g for g in f[2].strip().split("|") if g]
        for _, f in _split_lines(os.path.join(d, "movies.dat"), "::")
        if len(f) >= 3
    }
    return ratings, users, items


def _recbole_file(path: str) -> Tuple[Dict[str, int], List[Tuple[int, List[str]]]]:
    """``{field: column}`` from the typed header (``user_id:token``) and the split data lines."""
    rows = _split_lines(path, "\t", encoding="utf-8")
    if not rows:
        raise PrepareError(f"{path} is empty; expected a RecBole atomic file with a typed header")
    return {h.split(":")[0].strip(): k for k, h in enumerate(rows[0][1])}, rows[1:]


def _read_recbole(d: str, skips: SkipLog, zip_prefix: int) -> Tables:
    inter = _only(d, ".inter")
    stem = inter[: -len(".inter")]
    cols, rows = _recbole_file(inter)
    need = ("user_id", "item_id", "rating", "timestamp")
    if any(c not in cols for c in need):
        raise PrepareError(f"{inter}: a RecBole .inter header needs {', '.join(need)}; it has {', '.join(cols)}")
    ratings = _parse_ratings(rows, len(cols), [cols[c] for c in need], os.path.basename(inter), skips)
    users: Dict[str, UserTokens] = {}
    if os.path.exists(stem + ".user"):
        uc, rows = _recbole_file(stem + ".user")
        for _, f in rows:
            if len(f) == len(uc):
                get = [f[uc[c]] if c in uc else "" for c in ("age", "gender", "occupation", "zip_code")]
                users[f[uc["user_id"]]] = _user_tokens(*get, zip_prefix)
    items: Dict[str, List[str]] = {}
    if os.path.exists(stem + ".item"):
        ic, rows = _recbole_file(stem + ".item")
        genre_col = ic.get("class", ic.get("genre"))  # ml-100k has class:token_seq, ml-1m genre:token_seq
        for _, f in rows:
            if len(f) == len(ic):
                items[f[ic["item_id"]]] = f[genre_col].split() if genre_col is not None else []
    return ratings, users, items


def _only(d: str, suffix: str) -> str:
    found = sorted(f for f in os.listdir(d) if f.endswith(suffix))
    if len(found) != 1:
        raise PrepareError(f"{d}: expected exactly one *{suffix} file, found {found or 'none'}")
    return os.path.join(d, found[0])


READERS: Dict[str, Callable[[str, SkipLog, int], Tables]] = {
    "grouplens-100k": _read_grouplens_100k,
    "grouplens-1m": _read_grouplens_1m,
    "recbole": _read_recbole,
}
_MARKERS = {"grouplens-100k": "u.data", "grouplens-1m": "ratings.dat"}


def detect_format(d: str) -> str:
    """The input format of directory ``d``, from the files it holds."""
    names = os.listdir(d)
    for fmt, marker in _MARKERS.items():
        if marker in names:
            return fmt
    if any(n.endswith(".inter") for n in names):
        return "recbole"
    raise PrepareError(
        f"{d} holds no MovieLens files: expected u.data (100k), ratings.dat (1M) or a RecBole NAME.inter"
    )


def _bag_array(bags: Sequence[List[int]]) -> pa.Array:
    offsets = np.zeros(len(bags) + 1, dtype=np.int32)
    offsets[1:] = np.cumsum([len(b) for b in bags])
    values = np.fromiter((v for b in bags for v in b), dtype=np.int32, count=int(offsets[-1]))
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, pa.int32()))


def prepare_movielens(
    input_dir: str,
    output: str,
    *,
    fmt: str = "auto",
    min_count: int = DEFAULT_MIN_COUNT,
    zip_prefix: int = 2,
    click_threshold: float = 4.0,
    split: str = "random",
    seed: int = 0,
    row_group_size: int = DEFAULT_ROW_GROUP_SIZE,
    overwrite: bool = False,
    progress: bool = True,
    max_bad_fraction: float = 0.01,
    summary: bool = True,
) -> Dict[str, Any]:
    """Prepare a MovieLens directory into ``output``; returns the written metadata.

    Raises:
        PrepareError: no MovieLens files, no valid ratings or more than
            ``max_bad_fraction`` malformed lines, or ``output`` exists without ``overwrite``.
    """
    del progress  # in-memory and quick: no progress bars
    started = time.perf_counter()
    d = PATH_MANAGER.get_local_path(input_dir)
    if not os.path.isdir(d):
        raise PrepareError(f"input {input_dir} is not a directory of MovieLens files")
    fmt = detect_format(d) if fmt == "auto" else fmt
    if fmt not in READERS:
        raise PrepareError(f"unknown MovieLens format {fmt!r}; choose auto or one of {', '.join(READERS)}")
    skips = SkipLog()
    (u, i, r, t), users, items = READERS[fmt](d, skips, zip_prefix)
    n = len(u)
    if n == 0:
        raise PrepareError(f"input {input_dir} has no valid ratings; " + skips.describe())
    if skips.total > max_bad_fraction * (n + skips.total):
        raise PrepareError(f"input {input_dir}: {skips.total:,} malformed lines of {n + skips.total:,}; " + skips.describe())
    order = np.argsort(t, kind="stable") if split == "time" else np.arange(n)
    side = [users.get(uid, ("", "", "", "")) for uid in u]
    columns: Dict[str, List[str]] = {"user_id": u, "item_id": i}
    for k, name in enumerate(("age", "gender", "occupation", "zip")):
        columns[name] = [s[k] for s in side]
    genres = [items.get(item, []) for item in i]
    vocabs = {name: Vocab(name) for name in [*columns, "genres"]}
    for name, tokens in columns.items():
        vocabs[name].add_tokens(tokens)
    vocabs["genres"].add_tokens([g for bag in genres for g in bag])
    for v in vocabs.values():
        v.finalize(min_count)
    ids = {name: vocabs[name].lookup(tokens)[order] for name, tokens in columns.items()}
    bags = [vocabs["genres"].lookup(genres[k]).tolist() for k in order]
    labels = (r[order] >= click_threshold).astype(np.int8)
    assign = split_assignment(n, split, seed)
    tables = {}
    for s_idx, s in enumerate(SPLITS):
        rows = np.flatnonzero(assign == s_idx)
        data = {"label": pa.array(labels[rows])}
        data.update({name: pa.array(v[rows]) for name, v in ids.items()})
        data["genres"] = _bag_array([bags[k] for k in rows])
        tables[s] = pa.table(data)
    params = {
        "format": fmt, "min_count": min_count, "zip_prefix": zip_prefix, "click_threshold": click_threshold,
        "split": split, "split_seed": seed, "age_buckets": list(AGE_BUCKETS),
    }  # fmt: skip
    path, meta = write_tables(
        output, "movielens", FEATURES, vocabs, tables, params, source={"path": os.path.abspath(d)}, skips=skips,
        row_group_size=row_group_size, overwrite=overwrite,
    )  # fmt: skip
    if summary:
        print_summary(meta, Path(path), time.perf_counter() - started)
    return meta


def add_prepare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--format", default="auto", choices=("auto", *READERS), help="input format (default: detect from the files)"
    )
    parser.add_argument("--zip-prefix", type=int, default=2, help="leading zip-code characters kept (default 2)")
    parser.add_argument("--click-threshold", type=float, default=4.0, help="a rating >= this is a click (default 4)")


def prepare_from_args(args: argparse.Namespace, **common: Any) -> Dict[str, Any]:
    return prepare_movielens(
        args.input, args.output, fmt=args.format, zip_prefix=args.zip_prefix, click_threshold=args.click_threshold,
        **common,
    )  # fmt: skip
