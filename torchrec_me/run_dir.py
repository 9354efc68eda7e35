"""The run directory: the one owner of every file a training run writes.

Layout::

    RUN/config.yaml        the resolved config
    RUN/train_log.jsonl    one JSON row per log step and per validation
    RUN/ia_log.jsonl       one JSON row per live information-abundance report
    RUN/metrics.json       the final metrics
    RUN/checkpoints/...    see torchrec_me.distributed.checkpoint

Only rank 0 writes files. Whole files are written atomically (torchrec_me.atomic); the
two logs are append-only JSON lines, flushed after every row. Without a path (no
``--run-dir``) nothing is written and the logs are dropped.
"""

import json
import os
from pathlib import Path
from typing import IO, Any, Dict, Optional

from torchrec_me.atomic import write_json_atomic, write_text_atomic
from torchrec_me.config import ConfigError


def check_output_file(path: Optional[str], flag: str) -> None:
    """Refuse an output file path that can never be written, before any work starts."""
    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{flag} {path!r} is a directory; give a file path")
    parent = _existing_ancestor(p.parent)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path!r}: directory {str(parent)!r} is not writable")


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


class RunDir:
    """The outputs of one run, written by rank 0 only.

    Args:
        path (Optional[str]): the run directory; None writes nothing.
        is_writer (bool): this process writes (rank 0).

    Example::

        run = RunDir("runs/me4", is_writer=True)
        run.write_config("data: {}\\n")
        run.log({"step": 20, "loss": 0.51})
        run.close()
    """

    CONFIG = "config.yaml"
    TRAIN_LOG = "train_log.jsonl"
    IA_LOG = "ia_log.jsonl"
    METRICS = "metrics.json"

    def __init__(self, path: Optional[str], is_writer: bool) -> None:
        self.path = Path(path) if path else None
        self.is_writer = is_writer
        self._logs: Dict[str, IO[str]] = {}
        if self.path is not None:
            if self.path.exists() and not self.path.is_dir():
                raise ConfigError(f"--run-dir {path!r} exists and is not a directory")
            check_output_file(str(self.path / self.METRICS), "--run-dir")

    @property
    def writes(self) -> bool:
        return self.path is not None and self.is_writer

    def write_config(self, text: str) -> None:
        if self.writes:
            write_text_atomic(self.path / self.CONFIG, text)  # type: ignore[operator]

    def _append(self, name: str, row: Dict[str, Any]) -> None:
        if not self.writes:
            return
        if name not in self._logs:
            self.path.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
            self._logs[name] = open(self.path / name, "a")  # type: ignore[operator]
        f = self._logs[name]
        f.write(json.dumps(row) + "\n")
        f.flush()

    def log(self, row: Dict[str, Any]) -> None:
        """Append ``row`` to the training log."""
        self._append(self.TRAIN_LOG, row)

    def log_ia(self, row: Dict[str, Any]) -> None:
        """Append ``row`` to the live-IA log."""
        self._append(self.IA_LOG, row)

    def write_metrics(self, metrics: Dict[str, Any], also: Optional[str] = None) -> None:
        """Write ``metrics.json`` (and the ``--metrics-out`` file ``also``), atomically."""
        if not self.is_writer:
            return
        if self.path is not None:
            write_json_atomic(self.path / self.METRICS, metrics)
        if also:
            write_json_atomic(also, metrics)

    def close(self) -> None:
        for f in self._logs.values():
            f.close()
        self._logs.clear()
