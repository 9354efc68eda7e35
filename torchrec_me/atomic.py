"""Atomic writes: every file and directory torchrec_me writes is complete or absent.

This is the one place that knows how: write beside the target under a hidden temporary
name, flush, then ``os.replace`` it into place. A crash (``kill -9`` included) leaves at
most a hidden ``.NAME.tmp*`` file or ``.NAME.incomplete-*`` directory, never a
half-written target.
"""

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional, Union

PathLike = Union[str, "os.PathLike[str]"]


@contextlib.contextmanager
def atomic_file(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on a clean exit it replaces ``path``.

    Example::

        with atomic_file("out/scores.parquet") as tmp:
            pyarrow.parquet.write_table(table, tmp)
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (fsynced before the rename)."""
    with atomic_file(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def write_json_atomic(path: PathLike, payload: Any, indent: Optional[int] = 2) -> Path:
    """Write ``payload`` as JSON (sorted keys, trailing newline) to ``path`` atomically."""
    return write_text_atomic(path, json.dumps(payload, indent=indent, sort_keys=True) + "\n")


class AtomicDir:
    """A hidden temporary directory beside ``final`` that becomes ``final`` on :meth:`commit`.

    Leaving the context by an exception (``KeyboardInterrupt`` included) removes the
    temporary directory. With ``overwrite``, an existing ``final`` is replaced only once the
    new one is complete (rename aside, rename in, remove the old one).

    Args:
        final (Path): the directory to create.
        overwrite (bool): replace an existing ``final`` on commit.

    Example::

        with AtomicDir(Path("prepared")) as out:
            (out.tmp / "train.parquet").write_bytes(b"...")
            out.commit()
    """

    INCOMPLETE = ".incomplete-"

    def __init__(self, final: Path, overwrite: bool = False) -> None:
        self.final = Path(final)
        self.overwrite = overwrite
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.final.name}{self.INCOMPLETE}", dir=self.final.parent))
        self.committed = False

    def __enter__(self) -> "AtomicDir":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if not self.committed:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def commit(self) -> Path:
        """Rename the temporary directory to ``final``; raises FileExistsError if ``final``
        exists and ``overwrite`` is off."""
        os.chmod(self.tmp, 0o777 & ~_umask())  # mkdtemp made it private
        old: Optional[Path] = None
        if self.final.exists():
            if not self.overwrite:
                raise FileExistsError(f"{self.final} appeared while it was being written; not replacing it")
            old = self.final.with_name(f".{self.final.name}.old-{os.getpid()}")
            os.rename(self.final, old)
        os.rename(self.tmp, self.final)
        self.committed = True
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.final


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
