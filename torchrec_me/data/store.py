"""Where a prepared dataset lives: paths through iopath, and its ``metadata.json``.

Every path the reader (and ``prepare``'s ``--input``) opens goes through
:data:`PATH_MANAGER`, an iopath ``PathManager`` that knows local paths and
``file://`` URIs. Other storage is a registration away::

    from iopath.common.s3 import S3PathHandler
    from torchrec_me.data.store import PATH_MANAGER
    PATH_MANAGER.register_handler(S3PathHandler())

``metadata.json`` is written last by ``prepare`` (see
:mod:`torchrec_me.data.prepare.output`), so a directory without it is an interrupted
run and is refused. The names both halves share (the metadata file, the vocabulary
file, the splits, the format and its version) are defined here, on the reader's side,
and the converter imports them.

**Vocabulary fingerprint.** :func:`vocab_fingerprint` hashes what the ids mean: per
sparse feature, in metadata order, its name, its table size and its kept tokens in id
order (not their counts, not the file's bytes, so equal vocabularies written by another
pyarrow give the same fingerprint). ``prepare`` stores it in ``metadata.json`` as
``vocab_fingerprint``; the reader recomputes it, so a replaced ``vocab.parquet`` is
caught, and a checkpoint can record which vocabularies its tables were trained on.
"""

import hashlib
import json
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from iopath.common.file_io import NativePathHandler, PathManager

METADATA_FILE = "metadata.json"
VOCAB_FILE = "vocab.parquet"
FINGERPRINT_KEY = "vocab_fingerprint"
SPLITS: Tuple[str, ...] = ("train", "val", "test")
FORMAT_NAME = "torchrec_me.parquet"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (FORMAT_VERSION,)
_REQUIRED_KEYS = ("dense_features", "sparse_features", "splits", "preprocessing")
_FINGERPRINT_TAG = b"torchrec_me.vocab.v1\0"


class DatasetError(ValueError):
    """A dataset cannot be prepared or read; the message says why in one line."""


def strip_file_uri(path: str) -> str:
    """``path`` without a leading ``file://``: the local path the URI names."""
    return path[len("file://") :] if path.startswith("file://") else path


