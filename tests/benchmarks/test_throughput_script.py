"""benchmarks/throughput.py runs end to end on tiny tables (a functional check, untimed).

Numbers are not asserted (they are the script's output); the rows' keys, the sweep's
configurations and the roofline arithmetic are.
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest

ROOT = Path(__file__).resolve().parents[2]
KEYS = {"backbone", "num_sets", "embedding_dim", "layout", "world_size", "device", "samples_per_s",
        "roofline_fraction", "peak_mem_mb"}  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    out = tmp_path_factory.mktemp("throughput") / "rows.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--world-sizes", "1", "2",
           "--scales", "1", "2", "--layout-k", "2", "--batch-size", "64", "--steps", "4", "--rounds", "2",
           "--warmup", "1", "--num-batches", "2", "--cardinality-scale", "0.0002", "--peak-reps", "1",
           "--profile", "--json", str(out)]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"stdout": proc.stdout, "rows": json.loads(out.read_text())}


def test_rows_have_the_documented_keys(run: Dict[str, Any]) -> None:
    rows: List[Dict[str, Any]] = run["rows"]
    for r in rows:
        assert KEYS <= set(r), KEYS - set(r)
        assert r["samples_per_s"] > 0 and r["peak_mem_mb"] > 0 and r["device"] == "cpu"
        # Per round: samples/s against that round's peak; the median of the rounds is quoted.
        assert len(r["roofline_fraction_by_round"]) == 2
        assert min(r["roofline_fraction_by_round"]) <= r["roofline_fraction"] <= max(r["roofline_fraction_by_round"])
        assert r["roofline_fraction_best_peak"] == pytest.approx(
            r["samples_per_s"] * r["dense_gflop_per_sample"] / r["matmul_peak_gflops_best"]
        )
        assert r["matmul_peak_gflops"] <= r["matmul_peak_gflops_best"]
        assert r["steps"] == 4


def test_sweep_covers_scale_layouts_dense_path_and_world_sizes(run: Dict[str, Any]) -> None:
    got = {(r["model"], r["num_sets"], r["embedding_dim"], r["layout"], r["world_size"], r["dense_path"])
           for r in run["rows"]}  # fmt: skip
    expected_ws1 = {
        ("ME", 2, 12, "separate", 1, "reference"), ("ME", 2, 12, "separate", 1, "fused"),
        ("SE", 1, 12, "separate", 1, "fused"), ("SE", 1, 24, "separate", 1, "fused"),
        ("ME", 2, 12, "grouped", 1, "fused"), ("ME", 2, 12, "packed", 1, "fused"),
    }  # fmt: skip
    assert expected_ws1 <= got
    assert {("ME", 2, 12, "separate", 2, "fused"), ("ME", 2, 12, "packed", 2, "fused")} <= got
    # SE-2x has twice the dim of ME-2x's sets: the DCNv2 cross layers cost 4x per set.
    flops = {(r["num_sets"], r["embedding_dim"]): r["dense_gflop_per_sample"] for r in run["rows"]}
    assert flops[(1, 24)] > flops[(2, 12)] > flops[(1, 12)]


def test_report_prints_every_table(run: Dict[str, Any]) -> None:
    for title in ("### SE vs ME by scale", "### Layouts (world size 1)", "### Layouts (world size 2)",
                  "### Dense path", "### World size", "### Profile: dcnv2 ME K=2 D=12 separate W=1", "matmul peak"):  # fmt: skip
        assert title in run["stdout"], title
