"""Streaming two-pass conversion of a delimited text log (Criteo, Avazu) to Parquet.

* **Two passes, bounded memory.** The file is read with ``pyarrow.csv``'s streaming
  reader in blocks (16 MiB by default). Pass 1 validates every line and counts the
  tokens of every field; pass 2 validates again, encodes and appends row groups to one
  Parquet writer per split. Memory is bounded by the vocabularies plus one block and
  one byte per row (the split labels), never by the file. Per block, each column is
  dictionary-encoded by Arrow, so the Python work is proportional to the block's
  *distinct* values.

* **Memory for the full Criteo file** (45,840,617 lines): the token counts of pass 1
  dominate. Criteo's 26 categorical fields have about 33.8M distinct tokens (the 13
  binned integer fields only a few thousand); at the ~106 bytes per distinct token
  measured for :class:`~torchrec_me.data.vocab.Vocab` (Python 3.11) that is about
  3.6 GB, plus ~46 MB of split labels and a few hundred MB of Arrow blocks and dict
  growth: roughly 4-5 GB peak, well inside 24 GiB. After pass 1 only the kept tokens
  (count >= 10; about 1M for Criteo) stay in memory.

* **Malformed lines** (wrong column count, a label other than 0/1, a value failing a
  column check such as a non-integer in Criteo's I fields) are skipped and counted by
  reason with the first examples (physical line number and text). A line is skipped
  only for such a reason, so a good row is never lost.

* **Wrong input stops at once** with one :class:`~torchrec_me.data.prepare.PrepareError`:
  an empty file, a header or first line of another format, half of the first 1000
  lines malformed, or in the end more than ``max_bad_fraction`` (1%) malformed lines.
"""

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
from tqdm import tqdm

from torchrec_me.data.prepare import (
    DEFAULT_ROW_GROUP_SIZE, SPLIT_FRACTIONS, SPLIT_MODES, SPLITS, VOCAB_FILE, AtomicOutput, FeatureSpec,
    PrepareError, SkipLog, SplitWriter, build_metadata, effective_row_group_size, output_path,
    print_summary, schema_for, split_assignment, write_vocab_file,
)  # fmt: skip
from torchrec_me.data.store import PATH_MANAGER
from torchrec_me.data.vocab import Vocab

DEFAULT_BLOCK_SIZE = 16 << 20
SNIFF_LINES = 1000


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


@dataclass
class Chunk:
    """The valid rows of one block: per raw column its distinct values and each row's code."""

    n: int
    label: np.ndarray  # (n,) int8
    distinct: Dict[str, List[str]]
    codes: Dict[str, np.ndarray]  # column -> (n,) index into distinct[column]


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


def _first_line(path: str, skip_blank: bool) -> str:
    """The first line of the file (with ``skip_blank``, the first non-blank one in its first 64 KiB)."""
    with pa.input_stream(path, compression=_compression(path)) as f:
        lines = f.read(1 << 16).decode("utf-8", errors="replace").splitlines()
    if skip_blank:
        lines = [line for line in lines if line.strip()]
    return lines[0] if lines else ""


