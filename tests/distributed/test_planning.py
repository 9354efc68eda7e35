"""Planning K separate sets over 2 ranks: one plan per EBC spreads every set.

Planning alone needs no process group (``plan_tables(..., pg=None)``), so this runs in
the test process on the meta device at Criteo's full vocabularies, where TorchRec's one
global plan puts each set of ME-DCNv2-4x whole on one rank.
"""

import logging
from typing import Dict, List

import pytest
import torch

from torchrec_me.config import Config, ModelConfig
from torchrec_me.data.synthetic import SyntheticCriteo
from torchrec_me.distributed.sharding import DistContext, plan_tables
from torchrec_me.job import build_train_module, check_job_config
from torchrec_me.models import MultiEmbeddingTrain

CTX = DistContext(rank=0, world_size=2, local_world_size=2, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def model() -> MultiEmbeddingTrain:
    logging.getLogger("torchrec").setLevel(logging.ERROR)
    cfg = Config()
    cfg.model = ModelConfig(num_sets=4, embedding_dim=12)
    cfg.data.cardinality_scale, cfg.data.max_cardinality = 1.0, 10**9
    cfg.validate()
    check_job_config(cfg)
    return build_train_module(cfg, SyntheticCriteo(cfg.data), torch.device("meta"))


def _ranks_by_module(plan) -> Dict[str, List[int]]:  # type: ignore[no-untyped-def]
    return {m: sorted({r for ps in p.values() for r in (ps.ranks or [])}) for m, p in plan.plan.items()}


def test_per_module_plan_spreads_every_set_over_both_ranks(model: MultiEmbeddingTrain) -> None:
    by_module = _ranks_by_module(plan_tables(model, CTX, 2048))  # per_module is the default here
    assert sorted(by_module) == [f"model.sparse_arch.ebcs.{k}" for k in range(4)]
    assert all(r == [0, 1] for r in by_module.values()), by_module
    # Every table of every set is planned exactly once.
    plan = plan_tables(model, CTX, 2048)
    assert sum(len(p) for p in plan.plan.values()) == 4 * 39


def test_one_global_plan_leaves_sets_on_one_rank(model: MultiEmbeddingTrain) -> None:
    """Why per-module planning is the default: the global plan balances only the total."""
    by_module = _ranks_by_module(plan_tables(model, CTX, 2048, per_module=False))
    assert len(by_module) == 4
    assert any(len(r) == 1 for r in by_module.values()), by_module


def test_world_size_one_plans_globally(model: MultiEmbeddingTrain) -> None:
    one = DistContext(rank=0, world_size=1, local_world_size=1, device=torch.device("cpu"))
    by_module = _ranks_by_module(plan_tables(model, one, 2048))
    assert sorted(by_module) == [f"model.sparse_arch.ebcs.{k}" for k in range(4)]
    assert all(r == [0] for r in by_module.values())
