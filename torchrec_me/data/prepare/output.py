"""How a converter writes a prepared dataset: Parquet splits, vocabulary, metadata, atomically.

* **Output layout.** A prepared dataset is a directory::

      metadata.json       fields, vocab sizes, row counts, preprocessing parameters and the
                          vocab_fingerprint (see torchrec_me.data.store.vocab_fingerprint)
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
  input, all splits, as the reference does. A split that comes out empty is written,
  with a warning: the reader refuses such a dataset.

* **Atomic output.** Everything is written into a hidden temporary directory next to
  the output, ``metadata.json`` last, and renamed to the output at the end; what may be
  replaced, and what an interrupted run leaves, is :mod:`.destination`'s business.
"""

import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from torchrec_me.data.prepare.common import DEFAULT_ROW_GROUP_SIZE, FeatureSpec, SkipLog, effective_row_group_size
from torchrec_me.data.prepare.destination import AtomicOutput
from torchrec_me.data.prepare.vocab import Vocab
from torchrec_me.data.store import FINGERPRINT_KEY, FORMAT_NAME, FORMAT_VERSION, SPLITS, VOCAB_FILE, vocab_fingerprint


def schema_for(features: Sequence[FeatureSpec]) -> pa.Schema:
    """``label`` (int8), then dense float32, sparse int32 and bag list<int32> columns."""
    fields = [pa.field("label", pa.int8(), nullable=False)]
    types = {"dense": pa.float32(), "sparse": pa.int32(), "bag": pa.list_(pa.int32())}
    for kind in ("dense", "sparse", "bag"):
        fields += [pa.field(f.name, types[kind], nullable=False) for f in features if f.kind == kind]
    return pa.schema(fields)


class SplitWriter:
    """Appends rows to one Parquet file in row groups of exactly ``row_group_size`` rows
    (the last one excepted), so that the reader can deal whole row groups to ranks."""

    def __init__(self, path: Path, schema: pa.Schema, row_group_size: int, compression: str = "zstd") -> None:
        self.path = path
        self.row_group_size = row_group_size
        self._writer = pq.ParquetWriter(str(path), schema, compression=compression)
        self._pending: List[pa.Table] = []
        self._pending_rows = 0
        self.rows = 0
        self.positives = 0

    def write(self, table: pa.Table) -> None:
        """Append ``table``; full row groups are written, the rest waits for more rows."""
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
        """Write the last, smaller row group and the file's footer."""
        self._flush(final=True)
        self._writer.close()


def write_vocab_file(path: Path, vocabs: Sequence[Vocab]) -> None:
    """``(field, token, id, count)`` of every kept token, so that ids can be mapped back."""
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


def _sparse_metadata(features: Sequence[FeatureSpec], vocabs: Mapping[str, Vocab]) -> List[Dict[str, Any]]:
    """One ``sparse_features`` entry per sparse or bag feature: table size, OOV id, origin."""
    return [
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
        "sparse_features": _sparse_metadata(features, vocabs),
        "splits": splits,
        "rows": {"input": kept + skips.total, "kept": kept, "skipped": skips.total},
        "skipped": skips.to_json(),
        "preprocessing": dict(preprocessing),
        "source": dict(source),
        "vocab_file": VOCAB_FILE,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


class DatasetWriter:
    """One prepared dataset being written: a :class:`SplitWriter` per split in an
    :class:`AtomicOutput`, then the vocabulary and ``metadata.json`` on :meth:`commit`.

    Both the streaming converter and the in-memory one write through it, so the layout
    in the module docstring has one author.

    Args:
        output (str): the dataset directory to create (a local path or ``file://`` URI).
        features (Sequence[FeatureSpec]): the output columns, as :func:`schema_for`.
        row_group_size (int): rows per row group (already made effective).
        overwrite (bool): replace an existing ``output`` once the new one is complete.
    """

    def __init__(self, output: str, features: Sequence[FeatureSpec], row_group_size: int, overwrite: bool) -> None:
        self.features = list(features)
        self.schema = schema_for(features)
        self.row_group_size = row_group_size
        self.out = AtomicOutput(output, overwrite)
        try:
            self.writers = {s: SplitWriter(self.out.tmp / f"{s}.parquet", self.schema, row_group_size) for s in SPLITS}
        except BaseException:
            self.out.__exit__(None, None, None)  # not inside a `with` yet: remove the temporary directory here
            raise

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.out.__exit__(exc_type, exc, tb)

    def write(self, split: str, table: pa.Table) -> None:
        """Append ``table`` (columns of :attr:`schema`) to ``split``."""
        self.writers[split].write(table)

    def commit(
        self,
        dataset: str,
        vocabs: Mapping[str, Vocab],
        preprocessing: Mapping[str, Any],
        skips: SkipLog,
        source: Mapping[str, Any],
    ) -> Tuple[Path, Dict[str, Any]]:
        """Close the splits, write the vocabulary and the metadata, and move the dataset into place."""
        for w in self.writers.values():
            w.close()
        sparse = [f for f in self.features if f.kind != "dense"]
        write_vocab_file(self.out.tmp / VOCAB_FILE, [vocabs[f.name] for f in sparse])
        params = {**preprocessing, "row_group_size": self.row_group_size}
        meta = build_metadata(dataset, self.features, vocabs, self.writers, params, skips, source)
        meta[FINGERPRINT_KEY] = vocab_fingerprint(str(self.out.tmp / VOCAB_FILE), meta["sparse_features"])
        path = self.out.commit(meta)
        warn_empty_splits(meta, path)
        return path, meta


def warn_empty_splits(meta: Mapping[str, Any], path: Path) -> None:
    """One warning line on stderr when a split has no rows: training refuses such a dataset."""
    empty = [s for s in SPLITS if not meta["splits"][s]["rows"]]
    if empty:
        print(
            f"torchrec-me: warning: the {' and '.join(empty)} split{'s are' if len(empty) > 1 else ' is'} empty "
            f"({meta['rows']['kept']:,} rows kept in all); training refuses {path} until it is prepared from more data",
            file=sys.stderr,
        )


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
    rg = effective_row_group_size(row_group_size, sum(t.num_rows for t in splits.values()))
    with DatasetWriter(output, features, rg, overwrite) as out:
        for s in SPLITS:
            if s in splits:
                out.write(s, splits[s].select(out.schema.names).cast(out.schema))
        return out.commit(dataset, vocabs, preprocessing, skips or SkipLog(), source or {})
