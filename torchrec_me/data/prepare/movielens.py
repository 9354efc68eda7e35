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
EmbeddingBag). A user or movie missing from the side files gets empty tokens; a
directory without its side files is refused. Rating lines with a wrong field
count, a non-numeric rating or (RecBole, UTF-8) bytes that are not UTF-8 are skipped
and reported; such side-file lines are ignored.

The files are small (1M ratings at most) and are read into memory. ``split="time"``
orders the ratings by timestamp before the contiguous 80/10/10 split.
"""

import argparse
import os
import re
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa

from torchrec_me.data.prepare.common import (
    FeatureSpec, PrepareError, PrepareOptions, SkipLog, check_skipped, split_assignment,
)  # fmt: skip
from torchrec_me.data.prepare.destination import output_path
from torchrec_me.data.prepare.output import print_summary, write_tables
from torchrec_me.data.prepare.vocab import Vocab
from torchrec_me.data.store import PATH_MANAGER, SPLITS

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
_ESCAPED = re.compile("[\udc80-\udcff]")  # the bytes ``surrogateescape`` could not decode

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
    """The lines of ``path``; bytes invalid in ``encoding`` become ``surrogateescape`` characters."""
    with PATH_MANAGER.open(path, "rb") as f:
        lines = f.read().decode(encoding, errors="surrogateescape").split("\n")
    if lines and not lines[-1]:
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _is_encoded(line: str) -> bool:
    """Whether ``line`` decoded cleanly (holds no ``surrogateescape`` character)."""
    return line.isascii() or _ESCAPED.search(line) is None


def _split_lines(
    path: str, sep: str, encoding: str = "latin-1", header: bool = False, skips: Optional[SkipLog] = None
) -> List[Tuple[int, List[str]]]:
    """(line number, fields) of every line of ``path``, the header excepted.

    A line that is not valid ``encoding`` is dropped, and counted in ``skips`` when given.
    """
    rows = []
    for k, line in enumerate(_lines(path, encoding)[int(header) :], start=1 + int(header)):
        if _is_encoded(line):
            rows.append((k, line.split(sep)))
        elif skips is not None:
            skips.add(f"not {encoding} in {os.path.basename(path)}", k, line)
    return rows


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


def _user_tokens(fields: Sequence[str], zip_prefix: int) -> UserTokens:
    """The tokens of a user's ``(age, gender, occupation, zip code)``."""
    age, gender, occupation, zip_code = fields
    return age_bucket(age.strip()), gender.strip(), occupation.strip(), zip_code.strip()[:zip_prefix]


def _read_grouplens_100k(d: str, skips: SkipLog, zip_prefix: int) -> Tables:
    ratings = _parse_ratings(_split_lines(os.path.join(d, "u.data"), "\t"), 4, (0, 1, 2, 3), "u.data", skips)
    users = {  # u.user: user|age|gender|occupation|zip
        f[0]: _user_tokens(f[1:5], zip_prefix) for _, f in _split_lines(os.path.join(d, "u.user"), "|") if len(f) >= 5
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
        f[0]: _user_tokens((f[2], f[1], f[3], f[4]), zip_prefix)
        for _, f in _split_lines(os.path.join(d, "users.dat"), "::")
        if len(f) >= 5
    }
    items = {  # movies.dat: MovieID::Title::Genre1|Genre2
        f[0]: [g for g in f[2].strip().split("|") if g]
        for _, f in _split_lines(os.path.join(d, "movies.dat"), "::")
        if len(f) >= 3
    }
    return ratings, users, items


def _recbole_file(
    path: str, need: Sequence[str], skips: Optional[SkipLog] = None
) -> Tuple[Dict[str, int], List[Tuple[int, List[str]]]]:
    """``{field: column}`` from the typed header (``user_id:token``), which must name
    ``need``, and the split data lines."""
    rows = _split_lines(path, "\t", encoding="utf-8", skips=skips)
    if not rows:
        raise PrepareError(f"{path} is empty; expected a RecBole atomic file with a typed header")
    cols = {h.split(":")[0].strip(): k for k, h in enumerate(rows[0][1])}
    if any(c not in cols for c in need):
        raise PrepareError(f"{path}: its RecBole header needs {', '.join(need)}; it has {', '.join(cols)}")
    return cols, rows[1:]


