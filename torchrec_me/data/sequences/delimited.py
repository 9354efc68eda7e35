"""A delimited interaction log -> validated Arrow columns, with every bad line counted.

The whole file is parsed by ``pyarrow.csv`` (one thread, so that the line numbers it
reports are the file's), which keeps SNAP Books or ML-20M at C speed; fields become
strings with surrounding whitespace trimmed, as the CTR MovieLens reader strips them. A line
is skipped, and counted by reason with its line number and text in the
:class:`~torchrec_me.data.prepare.common.SkipLog`, when it

* is not UTF-8 (the reason is the CTR converter's, :data:`~torchrec_me.data.prepare.utf8.NOT_UTF8`);
* has the wrong number of fields;
* is blank;
* has an empty id, or a rating or timestamp that is not a number.

So the same bad-line policy as the CTR ``prepare`` applies, and the same
``max_bad_fraction`` decides whether the input is refused.
"""

import io
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from torchrec_me.data.prepare.common import PrepareError, SkipLog
from torchrec_me.data.prepare.utf8 import NOT_UTF8
from torchrec_me.data.store import PATH_MANAGER

NUMBER = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"  # what Arrow's string -> float64 cast accepts
_MARKER = b"\x00"  # stands for a line already counted as not UTF-8: one field, no delimiter
_ROW = "__row"  # the parsed row's index, to find its line number again


@dataclass(frozen=True)
class Delimited:
    """A delimited layout.

    Args:
        columns (Tuple[str, ...]): the column names, in file order.
        delimiter (str): one character.
        header (Optional[str]): the expected first line (compared by column names), or None.
        replace (Optional[bytes]): a multi-byte delimiter, rewritten to ``delimiter`` first.
        quoted (bool): fields may be quoted with ``"``.
    """

    columns: Tuple[str, ...]
    delimiter: str
    header: Optional[str] = None
    replace: Optional[bytes] = None
    quoted: bool = False


def read_bytes(path: str) -> bytes:
    """The bytes of ``path``; an unreadable file is a :class:`PrepareError`."""
    try:
        with PATH_MANAGER.open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise PrepareError(f"cannot read input {path}: {e.strerror or e}") from None


def utf8_lines(data: bytes, skips: SkipLog) -> bytes:
    """``data`` with each line that is not UTF-8 counted and replaced by a one-byte marker line."""
    if data.isascii():
        return data
    try:
        data.decode("utf-8")
        return data
    except UnicodeDecodeError:
        pass
    lines = data.split(b"\n")
    for k, line in enumerate(lines):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            skips.add(NOT_UTF8, k + 1, line)
            lines[k] = _MARKER
    return b"\n".join(lines)


def is_marker(line: str) -> bool:
    """Whether ``line`` stands for a line :func:`utf8_lines` has counted already."""
    return line == _MARKER.decode()


def _parse(data: bytes, layout: Delimited, source: str, skips: SkipLog) -> Tuple[pa.Table, List[int]]:
    """All fields as bytes, and the line numbers of the rows Arrow skipped (counted there)."""
    skipped: List[int] = []

    def invalid(row: "pacsv.InvalidRow") -> str:
        skipped.append(row.number)
        if not is_marker(row.text):
            skips.add(f"wrong field count (expected {row.expected_columns})", row.number, row.text)
        return "skip"

    columns = list(layout.columns)
    header = int(layout.header is not None)
    try:
        table = pacsv.read_csv(
            io.BytesIO(data),
            read_options=pacsv.ReadOptions(column_names=columns, skip_rows=header, use_threads=False),
            parse_options=pacsv.ParseOptions(
                delimiter=layout.delimiter, quote_char='"' if layout.quoted else False, ignore_empty_lines=False,
                invalid_row_handler=invalid,
            ),
            convert_options=pacsv.ConvertOptions(column_types={c: pa.binary() for c in columns}),
        )  # fmt: skip
    except pa.ArrowInvalid as e:
        raise PrepareError(f"cannot parse {source}: {str(e).splitlines()[0]}") from None
    return table.append_column(_ROW, pa.array(np.arange(table.num_rows))), skipped


def _line_number(row: int, first: int, skipped: Sequence[int]) -> int:
    """The file line of parsed row ``row``, the ``skipped`` lines (ascending) not being rows."""
    line = first + row
    for s in skipped:
        if s > line:
            break
        line += 1
    return line


class _Validator:
    """Drops invalid rows of a parsed table, logging each reason with examples and line numbers."""

    def __init__(self, layout: Delimited, skips: SkipLog, skipped: Sequence[int]) -> None:
        self.delimiter = layout.delimiter
        self.first = 1 + int(layout.header is not None)
        self.skips = skips
        self.skipped = sorted(skipped)

    def keep(self, table: pa.Table, ok: pa.Array, reason: str) -> pa.Table:
        bad = pc.invert(ok)
        n_bad = pc.sum(bad).as_py() or 0
        if not n_bad:
            return table
        for row in table.filter(bad).slice(0, 3).to_pylist():
            line = _line_number(row.pop(_ROW), self.first, self.skipped)
            self.skips.add(reason, line, self.delimiter.join(row.values()))
        self.skips.counts[reason] += n_bad - min(n_bad, 3)
        return table.filter(ok)


def read_columns(path: str, layout: Delimited, ids: Sequence[str], numbers: Sequence[str], skips: SkipLog) -> pa.Table:
    """The valid rows of the delimited file ``path``: string columns, trimmed, ``numbers`` known to parse.

    Args:
        path (str): a local file.
        layout (Delimited): its layout.
        ids (Sequence[str]): columns that must not be empty.
        numbers (Sequence[str]): columns that must be numbers (those present in the layout).
        skips (SkipLog): where skipped lines are counted.

    Raises:
        PrepareError: unreadable, a wrong header, or Arrow cannot parse it at all.
    """
    data = read_bytes(path)
    if layout.header is not None:
        first = data.split(b"\n", 1)[0].strip().decode("utf-8", "replace")
        if header_fields(first) != header_fields(layout.header):
            raise PrepareError(f"{path}: expected the header {layout.header!r}, found {first[:80]!r}")
    data = utf8_lines(data, skips)
    if layout.replace:
        data = data.replace(layout.replace, layout.delimiter.encode())
    parsed, skipped = _parse(data, layout, path, skips)
    table = pa.table({c: pc.utf8_trim_whitespace(pc.cast(parsed[c], pa.string())) for c in layout.columns})
    table = table.append_column(_ROW, parsed[_ROW])
    check = _Validator(layout, skips, skipped)
    lengths = [pc.utf8_length(table[c]) for c in layout.columns]
    table = check.keep(table, pc.greater(pc.max_element_wise(*lengths), 0), "blank line")
    for c in ids:
        table = check.keep(table, pc.greater(pc.utf8_length(table[c]), 0), "empty user or item id")
    for c in (c for c in numbers if c in layout.columns):
        table = check.keep(table, pc.match_substring_regex(table[c], NUMBER), f"non-numeric {c}")
    return table.drop_columns([_ROW])


def header_fields(header: str) -> List[str]:
    """The column names of a header line (tab- or comma-separated); typed RecBole names are cut at ``:``."""
    return [h.split(":")[0].strip() for h in header.replace("\t", ",").split(",")]
