"""Stream a delimited text log (Criteo, Avazu) in blocks and keep only its valid rows.

* **Blocks.** The file is read with ``pyarrow.csv``'s streaming reader in blocks of
  ``block_size`` bytes, decompressed on the fly by its suffix. Per block, each needed
  column is dictionary-encoded by Arrow, so the Python work (token functions, checks)
  is proportional to the block's *distinct* values, not to its rows.

* **Malformed lines** (wrong column count, a label other than 0/1, a value failing a
  column check such as a non-integer in Criteo's I fields, bytes that are not UTF-8)
  are skipped and counted by reason with the first examples (physical line number and
  an escaped excerpt). A line is skipped only for such a reason, so a good row is never
  lost. Arrow cannot hand a line that is not UTF-8 to Python, so
  :class:`~torchrec_me.data.prepare.utf8.Utf8Lines` replaces each such line by a marker
  line before Arrow parses it.

* **Wrong input stops at once** with one
  :class:`~torchrec_me.data.prepare.common.PrepareError`: an empty file, a header or
  first line of another format, half of the first 1000 lines malformed, or a truncated
  or corrupt compressed file.
"""

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
from tqdm import tqdm

from torchrec_me.data.prepare.common import DEFAULT_BLOCK_SIZE, FeatureSpec, PrepareError, SkipLog, excerpt
from torchrec_me.data.prepare.utf8 import NOT_UTF8, Utf8Lines
from torchrec_me.data.store import PATH_MANAGER

SNIFF_LINES = 1000
BadRows = List[Tuple[str, int]]  # (reason, row in the block), by row


@dataclass
class TextFormat:
    """A delimited text format: its columns, line checks and output features.

    Args:
        name (str): format name, used in messages and the metadata.
        delimiter (str): one character.
        columns (List[str]): every column of a line, in order.
        label (str): the 0/1 label column.
        features (List[FeatureSpec]): output features (``sparse`` or ``dense``).
        min_count (int): tokens seen fewer times map to the field's OOV id.
        header (Optional[List[str]]): the expected first line, if the file has one.
        token_fns (Dict[str, Callable[[str], str]]): raw value -> token of a feature
            (identity when absent).
        value_fns (Dict[str, Callable[[str], float]]): raw value -> float of a dense feature.
        checks (Dict[str, Tuple[str, Callable[[str], bool]]]): ``column -> (reason, ok)``;
            a line whose value fails ``ok`` is skipped under ``reason`` (``{column}``
            is substituted).
        check_first_line (Optional[Callable[[str], None]]): raises PrepareError when the
            first line is plainly another format.
        params (Dict[str, Any]): preprocessing parameters recorded in the metadata.
    """

    name: str
    delimiter: str
    columns: List[str]
    label: str
    features: List[FeatureSpec]
    min_count: int
    header: Optional[List[str]] = None
    token_fns: Dict[str, Callable[[str], str]] = field(default_factory=dict)
    value_fns: Dict[str, Callable[[str], float]] = field(default_factory=dict)
    checks: Dict[str, Tuple[str, Callable[[str], bool]]] = field(default_factory=dict)
    check_first_line: Optional[Callable[[str], None]] = None
    params: Dict[str, Any] = field(default_factory=dict)

    @property
    def needed(self) -> List[str]:
        """The raw columns that are checked or feed a feature, label first."""
        used = set(self.checks) | {f.source or f.name for f in self.features}
        return [self.label] + [c for c in self.columns if c in used and c != self.label]

    def tokens(self, feat: FeatureSpec, distinct: List[str]) -> List[str]:
        """The tokens of ``feat`` for the raw values ``distinct`` of its source column."""
        fn = self.token_fns.get(feat.name)
        return distinct if fn is None else [fn(v) for v in distinct]


@dataclass
class Chunk:
    """The valid rows of one block: per raw column its distinct values and each row's code.

    Args:
        n (int): valid rows.
        label (np.ndarray): (n,) int8 labels.
        distinct (Dict[str, List[str]]): per needed column, the values its rows use.
        codes (Dict[str, np.ndarray]): per needed column, (n,) indices into ``distinct``.
    """

    n: int
    label: np.ndarray
    distinct: Dict[str, List[str]]
    codes: Dict[str, np.ndarray]


