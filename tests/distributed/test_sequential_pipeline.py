"""The sequential model under DMP and TrainPipelineSparseDist, on 1 and 2 gloo ranks.

The negative sampler is a TorchRec postproc module: with ``pipeline_postproc=True`` the
pipeline runs it in its data-dist stage and pipelines every set's EmbeddingCollection
lookup. On one rank, the pipelined sharded model (row-wise tables, FBGEMM's fused SGD)
must take exactly the steps of the plain unsharded model with torch SGD, which also shows
that each batch is looked up with its own negatives.
"""

from typing import Any, Dict, List

import pytest
import torch
import torch.distributed as dist
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.distributed.planner.types import ParameterConstraints
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from tests.multiprocess import run_ranks
from torchrec_me.data.sequence_batch import SequenceBatch
from torchrec_me.distributed.sharding import init_distributed, load_unsharded_state_dict
from torchrec_me.models.sequential import SequentialConfig, SequentialModel, SequentialTrain

NUM_ITEMS, ROWS, STEPS, LR = 60, 8, 4, 0.5
CFG = SequentialConfig(num_sets=2, set_dims=[8, 12], num_heads=2, max_seq_len=8, num_negatives=6, dropout=0.0)


def _batches(rank: int, world_size: int) -> List[SequenceBatch]:
    """Global batches of ROWS item walks; rank r keeps rows r, r + W, ..."""
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(STEPS):
        lengths = torch.randint(2, 8, (ROWS,), generator=g)[rank::world_size]
        starts = torch.randint(NUM_ITEMS, (ROWS,), generator=g)[rank::world_size]
        rows = [(int(s) + torch.arange(int(n))) % NUM_ITEMS for s, n in zip(starts, lengths)]
        values = torch.cat(rows)
        out.append(SequenceBatch(
            items=KeyedJaggedTensor.from_lengths_sync(["item"], values, lengths),
            timestamps=torch.cat([60 * torch.arange(len(r)) for r in rows]),
            ratings=torch.ones(len(values)),
            targets=torch.full((len(rows),), -1),
            target_timestamps=torch.zeros(len(rows), dtype=torch.long),
            users=torch.arange(ROWS)[rank::world_size],
        ))  # fmt: skip
    return out


def _sharded(world_size: int, state: Dict[str, torch.Tensor]) -> Any:
    model = SequentialTrain(SequentialModel(NUM_ITEMS, CFG, device=torch.device("meta")))
    apply_optimizer_in_backward(torch.optim.SGD, model.model.item_sets.parameters(), {"lr": LR})
    sharder = EmbeddingCollectionSharder()
    constraints = {
        f"set{k}__item": ParameterConstraints(sharding_types=["row_wise"], compute_kernels=["fused"]) for k in range(2)
    }
    planner = EmbeddingShardingPlanner(
        topology=Topology(world_size=world_size, compute_device="cpu"), batch_size=ROWS, constraints=constraints
    )
    plan = planner.collective_plan(model, [sharder], dist.GroupMember.WORLD)
    dmp = DistributedModelParallel(model, device=torch.device("cpu"), plan=plan, sharders=[sharder])
    load_unsharded_state_dict(dmp, state)
    dense = KeyedOptimizerWrapper(dict(in_backward_optimizer_filter(dmp.named_parameters())), lambda p: torch.optim.SGD(p, lr=LR))
    return dmp, dense


def _worker(rank: int, world_size: int) -> Dict[str, Any]:
    ctx = init_distributed("cpu")
    torch.manual_seed(0)
    state = {k: v.clone() for k, v in SequentialTrain(SequentialModel(NUM_ITEMS, CFG)).state_dict().items()}
    out: Dict[str, Any] = {}
    for postproc in (True, False):
        dmp, dense = _sharded(world_size, state)
        pipeline = TrainPipelineSparseDist(dmp, dense, ctx.device, pipeline_postproc=postproc)
        batches = iter(_batches(rank, world_size))
        losses = []
        while True:
            try:
                losses.append(pipeline.progress(batches)[0].item())
            except StopIteration:
                break
        out[postproc] = {"losses": losses, "pipelined": len(pipeline._pipelined_modules)}
        pipeline.detach()
        dmp.eval()
        with torch.no_grad():
            out[postproc]["items"] = dmp.module.model.all_item_vectors(chunk_size=16)
            out[postproc]["step"] = dmp.module.model.sampler.step.item()
    out["state"] = state
    return out


def _plain(state: Dict[str, torch.Tensor]) -> Dict[str, Any]:
    train = SequentialTrain(SequentialModel(NUM_ITEMS, CFG))
    train.load_state_dict(state)
    opt = torch.optim.SGD(train.parameters(), lr=LR)
    losses = []
    for batch in _batches(0, 1):
        loss, _ = train(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    train.eval()
    with torch.no_grad():
        return {"losses": losses, "items": train.model.all_item_vectors()}


@pytest.fixture(scope="module")
def one_rank() -> Dict[str, Any]:
    return run_ranks(_worker, world_size=1)[0]


@pytest.fixture(scope="module")
def two_ranks() -> List[Dict[str, Any]]:
    return run_ranks(_worker, world_size=2)


def test_postproc_sampler_lets_every_lookup_pipeline(one_rank: Dict[str, Any]) -> None:
    assert one_rank[True]["pipelined"] == 2  # K = 2 EmbeddingCollections
    assert one_rank[False]["pipelined"] == 0  # the default pipeline_postproc=False
    assert one_rank[True]["step"] == one_rank[False]["step"] == STEPS


def test_pipelined_sharded_steps_equal_plain_steps(one_rank: Dict[str, Any]) -> None:
    plain = _plain(one_rank["state"])
    for postproc in (True, False):
        assert one_rank[postproc]["losses"] == pytest.approx(plain["losses"], rel=1e-4)
        torch.testing.assert_close(one_rank[postproc]["items"], plain["items"], rtol=1e-4, atol=1e-5)


def test_two_ranks_pipeline_and_agree_on_the_tables(two_ranks: List[Dict[str, Any]]) -> None:
    for r in two_ranks:
        assert r[True]["pipelined"] == 2 and r[True]["step"] == STEPS
        assert all(torch.isfinite(torch.tensor(r[True]["losses"])))
    torch.testing.assert_close(two_ranks[0][True]["items"], two_ranks[1][True]["items"])
    torch.testing.assert_close(two_ranks[0][True]["items"], two_ranks[0][False]["items"])
