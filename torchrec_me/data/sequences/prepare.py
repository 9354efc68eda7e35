"""``torchrec-me prepare sequences``: a raw interaction log -> a prepared sequence dataset.

The steps, in order:

1. read the input (:mod:`.formats`); malformed lines are counted and skipped, and an
   input with more than ``options.max_bad_fraction`` of them is refused, as the CTR
   ``prepare`` does (:func:`~torchrec_me.data.prepare.common.check_skipped`);
2. the optional rating threshold, then the iterative k-core filter (:mod:`.filters`);
3. dense ids: users by first appearance, items most frequent first (ties by first
   appearance); each user's interactions sorted by time, ties kept in input order;
4. the split positions (:mod:`.splits`): ``leave_one_out`` or ``temporal``;
5. the dataset directory (:mod:`.layout`), written atomically with
   :class:`~torchrec_me.data.prepare.destination.AtomicOutput`, ``metadata.json`` last;
   ``overwrite`` replaces only a prepared dataset, never the input or raw files.

The whole log is held in memory (ML-20M and SNAP Books fit in a few GB); ids and
numbers live in numpy and Arrow arrays, not Python objects.
``options.split``, ``options.seed``, ``options.progress`` and ``options.block_size`` are
CTR settings and are not used here: the sequence split is ``split``.
"""

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from torchrec_me.data.prepare.common import PrepareError, PrepareOptions, SkipLog, check_skipped
from torchrec_me.data.prepare.destination import AtomicOutput, output_path
from torchrec_me.data.sequences.filters import FilterResult, filter_interactions
from torchrec_me.data.sequences.formats import FORMATS, Interactions, read_interactions
from torchrec_me.data.sequences.layout import (
    FORMAT_NAME, FORMAT_VERSION, ITEMS_FILE, ITEMS_SCHEMA, USERS_FILE, USERS_SCHEMA, vocabulary_fingerprint,
)  # fmt: skip
from torchrec_me.data.sequences.splits import SPLIT_REGISTRY, SPLITS_NEEDING_TIMESTAMPS, SplitPositions

DEFAULT_USERS_PER_ROW_GROUP = 4096


@dataclass
class Sequences:
    """The kept interactions as time-ordered user sequences in CSR form (U users, N items).

    Args:
        user_tokens (pa.Array): raw id (string) of each dense user id.
        item_tokens (pa.Array): raw id (string) of each dense item id.
        offsets (np.ndarray): (U+1,) int64, user ``u`` owns ``[offsets[u], offsets[u+1])``.
        items (np.ndarray): (N,) int64 dense item ids.
        timestamps (np.ndarray): (N,) int64 (zeros without timestamps).
        ratings (np.ndarray): (N,) float32.
    """

    user_tokens: pa.Array
    item_tokens: pa.Array
    offsets: np.ndarray
    items: np.ndarray
    timestamps: np.ndarray
    ratings: np.ndarray