class _LineNumbers:
    """Physical line numbers of parsed rows, given the numbers of the lines Arrow rejected.

    Parsed row ``k`` (0-based over the file) is on the line ``L`` with
    ``L = first + k + #(rejected lines < L)``. Arrow reports a block's rejected lines
    before it yields the block; those before the last parsed row are only counted.
    """

    def __init__(self, header_lines: int) -> None:
        self.first = header_lines + 1
        self.parsed = 0  # rows parsed before the current block
        self.passed = 0  # rejected lines before the current block
        self.pending: List[int] = []  # rejected lines not yet passed, ascending

    def line_of(self, row: int) -> int:
        """The line of row ``row`` of the current block."""
        rej = np.asarray(self.pending, dtype=np.int64)
        base = self.first + self.parsed + row + self.passed
        line = base
        while (nxt := base + int(np.searchsorted(rej, line, side="right"))) != line:
            line = nxt
        return line

    def advance(self, rows: int) -> None:
        """Move past the current block of ``rows`` parsed rows."""
        if rows:
            last = self.line_of(rows - 1)
            keep = [r for r in self.pending if r > last]
            self.passed += len(self.pending) - len(keep)
            self.pending = keep
            self.parsed += rows


class _BadLineLog:
    """Logs the malformed lines of one scan in a :class:`SkipLog`, with their line numbers,
    and stops the scan early when the file is plainly another format.

    Args:
        fmt (TextFormat): the format being read.
        path (str): the file, for messages.
        skips (SkipLog): where the skipped lines are counted.
    """

    def __init__(self, fmt: TextFormat, path: str, skips: SkipLog, not_utf8: Dict[int, bytes]) -> None:
        self.fmt = fmt
        self.path = path
        self.skips = skips
        self.not_utf8 = not_utf8
        self.lines = _LineNumbers(1 if fmt.header else 0)
        self.rejected: List[Tuple[int, str]] = []
        self.column_reason = f"wrong column count (expected {len(fmt.columns)})"
        self.seen = 0
        self.sniffed = False

    def on_invalid(self, row: Any) -> str:
        """Arrow's ``invalid_row_handler``: remember a line of the wrong column count, skip it."""
        self.rejected.append((row.number, row.text))
        return "skip"

    def take_rejected(self) -> int:
        """Log the lines Arrow rejected since the last call; returns how many there were."""
        for number, text in self.rejected:
            self.lines.pending.append(number)
            if text == Utf8Lines.MARKER and number in self.not_utf8:
                self.skips.add(NOT_UTF8, number, self.not_utf8.pop(number))
            else:
                self.skips.add(self.column_reason, number, text)
        n = len(self.rejected)
        self.rejected.clear()
        self.seen += n
        return n

    def log_block(self, batch: pa.RecordBatch, bad: BadRows) -> None:
        """Log the rows of ``batch`` that failed validation, then move past the block."""
        for reason, i in bad:
            if self.skips.wants_example(reason):  # describing a line costs; only examples need it
                text = self.fmt.delimiter.join(str(batch.column(c)[i].as_py()) for c in self.fmt.needed)
                self.skips.add(reason, self.lines.line_of(i), text)
            else:
                self.skips.add(reason)
        self.lines.advance(batch.num_rows)
        self.seen += batch.num_rows

    def sniff(self, final: bool) -> None:
        """Once ``SNIFF_LINES`` lines (or the whole file) are seen, refuse a file half malformed."""
        if self.sniffed or not self.seen or (self.seen < SNIFF_LINES and not final):
            return
        self.sniffed = True
        if self.skips.total * 2 >= self.seen:
            raise PrepareError(
                f"{self.path} does not look like {self.fmt.name} data: {self.skips.total} of the first {self.seen} "
                "lines are malformed; " + self.skips.describe()
            )


class _Progress:
    """Rows read, as a tqdm bar on stderr; without a known total, the total is estimated
    from the share of the file's bytes read so far."""

    def __init__(self, desc: str, total: Optional[int], enabled: bool, raw: pa.NativeFile, path: str) -> None:
        self.bar = tqdm(total=total, desc=desc, unit="rows", unit_scale=True, disable=not enabled, file=sys.stderr, mininterval=1.0)
        self.raw = raw
        self.estimate = total is None and enabled
        self.file_bytes = max(os.path.getsize(path), 1)

    def update(self, rows: int) -> None:
        self.bar.update(rows)
        if self.estimate and (read := self.raw.tell()) > 0:
            self.bar.total = max(int(self.bar.n * self.file_bytes / read), self.bar.n)

    def close(self) -> None:
        self.bar.close()


