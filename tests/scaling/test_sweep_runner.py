"""The sweep driver's bookkeeping, with stand-in cell commands instead of training runs:
skipping finished cells, one retry, failures recorded without stopping the sweep, the
time budget, refusing another grid or a live sweep, and stopping cells on SIGTERM."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, List

import pytest

from torchrec_me.config import ConfigError
from torchrec_me.scaling import sweep
from torchrec_me.scaling.results import read_results
from torchrec_me.scaling.sweep import SweepOptions, run_sweep

GRID = "base:\n  train.steps: 3\ngrid:\n  train.seed: [0, 1, 2]\n"
# seed-0 succeeds; seed-1 fails once, then succeeds; seed-2 always fails. Every call is logged.
FAKE = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    name, run = sys.argv[1], Path(sys.argv[2])
    with open(run.parent.parent / "calls.txt", "a") as f:
        f.write(name + "\\n")
    marker = run / "failed_once"
    if name == "seed-2" or (name == "seed-1" and not marker.exists()):
        marker.touch()
        print("boom in", name)
        sys.exit(3)
    (run / "metrics.json").write_text(json.dumps({"test_auc": 0.5 + 0.1 * int(name[-1]), "dense_params": 7}))
""")


@pytest.fixture
def fake_cells(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sweep, "cell_command", lambda cell, run_dir, nproc: [sys.executable, "-c", FAKE, cell.name, str(run_dir)])


def _calls(out: Path) -> List[str]:
    path = out / "calls.txt"
    return path.read_text().split() if path.exists() else []


def _sweep(tmp_path: Path, **kwargs: Any) -> Path:
    grid = tmp_path / "grid.yaml"
    if not grid.exists():
        grid.write_text(GRID)
    out = tmp_path / "out"
    run_sweep(SweepOptions(grid=str(grid), out=str(out), **kwargs), say=lambda text: None)
    return out


def test_retry_once_record_failures_and_keep_going(tmp_path: Path, fake_cells: None) -> None:
    out = _sweep(tmp_path, slots=2)
    assert sorted(_calls(out)) == ["seed-0", "seed-1", "seed-1", "seed-2", "seed-2"]
    status = {r["cell"]: r for r in read_results(out)}
    assert (status["seed-0"]["status"], status["seed-0"]["attempts"]) == ("done", 1)
    assert (status["seed-1"]["status"], status["seed-1"]["attempts"], status["seed-1"]["test_auc"]) == ("done", 2, 0.6)
    assert (status["seed-2"]["status"], status["seed-2"]["attempts"]) == ("failed", 2)
    assert "boom in seed-2" in status["seed-2"]["error"] and status["seed-2"]["test_auc"] is None
    assert json.loads((out / "cells" / "seed-2" / "cell.json").read_text())["returncode"] == 3
    assert not (out / "sweep.lock").exists()


def test_a_second_run_skips_recorded_cells_unless_failed_ones_are_asked_for(tmp_path: Path, fake_cells: None) -> None:
    out = _sweep(tmp_path)
    before = len(_calls(out))
    _sweep(tmp_path)
    assert len(_calls(out)) == before
    _sweep(tmp_path, retry_failed=True, retries=0)
    assert _calls(out)[before:] == ["seed-2"]
    assert {r["cell"]: r["attempts"] for r in read_results(out)}["seed-2"] == 3


def test_the_time_budget_starts_no_cell_after_it(tmp_path: Path, fake_cells: None) -> None:
    out = _sweep(tmp_path, max_minutes=1e-9)
    assert _calls(out) == [] and [r["status"] for r in read_results(out)] == ["pending"] * 3


def test_another_grid_or_a_live_sweep_in_the_directory_is_refused(tmp_path: Path, fake_cells: None) -> None:
    out = _sweep(tmp_path, max_minutes=1e-9)
    (tmp_path / "grid.yaml").write_text(GRID.replace("2]", "3]"))
    with pytest.raises(ConfigError, match="another grid"):
        _sweep(tmp_path)
    (tmp_path / "grid.yaml").write_text("# a comment\nwall_time: 1 min\n" + GRID)  # same cells: resumable
    _sweep(tmp_path, max_minutes=1e-9)
    (out / "sweep.lock").write_text(str(os.getppid()))
    with pytest.raises(ConfigError, match=r"another sweep \(pid"):
        _sweep(tmp_path)
    (out / "sweep.lock").write_text("999999999")  # a dead sweep's lock is taken over
    _sweep(tmp_path, max_minutes=1e-9)


@pytest.mark.parametrize("bad, message", [({"slots": 0}, "--slots"), ({"retries": -1}, "--retries"), ({"max_minutes": 0}, "--max-minutes")])
def test_bad_options_are_refused(tmp_path: Path, bad: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _sweep(tmp_path, **bad)


@pytest.mark.slow
def test_sigterm_stops_the_running_cells(tmp_path: Path) -> None:
    (tmp_path / "grid.yaml").write_text(GRID)
    driver = textwrap.dedent(f"""
        import sys
        from torchrec_me.scaling import sweep
        from torchrec_me.scaling.commands import run_sweep_from_args
        from argparse import Namespace
        script = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(120)"
        sweep.cell_command = lambda cell, run_dir, nproc: [sys.executable, "-c", script, str(run_dir / "pid")]
        args = Namespace(grid={str(tmp_path / 'grid.yaml')!r}, out={str(tmp_path / 'out')!r}, slots=2, nproc_per_cell=1,
                         retries=1, retry_failed=False, max_minutes=None, threads_per_cell=None, launcher="local",
                         scheduler="local_cwd", scheduler_args=None, component="launch/components.py:train")
        sys.exit(run_sweep_from_args(args))
    """)
    proc = subprocess.Popen([sys.executable, "-c", driver], stderr=subprocess.PIPE, text=True)
    pid_files = [tmp_path / "out" / "cells" / f"seed-{i}" / "pid" for i in (0, 1)]
    deadline = time.monotonic() + 120
    while not all(p.exists() and p.read_text() for p in pid_files):
        assert proc.poll() is None and time.monotonic() < deadline, "the cells never started"
        time.sleep(0.2)
    children = [int(p.read_text()) for p in pid_files]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "the same command resumes it" in err
    for pid in children:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    rows = read_results(tmp_path / "out")
    assert [r["status"] for r in rows] == ["pending"] * 3  # nothing recorded: all resume next time


def test_torchx_launcher_submits_each_cell_as_a_train_job(tmp_path: Path) -> None:
    cell = sweep.Cell("seed-0", ["model=dcnv2-se-1x", "train.seed=0"], {"train.seed": 0})
    options = SweepOptions(grid="g.yaml", out=str(tmp_path), nproc_per_cell=2, launcher="torchx", scheduler="slurm",
                           scheduler_args="partition=cpu")  # fmt: skip
    cmd = sweep.torchx_command(cell, tmp_path / "cells" / "seed-0", options)
    assert cmd[1:] == ["run", "-s", "slurm", "-cfg", "partition=cpu", "--wait", "launch/components.py:train", "-j", "1x2",
                       "--run_dir", str(tmp_path / "cells" / "seed-0"), "--", "model=dcnv2-se-1x", "train.seed=0"]  # fmt: skip
    with pytest.raises(ConfigError, match="--launcher"):
        SweepOptions(grid="g", out="o", launcher="ssh").validate()
    with pytest.raises(ConfigError, match="does not exist here"):
        SweepOptions(grid="g", out="o", launcher="torchx", component=str(tmp_path / "none.py:train")).validate()
