"""`torchrec-me train` with the sequential backbones on the synthetic sequence default."""

import json
from pathlib import Path

import pytest

from torchrec_me.cli import main as cli_main
from torchrec_me.distributed import checkpoint as ckpt

pytestmark = pytest.mark.slow

SMALL = ["data.num_users=512", "data.num_items=256", "model.max_seq_len=50", "train.eval_every=30",
         "train.steps=60", "train.log_every=10", "--no-progress"]  # fmt: skip
KEYS = [f"{split}_{m}@{k}" for split in ("val", "test") for m in ("hr", "ndcg") for k in (10, 50, 200)]


@pytest.mark.parametrize("preset", ["hstu-se-1x", "sasrec-me-2x", "llama-se-1x"])
def test_sequential_model_beats_popularity(preset: str, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert cli_main(["train", f"model={preset}", *SMALL, "--run-dir", str(run)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert all(k in metrics for k in [*KEYS, "test_mrr", "num_items", "num_users", "backbone", "num_sets"])
    assert metrics["num_items"] == 256 and metrics["test_model"] == "best_checkpoint"
    # Well above popularity, and below the Bayes-optimal ranking of the generator.
    assert metrics["test_hr@10"] > 2 * metrics["popularity_test_hr@10"]
    assert metrics["test_hr@10"] < metrics["test_oracle_hr@10"] + 0.05
    assert ckpt.best_checkpoint(run) is not None


def test_reference_protocol_reports_the_best_test_evaluation(tmp_path: Path) -> None:
    metrics_out = tmp_path / "m.json"
    argv = ["train", "model=hstu-se-1x", *SMALL, "train.eval_protocol=reference", "--metrics-out", str(metrics_out)]
    assert cli_main(argv) == 0
    metrics = json.loads(metrics_out.read_text())
    assert metrics["test_model"] == "best_test_evaluation" and metrics["eval_protocol"] == "reference"
