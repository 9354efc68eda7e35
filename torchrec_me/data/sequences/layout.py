"""The on-disk layout of a prepared sequence dataset, shared by its writer and its reader.

A prepared sequence dataset is a directory::

    metadata.json     every count and parameter; written last, the completeness marker
    users.parquet     one row per user, in user-id order
    items.parquet     the item vocabulary, in item-id order

``users.parquet`` columns (U users, row groups of whole users):

* ``user`` (int64): dense user id in ``[0, U)``, by first appearance in the input;
* ``token`` (string): the raw user id;
* ``items`` (list<int64>): dense item ids in ``[0, num_items)``, oldest first; ties in
  time keep input order (a stable sort);
* ``timestamps`` (list<int64>): seconds, aligned with ``items`` (all 0 without timestamps);
* ``ratings`` (list<float32>): the rating of each interaction (1.0 where there is none);
* ``train_len`` (int32): ``items[:train_len]`` are the user's training positions;
* ``val_index``, ``test_index`` (int32): position of the validation / test target, whose
  history is ``items[:index]`` (at least one item); -1 when the user has none.

``items.parquet`` columns: ``item`` (int64 dense id, most frequent first, ties by first
appearance), ``token`` (string raw id), ``count`` (int64, kept interactions) and
``train_count`` (int64, training positions only: the popularity baseline's counts).
Padding is not an item: ids are exactly ``0 .. num_items - 1``.

The names here belong to the reader's side, as :mod:`torchrec_me.data.store` does for the
CTR layout; the converter (:mod:`.prepare`) imports them.
"""

import hashlib
from typing import Any, Dict, Iterable, Tuple

import pyarrow as pa

from torchrec_me.data.store import METADATA_FILE, PATH_MANAGER, DatasetError, join, read_metadata_json

FORMAT_NAME = "torchrec_me.sequences"
FORMAT_VERSION = 1
USERS_FILE = "users.parquet"
ITEMS_FILE = "items.parquet"
EVAL_SPLITS: Tuple[str, ...] = ("val", "test")
TARGET_COLUMNS: Dict[str, str] = {"val": "val_index", "test": "test_index"}
_REQUIRED_KEYS = ("num_users", "num_items", "num_interactions", "has_timestamps", "fingerprint", "split")

USERS_SCHEMA = pa.schema(
    [
        pa.field("user", pa.int64(), nullable=False),
        pa.field("token", pa.string(), nullable=False),
        pa.field("items", pa.list_(pa.int64()), nullable=False),
        pa.field("timestamps", pa.list_(pa.int64()), nullable=False),
        pa.field("ratings", pa.list_(pa.float32()), nullable=False),
        pa.field("train_len", pa.int32(), nullable=False),
        pa.field("val_index", pa.int32(), nullable=False),
        pa.field("test_index", pa.int32(), nullable=False),
    ]
)
ITEMS_SCHEMA = pa.schema(
    [
        pa.field("item", pa.int64(), nullable=False),
        pa.field("token", pa.string(), nullable=False),
        pa.field("count", pa.int64(), nullable=False),
        pa.field("train_count", pa.int64(), nullable=False),
    ]
)


def vocabulary_fingerprint(tokens: Iterable[str]) -> str:
    """sha256 of the raw item ids in id order (one per line): equal iff the id mapping is."""
    h = hashlib.sha256()
    for token in tokens:
        h.update(token.encode("utf-8", "surrogatepass") + b"\n")
    return h.hexdigest()


def load_sequence_metadata(path: str) -> Dict[str, Any]:
    """The metadata of the prepared sequence dataset at ``path`` (directory or URI).

    Raises:
        DatasetError: no such directory, no ``metadata.json`` (not prepared, or an
            interrupted ``prepare``), or metadata of another format or version.
    """
    meta = read_metadata_json(path, "torchrec-me prepare sequences")
    meta_path = join(path, METADATA_FILE)
    found = meta.get("format") if isinstance(meta, dict) else None
    if found != FORMAT_NAME:
        raise DatasetError(f"{meta_path} is {found or 'unknown'} metadata, not {FORMAT_NAME} (`prepare sequences`)")
    if meta.get("format_version") != FORMAT_VERSION:
        found_version = meta.get("format_version")
        raise DatasetError(f"{meta_path} has format version {found_version!r}; this reader reads {FORMAT_VERSION}")
    missing = [k for k in _REQUIRED_KEYS if k not in meta]
    if missing:
        raise DatasetError(f"{meta_path} lacks {', '.join(missing)}")
    return meta
