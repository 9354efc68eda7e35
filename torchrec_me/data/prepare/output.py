"""How a converter writes a prepared dataset: Parquet splits, vocabulary, metadata, atomically.

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

* **Atomic output.** Everything is written into a hidden temporary directory next to
  the output (``.NAME.incomplete-XXXX``, see :class:`torchrec_me.atomic.AtomicDir`),
  ``metadata.json`` last, and the directory is renamed to the output at the end. An
  exception removes the temporary directory. A killed process can leave it behind (the
  reader refuses it: it is not the output); the next run for the same output removes
  such leftovers and says so (:func:`remove_incomplete`). A running writer holds a
  ``flock`` on its temporary directory, so a concurrent run never takes it for a leftover.

* **What ``overwrite`` may replace.** Only a prepared dataset: a directory holding a
  ``metadata.json`` of a ``torchrec_me.*`` format and otherwise only Parquet files (or
  an empty directory), swapped out once the new one is complete. Anything else (a file,
  a directory of raw data or notes, the input itself or a directory holding it) is
  refused with an error naming the path, before any work (:func:`output_path`), and
  checked again just before the swap.
"""

import fcntl
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from torchrec_me.atomic import AtomicDir, write_text_atomic
from torchrec_me.data.prepare.common import (
    DEFAULT_ROW_GROUP_SIZE, FeatureSpec, PrepareError, SkipLog, effective_row_group_size,
)  # fmt: skip
from torchrec_me.data.prepare.vocab import Vocab
from torchrec_me.data.store import (
    FINGERPRINT_KEY, FORMAT_NAME, FORMAT_VERSION, METADATA_FILE, SPLITS, VOCAB_FILE, strip_file_uri,
    vocab_fingerprint,
)  # fmt: skip

OUR_FORMATS = "torchrec_me."  # the prefix of every format name torchrec_me writes into metadata.json
Replaceable = Callable[[Path], Optional[str]]  # why an existing output may not be replaced, or None


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


def short_list(names: Sequence[str], limit: int = 3) -> str:
    """``a, b, c and 4 more``: a few names for a one-line message."""
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def dataset_reason(path: Path) -> Optional[str]:
    """None if ``overwrite`` may replace the existing ``path`` (see the module docstring), else why not."""
    if path.is_symlink() or not path.is_dir():
        return "it is a file, not a dataset directory" if path.is_file() else "it is not a dataset directory"
    names = sorted(os.listdir(path))
    if not names:
        return None
    try:
        fmt = json.loads((path / METADATA_FILE).read_text()).get("format")
    except (OSError, ValueError, AttributeError):
        fmt = None
    if not (isinstance(fmt, str) and fmt.startswith(OUR_FORMATS)):
        return f"it is not a dataset written by `torchrec-me prepare` (no {METADATA_FILE} of a {OUR_FORMATS}* format)"
    foreign = [n for n in names if n != METADATA_FILE and not (n.endswith(".parquet") and (path / n).is_file())]
    if foreign:
        return f"besides a prepared dataset it holds {short_list(foreign)}, which `torchrec-me prepare` did not write"
    return None


