"""``torchrec-me sweep --grid GRID.yaml --out DIR``: train every cell of a grid.

Each cell is an ordinary ``torchrec-me train`` run whose run dir is ``DIR/cells/NAME/``
(config, logs, checkpoints, ``metrics.json``), plus the sweep's own files there:
``cell.json`` (status, attempts, error, wall time) and ``output.log`` (the run's
stdout and stderr, every attempt appended). Cells run in ``--slots`` parallel slots,
each a subprocess: ``python -m torchrec_me.train`` for one process per cell, or
``torchrun --standalone --nproc-per-node N`` for N. Each slot gets
``OMP_NUM_THREADS = cores / (slots x N)``, so the slots share the cores instead of
fighting over them. With ``--launcher torchx`` each cell is instead a TorchX job of the
``train`` component (``launch/components.py``) on ``--scheduler`` (``local_cwd``,
``slurm``, ``kubernetes``, ...), submitted with ``torchx run --wait`` from the repository
root; ``DIR`` must then be on storage the jobs share. A stopped sweep stops its local
jobs (TorchX's local schedulers stop their replicas on SIGTERM); jobs on a cluster keep
running and are cancelled with ``torchx cancel``.

Resuming: a cell is done when its run wrote ``metrics.json`` and exited 0; a sweep run
again with the same grid skips done cells. A cell that was cut off (the sweep was
killed) starts again with ``--resume`` from its newest intact checkpoint (set
``train.checkpoint_every`` in the grid to lose little). A failed cell is retried once
(``--retries``), then recorded as failed with the tail of its output, and the sweep
goes on; a later sweep leaves failed cells alone unless ``--retry-failed``.
``--max-minutes`` stops starting new cells after that long (the cells already running
finish), which splits a long study into working blocks of the same sweep.

At the end (and on every resume) ``DIR/results.parquet`` and ``DIR/results.csv`` are
rewritten from every cell (:mod:`torchrec_me.scaling.results`). ``DIR/grid.yaml``
keeps the grid the sweep was started with; a grid with other cells in the same ``DIR``
is refused (comments and ``wall_time`` may change between runs).
"""

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Dict, List, Optional

from torchrec_me.atomic import write_json_atomic, write_text_atomic
from torchrec_me.config import ConfigError
from torchrec_me.scaling.grid import Cell, expand, load_grid, parse_grid
from torchrec_me.scaling.results import METRICS_FILE, STATUS_FILE, read_cell_status, write_results

CELLS = "cells"
OUTPUT = "output.log"
LOCK = "sweep.lock"
LAUNCHERS = ("local", "torchx")
#: Lines of a failed cell's output kept as its error.
ERROR_TAIL_LINES = 20


