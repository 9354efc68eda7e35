"""What every ``torchrec-me prepare`` converter shares: vocabularies, splits, atomic output.

The converters (:mod:`.criteo` and :mod:`.avazu` through the streaming text scanner
of :mod:`.text`, and :mod:`.movielens`) describe their formats; this module writes
the result.

* **Output layout.** A prepared dataset is a directory::

      metadata.json       fields, vocab sizes, row counts, preprocessing parameters
      train.parquet       one file per split, in row groups of ``row_group_size`` rows
      val.parquet
      test.parquet
      vocab.parquet       (field, token, id, count) of every kept token

  Each split file has ``label`` (int8), one float32 column per dense feature, one
  int32 id column per single-valued sparse feature and one ``list<int32>`` column per
  multi-hot (bag) feature. The kept tokens of a field (seen at least ``min_count``
  times) get ids ``0 .. vocab_size - 2``, most frequent first, and every rarer token
  maps to ``oov_id = vocab_size - 1``, as in the multi-embedding paper's reference code
  (whose out-of-vocabulary id is also the last one). Tokens are counted over the whole
  input, all splits, as the reference does.

* **Splits.** ``random`` (the default, the paper's protocol): exactly ``int(0.8 n)``
  train, ``int(0.1 n)`` validation and the rest test rows; row ``i`` (its index among
  the valid rows) goes to the split drawn for it by a seeded shuffle of the ``n``
  split labels (one byte per row; the data itself is not shuffled, so each split
  keeps file order). ``time``: the first 80% of the valid rows are train, the next 10%
  validation and the last 10% test (Criteo's and Avazu's files are in time order).

* **Atomic output.** Everything is written into a hidden temporary directory next to
  the output (``.NAME.incomplete-XXXX``), ``metadata.json`` last, and the directory is
  renamed to the output at the end. An exception removes the temporary directory; a
  killed process can leave it behind, but it has no ``metadata.json`` and the reader
  refuses it. ``overwrite`` swaps a previous dataset out only once the new one is
  complete.
"""

import collections
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from torchrec_me.data.store import FORMAT_NAME, METADATA_FILE, DatasetError, strip_file_uri
from torchrec_me.data.vocab import Vocab

SPLITS: Tuple[str, ...] = ("train", "val", "test")
SPLIT_FRACTIONS: Tuple[float, float, float] = (0.8, 0.1, 0.1)
SPLIT_MODES: Tuple[str, ...] = ("random", "time")
VOCAB_FILE = "vocab.parquet"
FORMAT_VERSION = 1
DEFAULT_ROW_GROUP_SIZE = 16384
# The reader gives each rank whole row groups: a train split of fewer groups than this
# gets smaller groups, so that small datasets still train on several ranks.
MIN_TRAIN_ROW_GROUPS = 16
MAX_EXAMPLES = 3


class PrepareError(DatasetError):
    """The input cannot be prepared (wrong format, empty, too many bad lines, ...).

    The message is a single line meant for the user; the CLI prints it and exits 1.
    """


def split_sizes(n: int) -> Tuple[int, int, int]:
    """``(train, val, test)`` row counts of ``n`` rows: ``int(0.8 n)``, ``int(0.1 n)``, the rest."""
    n_train = int(n * SPLIT_FRACTIONS[0])
    n_val = int(n * SPLIT_FRACTIONS[1])
    return n_train, n_val, n - n_train - n_val


def split_assignment(n: int, mode: str = "random", seed: int = 0) -> np.ndarray:
    """(n,) uint8 split index (0 train, 1 val, 2 test) of each row.

    ``random``: a seeded shuffle of exactly :func:`split_sizes` labels, so row ``i``'s
    split depends only on ``(seed, n, i)``. ``time``: contiguous 80/10/10 in row order.
    """
    if mode not in SPLIT_MODES:
        raise PrepareError(f"unknown split mode {mode!r}; choose one of {', '.join(SPLIT_MODES)}")
    labels = np.repeat(np.arange(3, dtype=np.uint8), split_sizes(n))
    if mode == "random":
        np.random.default_rng(np.random.SeedSequence([int(seed), 0x5E117])).shuffle(labels)
    return labels


def effective_row_group_size(requested: int, n_rows: int) -> int:
    """``requested``, made smaller when the train split would have < MIN_TRAIN_ROW_GROUPS groups."""
    if requested < 1:
        raise PrepareError(f"row group size must be >= 1, got {requested}")
    n_train = split_sizes(n_rows)[0]
    return max(1, min(requested, math.ceil(n_train / MIN_TRAIN_ROW_GROUPS)))


