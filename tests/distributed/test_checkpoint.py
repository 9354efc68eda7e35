"""Checkpoints: exact resume after kill -9 at world size 2, and resharding 2 -> 1."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict

import pytest
import torch

from tests.multiprocess import run_ranks
from tests.processes import assert_same, flat_checkpoint, kill_tree
from torchrec_me.distributed import checkpoint as ckpt
from torchrec_me.distributed.sharding import init_distributed
from torchrec_me.job import job_from_checkpoint

STEPS = 120
OVERRIDES = [
    f"train.steps={STEPS}", "train.batch_size=128", "train.checkpoint_every=20", "train.keep_checkpoints=2",
    "model.num_sets=2", "model.hidden_dim=32", "model.num_cross_layers=2", "data.val_samples=4096",
    "data.cardinality_scale=0.002", "train.log_every=10",
]  # fmt: skip
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def _torchrun(run_dir: Path, *extra: str) -> subprocess.Popen:
    cmd = [*TORCHRUN, "-m", "torchrec_me.train", *OVERRIDES, "--run-dir", str(run_dir), "--no-progress", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=600)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-4000:]
    return text


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    root = tmp_path_factory.mktemp("ckpt")
    full, crashed = root / "full", root / "crashed"
    _finish(_torchrun(full))

    proc = _torchrun(crashed)
    deadline = time.time() + 300
    while ckpt.latest_checkpoint(crashed) is None:
        assert proc.poll() is None and time.time() < deadline, "run ended before its first checkpoint"
        time.sleep(0.05)
    kill_tree(proc)  # torchrun and both ranks, mid-training
    killed_at = ckpt.read_meta(ckpt.latest_checkpoint(crashed))["step"]
    assert not (crashed / "metrics.json").exists()
    log = _finish(_torchrun(crashed, "--resume"))
    return {"root": root, "full": full, "crashed": crashed, "killed_at": killed_at, "resume_log": log}


def test_killed_run_resumes_to_the_uninterrupted_result(runs: Dict[str, Any]) -> None:
    assert 0 < runs["killed_at"] < STEPS
    assert "resumed from" in runs["resume_log"] and f"at step {runs['killed_at']}" in runs["resume_log"]
    full = json.loads((runs["full"] / "metrics.json").read_text())
    resumed = json.loads((runs["crashed"] / "metrics.json").read_text())
    assert resumed["resumed_from"] and resumed["steps"] == full["steps"] == STEPS
    for key in ("val_samples", "world_size"):
        assert resumed[key] == full[key], key
    # The model and optimizer state are bitwise equal (next test). Evaluation's float32
    # logits come from MKL GEMMs whose last bits can depend on the memory alignment of a
    # process's buffers (seen: AUC 0.6558597684 vs 0.6558597088, logloss equal to 1e-10),
    # so the metrics are compared to float32 rounding, far below any training difference.
    assert resumed["val_auc"] == pytest.approx(full["val_auc"], rel=1e-6, abs=0)
    assert resumed["val_logloss"] == pytest.approx(full["val_logloss"], rel=1e-6, abs=0)


def test_final_checkpoints_are_bitwise_equal(runs: Dict[str, Any], tmp_path: Path) -> None:
    a = flat_checkpoint(ckpt.latest_checkpoint(runs["full"]), tmp_path)
    b = flat_checkpoint(ckpt.latest_checkpoint(runs["crashed"]), tmp_path)
    assert any("ebcs.1" in k for k in a["model"]) and a["optim"]["state"]
    assert_same(a, b)


def test_checkpoint_retention(runs: Dict[str, Any]) -> None:
    steps = [ckpt.read_meta(p)["step"] for p in ckpt.list_checkpoints(runs["full"])]
    assert steps == [STEPS - 20, STEPS]


def _predict(rank: int, world_size: int, path: str) -> torch.Tensor:
    ctx = init_distributed("cpu")
    job = job_from_checkpoint(Path(path), ctx)
    ds, dmp = job.dataset, job.model
    dmp.eval()
    # Global batches 0..3 of the test split; rank r scores those with index % W == r.
    out = {}
    with torch.no_grad():
        for index in range(rank, 4, world_size):
            out[index] = dmp(ds.batch("test", index, 64)[0])[1][1]
    return out


def test_checkpoint_from_two_ranks_loads_on_one(runs: Dict[str, Any]) -> None:
    path = str(ckpt.latest_checkpoint(runs["full"]))
    two = {k: v for r in run_ranks(_predict, world_size=2, path=path) for k, v in r.items()}
    (one,) = run_ranks(_predict, world_size=1, path=path)
    assert sorted(two) == sorted(one) == [0, 1, 2, 3]
    for index in range(4):
        torch.testing.assert_close(one[index], two[index], rtol=1e-6, atol=1e-6)


def test_incomplete_checkpoint_is_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good = ckpt.step_path(tmp_path, 10)
    good.mkdir(parents=True)
    (good / ckpt.META).write_text(json.dumps({"step": 10, "files": {}}))
    (good / ckpt.COMPLETE).write_text("")
    torn = ckpt.step_path(tmp_path, 20)
    torn.mkdir()
    (torn / "__0_0.distcp").write_bytes(b"partial")
    assert ckpt.latest_checkpoint(tmp_path) == good
    assert "incomplete checkpoint" in caplog.text and "step_00000020" in caplog.text
