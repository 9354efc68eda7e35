"""Read a dataset written by ``torchrec-me prepare sequences`` (see :mod:`.layout`).

The whole dataset is loaded into memory once, as flat numpy arrays (ML-20M: about
20M interactions, 0.4 GB); batches are then slices of them (:mod:`.reader`). Nothing
is recomputed: the split positions, the item counts and the fingerprint are read from
the files, and the fingerprint is checked against the vocabulary it describes.
"""

from typing import Any, Dict, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from torchrec_me.data.sequences.layout import (
    ITEMS_FILE, TARGET_COLUMNS, USERS_FILE, load_sequence_metadata, vocabulary_fingerprint,
)  # fmt: skip
from torchrec_me.data.sequences.reader import ReadOptions, SequenceReader, SequenceTable
from torchrec_me.data.store import PATH_MANAGER, DatasetError, join


def _read_parquet(path: str) -> pa.Table:
    if not PATH_MANAGER.isfile(path):
        raise DatasetError(f"{path} is missing; prepare the dataset again")
    with PATH_MANAGER.open(path, "rb") as f:
        return pq.read_table(f)


def _flat(column: pa.ChunkedArray, dtype: Any) -> Tuple[np.ndarray, np.ndarray]:
    """``(offsets (U+1,), values)`` of a list column."""
    lists = column.combine_chunks()
    offsets = np.asarray(lists.offsets, dtype=np.int64)
    return offsets - offsets[0], np.asarray(lists.flatten(), dtype=dtype)


def read_table(path: str) -> SequenceTable:
    """The :class:`SequenceTable` of ``users.parquet`` in the dataset directory ``path``."""
    users = _read_parquet(join(path, USERS_FILE))
    if not np.array_equal(np.asarray(users["user"], dtype=np.int64), np.arange(users.num_rows)):
        raise DatasetError(f"{join(path, USERS_FILE)}: users are not in id order 0..{users.num_rows - 1}")
    offsets, items = _flat(users["items"], np.int64)
    stamp_offsets, timestamps = _flat(users["timestamps"], np.int64)
    rating_offsets, ratings = _flat(users["ratings"], np.float32)
    if not (np.array_equal(offsets, stamp_offsets) and np.array_equal(offsets, rating_offsets)):
        raise DatasetError(f"{join(path, USERS_FILE)}: item, timestamp and rating lists differ in length")
    return SequenceTable(
        offsets, items, timestamps, ratings, np.asarray(users["train_len"], dtype=np.int64),
        {s: np.asarray(users[c], dtype=np.int64) for s, c in TARGET_COLUMNS.items()},
    )  # fmt: skip


class SequenceDataset(SequenceReader):
    """A prepared sequence dataset: per-user jagged batches for the sequential models.

    Args:
        path (str): the dataset directory (local path or iopath URI).
        options (ReadOptions): shuffle seed, training windows and protocol (see :mod:`.reader`).

    Example::

        ds = SequenceDataset("ml-1m-seq")
        batch = next(ds.train_batches(rank=0, world_size=1, batch_size=128, max_seq_len=200))
        batch.items.lengths()  # (128,), each <= 201
        for batch, is_real in ds.eval_batches("val", 0, 1, batch_size=256, max_seq_len=200):
            seen = ds.seen_items("val", batch.users)  # to exclude the history, if wanted

    Raises:
        DatasetError: not a prepared sequence dataset, a missing file, or files that
            disagree with each other or with the metadata.
    """

    def __init__(self, path: str, options: ReadOptions = ReadOptions()) -> None:
        self.path = path
        self.metadata: Dict[str, Any] = load_sequence_metadata(path)
        num_items, num_users = int(self.metadata["num_items"]), int(self.metadata["num_users"])
        table = read_table(path)
        items = _read_parquet(join(path, ITEMS_FILE))
        tokens = items["token"].to_pylist()
        self.fingerprint: str = vocabulary_fingerprint(tokens)
        if self.fingerprint != self.metadata["fingerprint"] or len(tokens) != num_items or table.num_users != num_users:
            raise DatasetError(
                f"{path}: {USERS_FILE} ({table.num_users} users) and {ITEMS_FILE} ({len(tokens)} items, fingerprint "
                f"{self.fingerprint[:12]}) do not match metadata.json; prepare the dataset again"
            )
        table.check(num_items, join(path, USERS_FILE))
        counts = np.asarray(items["train_count"], dtype=np.int64)
        super().__init__(table, num_items, bool(self.metadata["has_timestamps"]), options, counts)
