"""The ME model sharded over 2 gloo ranks against the same model unsharded.

One spawn per module: every rank builds an unsharded reference and a DMP copy with the
same weights, the three sets forced to table-wise, column-wise and table-column-wise sharding,
then returns what the tests below compare.
"""

from typing import Any, Dict, List

import pytest
import torch
from torchrec.distributed.planner.types import ParameterConstraints
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

from tests.multiprocess import run_ranks
from torchrec_me.config import Config, DataConfig, ModelConfig, TrainConfig
from torchrec_me.data.synthetic import SyntheticCriteo
from torchrec_me.distributed.sharding import init_distributed, load_unsharded_state_dict, named_sharded_modules
from torchrec_me.job import build_job, build_train_module
from torchrec_me.modules.naming import set_table_name

# FBGEMM CPU has no row-wise EBC sharding; these are the types the CPU sharder allows.
SET_SHARDING = ["table_wise", "column_wise", "table_column_wise"]
B = 32


def _cfg(lr: float = 1.0) -> Config:
    model = ModelConfig(num_sets=3, set_dims=[8, 16, 16], hidden_dim=32, num_cross_layers=2, dropout=0.0)
    train = TrainConfig(batch_size=B, sparse_optimizer="sgd", sparse_lr=lr)
    return Config(data=DataConfig(cardinality_scale=0.002, val_samples=B), model=model, train=train)


def _constraints(ds: SyntheticCriteo) -> Dict[str, ParameterConstraints]:
    return {
        set_table_name(k, f): ParameterConstraints(sharding_types=[st], compute_kernels=["fused"])
        for k, st in enumerate(SET_SHARDING)
        for f in ds.feature_names
    }


def _local_name(name: str) -> str:
    return name[name.index("model.") :]


def _sharded(ds: SyntheticCriteo, ctx: Any, full: Dict[str, torch.Tensor], lr: float) -> Any:
    job = build_job(_cfg(lr), ctx, ds, constraints=_constraints(ds))
    load_unsharded_state_dict(job.model, full)
    return job