class SkipLog:
    """Counts of skipped input lines per reason, with the first few examples of each."""

    def __init__(self) -> None:
        self.counts: "collections.Counter[str]" = collections.Counter()
        self.examples: Dict[str, List[str]] = {}

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def wants_example(self, reason: str) -> bool:
        """Whether the next line skipped for ``reason`` becomes an example (worth describing)."""
        return len(self.examples.get(reason, ())) < MAX_EXAMPLES

    def add(self, reason: str, line: Optional[int] = None, text: Optional[str] = None) -> None:
        """Count one skipped line; keep it as an example when ``text`` is given and one is wanted."""
        self.counts[reason] += 1
        if text is not None and self.wants_example(reason):
            shown = text if len(text) <= 100 else text[:97] + "..."
            self.examples.setdefault(reason, []).append(f"line {line if line is not None else '?'}: {shown!r}")

    def describe(self) -> str:
        """One line: ``N lines skipped: 3 wrong column count (e.g. line 7: '...'), ...``."""
        if not self.counts:
            return "no lines skipped"
        parts = [f"{n} {reason} (e.g. {'; '.join(self.examples.get(reason, []))})" for reason, n in self.counts.most_common()]
        return f"{self.total} lines skipped: " + ", ".join(parts)

    def to_json(self) -> Dict[str, Any]:
        return {"total": self.total, "by_reason": dict(self.counts), "examples": self.examples}


@dataclass
class FeatureSpec:
    """One output column.

    Args:
        name (str): column and feature name.
        kind (str): ``sparse`` (one id per row), ``bag`` (a list of ids) or ``dense`` (a float).
        source (Optional[str]): the raw column it is derived from (default: ``name``).
        encoding (str): how a raw value becomes a token or value, recorded in the metadata.
    """

    name: str
    kind: str = "sparse"
    source: Optional[str] = None
    encoding: str = "token"


def schema_for(features: Sequence[FeatureSpec]) -> pa.Schema:
    """``label`` (int8), then dense float32, sparse int32 and bag list<int32> columns."""
    fields = [pa.field("label", pa.int8(), nullable=False)]
    types = {"dense": pa.float32(), "sparse": pa.int32(), "bag": pa.list_(pa.int32())}
    for kind in ("dense", "sparse", "bag"):
        fields += [pa.field(f.name, types[kind], nullable=False) for f in features if f.kind == kind]
    return pa.schema(fields)


class SplitWriter:
    """Appends rows to one Parquet file in row groups of exactly ``row_group_size`` rows
    (the last one excepted)."""

    def __init__(self, path: Path, schema: pa.Schema, row_group_size: int, compression: str = "zstd") -> None:
        self.path = path
        self.row_group_size = row_group_size
        self._writer = pq.ParquetWriter(str(path), schema, compression=compression)
        self._pending: List[pa.Table] = []
        self._pending_rows = 0
        self.rows = 0
        self.positives = 0

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        self._pending.append(table)
        self._pending_rows += table.num_rows
        if self._pending_rows >= self.row_group_size:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        if not self._pending:
            return
        table = pa.concat_tables(self._pending)
        n = table.num_rows if final else (table.num_rows // self.row_group_size) * self.row_group_size
        if n:
            head = table.slice(0, n)
            self._writer.write_table(head, row_group_size=self.row_group_size)
            self.rows += n
            self.positives += int(np.asarray(head.column("label").to_numpy(), dtype=np.int64).sum())
        rest = table.slice(n)
        self._pending = [rest] if rest.num_rows else []
        self._pending_rows = rest.num_rows

    def close(self) -> None:
        self._flush(final=True)
        self._writer.close()


class AtomicOutput:
    """A temporary directory next to ``output`` that becomes ``output`` on :meth:`commit`.

    Leaving the context by an exception (``KeyboardInterrupt`` included) removes the
    temporary directory, so no half-written dataset remains.

    Args:
        output (str): the dataset directory to create (a local path or ``file://`` URI).
        overwrite (bool): replace an existing ``output`` once the new one is complete.
    """

    def __init__(self, output: str, overwrite: bool = False) -> None:
        self.final = output_path(output, overwrite)
        self.overwrite = overwrite
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.final.name}.incomplete-", dir=self.final.parent))
        self.committed = False

    def __enter__(self) -> "AtomicOutput":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if not self.committed:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def commit(self, metadata: Optional[Mapping[str, Any]]) -> Path:
        """Write ``metadata.json`` (the completeness marker) last, then rename into place.

        ``metadata=None`` (raw files, as ``fetch`` writes them) only renames.
        """
        if metadata is not None:
            part = self.tmp / (METADATA_FILE + ".part")
            with open(part, "w") as f:
                json.dump(metadata, f, indent=1)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(part, self.tmp / METADATA_FILE)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.tmp, 0o777 & ~umask)  # mkdtemp made it private
        old: Optional[Path] = None
        if self.final.exists():
            if not self.overwrite:
                raise PrepareError(f"output {self.final} appeared while preparing; not replacing it")
            old = self.final.with_name(f".{self.final.name}.old-{os.getpid()}")
            os.rename(self.final, old)
        os.rename(self.tmp, self.final)
        self.committed = True
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.final


def output_path(output: str, overwrite: bool) -> Path:
    """The local directory ``output`` names; refuses an existing one without ``overwrite``."""
    path = Path(strip_file_uri(os.fspath(output))).expanduser().absolute()
    if path.exists() and not overwrite:
        raise PrepareError(f"output {path} already exists; pass --overwrite to replace it")
    return path