@dataclasses.dataclass(frozen=True)
class SweepOptions:
    """What ``torchrec-me sweep`` was asked to do.

    Args:
        grid (str): the grid file.
        out (str): the sweep directory.
        slots (int): cells run at once.
        nproc_per_cell (int): processes (ranks) per cell; > 1 runs torchrun.
        retries (int): extra attempts of a failed cell.
        retry_failed (bool): run cells a previous sweep recorded as failed.
        max_minutes (Optional[float]): start no new cell after this long.
        threads_per_cell (Optional[int]): OMP threads per process (default: the cores shared out).
        launcher (str): ``local`` (a subprocess per cell) or ``torchx`` (each cell a TorchX
            job of ``component``, submitted with ``torchx run --wait``).
        scheduler (str): the TorchX scheduler (``local_cwd``, ``slurm``, ``kubernetes``...).
        scheduler_args (Optional[str]): ``torchx run -cfg`` (e.g. ``queue=default``).
        component (str): the TorchX component of a cell.
    """

    grid: str
    out: str
    slots: int = 1
    nproc_per_cell: int = 1
    retries: int = 1
    retry_failed: bool = False
    max_minutes: Optional[float] = None
    threads_per_cell: Optional[int] = None
    launcher: str = "local"
    scheduler: str = "local_cwd"
    scheduler_args: Optional[str] = None
    component: str = "launch/components.py:train"

    def validate(self) -> None:
        for name in ("slots", "nproc_per_cell"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.retries < 0:
            raise ConfigError(f"--retries must be >= 0, got {self.retries}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ConfigError(f"--max-minutes must be > 0, got {self.max_minutes}")
        if self.threads_per_cell is not None and self.threads_per_cell < 1:
            raise ConfigError(f"--threads-per-cell must be >= 1, got {self.threads_per_cell}")
        if self.launcher not in LAUNCHERS:
            raise ConfigError(f"--launcher must be one of {LAUNCHERS}, got {self.launcher!r}")
        path = self.component.split(":", 1)[0]
        if self.launcher == "torchx" and path.endswith(".py") and not Path(path).is_file():
            raise ConfigError(f"--component {self.component!r}: {path} does not exist here (run from the repository root)")


def torchx_command(cell: Cell, run_dir: Path, options: "SweepOptions") -> List[str]:
    """``torchx run --wait`` of the cell's training job; the ``train`` component adds
    ``--resume`` for its run dir."""
    torchx = Path(sys.executable).parent / "torchx"
    cmd = [str(torchx) if torchx.is_file() else "torchx", "run", "-s", options.scheduler]
    if options.scheduler_args:
        cmd += ["-cfg", options.scheduler_args]
    cmd += ["--wait", options.component, "-j", f"1x{options.nproc_per_cell}", "--run_dir", str(run_dir)]
    return cmd + ["--", *cell.overrides]


def cell_command(cell: Cell, run_dir: Path, nproc: int) -> List[str]:
    """The command line of one local attempt of ``cell`` (always ``--resume``: a cell
    with no checkpoint yet starts from step 0)."""
    args = [*cell.overrides, "--run-dir", str(run_dir), "--no-progress", "--resume"]
    if nproc == 1:
        return [sys.executable, "-m", "torchrec_me.train", *args]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    return [*launcher, "-m", "torchrec_me.train", *args]


def _threads(options: SweepOptions) -> int:
    if options.threads_per_cell is not None:
        return options.threads_per_cell
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // (options.slots * options.nproc_per_cell))


def _tail(path: Path, lines: int) -> str:
    if not path.is_file():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class _Runner:
    """Runs cells as subprocesses, records their status, and kills them on interrupt."""

    def __init__(self, options: SweepOptions) -> None:
        self.options = options
        self.cells_dir = Path(options.out) / CELLS
        self.env = {**os.environ, "OMP_NUM_THREADS": str(_threads(options)), "PYTHONUNBUFFERED": "1"}
        self.live: Dict[str, subprocess.Popen] = {}
        self.stopping = False

    def command(self, cell: Cell, run_dir: Path) -> List[str]:
        if self.options.launcher == "torchx":
            return torchx_command(cell, run_dir, self.options)
        return cell_command(cell, run_dir, self.options.nproc_per_cell)

    def _attempt(self, cell: Cell, run_dir: Path, attempt: int) -> int:
        command = self.command(cell, run_dir)
        with open(run_dir / OUTPUT, "a") as log:
            log.write(f"\n===== attempt {attempt}: {' '.join(command)}\n")
            log.flush()
            proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
            self.live[cell.name] = proc
            try:
                return proc.wait()
            finally:
                self.live.pop(cell.name, None)

    def run(self, cell: Cell) -> Dict[str, object]:
        run_dir = self.cells_dir / cell.name
        run_dir.mkdir(parents=True, exist_ok=True)
        previous = read_cell_status(run_dir) or {}
        attempts, start = int(previous.get("attempts", 0)), time.perf_counter()
        rc, done = None, False
        for _ in range(self.options.retries + 1):
            attempts += 1
            rc = self._attempt(cell, run_dir, attempts)
            if self.stopping:
                return {"name": cell.name, "status": "interrupted"}
            done = rc == 0 and (run_dir / METRICS_FILE).is_file()
            if done:
                break
        status = {
            "name": cell.name, "overrides": cell.overrides, "values": cell.values,
            "status": "done" if done else "failed", "attempts": attempts, "returncode": rc,
            "wall_seconds": float(previous.get("wall_seconds", 0.0)) + time.perf_counter() - start,
            "error": None if done else (_tail(run_dir / OUTPUT, ERROR_TAIL_LINES) or f"exit code {rc}"),
        }  # fmt: skip
        write_json_atomic(run_dir / STATUS_FILE, status)
        return status

    def kill_all(self, grace_s: float = 30.0) -> None:
        """Stop every running cell: SIGTERM to its process group, SIGKILL after ``grace_s``."""
        self.stopping = True
        procs = list(self.live.values())
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for proc in procs:
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + grace_s
            while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
                time.sleep(0.1)
            if all(p.poll() is not None for p in procs):
                return


def _claim(out: Path, grid_text: str, cells: List[Cell]) -> Path:
    """Create or reuse ``out`` for this grid; refuse another grid (other cells: comments
    and ``wall_time`` may change) or a live sweep."""
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "grid.yaml"
    if saved.is_file() and expand(parse_grid(saved.read_text(), str(saved))) != cells:
        raise ConfigError(f"--out {str(out)!r} holds a sweep of another grid ({saved}); give a new --out, or the same grid to resume")
    lock = out / LOCK
    if lock.is_file():
        pid = int(lock.read_text().strip() or 0)
        if pid and _alive(pid):
            raise ConfigError(f"--out {str(out)!r}: another sweep (pid {pid}) is running there")
    write_text_atomic(lock, str(os.getpid()))
    if not saved.is_file():
        write_text_atomic(saved, grid_text)
    return lock


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid != os.getpid()


def pending_cells(cells: List[Cell], out: Path, retry_failed: bool) -> List[Cell]:
    """The cells still to run: not done, and not failed unless ``retry_failed``."""
    todo = []
    for cell in cells:
        status = (read_cell_status(out / CELLS / cell.name) or {}).get("status")
        if status == "done" or (status == "failed" and not retry_failed):
            continue
        todo.append(cell)
    return todo


def _schedule(runner: _Runner, todo: List[Cell], options: SweepOptions, say=print) -> None:
    """Run ``todo`` over the slots, starting no cell after ``max_minutes``. On an
    interrupt the running cells are stopped before the slots are joined."""
    deadline = None if options.max_minutes is None else time.monotonic() + 60 * options.max_minutes
    queue = list(todo)
    with ThreadPoolExecutor(options.slots) as pool:
        running: Dict[Future, Cell] = {}
        try:
            while queue or running:
                while queue and len(running) < options.slots and (deadline is None or time.monotonic() < deadline):
                    cell = queue.pop(0)
                    say(f"cell {cell.name}: started")
                    running[pool.submit(runner.run, cell)] = cell
                if not running:
                    say(f"--max-minutes {options.max_minutes} reached: {len(queue)} cell(s) left for the next run of this sweep")
                    break
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    _report(runner, running.pop(future), future.result(), say)
        except BaseException:
            runner.kill_all()
            raise


def _report(runner: _Runner, cell: Cell, status: Dict[str, object], say) -> None:
    extra = ""
    if status["status"] == "failed":
        extra = f" after {status['attempts']} attempt(s): see {runner.cells_dir / cell.name / OUTPUT}"
    say(f"cell {cell.name}: {status['status']}{extra}")


def run_sweep(options: SweepOptions, say=print) -> Path:
    """Run every pending cell of ``options.grid`` into ``options.out``; write the results.

    Returns the path of ``results.parquet``.
    """
    options.validate()
    grid, cells = load_grid(options.grid)
    out = Path(options.out)
    lock = _claim(out, Path(options.grid).read_text(), cells)
    runner = _Runner(options)
    try:
        todo = pending_cells(cells, out, options.retry_failed)
        say(f"sweep {out}: {len(cells)} cells, {len(cells) - len(todo)} already recorded, {len(todo)} to run "
            f"({options.slots} slot(s), {options.nproc_per_cell} process(es) per cell, OMP_NUM_THREADS={_threads(options)})")
        previous = _raise_on_sigterm()
        try:
            _schedule(runner, todo, options, say)
        except (KeyboardInterrupt, SweepInterrupted):
            write_results(out, cells)
            raise
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        return write_results(out, cells)
    finally:
        lock.unlink(missing_ok=True)


class SweepInterrupted(Exception):
    """The sweep got SIGTERM (e.g. from a scheduler); its cells were stopped."""


def _raise_on_sigterm() -> Optional[object]:
    """Turn SIGTERM into :class:`SweepInterrupted` in the main thread, so that the running
    cells (each in a session of its own) are stopped rather than orphaned."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum: int, frame: object) -> None:
        raise SweepInterrupted("terminated")

    return signal.signal(signal.SIGTERM, handler)