def _local_table_slices(dmp: Any) -> Dict[str, List[Any]]:
    """(offsets, sizes, local tensor) of each table shard this rank holds."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    out: Dict[str, List[Any]] = {}
    for key, value in dmp.state_dict().items():
        if isinstance(value, ShardedTensor):
            out[key] = [
                (list(s.metadata.shard_offsets), list(s.metadata.shard_sizes), s.tensor.detach().clone())
                for s in value.local_shards()
            ]
    return out


def _worker(rank: int, world_size: int) -> Dict[str, Any]:
    ctx = init_distributed("cpu")
    ds = SyntheticCriteo(_cfg().data)
    batches = [ds.batch("train", g, B)[0] for g in range(world_size)]
    torch.manual_seed(0)
    ref = build_train_module(_cfg(), ds)
    full = {k: v.detach().clone() for k, v in ref.state_dict().items()}

    # One forward/backward: fused SGD with lr 1 turns each table update into -grad.
    job = _sharded(ds, ctx, full, lr=1.0)
    dmp, plan = job.model, job.plan
    loss, (_, logits, _) = dmp(batches[rank])
    loss.backward()
    ref_losses = [ref(b)[0] for b in batches]
    ref_logits = [ref(b)[1][1] for b in batches]
    sum(ref_losses).backward()
    ref_grads = {n: p.grad.detach().clone() for n, p in ref.named_parameters() if p.grad is not None}
    dense_grads = {_local_name(n): p.grad.detach().clone() for n, p in dmp.named_parameters() if p.grad is not None}

    # Pipelined training against the same steps taken eagerly, from identical weights.
    steps = 4
    data = [ds.batch("train", s * world_size + rank, B)[0] for s in range(steps)]
    probe = ds.batch("val", 0, B)[0]
    piped_job, eager_job = _sharded(ds, ctx, full, lr=0.05), _sharded(ds, ctx, full, lr=0.05)
    piped, eager = piped_job.model, eager_job.model
    pipeline = TrainPipelineSparseDist(piped, piped_job.optimizer, ctx.device)
    data_iter = iter(data)
    piped_losses = [pipeline.progress(data_iter) for _ in range(steps)]
    pipelined = [m for m in pipeline._pipelined_modules]
    pipeline.detach()
    eager_opt = eager_job.optimizer
    eager_losses = []
    for b in data:
        eager_opt.zero_grad()
        out = eager(b)
        out[0].backward()
        eager_opt.step()
        eager_losses.append(out[1][0])
    piped.eval()
    eager.eval()
    with torch.no_grad():
        piped_probe, eager_probe = piped(probe)[1][1], eager(probe)[1][1]

    sharded_names = {id(m): _local_name(n) for n, m in named_sharded_modules(piped)}
    return {
        "logits": logits.detach(),
        "ref_logits": ref_logits[rank].detach(),
        "dense_grads": dense_grads,
        "ref_grads": ref_grads,
        "full": full,
        "tables_after": _local_table_slices(dmp),
        "sharding_types": {
            f"{mod}.{t}": ps.sharding_type for mod, params in plan.plan.items() for t, ps in params.items()
        },
        "ranks_by_set": {
            mod: sorted({r for ps in params.values() for r in (ps.ranks or [])}) for mod, params in plan.plan.items()
        },
        "num_sharded_ebcs": len(sharded_names),
        "pipelined": sorted(sharded_names[id(m)] for m in pipelined if id(m) in sharded_names),
        "num_pipelined": len(pipelined),
        "piped_losses": torch.stack([o[0] for o in piped_losses]),
        "eager_losses": torch.stack(eager_losses),
        "piped_probe": piped_probe,
        "eager_probe": eager_probe,
    }


@pytest.fixture(scope="module")
def ranks() -> List[Dict[str, Any]]:
    return run_ranks(_worker, world_size=2)


def test_forward_matches_unsharded(ranks: List[Dict[str, Any]]) -> None:
    for r in ranks:
        torch.testing.assert_close(r["logits"], r["ref_logits"], rtol=1e-5, atol=1e-5)


def test_dense_gradients_match_unsharded(ranks: List[Dict[str, Any]]) -> None:
    # DDP averages the ranks' gradients: d((L0 + L1) / 2).
    for r in ranks:
        dense = r["dense_grads"]
        assert dense and set(dense) <= set(r["ref_grads"])
        assert not any(".embedding_bags." in n for n in dense)
        for name, grad in dense.items():
            torch.testing.assert_close(grad, r["ref_grads"][name] / 2, rtol=1e-4, atol=1e-6, msg=name)


def test_embedding_updates_follow_the_global_mean_loss(ranks: List[Dict[str, Any]]) -> None:
    # TorchRec divides the gathered table gradients by the world size (as DDP does for
    # dense ones), so fused SGD(lr=1) applies -d((L0 + L1) / 2).
    checked = 0
    for r in ranks:
        for key, shards in r["tables_after"].items():
            expected = r["full"][key] - r["ref_grads"][key] / 2
            for offsets, sizes, local in shards:
                index = tuple(slice(o, o + s) for o, s in zip(offsets, sizes))
                torch.testing.assert_close(local, expected[index], rtol=1e-5, atol=1e-6, msg=key)
                checked += 1
    assert checked >= 3 * 39


def test_every_set_receives_gradients(ranks: List[Dict[str, Any]]) -> None:
    moved = {k: 0.0 for k in range(3)}
    for r in ranks:
        for key, shards in r["tables_after"].items():
            k = int(key.split("ebcs.")[1].split(".")[0])
            for offsets, sizes, local in shards:
                index = tuple(slice(o, o + s) for o, s in zip(offsets, sizes))
                moved[k] = max(moved[k], float((local - r["full"][key][index]).abs().max()))
    assert all(v > 0 for v in moved.values()), moved


def test_plan_honours_per_set_constraints(ranks: List[Dict[str, Any]]) -> None:
    types = ranks[0]["sharding_types"]
    assert ranks[0]["num_sharded_ebcs"] == 3
    for k, expected in enumerate(SET_SHARDING):
        got = {v for name, v in types.items() if f"ebcs.{k}." in name}
        assert got == {expected}, (k, got)


def test_each_set_is_planned_over_both_ranks(ranks: List[Dict[str, Any]]) -> None:
    """Several EBCs on several ranks are planned one by one (``per_module``), so no set
    sits whole on one rank while the other waits at its output distribution."""
    by_set = ranks[0]["ranks_by_set"]
    assert sorted(by_set) == [f"model.sparse_arch.ebcs.{k}" for k in range(3)]
    assert all(r == [0, 1] for r in by_set.values()), by_set


def test_pipeline_pipelines_every_set(ranks: List[Dict[str, Any]]) -> None:
    for r in ranks:
        assert r["num_pipelined"] == 3
        assert r["pipelined"] == [f"model.sparse_arch.ebcs.{k}" for k in range(3)]


def test_pipelined_training_matches_eager(ranks: List[Dict[str, Any]]) -> None:
    for r in ranks:
        torch.testing.assert_close(r["piped_losses"], r["eager_losses"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(r["piped_probe"], r["eager_probe"], rtol=1e-4, atol=1e-5)