def build_sequences(data: Interactions, keep: np.ndarray) -> Sequences:
    """Dense ids and per-user time order of the kept interactions; see the module docstring."""
    idx = np.flatnonzero(keep)
    kept_users, dense_users = np.unique(data.users[idx], return_inverse=True)  # codes are first-appearance ordered
    codes = data.items[idx]
    counts = np.bincount(codes, minlength=len(data.item_tokens))
    present = np.flatnonzero(counts)
    order = present[np.lexsort((present, -counts[present]))]
    item_id = np.full(len(data.item_tokens), -1, dtype=np.int64)
    item_id[order] = np.arange(len(order))
    stamps = data.timestamps[idx] if data.timestamps is not None else np.zeros(len(idx), np.int64)
    perm = np.lexsort((np.arange(len(idx)), stamps, dense_users))
    offsets = np.zeros(len(kept_users) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(np.bincount(dense_users, minlength=len(kept_users)))
    return Sequences(
        data.user_tokens.take(pa.array(kept_users)), data.item_tokens.take(pa.array(order)), offsets,
        item_id[codes][perm], stamps[perm], data.ratings[idx][perm],
    )  # fmt: skip


def train_mask(offsets: np.ndarray, train_len: np.ndarray) -> np.ndarray:
    """(N,) bool: whether each interaction is a training position of its user."""
    lengths = np.diff(offsets)
    position = np.arange(offsets[-1]) - np.repeat(offsets[:-1], lengths)
    return position < np.repeat(train_len, lengths)


def _users_table(seqs: Sequences, pos: SplitPositions, lo: int, hi: int) -> pa.Table:
    """Users ``lo..hi-1`` as a table of :data:`~.layout.USERS_SCHEMA`."""
    a, b = int(seqs.offsets[lo]), int(seqs.offsets[hi])
    offsets = pa.array((seqs.offsets[lo : hi + 1] - a).astype(np.int32))

    def lists(values: np.ndarray, typ: pa.DataType) -> pa.Array:
        return pa.ListArray.from_arrays(offsets, pa.array(values[a:b], typ))

    columns = [
        pa.array(np.arange(lo, hi, dtype=np.int64)), seqs.user_tokens.slice(lo, hi - lo),
        lists(seqs.items, pa.int64()), lists(seqs.timestamps, pa.int64()), lists(seqs.ratings, pa.float32()),
        *(pa.array(a[lo:hi].astype(np.int32)) for a in (pos.train_len, pos.val_index, pos.test_index)),
    ]  # fmt: skip
    return pa.Table.from_arrays(columns, schema=USERS_SCHEMA)


def write_files(directory: Path, seqs: Sequences, pos: SplitPositions, users_per_group: int) -> None:
    """``users.parquet`` (row groups of ``users_per_group`` users) and ``items.parquet`` into ``directory``."""
    n_users = len(seqs.user_tokens)
    with pq.ParquetWriter(str(directory / USERS_FILE), USERS_SCHEMA, compression="zstd") as writer:
        for lo in range(0, n_users, users_per_group):
            writer.write_table(_users_table(seqs, pos, lo, min(lo + users_per_group, n_users)))
    n_items = len(seqs.item_tokens)
    train = seqs.items[train_mask(seqs.offsets, pos.train_len)]
    items = [
        pa.array(np.arange(n_items, dtype=np.int64)), seqs.item_tokens,
        pa.array(np.bincount(seqs.items, minlength=n_items)), pa.array(np.bincount(train, minlength=n_items)),
    ]  # fmt: skip
    pq.write_table(pa.Table.from_arrays(items, schema=ITEMS_SCHEMA), str(directory / ITEMS_FILE), compression="zstd")


def build_metadata(
    data: Interactions, seqs: Sequences, pos: SplitPositions, filtered: FilterResult, skips: SkipLog,
    params: Mapping[str, Any],
) -> Dict[str, Any]:  # fmt: skip
    """The ``metadata.json`` payload: every count and parameter (see :mod:`.layout`)."""
    lengths = np.diff(seqs.offsets)
    return {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "dataset": "sequences",
        "input_format": params["format"], "input_variant": data.variant, "has_timestamps": data.timestamps is not None,
        "num_users": len(seqs.user_tokens), "num_items": len(seqs.item_tokens),
        "num_interactions": int(seqs.offsets[-1]),
        "sequence_length": {"min": int(lengths.min()), "max": int(lengths.max()), "mean": float(lengths.mean())},
        "split": pos.info,
        "preprocessing": {**params, "kcore_rounds": filtered.rounds},
        "interactions": {"valid": len(data), **filtered.to_json(), "kept": int(seqs.offsets[-1])},
        "rows": {"input": len(data) + skips.total, "valid": len(data), "skipped": skips.total},
        "skipped": skips.to_json(),
        "fingerprint": vocabulary_fingerprint(seqs.item_tokens.to_pylist()),
        "files": {"users": USERS_FILE, "items": ITEMS_FILE},
        "source": {"path": os.path.abspath(data.source)},
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }  # fmt: skip


def _check_arguments(fmt: str, split: str, min_user_count: int, min_item_count: int, users_per_group: int) -> None:
    """One :class:`PrepareError` for the first bad argument, before any work."""
    if fmt not in FORMATS:
        raise PrepareError(f"unknown sequence format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if split not in SPLIT_REGISTRY:
        raise PrepareError(f"unknown sequence split {split!r}; choose one of {', '.join(SPLIT_REGISTRY)}")
    for name, value in (("min_user_count", min_user_count), ("min_item_count", min_item_count)):
        if value < 0:
            raise PrepareError(f"{name} must be >= 0, got {value}")
    if users_per_group < 1:
        raise PrepareError(f"the row group size (users per row group) must be >= 1, got {users_per_group}")


def _read_filtered(
    input: str, fmt: str, split: str, params: Mapping[str, Any], options: PrepareOptions, skips: SkipLog
) -> Tuple[Interactions, Sequences, FilterResult]:
    """Read, check the bad lines, filter and order: ``(interactions, sequences, filter result)``."""
    data = read_interactions(input, fmt, skips)
    check_skipped(input, f"{fmt} sequence", len(data), skips, options.max_bad_fraction)
    if data.timestamps is None and split in SPLITS_NEEDING_TIMESTAMPS:
        raise PrepareError(f"--split {split} needs timestamps, and the {fmt} input {input} has none; use leave_one_out")
    limits = (params["rating_threshold"], params["min_user_count"], params["min_item_count"])
    filtered = filter_interactions(data.users, data.items, data.ratings, *limits)
    if not filtered.keep.any():
        raise PrepareError(
            f"no interactions of {input} are left after the rating threshold and the k-core filter "
            f"({filtered.below_threshold:,} below the threshold, {filtered.removed_by_kcore:,} removed by k-core)"
        )
    return data, build_sequences(data, filtered.keep), filtered


def prepare_sequences(
    input: str,
    output: str,
    options: Optional[PrepareOptions] = None,
    *,
    fmt: str,
    min_user_count: int = 0,
    min_item_count: int = 0,
    rating_threshold: Optional[float] = None,
    split: str = "leave_one_out",
) -> Dict[str, Any]:
    """Prepare the interaction log ``input`` into the sequence dataset ``output``; returns its metadata.

    Args:
        input (str): the raw file, or a directory holding it (path or ``file://`` URI).
        output (str): the dataset directory to create (written atomically).
        options (Optional[PrepareOptions]): overwrite, ``max_bad_fraction``, summary and
            ``row_group_size`` (here: users per row group, default 4096).
        fmt (str): one of :data:`~.formats.FORMATS`.
        min_user_count (int): k-core: least interactions of a kept user (0: no limit).
        min_item_count (int): k-core: least interactions of a kept item (0: no limit).
        rating_threshold (Optional[float]): keep only ratings >= this (None: keep all).
        split (str): ``leave_one_out`` or ``temporal`` (see :mod:`.splits`).

    Raises:
        PrepareError: a bad argument, an unreadable input, more than ``max_bad_fraction``
            malformed lines, nothing left after filtering, ``temporal`` without timestamps,
            or an existing ``output`` without ``overwrite``.

    Example::

        meta = prepare_sequences("ml-1m", "ml-1m-seq", PrepareOptions(summary=False), fmt="movielens")
        meta["num_items"]  # 3706
    """
    options = options or PrepareOptions()
    users_per_group = options.row_groups(DEFAULT_USERS_PER_ROW_GROUP)
    _check_arguments(fmt, split, min_user_count, min_item_count, users_per_group)
    output_path(output, options.overwrite, inputs=(input,))  # refuse a wrong output before reading the input
    started = time.perf_counter()
    skips = SkipLog()
    params = {
        "format": fmt, "split": split, "rating_threshold": rating_threshold, "min_user_count": min_user_count,
        "min_item_count": min_item_count, "users_per_row_group": users_per_group,
    }  # fmt: skip
    data, seqs, filtered = _read_filtered(input, fmt, split, params, options, skips)
    pos = SPLIT_REGISTRY[split](seqs.offsets, seqs.timestamps)
    with AtomicOutput(output, options.overwrite) as out:
        write_files(out.tmp, seqs, pos, users_per_group)
        meta = build_metadata(data, seqs, pos, filtered, skips, params)
        path = out.commit(meta)
    if options.summary:
        print_summary(meta, path, time.perf_counter() - started)
    return meta


def print_summary(meta: Mapping[str, Any], path: Path, seconds: float, out: Any = None) -> None:
    """Users, items, interactions, split counts and skipped lines, on stdout."""
    out = out or sys.stdout
    split, kept = meta["split"], meta["interactions"]
    print(f"prepared {meta['input_format']} sequences -> {path} in {seconds:.1f}s", file=out)
    print(f"  {meta['num_users']:,} users, {meta['num_items']:,} items, {meta['num_interactions']:,} interactions "
          f"(timestamps: {'yes' if meta['has_timestamps'] else 'no'})", file=out)  # fmt: skip
    print(f"  filters: {kept['below_rating_threshold']:,} below the rating threshold, {kept['removed_by_kcore']:,} "
          f"removed by k-core in {meta['preprocessing']['kcore_rounds']} rounds", file=out)  # fmt: skip
    print(f"  split {split['mode']}: {split['train_positions']:,} training positions, {split['users_with_val']:,} "
          f"validation and {split['users_with_test']:,} test targets, {split['users_train_only']:,} users train-only",
          file=out)  # fmt: skip
    skipped = meta["skipped"]
    print(f"  skipped {skipped['total']:,} malformed lines", file=out)
    for reason, n in sorted(skipped["by_reason"].items(), key=lambda kv: -kv[1]):
        print(f"    {n:,} {reason}; e.g. {' | '.join(skipped['examples'].get(reason, []))}", file=out)