def _compression(path: str) -> Optional[str]:
    """Arrow's name of the compression ``path``'s suffix implies, or None for plain text."""
    return {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd", ".lz4": "lz4"}.get(Path(path).suffix)


def _first_line(path: str, skip_blank: bool) -> str:
    """The first line of the file (with ``skip_blank``, the first non-blank one in its first
    64 KiB); bytes that are not UTF-8 are kept as ``surrogateescape`` characters."""
    with pa.input_stream(path, compression=_compression(path)) as f:
        lines = f.read(1 << 16).decode("utf-8", errors="surrogateescape").split("\n")
    if skip_blank:
        lines = [line for line in lines if line.strip()]
    return lines[0] if lines else ""


def check_input(fmt: TextFormat, input_path: str) -> str:
    """The local path of ``input_path``, after the checks that need no full read.

    Raises:
        PrepareError: the input is missing, a directory, unreadable, empty, or starts like
            another format.
    """
    path = PATH_MANAGER.get_local_path(input_path)
    if not os.path.exists(path):
        raise PrepareError(f"input {input_path} does not exist")
    if os.path.isdir(path):
        raise PrepareError(f"input {input_path} is a directory; pass the {fmt.name} file itself")
    try:
        first = _first_line(path, skip_blank=fmt.header is None) if os.path.getsize(path) else ""
    except OSError as e:
        raise PrepareError(f"cannot read input {input_path}: {_io_reason(e)}") from None
    first = first.rstrip("\r")
    if not first.strip():
        raise PrepareError(f"input {input_path} is empty; expected {fmt.name} data")
    if fmt.header is not None:
        got = first.lstrip("\ufeff").split(fmt.delimiter)
        if got != fmt.header:
            raise PrepareError(
                f"input {input_path} is not {fmt.name} data: its first line is {excerpt(first, 120)}, expected the "
                f"header {fmt.delimiter.join(fmt.header)!r}"
            )
    if fmt.check_first_line is not None:
        fmt.check_first_line(first)
    return path


def _io_reason(e: OSError) -> str:
    """Why reading failed, for one message line (a truncated download is the usual cause)."""
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    if "compress" in reason.lower():
        reason += " (is the file complete? a download may have been cut short)"
    return reason


def _open_csv(fmt: TextFormat, stream: Utf8Lines, block_size: int, on_invalid: Callable[[Any], str]) -> Any:
    """Arrow's streaming CSV reader of ``stream``: the needed columns as strings, rejected lines to ``on_invalid``."""
    read_opts = pacsv.ReadOptions(
        column_names=fmt.columns, skip_rows=1 if fmt.header else 0, use_threads=False, block_size=block_size
    )
    parse_opts = pacsv.ParseOptions(
        delimiter=fmt.delimiter, quote_char=False, ignore_empty_lines=False, invalid_row_handler=on_invalid
    )
    needed = set(fmt.needed)
    convert_opts = pacsv.ConvertOptions(
        column_types={c: pa.string() for c in fmt.columns}, strings_can_be_null=False,
        include_columns=[c for c in fmt.columns if c in needed],
    )  # fmt: skip
    return pacsv.open_csv(pa.PythonFile(stream, mode="r"), read_options=read_opts, parse_options=parse_opts,
                          convert_options=convert_opts)  # fmt: skip


def _dictionary_encode(batch: pa.RecordBatch, columns: Sequence[str]) -> Tuple[Dict[str, List[str]], Dict[str, np.ndarray]]:
    """Per column, its distinct values and each row's index into them."""
    distinct: Dict[str, List[str]] = {}
    codes: Dict[str, np.ndarray] = {}
    for col in columns:
        enc = batch.column(col).dictionary_encode()
        distinct[col] = enc.dictionary.to_pylist()
        codes[col] = enc.indices.to_numpy(zero_copy_only=False)
    return distinct, codes


def _bad_labels(fmt: TextFormat, distinct: Dict[str, List[str]], codes: Dict[str, np.ndarray]) -> Tuple[np.ndarray, BadRows]:
    """(n,) bool of the rows whose label is not 0/1, and their reasons (a blank line is named so)."""
    label_ok = np.array([v in ("0", "1") for v in distinct[fmt.label]], dtype=bool)
    label_bad = ~label_ok[codes[fmt.label]]
    if not label_bad.any():
        return label_bad, []
    blank = label_bad.copy()  # Arrow parses a blank line as a row of empty strings
    for col, values in distinct.items():
        empty = values.index("") if "" in values else -1
        blank &= codes[col] == empty
    reasons = [("blank line" if blank[i] else f"{fmt.label} not 0/1", int(i)) for i in np.flatnonzero(label_bad)]
    return label_bad, reasons


def _failed_checks(fmt: TextFormat, distinct: Dict[str, List[str]], codes: Dict[str, np.ndarray], valid: np.ndarray) -> BadRows:
    """The rows still ``valid`` that fail a column check, with its reason; clears them in ``valid``."""
    bad: BadRows = []
    for col, (reason, ok_fn) in fmt.checks.items():
        ok = np.array([ok_fn(v) for v in distinct[col]], dtype=bool)
        col_bad = ~ok[codes[col]] & valid
        bad += [(reason.format(column=col), int(i)) for i in np.flatnonzero(col_bad)]
        valid &= ~col_bad
    return bad


def _keep_rows(distinct: Dict[str, List[str]], codes: Dict[str, np.ndarray], valid: np.ndarray) -> None:
    """Drop the rows not ``valid``, and the distinct values only they had, in place."""
    for c in codes:
        kept = codes[c][valid]
        used = np.zeros(len(distinct[c]), dtype=bool)
        used[kept] = True
        distinct[c] = [v for v, u in zip(distinct[c], used) if u]
        codes[c] = (np.cumsum(used) - 1)[kept].astype(np.int32)


def _validate(fmt: TextFormat, batch: pa.RecordBatch) -> Tuple[Chunk, BadRows]:
    """The valid rows of ``batch``, and ``(reason, row)`` of the others by row."""
    distinct, codes = _dictionary_encode(batch, fmt.needed)
    label_bad, bad = _bad_labels(fmt, distinct, codes)
    valid = ~label_bad
    bad += _failed_checks(fmt, distinct, codes, valid)
    bad.sort(key=lambda reason_row: reason_row[1])
    if not valid.all():
        _keep_rows(distinct, codes, valid)
    is_click = np.array([v == "1" for v in distinct[fmt.label]], dtype=np.int8)
    return Chunk(int(valid.sum()), is_click[codes[fmt.label]], distinct, codes), bad


def scan_text(
    fmt: TextFormat,
    path: str,
    skips: SkipLog,
    desc: str,
    total: Optional[int] = None,
    progress: bool = True,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> Iterator[Chunk]:
    """Stream the local file ``path``; yield each block's valid rows, log the rest in ``skips``.

    Args:
        fmt (TextFormat): the format of the file.
        path (str): a local file, plain or compressed.
        skips (SkipLog): where malformed lines are counted.
        desc (str): the progress bar's label.
        total (Optional[int]): lines in the file, when known (else estimated from bytes).
        progress (bool): show the progress bar.
        block_size (int): bytes per block.

    Raises:
        PrepareError: when half of the first ``SNIFF_LINES`` lines are malformed (the
            file is not this format at all), or the file cannot be read (a truncated
            compressed file, a line longer than a block, ...).
    """
    raw = pa.OSFile(path, "rb")
    compression = _compression(path)
    lines = Utf8Lines(pa.CompressedInputStream(raw, compression) if compression else raw, path, max_line=block_size)
    log = _BadLineLog(fmt, path, skips, lines.bad)
    bar = _Progress(desc, total, progress, raw, path)
    try:
        for batch in _open_csv(fmt, lines, block_size, log.on_invalid):
            n_rejected = log.take_rejected()
            chunk, bad = _validate(fmt, batch)
            log.log_block(batch, bad)
            bar.update(batch.num_rows + n_rejected)
            log.sniff(final=False)
            yield chunk
        log.take_rejected()
        log.sniff(final=True)
    except pa.ArrowInvalid as e:
        raise PrepareError(f"cannot read {path} as {fmt.name}: {str(e).splitlines()[0]}") from None
    except OSError as e:
        raise PrepareError(f"cannot read {path}: {_io_reason(e)}") from None
    finally:
        bar.close()
        raw.close()
