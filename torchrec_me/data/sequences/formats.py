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

Delimited files are parsed by ``pyarrow.csv`` as bytes, so large logs (SNAP Books,
ML-20M) read at C speed. A line is skipped, and counted by reason in the
:class:`~torchrec_me.data.prepare.common.SkipLog`, when it has the wrong number of
fields, an empty user or item, or a rating or timestamp that is not a number. Raw ids
are kept as strings (undecodable UTF-8 bytes are backslash-escaped).
"""

import io
import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from torchrec_me.data.prepare.common import PrepareError, SkipLog
from torchrec_me.data.store import PATH_MANAGER

USER, ITEM, RATING, TIME = "user", "item", "rating", "timestamp"
NUMBER = r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$"


@dataclass
class Interactions:
    """Every valid input line's interaction, in input order (n of them).

    Args:
        users (np.ndarray): (n,) int64 index into ``user_tokens`` (first-appearance order).
        user_tokens (List[str]): the distinct raw user ids.
        items (np.ndarray): (n,) int64 index into ``item_tokens`` (first-appearance order).
        item_tokens (List[str]): the distinct raw item ids.
        ratings (np.ndarray): (n,) float32 ratings (1.0 where the format has none).
        timestamps (Optional[np.ndarray]): (n,) int64 seconds, None without timestamps.
        variant (str): which file layout was read (e.g. ``ratings.dat``).
        source (str): the file read.
    """

    users: np.ndarray
    user_tokens: List[str]
    items: np.ndarray
    item_tokens: List[str]
    ratings: np.ndarray
    timestamps: Optional[np.ndarray]
    variant: str
    source: str

    def __len__(self) -> int:
        return len(self.users)


@dataclass(frozen=True)
class Delimited:
    """A delimited layout: its column names, one-byte delimiter, header lines and quoting."""

    columns: Tuple[str, ...]
    delimiter: str
    header: Optional[str] = None
    replace: Optional[bytes] = None  # a multi-byte delimiter, rewritten to ``delimiter`` first
    quoted: bool = False


RATING_COLUMNS = (USER, ITEM, RATING, TIME)
MOVIELENS_FILES: Dict[str, Delimited] = {
    "u.data": Delimited(RATING_COLUMNS, "\t"),
    "ratings.dat": Delimited(RATING_COLUMNS, "\t", replace=b"::"),
    "ratings.csv": Delimited(RATING_COLUMNS, ",", header="userId,movieId,rating,timestamp"),
}
AMAZON = Delimited(RATING_COLUMNS, ",", quoted=True)


def _read_bytes(path: str) -> bytes:
    try:
        with PATH_MANAGER.open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise PrepareError(f"cannot read input {path}: {e.strerror or e}") from None


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


def _decode(tokens: pa.Array) -> List[str]:
    return [b.decode("utf-8", "backslashreplace") for b in tokens.to_pylist()]


def _codes(column: pa.ChunkedArray) -> Tuple[np.ndarray, List[str]]:
    """Dense first-appearance codes of a bytes column, and the distinct values as strings."""
    encoded = column.combine_chunks().dictionary_encode()
    return np.asarray(encoded.indices, dtype=np.int64), _decode(encoded.dictionary)


def _parse(data: bytes, layout: Delimited, source: str, skips: SkipLog) -> pa.Table:
    """All fields as bytes; lines with the wrong field count are skipped and counted."""
    if layout.replace:
        data = data.replace(layout.replace, layout.delimiter.encode())

    def invalid(row: "pacsv.InvalidRow") -> str:
        skips.add(f"wrong field count (expected {row.expected_columns})", row.number, row.text)
        return "skip"

    try:
        return pacsv.read_csv(
            io.BytesIO(data),
            read_options=pacsv.ReadOptions(column_names=list(layout.columns), skip_rows=int(layout.header is not None), use_threads=False),
            parse_options=pacsv.ParseOptions(
                delimiter=layout.delimiter, quote_char='"' if layout.quoted else False, invalid_row_handler=invalid
            ),
            convert_options=pacsv.ConvertOptions(column_types={c: pa.binary() for c in layout.columns}),
        )
    except pa.ArrowInvalid as e:
        raise PrepareError(f"cannot parse {source}: {str(e).splitlines()[0]}") from None


def _drop_invalid(table: pa.Table, ok: pa.Array, reason: str, skips: SkipLog, delimiter: str) -> pa.Table:
    """Keep the rows where ``ok``; count the others under ``reason`` with a few examples."""
    bad = pc.invert(ok)
    n_bad = pc.sum(bad).as_py() or 0
    if not n_bad:
        return table
    examples = table.filter(bad).slice(0, 3).to_pylist()
    for k in range(n_bad):
        text = delimiter.join(v.decode("utf-8", "backslashreplace") for v in examples[k].values()) if k < 3 else None
        skips.add(reason, None, text)
    return table.filter(ok)


def _number(table: pa.Table, name: str) -> np.ndarray:
    return np.asarray(pc.cast(pc.cast(table.column(name), pa.string()), pa.float64()), dtype=np.float64)


def _to_interactions(table: pa.Table, layout: Delimited, variant: str, source: str, skips: SkipLog) -> Interactions:
    """Validate ids and numbers of a parsed table and encode its ids."""
    sep = layout.delimiter
    nonempty = pc.and_(pc.greater(pc.binary_length(table[USER]), 0), pc.greater(pc.binary_length(table[ITEM]), 0))
    table = _drop_invalid(table, nonempty, "empty user or item id", skips, sep)
    for name in (RATING, TIME):
        if name in table.column_names:
            table = _drop_invalid(table, pc.match_substring_regex(table[name], NUMBER), f"non-numeric {name}", skips, sep)
    users, user_tokens = _codes(table[USER])
    items, item_tokens = _codes(table[ITEM])
    n = table.num_rows
    ratings = _number(table, RATING).astype(np.float32) if RATING in table.column_names else np.ones(n, np.float32)
    stamps = np.floor(_number(table, TIME)).astype(np.int64) if TIME in table.column_names else None
    return Interactions(users, user_tokens, items, item_tokens, ratings, stamps, variant, source)


def _fields(header: str) -> List[str]:
    """The column names of a header line, typed RecBole names cut at ``:``."""
    return [h.split(":")[0].strip() for h in header.replace("\t", ",").split(",")]


def read_delimited(path: str, layout: Delimited, variant: str, skips: SkipLog) -> Interactions:
    """Read a delimited file of ``layout`` into :class:`Interactions`."""
    data = _read_bytes(path)
    if layout.header is not None:
        first = data.split(b"\n", 1)[0].strip().decode("utf-8", "replace")
        if _fields(first) != _fields(layout.header):
            raise PrepareError(f"{path}: expected the header {layout.header!r}, found {first[:80]!r}")
    return _to_interactions(_parse(data, layout, path, skips), layout, variant, path, skips)


def _first_line(path: str) -> str:
    with PATH_MANAGER.open(path, "rb") as f:
        return f.readline(4096).decode("utf-8", "replace")


def _movielens_variant(path: str) -> str:
    """The :data:`MOVIELENS_FILES` entry of ``path``: by its name, else by its first line."""
    name = os.path.basename(path)
    if name in MOVIELENS_FILES:
        return name
    line = _first_line(path)
    sniffed = "ratings.dat" if "::" in line else "ratings.csv" if line.startswith("userId,") else "u.data" if "\t" in line else None
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
    header = _fields(_first_line(local).rstrip("\r\n"))
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
    """``user item1 item2 ...`` per line, time-ordered, no timestamps (parsed line by line)."""
    local = _single_file(path, (".txt",), "lines file")
    users: List[str] = []
    items: List[str] = []
    with PATH_MANAGER.open(local, "r", encoding="utf-8", errors="backslashreplace") as f:
        for number, line in enumerate(f, start=1):
            fields = line.split()
            if len(fields) == 1:
                skips.add("user without items", number, line.rstrip("\n"))
            elif fields:
                users += [fields[0]] * (len(fields) - 1)
                items += fields[1:]
    u = pa.array(users, pa.string()).dictionary_encode()
    i = pa.array(items, pa.string()).dictionary_encode()
    ones = np.ones(len(users), np.float32)
    return Interactions(
        np.asarray(u.indices, np.int64), u.dictionary.to_pylist(), np.asarray(i.indices, np.int64),
        i.dictionary.to_pylist(), ones, None, "lines", local,
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
