"""The shipped tiny grid end to end with real training runs: a sweep killed while a cell
is training resumes (finished cells skipped, the cut-off cell from its checkpoint), then
the results table holds every cell's cost and metrics and ``fit`` writes its report and
plot. Also the TorchX ``sweep`` component on ``local_cwd``."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict

import pytest

from torchrec_me.distributed import checkpoint as ckpt
from torchrec_me.scaling.results import read_results

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
GRID = REPO / "benchmarks" / "scaling" / "tiny.yaml"
CELLS = ["embedding_dim-4", "embedding_dim-8", "embedding_dim-12"]
CLI = [sys.executable, "-m", "torchrec_me.cli"]


def _attempts(cell_dir: Path) -> int:
    return (cell_dir / "output.log").read_text().count("===== attempt")


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sweep") / "tiny"
    argv = [*CLI, "sweep", "--grid", str(GRID), "--out", str(out)]
    first = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    second = out / "cells" / CELLS[1]
    deadline = time.monotonic() + 300
    while not (second.is_dir() and ckpt.latest_checkpoint(second) is not None):
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()[0][-3000:]
        time.sleep(0.2)
    first.send_signal(signal.SIGTERM)
    log = first.communicate(timeout=120)[0]
    assert first.returncode == 130, log[-3000:]
    assert json.loads((out / "cells" / CELLS[0] / "cell.json").read_text())["status"] == "done"
    assert not (second / "cell.json").exists()
    done = subprocess.run([*argv, "--slots", "2"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def test_the_resumed_sweep_skips_finished_cells_and_resumes_the_cut_off_one(swept: Path) -> None:
    cells = swept / "cells"
    assert _attempts(cells / CELLS[0]) == 1
    assert _attempts(cells / CELLS[1]) == 2
    resumed = json.loads((cells / CELLS[1] / "metrics.json").read_text())["resumed_from"]
    assert resumed is not None and "step_" in resumed
    assert json.loads((cells / CELLS[2] / "metrics.json").read_text())["resumed_from"] is None


def test_results_hold_cost_metrics_and_ia_of_every_cell(swept: Path) -> None:
    rows: Dict[str, dict] = {r["cell"]: r for r in read_results(swept)}
    assert sorted(rows) == sorted(CELLS) and all(r["status"] == "done" for r in rows.values())
    sparse = [rows[c]["sparse_params"] for c in CELLS]
    assert sparse[1] == 2 * sparse[0] and sparse[2] == 3 * sparse[0]  # rows x dim
    for r in rows.values():
        assert 0.4 < r["val_auc"] < 1 and r["train_samples"] == 9 * 256
        assert r["train_flops"] == pytest.approx(r["train_flops_per_sample"] * r["train_samples"])
        assert r["ia_mean_trained_rows"] > 1 and r["wall_seconds"] > 0 and r["model.embedding_dim"] in (4, 8, 12)
    assert (swept / "results.csv").read_text().startswith("cell,status,attempts,wall_seconds,error,overrides")


def test_fit_writes_report_plot_and_the_held_out_check(swept: Path) -> None:
    fit = subprocess.run([*CLI, "fit", "--sweep", str(swept), "--x", "params", "--y", "val_auc", "--group", "backbone",
                          "--bootstrap", "50"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert fit.returncode == 0, fit.stderr[-3000:]
    report = (swept / "fits" / "val_auc_vs_params.md").read_text()
    assert "| dcnv2 |" in report
    payload = json.loads((swept / "fits" / "val_auc_vs_params.json").read_text())["dcnv2"]
    assert payload["form"] == "loglinear" and payload["verdict"] in ("holds", "fails")
    observed = [r["val_auc"] for r in read_results(swept) if r["cell"] == CELLS[2]][0]
    assert payload["observed"] == pytest.approx(observed)
    assert (swept / "fits" / "val_auc_vs_params.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _two_cells(tmp_path: Path) -> Path:
    grid = tmp_path / "two.yaml"
    grid.write_text(GRID.read_text().replace("[4, 8, 12]", "[4, 8]").replace("train.steps: 9", "train.steps: 3")
                    .replace("train.eval_every: 9", "train.eval_every: 3").replace("train.ia_every: 9", "train.ia_every: 0"))
    return grid


ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def test_torchx_sweep_component_runs_a_two_cell_sweep_on_local_cwd(tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = [str(Path(sys.executable).parent / "torchx"), "run", "-s", "local_cwd", "launch/components.py:sweep",
            "--grid", str(_two_cells(tmp_path)), "--out", str(out), "--slots", "2"]  # fmt: skip
    run = subprocess.run(argv, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = read_results(out)
    assert [r["status"] for r in rows] == ["done", "done"] and all(r["val_auc"] > 0.4 for r in rows)


def test_every_cell_a_torchx_job_on_local_cwd(tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = [*CLI, "sweep", "--grid", str(_two_cells(tmp_path)), "--out", str(out), "--launcher", "torchx",
            "--scheduler", "local_cwd", "--nproc-per-cell", "2"]  # fmt: skip
    run = subprocess.run(argv, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = read_results(out)
    assert [r["status"] for r in rows] == ["done", "done"] and [r["world_size"] for r in rows] == [2, 2]
    assert "torchx" in (out / "cells" / "embedding_dim-4" / "output.log").read_text().splitlines()[1]