def _read_recbole(d: str, skips: SkipLog, zip_prefix: int) -> Tables:
    inter = _only(d, ".inter")
    stem = inter[: -len(".inter")]
    missing = [os.path.basename(stem + s) for s in (".user", ".item") if not os.path.isfile(stem + s)]
    if missing:
        raise PrepareError(f"{d} lacks {', '.join(missing)}: RecBole MovieLens has NAME.inter, NAME.user and NAME.item")
    need = ("user_id", "item_id", "rating", "timestamp")
    cols, rows = _recbole_file(inter, need, skips)
    ratings = _parse_ratings(rows, len(cols), [cols[c] for c in need], os.path.basename(inter), skips)
    users: Dict[str, UserTokens] = {}
    uc, rows = _recbole_file(stem + ".user", ("user_id",))
    for _, f in rows:
        if len(f) == len(uc):
            get = [f[uc[c]] if c in uc else "" for c in ("age", "gender", "occupation", "zip_code")]
            users[f[uc["user_id"]]] = _user_tokens(get, zip_prefix)
    items: Dict[str, List[str]] = {}
    ic, rows = _recbole_file(stem + ".item", ("item_id",))
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
# The files a GroupLens directory must hold, its ratings first (RecBole's: NAME.inter, .user, .item).
FILES: Dict[str, Tuple[str, ...]] = {
    "grouplens-100k": ("u.data", "u.user", "u.item"),
    "grouplens-1m": ("ratings.dat", "users.dat", "movies.dat"),
}


def detect_format(d: str) -> str:
    """The input format of directory ``d``, from the files it holds."""
    names = os.listdir(d)
    for fmt, files in FILES.items():
        if files[0] in names:
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


def _read_input(input_dir: str, fmt: str, zip_prefix: int, skips: SkipLog) -> Tuple[str, str, Tables]:
    """The local directory, its format (detected for ``auto``) and its tables."""
    d = PATH_MANAGER.get_local_path(input_dir)
    if not os.path.isdir(d):
        raise PrepareError(f"input {input_dir} is not a directory of MovieLens files")
    fmt = detect_format(d) if fmt == "auto" else fmt
    if fmt not in READERS:
        raise PrepareError(f"unknown MovieLens format {fmt!r}; choose auto or one of {', '.join(READERS)}")
    missing = [f for f in FILES.get(fmt, ()) if not os.path.isfile(os.path.join(d, f))]
    if missing:
        raise PrepareError(
            f"input {input_dir} lacks {', '.join(missing)}: a {fmt} directory holds {', '.join(FILES[fmt])}"
        )
    return d, fmt, READERS[fmt](d, skips, zip_prefix)


def _vocabularies(columns: Dict[str, List[str]], genres: List[List[str]], min_count: int) -> Dict[str, Vocab]:
    """One finalized vocabulary per single-valued column, and one for the genre bags."""
    vocabs = {name: Vocab(name) for name in [*columns, "genres"]}
    for name, tokens in columns.items():
        vocabs[name].add_tokens(tokens)
    vocabs["genres"].add_tokens([g for bag in genres for g in bag])
    for v in vocabs.values():
        v.finalize(min_count)
    return vocabs


