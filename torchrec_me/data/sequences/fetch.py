"""``torchrec-me fetch movielens-1m | movielens-20m | amazon-books``: raw logs from their hosts.

Each name in :data:`FETCH_REGISTRY` is one file on its official host, with its expected
size and sha256 where they are known:

* ``movielens-1m``, ``movielens-20m``: GroupLens's ``ml-1m.zip`` / ``ml-20m.zip``; size and
  sha256 as TensorFlow Datasets records them (``url_checksums/movielens.txt``);
* ``amazon-books``: SNAP's ``ratings_Books.csv`` (the 2014 Amazon reviews, about 900 MB);
  its sha256 is the one two public loaders (omnirec, and a fetch_amazon_books) agree on,
  and its exact size is not recorded, so only the sha256 is checked.

**Download.** The bytes go to a hidden partial file beside the output
(``.NAME.FILE.part``). An interrupted download keeps it, and the next run asks the server
for the rest with an HTTP ``Range`` request (a server that ignores it sends the whole
file again, which replaces the partial one). A network failure is one line naming the
host and the bytes kept.

**Checks and output.** The complete file's size and sha256 are checked when known (a
mismatch removes the partial file); the sha256 computed is always recorded in
``fetch.json`` in the output, with the URL, size and whether it was verified. Archives
are unpacked (their single top folder dropped); the output directory appears atomically,
so it is complete or absent; ``overwrite`` replaces only a directory that ``fetch`` wrote
(its ``fetch.json`` lists every other file in it). Then ``torchrec-me prepare sequences --format FORMAT
--input OUTPUT`` converts it.
"""

import hashlib
import http.client
import json
import os
import shutil
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional
from urllib.parse import urlparse

from torchrec_me.atomic import write_json_atomic
from torchrec_me.data.prepare.common import PrepareError
from torchrec_me.data.prepare.destination import AtomicOutput, output_path, short_list

FETCH_RECORD = "fetch.json"
CHUNK_BYTES = 1 << 20
USER_AGENT = "torchrec-me-fetch/1"
DEFAULT_TIMEOUT = 60.0


class FetchError(PrepareError):
    """A download failed (no network, HTTP error, wrong size or checksum); one line for the user."""


@dataclass(frozen=True)
class RemoteFile:
    """One downloadable raw dataset.

    Args:
        url (str): the official address.
        filename (str): the file's name (of the partial file and, unpacked or not, in the output).
        size (Optional[int]): expected bytes, None when unknown.
        sha256 (Optional[str]): expected sha256 (hex), None when unknown.
        unpack (bool): a zip archive to unpack into the output.
        prepare_format (str): the ``prepare sequences --format`` that reads it.
        directory (str): the default output directory of ``torchrec-me fetch``.
    """

    url: str
    filename: str
    size: Optional[int]
    sha256: Optional[str]
    unpack: bool
    prepare_format: str
    directory: str


GROUPLENS = "https://files.grouplens.org/datasets/movielens/"
FETCH_REGISTRY: Dict[str, RemoteFile] = {
    "movielens-1m": RemoteFile(
        GROUPLENS + "ml-1m.zip", "ml-1m.zip", 5_917_549,
        "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20", True, "movielens", "ml-1m",
    ),
    "movielens-20m": RemoteFile(
        GROUPLENS + "ml-20m.zip", "ml-20m.zip", 198_702_078,
        "96f243c338a8665f6bcc89c53edf6ee39162a846940de6b7c8c48aeada765ff3", True, "movielens", "ml-20m",
    ),
    "amazon-books": RemoteFile(
        "https://snap.stanford.edu/data/amazon/productGraph/categoryFiles/ratings_Books.csv", "ratings_Books.csv", None,
        "87d923ddac2aacf40c1d0e0e056dbf4bf69c9c7d41852c6b434e781e759c0707", False, "amazon", "amazon-books",
    ),
}  # fmt: skip


def partial_path(final: Path, remote: RemoteFile) -> Path:
    """The hidden partial download of ``remote`` for the output directory ``final``."""
    return final.parent / f".{final.name}.{remote.filename}.part"


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _failure(url: str, error: BaseException, part: Path) -> str:
    reason = getattr(error, "reason", None) or error
    kept = _size(part)
    resume = f"; {kept:,} bytes kept in {part}, run the same command again to resume" if kept else ""
    return f"cannot download {url} from {urlparse(url).netloc or url}: {reason} (is the network reachable?){resume}"


def _receive(response: Any, url: str, part: Path, have: int) -> int:
    """Write the body of ``response`` to ``part`` (appending to a resumed one); the file's new size."""
    if have and response.status == 206:
        start = (response.headers.get("Content-Range") or "").removeprefix("bytes ").split("-")[0]
        if start != str(have):
            raise FetchError(f"{url}: the server resumed at byte {start or '?'}, not {have}; delete {part} and retry")
        mode = "ab"
    else:
        have, mode = 0, "wb"  # a whole file (200): it replaces the partial one
    expected = response.headers.get("Content-Length")
    got = 0
    with open(part, mode) as f:
        while chunk := response.read(CHUNK_BYTES):
            f.write(chunk)
            got += len(chunk)
    if expected is not None and got < int(expected):
        broken = ConnectionError(f"connection closed after {got:,} of {int(expected):,} bytes")
        raise FetchError(_failure(url, broken, part))
    return have + got