def write_vocab_file(path: Path, vocabs: Sequence[Vocab]) -> None:
    names: List[str] = []
    tokens: List[str] = []
    ids: List[int] = []
    counts: List[int] = []
    for v in vocabs:
        names += [v.name] * len(v.tokens)
        tokens += v.tokens
        ids += range(len(v.tokens))
        counts += v.token_counts
    table = pa.table(
        {
            "field": pa.array(names, pa.string()),
            "token": pa.array(tokens, pa.string()),
            "id": pa.array(ids, pa.int32()),
            "count": pa.array(counts, pa.int64()),
        }
    )
    pq.write_table(table, str(path), compression="zstd")


def build_metadata(
    dataset: str,
    features: Sequence[FeatureSpec],
    vocabs: Mapping[str, Vocab],
    writers: Mapping[str, SplitWriter],
    preprocessing: Mapping[str, Any],
    skips: SkipLog,
    source: Mapping[str, Any],
) -> Dict[str, Any]:
    """The ``metadata.json`` payload (read back by :func:`torchrec_me.data.store.load_metadata`)."""
    sparse = [
        {
            "name": f.name,
            "vocab_size": vocabs[f.name].size,
            "oov_id": vocabs[f.name].oov_id,
            "multi_hot": f.kind == "bag",
            "source": f.source or f.name,
            "encoding": f.encoding,
            "oov_occurrences": vocabs[f.name].oov_count,
        }
        for f in features
        if f.kind != "dense"
    ]
    splits = {
        s: {"file": f"{s}.parquet", "rows": w.rows, "positive_rate": (w.positives / w.rows) if w.rows else None}
        for s, w in writers.items()
    }
    kept = sum(w.rows for w in writers.values())
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "dataset": dataset,
        "label": "label",
        "dense_features": [f.name for f in features if f.kind == "dense"],
        "sparse_features": sparse,
        "splits": splits,
        "rows": {"input": kept + skips.total, "kept": kept, "skipped": skips.total},
        "skipped": skips.to_json(),
        "preprocessing": dict(preprocessing),
        "source": dict(source),
        "vocab_file": VOCAB_FILE,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def print_summary(meta: Mapping[str, Any], path: Path, seconds: float, out: Any = None) -> None:
    """Rows per split, vocab sizes and the skipped lines by reason, with examples."""
    out = out or sys.stdout
    rows = meta["rows"]
    sizes = ", ".join(f"{s} {meta['splits'][s]['rows']:,}" for s in SPLITS)
    vocab = ", ".join(f"{f['name']}={f['vocab_size']:,}" for f in meta["sparse_features"])
    print(f"prepared {meta['dataset']} -> {path} in {seconds:.1f}s", file=out)
    print(f"  rows: {rows['kept']:,} kept of {rows['input']:,} ({sizes})", file=out)
    print(f"  features: {len(meta['dense_features'])} dense, {len(meta['sparse_features'])} sparse; vocab sizes: {vocab}", file=out)
    skipped = meta["skipped"]
    print(f"  skipped {skipped['total']:,} malformed lines" + (":" if skipped["total"] else ""), file=out)
    for reason, n in sorted(skipped["by_reason"].items(), key=lambda kv: -kv[1]):
        print(f"    {n:,} {reason}; e.g. {' | '.join(skipped['examples'].get(reason, []))}", file=out)


def write_tables(
    output: str,
    dataset: str,
    features: Sequence[FeatureSpec],
    vocabs: Mapping[str, Vocab],
    splits: Mapping[str, pa.Table],
    preprocessing: Mapping[str, Any],
    source: Optional[Mapping[str, Any]] = None,
    skips: Optional[SkipLog] = None,
    row_group_size: int = DEFAULT_ROW_GROUP_SIZE,
    overwrite: bool = False,
) -> Tuple[Path, Dict[str, Any]]:
    """Write in-memory split tables (columns as :func:`schema_for`) as a prepared dataset.

    For inputs that fit in memory (MovieLens) and for tests. ``vocabs`` holds a
    finalized :class:`Vocab` per sparse or bag feature; a missing split is written empty.
    """
    schema = schema_for(features)
    n_rows = sum(t.num_rows for t in splits.values())
    rg = effective_row_group_size(row_group_size, n_rows)
    with AtomicOutput(output, overwrite) as out:
        writers = {s: SplitWriter(out.tmp / f"{s}.parquet", schema, rg) for s in SPLITS}
        for s in SPLITS:
            if s in splits:
                writers[s].write(splits[s].select(schema.names).cast(schema))
            writers[s].close()
        write_vocab_file(out.tmp / VOCAB_FILE, [vocabs[f.name] for f in features if f.kind != "dense"])
        params = {**preprocessing, "row_group_size": rg}
        meta = build_metadata(dataset, features, vocabs, writers, params, skips or SkipLog(), source or {})
        path = out.commit(meta)
    return path, meta
