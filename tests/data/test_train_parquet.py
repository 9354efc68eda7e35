"""``torchrec-me train data.path=DIR`` on tiny prepared datasets, in this process and on 2 gloo ranks."""

import json
from pathlib import Path
from typing import Any, Dict

import pytest
import torch.distributed as dist

from tests.data.rawfiles import criteo_rows, write_criteo
from tests.multiprocess import run_ranks
from torchrec_me.cli import main as cli_main
from torchrec_me.data.prepare.common import PrepareOptions
from torchrec_me.data.prepare.criteo import prepare_criteo
from torchrec_me.job import load_job_config
from torchrec_me.train import train

TINY = ["model.num_sets=2", "model.hidden_dim=16", "train.steps=5", "train.batch_size=64", "train.log_every=5"]


@pytest.fixture(scope="module")
def criteo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("train")
    raw = write_criteo(tmp / "train.txt", criteo_rows(2010, seed=4))  # val and test: 201 and 201 rows
    options = PrepareOptions(progress=False, summary=False)
    prepare_criteo(str(raw), str(tmp / "criteo"), options, dense_log=True, min_count=3)
    return tmp / "criteo"


def test_train_in_process(criteo_dir: Path, tmp_path: Path) -> None:
    metrics_file = tmp_path / "m.json"
    argv = ["train", f"data.path={criteo_dir}", *TINY, "train.eval_every=5", "train.eval_batch_size=50"]
    assert cli_main(argv + ["--no-progress", "--metrics-out", str(metrics_file)]) == 0
    assert not dist.is_initialized()
    metrics = json.loads(metrics_file.read_text())
    assert metrics["dataset"] == "parquet" and metrics["steps"] == 5 and metrics["oracle_auc"] is None
    assert metrics["val_samples"] == 201  # every validation row scored once, the last partial batch too
    assert 0.0 <= metrics["val_auc"] <= 1.0 and 0.0 <= metrics["test_auc"] <= 1.0


def _train_rank(rank: int, world_size: int, path: str) -> Dict[str, Any]:
    cfg = load_job_config(overrides=[f"data.path={path}", *TINY, "train.eval_batch_size=32"])
    return train(cfg, progress=False)


def test_train_two_ranks(criteo_dir: Path) -> None:
    m0, m1 = run_ranks(_train_rank, world_size=2, path=str(criteo_dir))
    # 201 rows on 2 ranks: 100 each in batches of 32, 32, 32, 4, then one 1-row batch (real on rank 0 only).
    assert m0["world_size"] == 2 and m0["val_samples"] == m1["val_samples"] == 201
    assert m0["val_auc"] == m1["val_auc"] and m0["steps"] == m1["steps"] == 5