class FileURIHandler(NativePathHandler):
    """``file:///abs/path`` URIs, served by the local file system."""

    def _get_supported_prefixes(self) -> List[str]:
        return ["file://"]

    def _get_local_path(self, path: str, force: bool = False, **kwargs: Any) -> str:
        return super()._get_local_path(strip_file_uri(path), force=force, **kwargs)

    def _open(self, path: str, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        return super()._open(strip_file_uri(path), mode, *args, **kwargs)

    def _exists(self, path: str, **kwargs: Any) -> bool:
        return super()._exists(strip_file_uri(path), **kwargs)

    def _isfile(self, path: str, **kwargs: Any) -> bool:
        return super()._isfile(strip_file_uri(path), **kwargs)

    def _isdir(self, path: str, **kwargs: Any) -> bool:
        return super()._isdir(strip_file_uri(path), **kwargs)

    def _ls(self, path: str, **kwargs: Any) -> List[str]:
        return super()._ls(strip_file_uri(path), **kwargs)


PATH_MANAGER = PathManager()
PATH_MANAGER.register_handler(FileURIHandler())


def join(root: str, name: str) -> str:
    """``root/name`` for a local path or a URI."""
    return root.rstrip("/") + "/" + name


def read_metadata_json(path: str, command: str) -> Any:
    """The parsed ``metadata.json`` of the dataset directory ``path`` written by ``command``.

    Raises:
        DatasetError: no such directory, no ``metadata.json`` (not prepared, or an
            interrupted ``command``), or invalid JSON.
    """
    meta_path = join(path, METADATA_FILE)
    if not PATH_MANAGER.isdir(path):
        raise DatasetError(f"{path} is not a directory; expected a dataset written by `{command}`")
    if not PATH_MANAGER.isfile(meta_path):
        raise DatasetError(f"{path} has no {METADATA_FILE}: not a dataset written by `{command}`, or an interrupted one")
    with PATH_MANAGER.open(meta_path, "r") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{meta_path} is not valid JSON ({e})") from None


def load_metadata(path: str) -> Dict[str, Any]:
    """The metadata of the prepared dataset at ``path`` (directory or URI).

    Raises:
        DatasetError: no such directory, no ``metadata.json`` (not prepared, or an
            interrupted ``prepare``), or metadata of another format or version.
    """
    meta = read_metadata_json(path, "torchrec-me prepare")
    meta_path = join(path, METADATA_FILE)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise DatasetError(f"{meta_path} is not {FORMAT_NAME} metadata")
    if meta.get("format_version") not in SUPPORTED_VERSIONS:
        raise DatasetError(
            f"{meta_path} has format version {meta.get('format_version')!r}; this reader supports {SUPPORTED_VERSIONS}"
        )
    missing = [k for k in _REQUIRED_KEYS if k not in meta]
    if missing:
        raise DatasetError(f"{meta_path} lacks {', '.join(missing)}")
    return meta


def unreadable(what: str, e: BaseException) -> DatasetError:
    """The one-line error for a file of a dataset that Arrow could not read."""
    hint = "missing" if isinstance(e, FileNotFoundError) else "corrupt or truncated?"
    return DatasetError(f"cannot read {what} ({hint}): {(str(e).splitlines() or [type(e).__name__])[0]}")


def vocab_fingerprint(vocab_path: str, sparse_features: Sequence[Mapping[str, Any]]) -> str:
    """The sha256 (hex) of the vocabularies in the local file ``vocab_path``; see the module docstring.

    Also checks the file against ``sparse_features`` (the metadata's entries): each
    feature must have exactly ``vocab_size - 1`` rows (the OOV id has none) with ids
    ``0 .. vocab_size - 2``, and no other field may appear.

    Raises:
        DatasetError: the file cannot be read, or it disagrees with ``sparse_features``.
    """
    try:
        table = pq.read_table(vocab_path, columns=["field", "token", "id"], read_dictionary=["field"])
    except (pa.ArrowException, OSError) as e:
        raise unreadable(vocab_path, e) from None
    index = {str(f["name"]): k for k, f in enumerate(sparse_features)}
    codes = [np.zeros(0, np.int64)]  # per row, its feature's position in sparse_features (-1: none)
    for chunk in table.column("field").chunks:
        known = np.array([index.get(v, -1) for v in chunk.dictionary.to_pylist()] + [-1], dtype=np.int64)
        codes.append(known[chunk.indices.fill_null(len(known) - 1).to_numpy()])
    code = np.concatenate(codes)
    if (code < 0).any():
        raise DatasetError(f"{vocab_path} has {int((code < 0).sum())} tokens of fields that metadata.json does not list")
    order = np.argsort(code, kind="stable")
    bounds = np.searchsorted(code[order], np.arange(len(sparse_features) + 1))
    ids = table.column("id").to_numpy()
    rows = []
    for k, f in enumerate(sparse_features):
        mine = order[bounds[k] : bounds[k + 1]]
        mine = mine[np.argsort(ids[mine], kind="stable")]
        size = int(f["vocab_size"])
        if not np.array_equal(ids[mine], np.arange(size - 1)):
            raise DatasetError(
                f"{vocab_path} has {len(mine)} tokens of feature {f['name']!r} with ids {_id_range(ids[mine])}, but "
                f"metadata.json says vocab_size {size} (ids 0..{size - 2} and the OOV id): they do not match"
            )
        rows.append(mine)
    tokens = table.column("token").take(pa.array(np.concatenate(rows or [np.zeros(0, np.int64)])))
    tokens = tokens.combine_chunks().cast(pa.large_string())
    offsets = np.frombuffer(tokens.buffers()[1], np.int64)[tokens.offset : tokens.offset + len(tokens) + 1]
    data = memoryview(tokens.buffers()[2] or b"")
    digest = hashlib.sha256(_FINGERPRINT_TAG)
    first = 0
    for f, mine in zip(sparse_features, rows):
        o = offsets[first : first + len(mine) + 1]
        first += len(mine)
        digest.update(json.dumps([str(f["name"]), int(f["vocab_size"])]).encode() + b"\0")
        digest.update(np.diff(o).astype("<i8").tobytes())
        digest.update(data[int(o[0]) : int(o[-1])])
    return digest.hexdigest()


def _id_range(ids: np.ndarray) -> str:
    return f"{int(ids.min())}..{int(ids.max())}" if len(ids) else "none"


def deal_rows(n: int, rank: int, world_size: int, batch_size: int) -> List[Tuple[int, int, bool]]:
    """``(first row, end row, is_real)`` of rank ``rank``'s eval batches over ``n`` rows.

    The rule of every prepared-data reader (CTR Parquet, sequences): contiguous shares of
    ``n // world_size`` rows in batches of ``batch_size``, then one batch of one row per
    rank for the remainder, a rank without such a row repeating row 0 with ``is_real=False``.
    """
    q = n // world_size
    lo = rank * q
    ranges = [(lo + a, lo + min(a + batch_size, q), True) for a in range(0, q, batch_size)]
    if n - world_size * q:
        extra = world_size * q + rank
        ranges.append((extra, extra + 1, True) if extra < n else (0, 1, False))
    return ranges
