"""Where a converter's output goes: checked before any work, replaced only when it is ours.

* **Checked first.** :func:`output_path` runs before a converter reads its input: the
  output must not be (or contain) the input, its directory must be creatable (no file
  in the way, write permission), and an existing output must be replaceable.

* **What ``overwrite`` may replace.** Only a prepared dataset (:func:`dataset_reason`):
  a directory holding a ``metadata.json`` of a ``torchrec_me.*`` format and otherwise
  only Parquet files, or an empty directory. Anything else (a file, a directory of raw
  data or notes, the input itself or a directory holding it) is refused with an error
  naming the path, and the check is repeated just before the swap. ``fetch`` passes its
  own rule.

* **Atomic output.** Everything is written into a hidden temporary directory next to
  the output (``.NAME.incomplete-XXXX``, see :class:`torchrec_me.atomic.AtomicDir`),
  ``metadata.json`` last, and the directory is renamed to the output at the end. An
  exception removes the temporary directory. A killed process can leave it behind (the
  reader refuses it: it is not the output); the next run for the same output removes
  such leftovers and says so (:func:`remove_incomplete`). A running writer holds a
  ``flock`` on its temporary directory, so a concurrent run never takes it for a leftover.
"""

import fcntl
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, List, Mapping, Optional, Sequence

from torchrec_me.atomic import AtomicDir, write_text_atomic
from torchrec_me.data.prepare.common import PrepareError
from torchrec_me.data.store import METADATA_FILE, strip_file_uri

OUR_FORMATS = "torchrec_me."  # the prefix of every format name torchrec_me writes into metadata.json
Replaceable = Callable[[Path], Optional[str]]  # why an existing output may not be replaced, or None


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
