"""Raw interaction logs -> :class:`Interactions`, for ``torchrec-me prepare sequences``.

Formats (:data:`FORMATS`; ``--input`` is the file, or a directory holding it):

* ``movielens``: 100k ``u.data`` (``user<TAB>item<TAB>rating<TAB>timestamp``), 1M/10M
  ``ratings.dat`` (``user::item::rating::timestamp``) or 20M ``ratings.csv`` (header
  ``userId,movieId,rating,timestamp``); which one is told by the file name, else by its
  first line (:data:`MOVIELENS_FILES`);
* ``amazon``: ``user,item,rating,timestamp`` CSV without a header (SNAP ``ratings_Books.csv``);
* ``recbole``: RecBole's atomic ``NAME.inter``, tab-separated with a typed header
  (``user_id:token  item_id:token  rating:float  timestamp:float``); ``rating`` and
  ``timestamp`` are optional;
* ``pairs``: ``user item`` per line in time order, separated by one tab, comma or space
  (told by the first line); no ratings, no timestamps;
* ``lines``: ``user item1 item2 ...`` per line in time order, whitespace-separated; no
  ratings, no timestamps. A user on several lines gets the items of all of them.

The delimited formats are read by :mod:`.delimited`, whose bad-line rules (not UTF-8,
wrong field count, blank, empty id, non-numeric rating or timestamp) ``lines`` follows
too, where they apply (a user without items is its wrong field count). Raw ids are
kept as strings.
"""

import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from torchrec_me.data.prepare.common import PrepareError, SkipLog
from torchrec_me.data.sequences.delimited import (
    Delimited, header_fields, is_marker, read_bytes, read_columns, utf8_lines,
)  # fmt: skip
from torchrec_me.data.store import PATH_MANAGER

USER, ITEM, RATING, TIME = "user", "item", "rating", "timestamp"


@dataclass
class Interactions:
    """Every valid input line's interaction, in input order (n of them).

    Args:
        users (np.ndarray): (n,) int64 index into ``user_tokens`` (first-appearance order).
        user_tokens (pa.Array): the distinct raw user ids (strings).
        items (np.ndarray): (n,) int64 index into ``item_tokens`` (first-appearance order).
        item_tokens (pa.Array): the distinct raw item ids (strings).
        ratings (np.ndarray): (n,) float32 ratings (1.0 where the format has none).
        timestamps (Optional[np.ndarray]): (n,) int64 seconds, None without timestamps.
        variant (str): which file layout was read (e.g. ``ratings.dat``).
        source (str): the file read.
    """

    users: np.ndarray
    user_tokens: pa.Array
    items: np.ndarray
    item_tokens: pa.Array
    ratings: np.ndarray
    timestamps: Optional[np.ndarray]
    variant: str
    source: str

    def __len__(self) -> int:
        return len(self.users)


RATING_COLUMNS = (USER, ITEM, RATING, TIME)
MOVIELENS_FILES: Dict[str, Delimited] = {
    "u.data": Delimited(RATING_COLUMNS, "\t"),
    "ratings.dat": Delimited(RATING_COLUMNS, "\t", replace=b"::"),
    "ratings.csv": Delimited(RATING_COLUMNS, ",", header="userId,movieId,rating,timestamp"),
}
# How a MovieLens ratings file with another name is recognised, by its first line.
_MOVIELENS_SNIFFERS: Tuple[Tuple[Callable[[str], bool], str], ...] = (
    (lambda line: "::" in line, "ratings.dat"),
    (lambda line: line.startswith("userId,"), "ratings.csv"),
    (lambda line: "\t" in line, "u.data"),
)
AMAZON = Delimited(RATING_COLUMNS, ",", quoted=True)


def _single_file(path: str, suffixes: Sequence[str], what: str) -> str:
    """``path`` itself, or the one file of a directory whose name ends with one of ``suffixes``."""
    local = PATH_MANAGER.get_local_path(path) if PATH_MANAGER.exists(path) else path
    if os.path.isfile(local):
        return local
    if not os.path.isdir(local):
        raise PrepareError(f"input {path} does not exist")
    found = sorted(n for n in os.listdir(local) if n.endswith(tuple(suffixes)))
    if len(found) != 1:
        raise PrepareError(f"input directory {path} should hold exactly one {what}, found {found or 'none'}")
    return os.path.join(local, found[0])


def _codes(column: pa.ChunkedArray) -> Tuple[np.ndarray, pa.Array]:
    """Dense first-appearance codes of a string column, and the distinct values."""
    encoded = column.combine_chunks().dictionary_encode()
    return np.asarray(encoded.indices, dtype=np.int64), encoded.dictionary


def _number(table: pa.Table, name: str) -> np.ndarray:
    return np.asarray(pc.cast(table.column(name), pa.float64()), dtype=np.float64)


def read_delimited(path: str, layout: Delimited, variant: str, skips: SkipLog) -> Interactions:
    """Read a delimited file of ``layout`` (columns among user, item, rating, timestamp) into :class:`Interactions`."""
    table = read_columns(path, layout, (USER, ITEM), (RATING, TIME), skips)
    users, user_tokens = _codes(table[USER])
    items, item_tokens = _codes(table[ITEM])
    n = table.num_rows
    ratings = _number(table, RATING).astype(np.float32) if RATING in table.column_names else np.ones(n, np.float32)
    stamps = np.floor(_number(table, TIME)).astype(np.int64) if TIME in table.column_names else None
    return Interactions(users, user_tokens, items, item_tokens, ratings, stamps, variant, path)