def download(url: str, part: Path, timeout: float = DEFAULT_TIMEOUT, size: Optional[int] = None) -> int:
    """Download ``url`` into ``part``, resuming a partial one with an HTTP Range request.

    Args:
        url (str): what to download (http, https or file).
        part (Path): the partial file, created or extended.
        timeout (float): seconds to wait for the server at each step.
        size (Optional[int]): the expected size, when known (a complete ``part`` is not fetched again).

    Returns:
        int: the size of ``part``.

    Raises:
        FetchError: the host is unreachable, the connection broke (``part`` is kept for
            the next run) or the server answered with an HTTP error.
    """
    have = _size(part)
    if size is not None and have == size:
        return have
    headers = {"User-Agent": USER_AGENT, **({"Range": f"bytes={have}-"} if have else {})}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as response:
            return _receive(response, url, part, have)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing after byte ``have``: the partial file is whole
            return have
        raise FetchError(f"cannot download {url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise FetchError(_failure(url, e, part)) from None


def file_sha256(path: Path) -> str:
    """The sha256 (hex) of the file at ``path``."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            h.update(chunk)
    return h.hexdigest()


def verify(part: Path, remote: RemoteFile, url: str) -> Dict[str, Any]:
    """Check the size and sha256 of the downloaded ``part``; the record for ``fetch.json``.

    A broken connection has already raised in :func:`download` (keeping ``part``), so a
    file of another size here is what the server holds: not the expected file.

    Raises:
        FetchError: another size or sha256 (``part`` is removed).
    """
    size, digest = _size(part), file_sha256(part)
    problems = []
    if remote.size is not None and size != remote.size:
        problems.append(f"{size:,} bytes, expected {remote.size:,}")
    if remote.sha256 is not None and digest != remote.sha256:
        problems.append(f"sha256 {digest}, expected {remote.sha256}")
    if problems:
        part.unlink()
        raise FetchError(
            f"{url} gave a file with {' and '.join(problems)}; it was removed, run again to download it afresh"
        )
    return {
        "url": url, "size": size, "sha256": digest, "expected_size": remote.size, "expected_sha256": remote.sha256,
        "verified": remote.sha256 is not None, "fetched_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }  # fmt: skip


def unpack_zip(archive: Path, dest: Path) -> List[str]:
    """Extract the files of ``archive`` into ``dest``, without a top folder all of them share."""
    try:
        with zipfile.ZipFile(archive) as z:
            members = [m for m in z.infolist() if not m.is_dir()]
            tops = {m.filename.split("/", 1)[0] for m in members}
            strip = len(tops) == 1 and all("/" in m.filename for m in members)
            names = []
            for m in members:
                name = m.filename.split("/", 1)[1] if strip else m.filename
                target = (dest / name).resolve()
                if not target.is_relative_to(dest.resolve()):
                    raise FetchError(f"{archive.name} holds an unsafe path {m.filename!r}; not unpacking it")
                target.parent.mkdir(parents=True, exist_ok=True)
                with z.open(m) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK_BYTES)
                names.append(name)
            return names
    except zipfile.BadZipFile as e:
        raise FetchError(f"{archive} is not a valid zip archive ({e}); delete it and run again") from None


def fetched_reason(path: Path) -> Optional[str]:
    """None if ``overwrite`` may replace ``path``: a directory whose ``fetch.json`` lists all its other files."""
    if path.is_symlink() or not path.is_dir():
        return "it is not a directory"
    try:
        files = {str(f).split("/", 1)[0] for f in json.loads((path / FETCH_RECORD).read_text())["files"]}
    except (OSError, ValueError, KeyError, TypeError):
        return f"it has no {FETCH_RECORD} written by `torchrec-me fetch`"
    foreign = sorted(n for n in os.listdir(path) if n != FETCH_RECORD and n not in files)
    if foreign:
        return f"it holds {short_list(foreign)}, which `torchrec-me fetch` did not write"
    return None


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def fetch_dataset(
    name: str, output: str, *, url: Optional[str] = None, timeout: float = DEFAULT_TIMEOUT, overwrite: bool = False
) -> Path:
    """Download the raw dataset ``name`` into the new directory ``output``; see the module docstring.

    Args:
        name (str): one of :data:`FETCH_REGISTRY`.
        output (str): the directory to create (atomically).
        url (Optional[str]): another address of the same file (a mirror); the expected
            size and sha256 still apply.
        timeout (float): seconds to wait for the server at each step.
        overwrite (bool): replace an existing ``output``.

    Returns:
        Path: the output directory, holding the files and ``fetch.json``.

    Raises:
        FetchError: unknown name, network failure, or a wrong size or checksum.
        PrepareError: ``output`` exists and ``overwrite`` is off.

    Example::

        path = fetch_dataset("movielens-1m", "ml-1m")
        prepare_sequences(str(path), "ml-1m-seq", fmt="movielens")
    """
    if name not in FETCH_REGISTRY:
        raise FetchError(f"unknown dataset {name!r} to fetch; choose one of {', '.join(FETCH_REGISTRY)}")
    remote = FETCH_REGISTRY[name]
    final = output_path(output, overwrite, replaceable=fetched_reason)
    part = partial_path(final, remote)
    source = url or remote.url
    download(source, part, timeout, remote.size)
    record = {"name": name, **verify(part, remote, source)}
    with AtomicOutput(str(final), overwrite, fetched_reason) as out:
        if remote.unpack:
            record["files"] = unpack_zip(part, out.tmp)
        else:
            _link_or_copy(part, out.tmp / remote.filename)  # the partial file stays until the commit
            record["files"] = [remote.filename]
        write_json_atomic(out.tmp / FETCH_RECORD, record)
        path = out.commit(None)
    part.unlink()
    return path
