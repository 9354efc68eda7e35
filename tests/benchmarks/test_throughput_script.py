"""benchmarks/throughput.py end to end on tiny tables, at world sizes 1 and 2 (untimed).

The numbers are the script's output, not asserted; what is asserted is that it measured
exactly the configurations asked for, wrote the documented JSON keys, printed every
table with one row per configuration and the machine under each, and that the counted
FLOPs order the models as their shapes do.
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest

from tests.benchmarks import markdown

pytestmark = pytest.mark.slow  # runs the script, which spawns the ranks of world size 2

ROOT = Path(__file__).resolve().parents[2]
#: The keys of a JSON row (benchmarks/README.md's tables and results/*.json use them).
DOCUMENTED_KEYS = {
    "backbone", "model", "num_sets", "embedding_dim", "layout", "world_size", "device", "dense_path",
    "sections", "batch_size", "sparse_optimizer", "threads_per_rank", "steps", "rounds", "step_ms",
    "samples_per_s", "samples_per_s_mean", "samples_per_s_best", "dense_gflop_per_sample",
    "roofline_fraction", "roofline_fraction_by_round", "peak_mem_mb", "cores_busy_per_rank", "profile",
    "matmul_peak_gflops", "matmul_peak_gflops_best", "roofline_samples_per_s", "roofline_fraction_best_peak",
    "machine",
}  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    out = tmp_path_factory.mktemp("throughput") / "rows.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--world-sizes", "1", "2",
           "--scales", "1", "2", "--layout-k", "2", "--layouts", "separate", "packed", "--batch-size", "32",
           "--steps", "2", "--rounds", "2", "--warmup", "1", "--num-batches", "2", "--cardinality-scale", "0.0002",
           "--peak-reps", "1", "--device", "cpu", "--profile", "--json", str(out)]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"stdout": proc.stdout, "rows": json.loads(out.read_text())}


def _config(r: Dict[str, Any]) -> tuple:
    return (r["model"], r["num_sets"], r["embedding_dim"], r["layout"], r["world_size"], r["dense_path"])


def test_it_measured_exactly_the_configurations_asked_for(run: Dict[str, Any]) -> None:
    assert sorted(_config(r) for r in run["rows"]) == sorted([
        ("ME", 2, 12, "separate", 1, "reference"), ("ME", 2, 12, "separate", 1, "fused"),
        ("SE", 1, 12, "separate", 1, "fused"), ("SE", 1, 24, "separate", 1, "fused"),
        ("ME", 2, 12, "packed", 1, "fused"),
        # world size 2: no SE-Kx for K > 1 and no reference path
        ("SE", 1, 12, "separate", 2, "fused"), ("ME", 2, 12, "separate", 2, "fused"),
        ("ME", 2, 12, "packed", 2, "fused"),
    ])  # fmt: skip


def test_rows_have_the_documented_keys_and_counts(run: Dict[str, Any]) -> None:
    w1_threads = {r["threads_per_rank"] for r in run["rows"] if r["world_size"] == 1}
    for r in run["rows"]:
        assert set(r) == DOCUMENTED_KEYS
        assert (r["steps"], r["rounds"], len(r["roofline_fraction_by_round"])) == (2, 2, 2)
        assert (r["device"], r["batch_size"], r["sparse_optimizer"]) == ("cpu", 32, "adagrad")
        assert r["samples_per_s"] > 0 and r["peak_mem_mb"] > 0 and r["matmul_peak_gflops"] > 0
        assert (r["profile"] is not None) == (r["world_size"] == 1 and r["dense_path"] == "fused")
        if r["world_size"] == 2:  # the spawned ranks share this process's threads
            assert {r["threads_per_rank"]} == {max(1, t // 2) for t in w1_threads}


def test_flops_follow_the_shapes(run: Dict[str, Any]) -> None:
    flops: Dict[tuple, List[float]] = {}
    for r in run["rows"]:
        flops.setdefault((r["num_sets"], r["embedding_dim"]), []).append(r["dense_gflop_per_sample"])
    # Same model (fused or plain kernels, any layout, any world size): the same FLOPs.
    assert all(len(set(v)) == 1 for v in flops.values())
    # The cross layers cost (F D)^2 per set: SE-2x (one set of 2D) > ME-2x (two of D) > SE-1x.
    assert flops[(1, 24)][0] > flops[(2, 12)][0] > flops[(1, 12)][0]


def test_report_prints_a_row_per_configuration_and_the_machine_under_every_table(run: Dict[str, Any]) -> None:
    stdout, rows = run["stdout"], run["rows"]
    tables = markdown.tables(stdout)
    profiles = [t for t in tables if t.startswith("Profile: ")]
    assert set(tables) - set(profiles) == {
        "SE vs ME by scale (world size 1)", "Layouts (world size 1)", "Layouts (world size 2)",
        "Dense path (world size 1)", "World size",
    }  # fmt: skip
    assert len(profiles) == 4  # the fused configurations at world size 1
    expected_rows = {"SE vs ME by scale (world size 1)": 3, "Layouts (world size 1)": 2,
                     "Layouts (world size 2)": 2, "Dense path (world size 1)": 2, "World size": 6}  # fmt: skip
    for title, n in expected_rows.items():
        assert len(tables[title]) == 1 + n, title
    scale = tables["SE vs ME by scale (world size 1)"]
    assert scale[0] == ["backbone", "model", "num_sets", "embedding_dim", "layout", "world_size",
                        "dense_gflop_per_sample", "roofline_samples_per_s", "samples_per_s", "step_ms",
                        "roofline_fraction", "roofline_fraction_best_peak", "peak_mem_mb"]  # fmt: skip
    shown = {(r[1], r[2], r[3]): r[8] for r in scale[1:]}
    for r in rows:
        if "scale" in r["sections"] and r["world_size"] == 1:
            assert shown[(r["model"], str(r["num_sets"]), str(r["embedding_dim"]))] == f"{r['samples_per_s']:,.0f}"
    machine = rows[0]["machine"]
    assert machine.split(",")[0].strip() and "cores" in machine
    machine_lines = [line for line in stdout.splitlines() if line.startswith("Machine: ")]
    assert len(machine_lines) == len(tables) and all(machine in m and "GFLOP/s" in m for m in machine_lines)
