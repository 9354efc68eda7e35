"""Two-pass conversion of a delimited text log (Criteo, Avazu) to a prepared dataset.

* **Two passes, bounded memory.** Pass 1 scans the file (see :mod:`.scan`), validates
  every line and counts the tokens of every field; pass 2 scans it again, encodes and
  appends row groups to one Parquet writer per split. Memory is bounded by the
  vocabularies plus one block and one byte per row (the split labels), never by the
  file.

* **What dominates memory** is pass 1's token counts: one dict entry per distinct token
  of every field (:class:`~torchrec_me.data.prepare.vocab.Vocab`), so a log with tens
  of millions of distinct categorical values needs gigabytes there. After pass 1 only
  the kept tokens (count >= ``min_count``) stay in memory.

* **Too many malformed lines** (more than ``max_bad_fraction`` of the input, 1% by
  default) stop the conversion after pass 1 with one
  :class:`~torchrec_me.data.prepare.common.PrepareError`, before anything is written.
"""

import os
import time
from typing import Any, Dict, Iterator, Optional, Tuple

import numpy as np
import pyarrow as pa

from torchrec_me.data.prepare.common import (
    DEFAULT_ROW_GROUP_SIZE, SPLIT_FRACTIONS, PrepareError, PrepareOptions, SkipLog, check_skipped,
    effective_row_group_size, split_assignment,
)  # fmt: skip
from torchrec_me.data.prepare.destination import output_path
from torchrec_me.data.prepare.output import DatasetWriter, print_summary
from torchrec_me.data.prepare.scan import Chunk, TextFormat, check_input, scan_text
from torchrec_me.data.prepare.vocab import Vocab
from torchrec_me.data.store import SPLITS

Vocabs = Dict[str, Vocab]


class _TwoPass:
    """The two scans of one text file, with what they share: format, file and options.

    Args:
        fmt (TextFormat): the format of the file.
        input_path (str): the file as the user named it (path or URI), for messages.
        options (PrepareOptions): split, progress and block size.
    """

    def __init__(self, fmt: TextFormat, input_path: str, options: PrepareOptions) -> None:
        self.fmt = fmt
        self.input_path = input_path
        self.options = options
        self.path = check_input(fmt, input_path)
        self.sparse = [f for f in fmt.features if f.kind == "sparse"]
        self.dense = [f for f in fmt.features if f.kind == "dense"]

    def _scan(self, desc: str, skips: SkipLog, total: Optional[int] = None) -> Iterator[Chunk]:
        o = self.options
        return scan_text(self.fmt, self.path, skips, desc, total=total, progress=o.progress, block_size=o.block_size)

    def count(self, skips: SkipLog) -> Tuple[Vocabs, int]:
        """Pass 1: the token counts of every sparse feature, and the number of valid rows."""
        vocabs = {f.name: Vocab(f.name) for f in self.sparse}
        n_good = 0
        for chunk in self._scan("pass 1/2 count", skips):
            for f in self.sparse:
                col = f.source or f.name
                counts = np.bincount(chunk.codes[col], minlength=len(chunk.distinct[col]))
                nz = np.flatnonzero(counts)
                toks = self.fmt.tokens(f, chunk.distinct[col])
                vocabs[f.name].add_counts([toks[i] for i in nz], counts[nz].tolist())
            n_good += chunk.n
        return vocabs, n_good

    def _encode(self, chunk: Chunk, vocabs: Vocabs) -> Dict[str, np.ndarray]:
        """The output columns of a chunk: label, dense values, then sparse ids."""
        cols: Dict[str, np.ndarray] = {"label": chunk.label}
        for f in self.dense:
            col = f.source or f.name
            values = np.array([self.fmt.value_fns[f.name](v) for v in chunk.distinct[col]], dtype=np.float32)
            cols[f.name] = values[chunk.codes[col]]
        for f in self.sparse:
            col = f.source or f.name
            cols[f.name] = vocabs[f.name].lookup(self.fmt.tokens(f, chunk.distinct[col]))[chunk.codes[col]]
        return cols

    def encode(self, vocabs: Vocabs, assign: np.ndarray, n_lines: int, out: DatasetWriter) -> None:
        """Pass 2: encode every valid row and append it to the split ``assign`` gives it.

        Raises:
            PrepareError: the file's valid rows differ from pass 1's count.
        """
        pos = 0
        for chunk in self._scan("pass 2/2 encode", SkipLog(), total=n_lines):
            part = assign[pos : pos + chunk.n]
            pos += chunk.n
            if len(part) != chunk.n:
                raise PrepareError(f"input {self.input_path} changed between the two passes")
            cols = self._encode(chunk, vocabs)
            for s_idx, s in enumerate(SPLITS):
                mask = part == s_idx
                if mask.any():
                    out.write(s, pa.table({name: pa.array(v[mask]) for name, v in cols.items()}, schema=out.schema))
        if pos != len(assign):
            raise PrepareError(
                f"input {self.input_path} changed between the two passes ({pos:,} vs {len(assign):,} valid rows)"
            )

    def preprocessing(self) -> Dict[str, Any]:
        """The parameters recorded in the metadata, so that a dataset says how it was made."""
        o = self.options
        return {
            **self.fmt.params, "min_count": self.fmt.min_count, "split": o.split,
            "split_fractions": list(SPLIT_FRACTIONS), "split_seed": o.seed, "max_bad_fraction": o.max_bad_fraction,
        }  # fmt: skip

    def source(self) -> Dict[str, Any]:
        """Where the data came from, as recorded in the metadata."""
        return {"path": os.path.abspath(self.path), "bytes": os.path.getsize(self.path)}


def prepare_text(
    fmt: TextFormat, input_path: str, output: str, options: Optional[PrepareOptions] = None
) -> Dict[str, Any]:
    """Convert the text file ``input_path`` to a dataset at ``output``; return its metadata.

    Args:
        fmt (TextFormat): the format of the file (e.g. ``criteo_format()``).
        input_path (str): the file (path or URI; ``.gz``, ``.bz2``, ``.zst``, ``.lz4``
            are decompressed on the fly).
        output (str): the dataset directory to create.
        options (Optional[PrepareOptions]): split, row groups, overwrite, ...; defaults
            when None.

    Raises:
        PrepareError: missing or empty input, input of another format, more than
            ``max_bad_fraction`` malformed lines, or an existing ``output`` without
            ``overwrite``.
    """
    options = options or PrepareOptions()
    started = time.perf_counter()
    passes = _TwoPass(fmt, input_path, options)
    output_path(output, options.overwrite, inputs=[input_path])  # refuse a wrong output before pass 1
    skips = SkipLog()
    vocabs, n_good = passes.count(skips)
    check_skipped(input_path, fmt.name, n_good, skips, options.max_bad_fraction)
    for v in vocabs.values():
        v.finalize(fmt.min_count)
    assign = split_assignment(n_good, options.split, options.seed)
    rg = effective_row_group_size(options.row_groups(DEFAULT_ROW_GROUP_SIZE), n_good)
    with DatasetWriter(output, fmt.features, rg, options.overwrite) as out:
        passes.encode(vocabs, assign, n_good + skips.total, out)
        final, meta = out.commit(fmt.name, vocabs, passes.preprocessing(), skips, passes.source())
    if options.summary:
        print_summary(meta, final, time.perf_counter() - started)
    return meta
