"""A short end-to-end ``torchrec-me train`` in this process (world size 1)."""

import json
from pathlib import Path

import torch.distributed as dist

from torchrec_me.cli import main as cli_main

KEYS = {
    "val_auc", "val_logloss", "oracle_auc", "train_samples_per_s", "steps",
    "world_size", "num_sets", "embedding_dim", "backbone",
}  # fmt: skip


def test_train_cli_end_to_end(tmp_path: Path, capsys) -> None:
    metrics_file = tmp_path / "m.json"
    run_dir = tmp_path / "run"
    rc = cli_main(
        [
            "train", "train.steps=30", "train.batch_size=256", "train.log_every=10",
            "model.num_sets=2", "model.hidden_dim=64", "data.val_samples=8192",
            "--run-dir", str(run_dir), "--metrics-out", str(metrics_file), "--no-progress",
        ]
    )  # fmt: skip
    assert rc == 0 and not dist.is_initialized()
    metrics = json.loads(metrics_file.read_text())
    assert KEYS <= set(metrics)
    assert metrics["steps"] == 30 and metrics["world_size"] == 1 and metrics["num_sets"] == 2
    assert metrics["backbone"] == "dcnv2" and metrics["embedding_dim"] == 12
    assert 0.6 < metrics["oracle_auc"] < 0.95
    assert 0.5 < metrics["val_auc"] <= metrics["oracle_auc"] + 0.01  # learned something, not beyond the teacher
    assert metrics["train_samples_per_s"] > 0
    assert json.loads((run_dir / "metrics.json").read_text()) == metrics
    assert (run_dir / "config.yaml").exists()
    log = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [10, 20, 30]
    out = capsys.readouterr().out
    assert "sharding plan" in out and "set1__C39" in out and "validation: auc" in out