def _encode(tables: Tables, order: np.ndarray, click_threshold: float, min_count: int) -> Tuple[Dict[str, Vocab], pa.Table]:
    """The vocabularies, and one table of every rating (in ``order``) with the columns of :data:`FEATURES`."""
    (u, i, r, _), users, items = tables
    side = [users.get(uid, ("", "", "", "")) for uid in u]
    columns: Dict[str, List[str]] = {"user_id": u, "item_id": i}
    for k, name in enumerate(("age", "gender", "occupation", "zip")):
        columns[name] = [s[k] for s in side]
    genres = [items.get(item, []) for item in i]
    vocabs = _vocabularies(columns, genres, min_count)
    data = {"label": pa.array((r[order] >= click_threshold).astype(np.int8))}
    data.update({name: pa.array(vocabs[name].lookup(tokens)[order]) for name, tokens in columns.items()})
    data["genres"] = _bag_array([vocabs["genres"].lookup(genres[k]).tolist() for k in order])
    return vocabs, pa.table(data)


def prepare_movielens(
    input_dir: str,
    output: str,
    options: Optional[PrepareOptions] = None,
    *,
    fmt: str = "auto",
    min_count: int = DEFAULT_MIN_COUNT,
    zip_prefix: int = 2,
    click_threshold: float = 4.0,
) -> Dict[str, Any]:
    """Prepare a MovieLens directory into ``output``; returns the written metadata.

    The files are small and read into memory, so ``options.progress`` and
    ``options.block_size`` do not apply.

    Args:
        input_dir (str): the directory of MovieLens files (path or URI).
        output (str): the dataset directory to create.
        options (Optional[PrepareOptions]): split, row groups, overwrite, ...
        fmt (str): ``auto`` or one of :data:`READERS`.
        min_count (int): rarer tokens share their field's out-of-vocabulary id.
        zip_prefix (int): leading zip-code characters kept.
        click_threshold (float): a rating at least this is a click.

    Raises:
        PrepareError: no MovieLens files, no valid ratings or more than
            ``max_bad_fraction`` malformed lines, or ``output`` exists without ``overwrite``.
    """
    options = options or PrepareOptions()
    started = time.perf_counter()
    output_path(output, options.overwrite, inputs=[input_dir])  # refuse a wrong output before reading
    skips = SkipLog()
    d, fmt, tables = _read_input(input_dir, fmt, zip_prefix, skips)
    users, _, _, timestamps = tables[0]
    n = len(users)
    check_skipped(input_dir, "movielens", n, skips, options.max_bad_fraction)
    order = np.argsort(timestamps, kind="stable") if options.split == "time" else np.arange(n)
    vocabs, table = _encode(tables, order, click_threshold, min_count)
    assign = split_assignment(n, options.split, options.seed)
    splits = {s: table.take(np.flatnonzero(assign == s_idx)) for s_idx, s in enumerate(SPLITS)}
    params = {
        "format": fmt, "min_count": min_count, "zip_prefix": zip_prefix, "click_threshold": click_threshold,
        "split": options.split, "split_seed": options.seed, "age_buckets": list(AGE_BUCKETS),
    }  # fmt: skip
    path, meta = write_tables(
        output, "movielens", FEATURES, vocabs, splits, params, source={"path": os.path.abspath(d)}, skips=skips,
        row_group_size=options.row_groups(DEFAULT_ROW_GROUP_SIZE), overwrite=options.overwrite,
    )  # fmt: skip
    if options.summary:
        print_summary(meta, Path(path), time.perf_counter() - started)
    return meta


def add_prepare_arguments(parser: argparse.ArgumentParser) -> None:
    """MovieLens's own flags of ``torchrec-me prepare movielens``."""
    parser.add_argument(
        "--format", default="auto", choices=("auto", *READERS), help="input format (default: detect from the files)"
    )
    parser.add_argument("--zip-prefix", type=int, default=2, help="leading zip-code characters kept (default 2)")
    parser.add_argument("--click-threshold", type=float, default=4.0, help="a rating >= this is a click (default 4)")


def prepare_from_args(args: argparse.Namespace, options: PrepareOptions) -> Dict[str, Any]:
    """Run :func:`prepare_movielens` for a parsed ``prepare movielens`` command line."""
    return prepare_movielens(
        args.input, args.output, options, fmt=args.format, min_count=args.min_count, zip_prefix=args.zip_prefix,
        click_threshold=args.click_threshold,
    )  # fmt: skip
