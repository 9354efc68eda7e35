"""``torchrec-me predict``: scores of a prepared split, on 1 and 2 ranks, against training's test AUC."""

import json
from pathlib import Path
from typing import Any, Dict

import pyarrow.parquet as pq
import pytest
import torch
from torchmetrics.functional.classification import binary_auroc

from tests.data.rawfiles import criteo_rows, write_criteo
from tests.multiprocess import run_ranks
from torchrec_me.cli import main as cli_main
from torchrec_me.data.prepare.common import PrepareOptions
from torchrec_me.data.prepare.criteo import prepare_criteo
from torchrec_me.distributed import checkpoint as ckpt
from torchrec_me.predict import predict

TINY = ["model.num_sets=2", "model.hidden_dim=16", "train.steps=6", "train.batch_size=64", "train.log_every=3",
        "train.eval_every=3", "train.eval_batch_size=50"]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    tmp = tmp_path_factory.mktemp("predict")
    raw = write_criteo(tmp / "train.txt", criteo_rows(2010, seed=5))
    data = tmp / "criteo"
    prepare_criteo(str(raw), str(data), PrepareOptions(progress=False, summary=False), min_count=3)
    run = tmp / "run"
    assert cli_main(["train", f"data.path={data}", *TINY, "--run-dir", str(run), "--no-progress"]) == 0
    return {"data": data, "run": run, "metrics": json.loads((run / "metrics.json").read_text()), "tmp": tmp}


def test_scores_reproduce_the_reported_test_auc(trained: Dict[str, Any]) -> None:
    out = trained["tmp"] / "scores.parquet"
    best = ckpt.best_checkpoint(trained["run"])
    assert best is not None
    argv = ["predict", "--checkpoint", str(best), "--data", str(trained["data"]), "--out", str(out)]
    assert cli_main(argv) == 0
    table = pq.read_table(out).to_pydict()
    test_rows = json.loads((trained["data"] / "metadata.json").read_text())["splits"]["test"]["rows"]
    assert table["row"] == list(range(test_rows))  # every test row once, in file order
    labels = pq.read_table(trained["data"] / "test.parquet", columns=["label"]).column("label").to_pylist()
    assert table["label"] == labels
    torch.testing.assert_close(torch.tensor(table["score"]), torch.sigmoid(torch.tensor(table["logit"])))
    auc = float(binary_auroc(torch.tensor(table["score"]), torch.tensor(labels)))
    assert auc == pytest.approx(trained["metrics"]["test_auc"], abs=1e-7)


def _predict_rank(rank: int, world_size: int, ckpt_dir: str, data: str, out: str) -> Dict[str, Any]:
    return predict(ckpt_dir, data, out, batch_size=32)


def test_two_ranks_score_the_same(trained: Dict[str, Any]) -> None:
    best = str(ckpt.best_checkpoint(trained["run"]))
    one, two = trained["tmp"] / "one.parquet", trained["tmp"] / "two.parquet"
    (r1,) = run_ranks(_predict_rank, world_size=1, ckpt_dir=best, data=str(trained["data"]), out=str(one))
    r2a, r2b = run_ranks(_predict_rank, world_size=2, ckpt_dir=best, data=str(trained["data"]), out=str(two))
    assert r1["rows"] == r2a["rows"] == r2b["rows"] > 0
    a, b = pq.read_table(one).to_pydict(), pq.read_table(two).to_pydict()
    assert a["row"] == b["row"] and a["label"] == b["label"]
    torch.testing.assert_close(torch.tensor(a["logit"]), torch.tensor(b["logit"]), rtol=1e-5, atol=1e-5)
    assert r2a["auc"] == pytest.approx(r1["auc"], abs=1e-6)


def test_mismatched_dataset_is_refused(trained: Dict[str, Any], capsys: pytest.CaptureFixture) -> None:
    other = trained["tmp"] / "other"
    raw = write_criteo(trained["tmp"] / "other.txt", criteo_rows(600, seed=9))
    prepare_criteo(str(raw), str(other), PrepareOptions(progress=False, summary=False), min_count=2)
    out = trained["tmp"] / "never.parquet"
    argv = ["predict", "--checkpoint", str(trained["run"]), "--data", str(other), "--out", str(out)]
    assert cli_main(argv) == 2
    assert "does not match the checkpoint's dataset" in capsys.readouterr().err
    assert not out.exists()
