"""Every backbone sharded over 2 gloo ranks: forwards match, every preset trains.

One spawn for the module. Each rank (1) checks ME-2x of every backbone against its
unsharded twin, (2) trains every backbone x {SE, ME} x {1, 2, 4, 10}x for two steps
through TrainPipelineSparseDist and records which sets' tables moved.
"""

from typing import Any, Dict, List, Tuple

import pytest
import torch
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torchrec.distributed.planner.types import ParameterConstraints
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

from tests.multiprocess import run_ranks
from torchrec_me.config import Config, DataConfig, ModelConfig, TrainConfig
from torchrec_me.data.synthetic import SyntheticCriteo
from torchrec_me.distributed.sharding import fused_constraints, init_distributed, load_unsharded_state_dict
from torchrec_me.job import build_job, build_train_module
from torchrec_me.models import BACKBONE_REGISTRY, PRESET_REGISTRY

BACKBONES = sorted(BACKBONE_REGISTRY)
# ME-1x is SE-1x: one preset.
GRID = [(b, v, s) for b in BACKBONES for v in ("se", "me") for s in (1, 2, 4, 10) if (v, s) != ("me", 1)]
SMALL = {"hidden_dim": 32, "num_cross_layers": 2, "fs_hidden_dim": 16}
B = 16


def _cfg(preset: str, sparse_optimizer: str) -> Config:
    model = ModelConfig(**{**PRESET_REGISTRY[preset], **SMALL})
    train = TrainConfig(batch_size=B, sparse_optimizer=sparse_optimizer, sparse_lr=0.1)
    return Config(data=DataConfig(cardinality_scale=0.002), model=model, train=train)


def _table_shards(dmp: Any) -> Dict[str, List[torch.Tensor]]:
    return {
        k: [s.tensor.detach().clone() for s in v.local_shards()]
        for k, v in dmp.state_dict().items()
        if isinstance(v, ShardedTensor)
    }


def _worker(rank: int, world_size: int) -> Dict[str, Any]:
    ctx = init_distributed("cpu")
    ds = SyntheticCriteo(DataConfig(cardinality_scale=0.002))
    out: Dict[str, Any] = {"forward": {}, "moved": {}}

    for backbone in BACKBONES:
        cfg = _cfg(f"{backbone}-me-2x", "sgd")
        torch.manual_seed(0)
        ref = build_train_module(cfg, ds).eval()
        dmp = build_job(cfg, ctx, ds).model
        load_unsharded_state_dict(dmp, ref.state_dict())
        dmp.eval()
        batch = ds.batch("train", rank, B)[0]
        with torch.no_grad():
            out["forward"][backbone] = (dmp(batch)[1][1], ref(batch)[1][1])

    # Plans depend only on the tables, so one plan per (K, dim) serves every backbone.
    plans: Dict[Tuple[int, int], Any] = {}
    for backbone, variant, scale in GRID:
        cfg = _cfg(f"{backbone}-{variant}-{scale}x", "rowwise_adagrad")
        key = (cfg.model.num_sets, cfg.model.embedding_dim)
        constraints = {
            name: ParameterConstraints(sharding_types=["table_wise"], compute_kernels=["fused"])
            for name in fused_constraints(build_train_module(cfg, ds, torch.device("meta")))
        }
        job = build_job(cfg, ctx, ds, constraints=constraints, plan=plans.get(key))
        dmp, plans[key] = job.model, job.plan
        before = _table_shards(dmp)
        pipeline = TrainPipelineSparseDist(dmp, job.optimizer, ctx.device)
        batches = iter(ds.train_batches(rank, world_size, B, 0, 2))
        losses = [float(pipeline.progress(batches)[0]) for _ in range(2)]
        after = _table_shards(dmp)
        moved = [False] * cfg.model.num_sets
        for name, shards in after.items():
            k = int(name.split("ebcs.")[1].split(".")[0])
            moved[k] |= any(not torch.equal(a, b) for a, b in zip(shards, before[name]))
        out["moved"][(backbone, variant, scale)] = (moved, losses, len(pipeline._pipelined_modules))
    return out


@pytest.fixture(scope="module")
def ranks() -> List[Dict[str, Any]]:
    return run_ranks(_worker, world_size=2)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_sharded_forward_matches_unsharded(ranks: List[Dict[str, Any]], backbone: str) -> None:
    for r in ranks:
        sharded, reference = r["forward"][backbone]
        torch.testing.assert_close(sharded, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backbone, variant, scale", GRID)
def test_preset_trains_sharded_and_every_set_learns(
    ranks: List[Dict[str, Any]], backbone: str, variant: str, scale: int
) -> None:
    k = scale if variant == "me" else 1
    moved = [False] * k
    for r in ranks:
        flags, losses, pipelined = r["moved"][(backbone, variant, scale)]
        assert len(flags) == k and pipelined == k
        assert all(torch.isfinite(torch.tensor(losses)))
        moved = [a or b for a, b in zip(moved, flags)]
    assert all(moved), moved
