"""Where a prepared dataset lives: paths through iopath, and its ``metadata.json``.

Every path the reader (and ``prepare``'s ``--input``) opens goes through
:data:`PATH_MANAGER`, an iopath ``PathManager`` that knows local paths and
``file://`` URIs. Other storage is a registration away::

    from iopath.common.s3 import S3PathHandler
    from torchrec_me.data.store import PATH_MANAGER
    PATH_MANAGER.register_handler(S3PathHandler())

``metadata.json`` is written last by ``prepare`` (see :mod:`.prepare`), so a
directory without it is an interrupted run and is refused.
"""

import json
from typing import Any, Dict, List

from iopath.common.file_io import NativePathHandler, PathManager

METADATA_FILE = "metadata.json"
FORMAT_NAME = "torchrec_me.parquet"
SUPPORTED_VERSIONS = (1,)
_REQUIRED_KEYS = ("dense_features", "sparse_features", "splits", "preprocessing")


class DatasetError(ValueError):
    """A dataset cannot be prepared or read; the message says why in one line."""


def strip_file_uri(path: str) -> str:
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


def load_metadata(path: str) -> Dict[str, Any]:
    """The metadata of the prepared dataset at ``path`` (directory or URI).

    Raises:
        DatasetError: no such directory, no ``metadata.json`` (not prepared, or an
            interrupted ``prepare``), or metadata of another format or version.
    """
    meta_path = join(path, METADATA_FILE)
    if not PATH_MANAGER.isdir(path):
        raise DatasetError(f"{path} is not a directory; expected a dataset written by `torchrec-me prepare`")
    if not PATH_MANAGER.isfile(meta_path):
        raise DatasetError(
            f"{path} has no {METADATA_FILE}: not a dataset written by `torchrec-me prepare`, or an interrupted one"
        )
    with PATH_MANAGER.open(meta_path, "r") as f:
        try:
            meta = json.load(f)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{meta_path} is not valid JSON ({e})") from None
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
