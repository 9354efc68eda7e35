"""A short end-to-end ``torchrec-me train`` then ``torchrec-me analyze``, in this process."""

import json
from pathlib import Path
from typing import Any, Dict

import pytest
import torch.distributed as dist

from torchrec_me.cli import main as cli_main

KEYS = {
    "val_auc", "val_logloss", "oracle_auc", "train_samples_per_s", "steps",
    "world_size", "num_sets", "embedding_dim", "backbone",
}  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    tmp = tmp_path_factory.mktemp("e2e")
    metrics_file, run_dir = tmp / "m.json", tmp / "run"
    rc = cli_main(
        [
            "train", "train.steps=30", "train.batch_size=256", "train.log_every=10", "train.ia_every=15",
            "model.num_sets=2", "model.hidden_dim=64", "data.val_samples=8192",
            "--run-dir", str(run_dir), "--metrics-out", str(metrics_file), "--no-progress",
        ]
    )  # fmt: skip
    assert rc == 0 and not dist.is_initialized()
    return {"tmp": tmp, "run_dir": run_dir, "metrics": json.loads(metrics_file.read_text())}


def test_metrics(run: Dict[str, Any]) -> None:
    metrics = run["metrics"]
    assert KEYS <= set(metrics)
    assert metrics["steps"] == 30 and metrics["world_size"] == 1 and metrics["num_sets"] == 2
    assert metrics["backbone"] == "dcnv2" and metrics["embedding_dim"] == 12
    assert 0.6 < metrics["oracle_auc"] < 0.95
    assert 0.5 < metrics["val_auc"] <= metrics["oracle_auc"] + 0.01  # learned something, not beyond the teacher
    assert metrics["train_samples_per_s"] > 0
    assert json.loads((run["run_dir"] / "metrics.json").read_text()) == metrics


def test_run_dir_logs(run: Dict[str, Any]) -> None:
    rd = run["run_dir"]
    assert (rd / "config.yaml").exists()
    log = [json.loads(line) for line in (rd / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [10, 15, 20, 30]  # log_every, plus each pause's last step
    ia = [json.loads(line) for line in (rd / "ia_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in ia] == [15, 30]
    for row in ia:
        assert set(row["ia"]) == {"set0", "set1"}
        assert all(1.0 <= v <= 12.0 for v in row["ia"].values())


def test_analyze_writes_report_and_plots(run: Dict[str, Any]) -> None:
    out = run["tmp"] / "analysis"
    assert cli_main(["analyze", "--run", str(run["run_dir"]), "--out", str(out)]) == 0
    report = json.loads((out / "ia.json").read_text())
    assert [s["set"] for s in report["sets"]] == [0, 1]
    for s in report["sets"]:
        assert len(s["tables"]) == 39
        for name, t in s["tables"].items():
            assert name.startswith(f"set{s['set']}__") and t["dim"] == 12
            assert 1.0 <= t["ia_all_rows"] <= 12.0 and 1.0 <= t["ia_trained_rows"] <= 12.0
    # The final live IA row and the checkpoint analysis describe the same tables.
    last = json.loads((run["run_dir"] / "ia_log.jsonl").read_text().splitlines()[-1])
    assert last["ia"]["set1"] == pytest.approx(report["sets"][1]["mean_ia_trained_rows"], rel=1e-6)
    for png in ("spectra.png", "ia_per_field.png", "ia_over_steps.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_analyze_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["analyze", "--run", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "neither a complete checkpoint nor a run dir" in capsys.readouterr().err