def _check_creatable(path: Path) -> None:
    """Refuse ``path`` at once when its directory cannot be created (a file in the way, no write permission)."""
    parent = path.parent
    while not os.path.lexists(parent):
        parent = parent.parent
    if not parent.is_dir():
        raise PrepareError(f"cannot create output {path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PrepareError(f"cannot create output {path}: {parent} is not writable")


def check_output(
    output: str, overwrite: bool, inputs: Sequence[str] = (), replaceable: Replaceable = dataset_reason
) -> Path:
    """The local directory ``output`` names, if it may be written; no side effects.

    Raises:
        PrepareError: ``output`` is or contains one of ``inputs``, cannot be created, or
            exists and is not replaceable (or ``overwrite`` is off).
    """
    path = Path(strip_file_uri(os.fspath(output))).expanduser().absolute()
    for given in inputs:
        source, target = Path(strip_file_uri(given)).expanduser().resolve(), path.resolve()
        if source == target or target in source.parents:
            raise PrepareError(
                f"output {path} {'is' if source == target else 'contains'} the input {given}; choose another --output"
            )
    _check_creatable(path)
    if os.path.lexists(path):
        reason = replaceable(path)
        if reason is not None:
            verb = "--overwrite may not replace it" if overwrite else "is not replaceable"
            raise PrepareError(f"output {path} already exists and {verb}: {reason}; choose another --output")
        if not overwrite:
            raise PrepareError(f"output {path} already exists; pass --overwrite to replace it")
    return path


def _lock(directory: Path) -> Optional[int]:
    """An open descriptor holding an exclusive ``flock`` on ``directory``, or None if another process holds it."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def remove_incomplete(path: Path, out: Any = None) -> List[str]:
    """Remove the ``.NAME.incomplete-*`` directories an interrupted run for ``path`` left; say so in one line.

    Only directories of exactly that prefix (:class:`~torchrec_me.atomic.AtomicDir`'s) beside
    ``path`` are touched, and only those no live writer holds locked. Returns their names.
    """
    prefix = f".{path.name}{AtomicDir.INCOMPLETE}"
    if not path.parent.is_dir():
        return []
    removed = []
    for entry in sorted(os.scandir(path.parent), key=lambda e: e.name):
        if not (entry.name.startswith(prefix) and entry.is_dir(follow_symlinks=False)):
            continue
        fd = _lock(Path(entry.path))
        if fd is None:  # a concurrent run is writing it
            continue
        try:
            shutil.rmtree(entry.path)
            removed.append(entry.name)
        finally:
            os.close(fd)
    if removed:
        what = "an incomplete output" if len(removed) == 1 else f"{len(removed)} incomplete outputs"
        print(f"torchrec-me: removed {what} of {path} left by an interrupted run: {short_list(removed)}", file=out or sys.stderr)
    return removed


def output_path(
    output: str, overwrite: bool, inputs: Sequence[str] = (), replaceable: Replaceable = dataset_reason
) -> Path:
    """Check ``output`` (:func:`check_output`) and remove an interrupted run's leftovers beside it.

    Converters call it before their first pass, so that a wrong ``--output`` fails at once
    rather than after reading the whole input.
    """
    path = check_output(output, overwrite, inputs, replaceable)
    remove_incomplete(path)
    return path


class AtomicOutput(AtomicDir):
    """The dataset directory ``output``, built in a temporary directory beside it.

    An :class:`~torchrec_me.atomic.AtomicDir` that also takes a ``file://`` URI, refuses
    an ``output`` it may not write (:func:`check_output`) as soon as it is created and
    again on :meth:`commit`, holds a lock on its temporary directory while it lives, and
    writes ``metadata.json`` last on :meth:`commit`, as the marker the reader looks for.

    Args:
        output (str): the dataset directory to create (a local path or ``file://`` URI).
        overwrite (bool): replace an existing ``output`` once the new one is complete.
        replaceable (Replaceable): why an existing ``output`` may not be replaced, or
            None (default :func:`dataset_reason`).

    Example::

        with AtomicOutput("criteo-prepared") as out:
            write_vocab_file(out.tmp / VOCAB_FILE, vocabs)
            out.commit(metadata)
    """

    def __init__(self, output: str, overwrite: bool = False, replaceable: Replaceable = dataset_reason) -> None:
        self.replaceable = replaceable
        super().__init__(check_output(output, overwrite, replaceable=replaceable), overwrite)
        self._lock_fd = _lock(self.tmp)

    def __enter__(self) -> "AtomicOutput":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            super().__exit__(exc_type, exc, tb)
        finally:
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    def commit(self, metadata: Optional[Mapping[str, Any]] = None) -> Path:
        """Write ``metadata.json`` (the completeness marker) last, then rename into place.

        ``metadata=None`` (raw files, as ``fetch`` writes them) only renames.

        Raises:
            PrepareError: ``output`` appeared meanwhile and ``overwrite`` is off, or what
                is there now may not be replaced.
        """
        if metadata is not None:
            write_text_atomic(self.tmp / METADATA_FILE, json.dumps(metadata, indent=1) + "\n")
        if os.path.lexists(self.final) and (reason := self.replaceable(self.final)) is not None:
            raise PrepareError(f"output {self.final} changed while preparing and may not be replaced: {reason}")
        try:
            return super().commit()
        except FileExistsError:
            raise PrepareError(f"output {self.final} appeared while preparing; not replacing it") from None


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
