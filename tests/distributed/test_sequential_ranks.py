"""Sharded sequential training on 2 gloo ranks takes the steps of 1 process, step for step.

The job (``build_job``: planner, DMP, AdamW on the dense part, and on the item tables
either FBGEMM's fused row-wise Adagrad (sharded) or ``adam_dense``, Adam on replicated
tables) trains an ME-2x HSTU on the synthetic sequences, once on one
rank with the global batch and once on two ranks with half of it each. The rows of a
global batch have different lengths, so the two ranks hold different numbers of
predicted positions: the losses only agree because ``SequentialTrain`` normalises by
the global position count. Negatives are counter-based (same ids on any world size);
dropout is 0 and in-batch negatives are off, the two sources of per-rank randomness.
"""

from typing import Any, Dict, List

import pytest
import torch

from tests.multiprocess import run_ranks
from torchrec_me.config import Config
from torchrec_me.distributed.sharding import init_distributed, load_unsharded_state_dict
from torchrec_me.job import build_job, build_train_module, load_job_config
from torchrec_me.loop import make_pipeline

GLOBAL_BATCH, STEPS = 16, 5
# FBGEMM's fused row-wise Adagrad on sharded tables, and Adam on replicated ones (DDP).
OPTIMIZERS = ("rowwise_adagrad", "adam_dense")


def _cfg(world_size: int, sparse_optimizer: str) -> Config:
    return load_job_config(overrides=[f"train.sparse_optimizer={sparse_optimizer}",
        "model=hstu-me-2x", "model.max_seq_len=20", "model.dropout=0", "model.num_negatives=16",
        "data.num_users=128", "data.num_items=100", f"train.batch_size={GLOBAL_BATCH // world_size}",
        "train.sparse_lr=0.05", "train.dense_lr=0.01",
    ])  # fmt: skip


def _worker(rank: int, world_size: int) -> Dict[str, Dict[str, Any]]:
    ctx = init_distributed("cpu")
    out = {opt: _train(rank, world_size, ctx, opt) for opt in OPTIMIZERS}
    out["ranking"] = _train_ranking(rank, world_size, ctx)
    return out


def _train_ranking(rank: int, world_size: int, ctx: Any) -> Dict[str, Any]:
    """The ME-2x HSTU ranker on implicit synthetic rows (one sampled negative each)."""
    cfg = load_job_config(overrides=[
        "model=hstu-me-2x", "model.task=ranking", "model.max_seq_len=12", "model.dropout=0", "model.hidden_dim=32",
        "data.num_users=64", "data.num_items=100", f"train.batch_size={GLOBAL_BATCH // world_size}",
        "train.sparse_lr=0.05", "train.dense_lr=0.01", "train.eval_batch_size=16",
    ])  # fmt: skip
    job = build_job(cfg, ctx)
    torch.manual_seed(0)
    load_unsharded_state_dict(job.model, build_train_module(cfg, job.dataset).state_dict())
    pipeline = make_pipeline(job)
    batches = job.family.train_batches(job.dataset, job.cfg, rank, world_size, 0, STEPS)
    losses = [pipeline.progress(batches)[0].item() for _ in range(STEPS)]
    pipelined = len(pipeline._pipelined_modules)
    pipeline.detach()
    val = job.family.evaluate(job.model, job.dataset, ctx, job.cfg, "val")
    arch = {k: v.detach().clone() for k, v in job.model.module.model.arch.state_dict().items()}
    return {"losses": losses, "pipelined": pipelined, "val": val, "arch": arch}


def _train(rank: int, world_size: int, ctx: Any, sparse_optimizer: str) -> Dict[str, Any]:
    cfg = _cfg(world_size, sparse_optimizer)
    job = build_job(cfg, ctx)
    # The same initial weights on any world size (sharded initialisation draws per shard).
    torch.manual_seed(0)
    load_unsharded_state_dict(job.model, build_train_module(cfg, job.dataset).state_dict())
    pipeline = make_pipeline(job)
    batches = job.family.train_batches(job.dataset, job.cfg, rank, world_size, 0, STEPS)
    positions, losses = [], []
    for _ in range(STEPS):
        loss, logits, _ = pipeline.progress(batches)
        losses.append(loss.item())
        positions.append(logits.shape[0])
    if hasattr(pipeline, "detach"):
        pipeline.detach()
    model = job.model.module.model
    model.eval()
    with torch.no_grad():
        items = model.all_item_vectors()
    dense = {k: v.detach().clone() for k, v in model.encoders.state_dict().items()}
    return {"losses": losses, "positions": positions, "items": items, "dense": dense}


@pytest.fixture(scope="module")
def spawned() -> Dict[int, List[Dict[str, Any]]]:
    return {1: run_ranks(_worker, world_size=1), 2: run_ranks(_worker, world_size=2)}


def test_ranking_pipelines_every_set_and_two_ranks_take_one_process_steps(spawned: Dict[int, List[Dict[str, Any]]]) -> None:
    one, two = spawned[1][0]["ranking"], [r["ranking"] for r in spawned[2]]
    assert one["pipelined"] == 2 and all(r["pipelined"] == 2 for r in two)  # K = 2 collections
    # Equal per-rank batches: the mean of the ranks' mean losses is the global mean.
    assert [(a + b) / 2 for a, b in zip(two[0]["losses"], two[1]["losses"])] == pytest.approx(one["losses"], rel=1e-4)
    for r in two:
        # 128 validation rows: one swapped pair of near-equal scores moves the AUC by 1/4096.
        assert r["val"]["auc"] == pytest.approx(one["val"]["auc"], abs=5e-4)
        assert r["val"]["logloss"] == pytest.approx(one["val"]["logloss"], rel=1e-4)
        for name, value in one["arch"].items():
            torch.testing.assert_close(r["arch"][name], value, rtol=1e-4, atol=1e-4)


@pytest.fixture(params=OPTIMIZERS)
def runs(request: pytest.FixtureRequest, spawned: Dict[int, List[Dict[str, Any]]]) -> Dict[int, List[Dict[str, Any]]]:
    return {ws: [rank[request.param] for rank in ranks] for ws, ranks in spawned.items()}


def test_ranks_hold_different_position_counts(runs: Dict[int, List[Dict[str, Any]]]) -> None:
    two = runs[2]
    assert [a + b for a, b in zip(two[0]["positions"], two[1]["positions"])] == runs[1][0]["positions"]
    assert two[0]["positions"] != two[1]["positions"]  # otherwise a per-rank mean would pass too


def test_losses_equal_step_for_step(runs: Dict[int, List[Dict[str, Any]]]) -> None:
    one, two = runs[1][0], runs[2]
    mean_of_ranks = [(a + b) / 2 for a, b in zip(two[0]["losses"], two[1]["losses"])]
    assert mean_of_ranks == pytest.approx(one["losses"], rel=1e-4)
    assert one["losses"][-1] < one["losses"][0]  # it trained


def test_tables_and_encoders_end_equal(runs: Dict[int, List[Dict[str, Any]]]) -> None:
    one, two = runs[1][0], runs[2]
    for rank in two:
        torch.testing.assert_close(rank["items"], one["items"], rtol=1e-4, atol=1e-5)
        assert rank["dense"].keys() == one["dense"].keys()
        for name, value in one["dense"].items():
            # AdamW divides each element's step by its own gradient scale, so an element
            # whose gradient is near zero carries the summation-order rounding up to a
            # fraction of lr = 0.01 per step: 1e-4 is 1% of one step.
            torch.testing.assert_close(rank["dense"][name], value, rtol=1e-4, atol=1e-4)