def _compression(path: str) -> Optional[str]:
    return {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd", ".lz4": "lz4"}.get(Path(path).suffix)


def _validate(fmt: TextFormat, batch: pa.RecordBatch, needed: Sequence[str]) -> Tuple[Chunk, List[Tuple[str, int]]]:
    """Dictionary-encode the needed columns; return the valid rows and (reason, row) of the rest."""
    n = batch.num_rows
    valid = np.ones(n, dtype=bool)
    bad: List[Tuple[str, int]] = []
    distinct: Dict[str, List[str]] = {}
    codes: Dict[str, np.ndarray] = {}
    for col in needed:
        enc = batch.column(col).dictionary_encode()
        distinct[col] = enc.dictionary.to_pylist()
        codes[col] = enc.indices.to_numpy(zero_copy_only=False)
    labels = distinct[fmt.label]
    label_ok = np.array([v in ("0", "1") for v in labels], dtype=bool)
    label_val = np.array([v == "1" for v in labels], dtype=np.int8)
    label_bad = ~label_ok[codes[fmt.label]]
    if label_bad.any():
        blank = label_bad.copy()  # Arrow parses a blank line as a row of empty strings
        for col in needed:
            empty = distinct[col].index("") if "" in distinct[col] else -1
            blank &= codes[col] == empty
        bad += [("blank line" if blank[i] else f"{fmt.label} not 0/1", int(i)) for i in np.flatnonzero(label_bad)]
    valid &= ~label_bad
    for col, (reason, ok_fn) in fmt.checks.items():
        ok = np.array([ok_fn(v) for v in distinct[col]], dtype=bool)
        col_bad = ~ok[codes[col]] & valid
        bad += [(reason.format(column=col), int(i)) for i in np.flatnonzero(col_bad)]
        valid &= ~col_bad
    bad.sort(key=lambda reason_row: reason_row[1])
    if not valid.all():  # drop the rows, and the distinct values only they had
        for c in needed:
            kept = codes[c][valid]
            used = np.zeros(len(distinct[c]), dtype=bool)
            used[kept] = True
            distinct[c] = [v for v, u in zip(distinct[c], used) if u]
            codes[c] = (np.cumsum(used) - 1)[kept].astype(np.int32)
    return Chunk(int(valid.sum()), label_val[codes[fmt.label]], distinct, codes), bad


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

    Raises:
        PrepareError: when half of the first ``SNIFF_LINES`` lines are malformed (the
            file is not this format at all) or Arrow cannot read it.
    """
    rejected: List[Tuple[int, str]] = []

    def on_invalid(row: Any) -> str:
        rejected.append((row.number, row.text))
        return "skip"

    read_opts = pacsv.ReadOptions(
        column_names=fmt.columns, skip_rows=1 if fmt.header else 0, use_threads=False, block_size=block_size
    )
    parse_opts = pacsv.ParseOptions(
        delimiter=fmt.delimiter, quote_char=False, ignore_empty_lines=False, invalid_row_handler=on_invalid
    )
    convert_opts = pacsv.ConvertOptions(
        column_types={c: pa.string() for c in fmt.columns}, strings_can_be_null=False,
        include_columns=[c for c in fmt.columns if c in _needed(fmt)],
    )  # fmt: skip
    needed = _needed(fmt)
    column_reason = f"wrong column count (expected {len(fmt.columns)})"
    raw = pa.OSFile(path, "rb")
    compression = _compression(path)
    stream = pa.CompressedInputStream(raw, compression) if compression else raw
    file_bytes = max(os.path.getsize(path), 1)
    lines = _LineNumbers(1 if fmt.header else 0)
    bar = tqdm(total=total, desc=desc, unit="rows", unit_scale=True, disable=not progress, file=sys.stderr, mininterval=1.0)
    seen = 0
    sniffed = False

    def take_rejected() -> int:
        for number, text in rejected:
            lines.pending.append(number)
            skips.add(column_reason, number, text)
        n = len(rejected)
        rejected.clear()
        return n

    def sniff(final: bool) -> None:
        nonlocal sniffed
        if sniffed or not seen or (seen < SNIFF_LINES and not final):
            return
        sniffed = True
        if skips.total * 2 >= seen:
            raise PrepareError(
                f"{path} does not look like {fmt.name} data: {skips.total} of the first {seen} lines are malformed; "
                + skips.describe()
            )

    try:
        reader = pacsv.open_csv(stream, read_options=read_opts, parse_options=parse_opts, convert_options=convert_opts)
        for batch in reader:
            n_rejected = take_rejected()
            chunk, bad = _validate(fmt, batch, needed)
            for reason, i in bad:
                if skips.wants_example(reason):  # describing a line costs; only examples need it
                    text = fmt.delimiter.join(str(batch.column(c)[i].as_py()) for c in needed)
                    skips.add(reason, lines.line_of(i), text)
                else:
                    skips.add(reason)
            lines.advance(batch.num_rows)
            seen += batch.num_rows + n_rejected
            bar.update(batch.num_rows + n_rejected)
            if total is None and progress and raw.tell() > 0:
                bar.total = max(int(bar.n * file_bytes / raw.tell()), bar.n)
            sniff(final=False)
            yield chunk
        seen += take_rejected()
        sniff(final=True)
    except pa.ArrowInvalid as e:
        raise PrepareError(f"cannot read {path} as {fmt.name}: {str(e).splitlines()[0]}") from None
    finally:
        bar.close()
        raw.close()


def _needed(fmt: TextFormat) -> List[str]:
    """The raw columns that are checked or feed a feature, label first."""
    used = set(fmt.checks) | {f.source or f.name for f in fmt.features}
    return [fmt.label] + [c for c in fmt.columns if c in used and c != fmt.label]


def _tokens(fmt: TextFormat, feat: FeatureSpec, distinct: List[str]) -> List[str]:
    fn = fmt.token_fns.get(feat.name)
    return distinct if fn is None else [fn(v) for v in distinct]


def _check_input(fmt: TextFormat, input_path: str) -> str:
    """The local path of ``input_path``, after the checks that need no full read."""
    path = PATH_MANAGER.get_local_path(input_path)
    if not os.path.exists(path):
        raise PrepareError(f"input {input_path} does not exist")
    if os.path.isdir(path):
        raise PrepareError(f"input {input_path} is a directory; pass the {fmt.name} file itself")
    first = _first_line(path, skip_blank=fmt.header is None) if os.path.getsize(path) else ""
    if not first.strip():
        raise PrepareError(f"input {input_path} is empty; expected {fmt.name} data")
    if fmt.header is not None:
        got = first.lstrip("\ufeff").rstrip("\r").split(fmt.delimiter)
        if got != fmt.header:
            raise PrepareError(
                f"input {input_path} is not {fmt.name} data: its first line is {first[:120]!r}, expected the header "
                f"{fmt.delimiter.join(fmt.header)!r}"
            )
    if fmt.check_first_line is not None:
        fmt.check_first_line(first)
    return path


def prepare_text(
    fmt: TextFormat,
    input_path: str,
    output: str,
    *,
    split: str = "random",
    seed: int = 0,
    row_group_size: int = DEFAULT_ROW_GROUP_SIZE,
    overwrite: bool = False,
    progress: bool = True,
    max_bad_fraction: float = 0.01,
    block_size: int = DEFAULT_BLOCK_SIZE,
    summary: bool = True,
) -> Dict[str, Any]:
    """Convert the text file ``input_path`` (path or URI) to a dataset at ``output``; return its metadata.

    Raises:
        PrepareError: bad options, missing or empty input, input of another format,
            more than ``max_bad_fraction`` malformed lines, or an existing ``output``
            without ``overwrite``.
    """
    started = time.perf_counter()
    if split not in SPLIT_MODES:
        raise PrepareError(f"unknown split mode {split!r}; choose one of {', '.join(SPLIT_MODES)}")
    path = _check_input(fmt, input_path)
    output_path(output, overwrite)  # refuse an existing output now rather than after pass 1

    sparse = [f for f in fmt.features if f.kind == "sparse"]
    dense = [f for f in fmt.features if f.kind == "dense"]
    vocabs = {f.name: Vocab(f.name) for f in sparse}
    skips = SkipLog()
    n_good = 0
    for chunk in scan_text(fmt, path, skips, "pass 1/2 count", progress=progress, block_size=block_size):
        for f in sparse:
            col = f.source or f.name
            counts = np.bincount(chunk.codes[col], minlength=len(chunk.distinct[col]))
            nz = np.flatnonzero(counts)
            toks = _tokens(fmt, f, chunk.distinct[col])
            vocabs[f.name].add_counts([toks[i] for i in nz], counts[nz].tolist())
        n_good += chunk.n
    n_lines = n_good + skips.total
    if n_good == 0:
        raise PrepareError(f"input {input_path} has no valid {fmt.name} rows; " + skips.describe())
    if skips.total > max_bad_fraction * n_lines:
        raise PrepareError(
            f"input {input_path} does not look like {fmt.name} data: {skips.total:,} of {n_lines:,} lines "
            f"({skips.total / n_lines:.1%}) are malformed, more than the {max_bad_fraction:.0%} allowed; "
            + skips.describe()
        )
    for v in vocabs.values():
        v.finalize(fmt.min_count)
    assign = split_assignment(n_good, split, seed)
    rg = effective_row_group_size(row_group_size, n_good)
    schema = schema_for(fmt.features)

    with AtomicOutput(output, overwrite) as out:
        writers = {s: SplitWriter(out.tmp / f"{s}.parquet", schema, rg) for s in SPLITS}
        pos = 0
        for chunk in scan_text(fmt, path, SkipLog(), "pass 2/2 encode", total=n_lines, progress=progress, block_size=block_size):
            cols: Dict[str, np.ndarray] = {"label": chunk.label}
            for f in dense:
                col = f.source or f.name
                values = np.array([fmt.value_fns[f.name](v) for v in chunk.distinct[col]], dtype=np.float32)
                cols[f.name] = values[chunk.codes[col]]
            for f in sparse:
                col = f.source or f.name
                cols[f.name] = vocabs[f.name].lookup(_tokens(fmt, f, chunk.distinct[col]))[chunk.codes[col]]
            part = assign[pos : pos + chunk.n]
            pos += chunk.n
            if len(part) != chunk.n:
                raise PrepareError(f"input {input_path} changed between the two passes")
            for s_idx, s in enumerate(SPLITS):
                mask = part == s_idx
                if mask.any():
                    writers[s].write(pa.table({name: pa.array(v[mask]) for name, v in cols.items()}, schema=schema))
        if pos != n_good:
            raise PrepareError(f"input {input_path} changed between the two passes ({pos:,} vs {n_good:,} valid rows)")
        for w in writers.values():
            w.close()
        write_vocab_file(out.tmp / VOCAB_FILE, [vocabs[f.name] for f in sparse])
        params = {
            **fmt.params, "min_count": fmt.min_count, "split": split, "split_fractions": list(SPLIT_FRACTIONS),
            "split_seed": seed, "row_group_size": rg, "max_bad_fraction": max_bad_fraction,
        }  # fmt: skip
        source = {"path": os.path.abspath(path), "bytes": os.path.getsize(path)}
        meta = build_metadata(fmt.name, fmt.features, vocabs, writers, params, skips, source)
        final = out.commit(meta)
    if summary:
        print_summary(meta, final, time.perf_counter() - started)
    return meta