def _first_line(path: str) -> str:
    with PATH_MANAGER.open(path, "rb") as f:
        return f.readline(4096).decode("utf-8", "replace")


def _movielens_variant(path: str) -> str:
    """The :data:`MOVIELENS_FILES` entry of ``path``: by its name, else by its first line."""
    name = os.path.basename(path)
    if name in MOVIELENS_FILES:
        return name
    line = _first_line(path)
    sniffed = next((variant for looks_like, variant in _MOVIELENS_SNIFFERS if looks_like(line)), None)
    if sniffed is None:
        raise PrepareError(f"{path} is not a MovieLens ratings file (u.data, ratings.dat or ratings.csv)")
    return sniffed


def read_movielens(path: str, skips: SkipLog) -> Interactions:
    """MovieLens 100k / 1M / 10M / 20M ratings; see the module docstring."""
    local = _single_file(path, tuple(MOVIELENS_FILES), "MovieLens ratings file (u.data, ratings.dat or ratings.csv)")
    variant = _movielens_variant(local)
    return read_delimited(local, MOVIELENS_FILES[variant], variant, skips)


def read_amazon(path: str, skips: SkipLog) -> Interactions:
    """SNAP Amazon ``user,item,rating,timestamp`` CSV without a header."""
    local = _single_file(path, (".csv",), "*.csv ratings file")
    return read_delimited(local, AMAZON, "amazon-ratings-csv", skips)


def read_recbole(path: str, skips: SkipLog) -> Interactions:
    """RecBole atomic ``.inter``: columns named by the typed header; see the module docstring."""
    local = _single_file(path, (".inter",), "RecBole *.inter file")
    header = header_fields(_first_line(local).rstrip("\r\n"))
    missing = [c for c in ("user_id", "item_id") if c not in header]
    if missing:
        raise PrepareError(f"{local}: a RecBole .inter header needs user_id and item_id; it has {', '.join(header)}")
    rename = {"user_id": USER, "item_id": ITEM}
    layout = Delimited(tuple(rename.get(h, h) for h in header), "\t", header="\t".join(header))
    return read_delimited(local, layout, "recbole-inter", skips)


def read_pairs(path: str, skips: SkipLog) -> Interactions:
    """``user item`` per line, time-ordered, no timestamps."""
    local = _single_file(path, (".txt", ".tsv", ".csv"), "pairs file")
    line = _first_line(local)
    delimiter = next((d for d in ("\t", ",", " ") if d in line.strip()), " ")
    return read_delimited(local, Delimited((USER, ITEM), delimiter), "pairs", skips)


def read_lines(path: str, skips: SkipLog) -> Interactions:
    """``user item1 item2 ...`` per line, time-ordered, no timestamps (split line by line)."""
    local = _single_file(path, (".txt",), "lines file")
    users: List[str] = []
    items: List[str] = []
    lines = utf8_lines(read_bytes(local), skips).decode("utf-8").split("\n")
    for number, line in enumerate(lines[:-1] if lines[-1] == "" else lines, start=1):
        fields = line.split()
        if len(fields) > 1:
            users += [fields[0]] * (len(fields) - 1)
            items += fields[1:]
        elif not is_marker(line):
            skips.add("user without items" if fields else "blank line", number, line)
    u = pa.array(users, pa.string()).dictionary_encode()
    i = pa.array(items, pa.string()).dictionary_encode()
    ones = np.ones(len(users), np.float32)
    return Interactions(
        np.asarray(u.indices, np.int64), u.dictionary, np.asarray(i.indices, np.int64), i.dictionary, ones, None,
        "lines", local,
    )  # fmt: skip


@dataclass(frozen=True)
class SequenceFormat:
    """One ``--format``: its reader and a one-line description for ``--help``."""

    read: Callable[[str, SkipLog], Interactions]
    help: str


FORMATS: Dict[str, SequenceFormat] = {
    "movielens": SequenceFormat(read_movielens, "MovieLens u.data (100k), ratings.dat (1M/10M) or ratings.csv (20M)"),
    "amazon": SequenceFormat(read_amazon, "user,item,rating,timestamp CSV without header (SNAP ratings_Books.csv)"),
    "recbole": SequenceFormat(read_recbole, "RecBole atomic NAME.inter with a typed header"),
    "pairs": SequenceFormat(read_pairs, "'user item' per line in time order (no timestamps)"),
    "lines": SequenceFormat(read_lines, "'user item1 item2 ...' per line in time order (no timestamps)"),
}


def read_interactions(path: str, fmt: str, skips: SkipLog) -> Interactions:
    """The interactions of ``path`` in format ``fmt`` (one of :data:`FORMATS`).

    Raises:
        PrepareError: unknown format, missing or unreadable input, or a wrong header.
    """
    if fmt not in FORMATS:
        raise PrepareError(f"unknown sequence format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return FORMATS[fmt].read(path, skips)
