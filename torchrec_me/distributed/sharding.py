"""Process group, planner and DistributedModelParallel construction.

The same code serves CPU + gloo and CUDA + nccl: the device decides the backend and the
planner ``Topology``; nothing else changes.
"""

import os
from datetime import timedelta
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Type

import torch
import torch.distributed as dist
from torch import nn
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.distributed.planner.constants import DDR_CAP, HBM_CAP
from torchrec.distributed.planner.types import ParameterConstraints
from torchrec.distributed.sharding_plan import get_default_sharders
from torchrec.distributed.embedding_types import EmbeddingComputeKernel
from torchrec.distributed.types import ShardingPlan, ShardingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection

# The embedding collections torchrec_me plans: pooled (CTR) and unpooled (sequences).
COLLECTIONS = (EmbeddingBagCollection, EmbeddingCollection)

from torchrec_me.distributed.cpu_memory import keep_freed_memory

@dataclass
class DistContext:
    rank: int
    world_size: int
    local_world_size: int
    device: torch.device


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def restart_attempt() -> int:
    """Which attempt of a torchrun/TorchX job this process belongs to (0: the first)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0))


def _attempt_store(rank: int, world_size: int) -> dist.Store:
    """The job's TCPStore, with keys scoped to this restart attempt.

    torchrun keeps its agent's store across worker restarts, and gloo's rendezvous keys
    are the same in every attempt: a restarted rank then reads the dead rank's old
    address and fails with ``Gloo connectFullMesh failed ... Connection refused``.
    Prefixing every key with the attempt number gives each attempt a clean namespace.
    """
    use_agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size,
        is_master=not use_agent_store and rank == 0, timeout=timedelta(minutes=30), wait_for_workers=False,
    )  # fmt: skip
    return dist.PrefixStore(f"torchrec_me/attempt_{restart_attempt()}", store)


def init_distributed(device_name: str = "auto") -> DistContext:
    """Join the process group torchrun describes, or make a one-process group.

    TorchRec's sharded modules always need a process group, so a plain
    ``torchrec-me train`` runs as world size 1 with an in-memory store. Under torchrun
    the group's store is scoped to the restart attempt, so ``--max-restarts`` works.
    Also keeps freed tensor memory in the process (:func:`keep_freed_memory`).
    """
    keep_freed_memory()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = resolve_device(device_name, local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        if "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ:
            rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
            dist.init_process_group(backend=backend, store=_attempt_store(rank, world_size), rank=rank, world_size=world_size)
        else:
            dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1)
    return DistContext(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", dist.get_world_size())),
        device=device,
    )


def plan_and_shard(
    model: nn.Module,
    ctx: DistContext,
    batch_size: int,
    constraints: Optional[Dict[str, ParameterConstraints]] = None,
    plan: Optional[ShardingPlan] = None,
    per_module: Optional[bool] = None,
) -> "tuple[DistributedModelParallel, ShardingPlan]":
    """Plan the embedding tables with TorchRec's planner and wrap in DMP.

    ``constraints`` are keyed by table name (``set{k}__{feature}``), so one set can be
    pinned to a sharding type without touching the others. A given ``plan`` (e.g. from
    an earlier call on a model with the same tables) skips planning.

    ``per_module`` (default: when there are several ranks and several
    EmbeddingBagCollections, as with K separate sets) plans each EBC on its own, with
    1/M of the topology's memory for M EBCs, so every EBC's tables are spread over all
    ranks. One plan over all K*F tables balances only the total: it put each set of
    ME-DCNv2-4x whole on one of 2 ranks, and since each EBC's output distribution is a
    collective that waits for its owner's lookups, the ranks took turns (measured in
    ``benchmarks/README.md``).
    """
    if plan is None:
        plan = plan_tables(model, ctx, batch_size, constraints, per_module, dist.GroupMember.WORLD)
    dmp = DistributedModelParallel(module=model, device=ctx.device, plan=plan)
    return dmp, plan


def plan_tables(
    model: nn.Module,
    ctx: DistContext,
    batch_size: int,
    constraints: Optional[Dict[str, ParameterConstraints]] = None,
    per_module: Optional[bool] = None,
    pg: Optional[dist.ProcessGroup] = None,
) -> ShardingPlan:
    """The sharding plan of :func:`plan_and_shard`: planned on rank 0 of ``pg`` and
    broadcast, or, with ``pg=None``, planned here alone (no process group needed)."""
    if constraints is None:
        constraints = fused_constraints(model)
    ebcs = _top_level_ebcs(model)
    if per_module is None:
        per_module = ctx.world_size > 1 and len(ebcs) > 1
    targets = [(path, ebc, len(ebcs)) for path, ebc in ebcs] if per_module and ebcs else [("", model, 1)]
    sharders = get_default_sharders()
    plans = {}
    for path, module, share in targets:
        holder = nn.Module()
        holder.inner = module
        topology = Topology(
            world_size=ctx.world_size,
            local_world_size=ctx.local_world_size,
            compute_device=ctx.device.type,
            hbm_cap=HBM_CAP // share,
            ddr_cap=DDR_CAP // share,
        )
        planner = EmbeddingShardingPlanner(topology=topology, batch_size=batch_size, constraints=constraints)
        planned = planner.collective_plan(holder, sharders, pg) if pg is not None else planner.plan(holder, sharders)
        for name, module_plan in planned.plan.items():  # "inner" or "inner.{path in module}"
            plans[".".join(p for p in (path, name[len("inner") + 1 :]) if p)] = module_plan
    return ShardingPlan(plans)


def _top_level_ebcs(model: nn.Module) -> "list[tuple[str, nn.Module]]":
    """The embedding collections (EBC or EC) of ``model`` by path (none nested in another)."""
    found: "list[tuple[str, nn.Module]]" = []
    for name, m in model.named_modules():
        if isinstance(m, COLLECTIONS) and not any(name.startswith(p + ".") for p, _ in found):
            found.append((name, m))
    return found


def replicate(module: nn.Module, ctx: DistContext) -> DistributedModelParallel:
    """DMP with no sharders: every table stays a plain TorchRec collection, replicated on
    every rank, its gradients averaged by DDP with the dense ones (the ``adam_dense``
    sparse optimizer's layout). TorchRec 1.8 offers its DENSE kernel only with
    data_parallel sharding, and that path pools the sequence lookups of an
    ``EmbeddingCollection`` on CPU, so the collections are left unsharded instead."""
    return DistributedModelParallel(module=module, device=ctx.device, plan=ShardingPlan(plan={}), sharders=[])


def fused_constraints(model: nn.Module) -> Dict[str, ParameterConstraints]:
    """Keep every table on FBGEMM's fused kernel: any sharding type but data_parallel.

    The planner would replicate small tables (data_parallel) as dense parameters, which
    bypasses the fused optimizer; embedding tables stay sharded and fused instead.
    """
    types = [t.value for t in ShardingType if t != ShardingType.DATA_PARALLEL]
    return {
        table.name: ParameterConstraints(sharding_types=types, compute_kernels=[EmbeddingComputeKernel.FUSED.value])
        for m in model.modules()
        if isinstance(m, COLLECTIONS)
        for table in _table_configs(m)
    }


def _table_configs(collection: nn.Module) -> List[Any]:
    if isinstance(collection, EmbeddingBagCollection):
        return list(collection.embedding_bag_configs())
    return list(collection.embedding_configs())  # type: ignore[operator]


def named_sharded_modules(model: nn.Module) -> Iterable["tuple[str, nn.Module]"]:
    """The sharded embedding collections (EBC or EC) inside a DMP model, by name."""
    from torchrec.distributed.embedding import ShardedEmbeddingCollection
    from torchrec.distributed.embeddingbag import ShardedEmbeddingBagCollection

    sharded = (ShardedEmbeddingBagCollection, ShardedEmbeddingCollection)
    return [(n, m) for n, m in model.named_modules() if isinstance(m, sharded)]


@torch.no_grad()
def load_unsharded_state_dict(model: nn.Module, state: Dict[str, torch.Tensor]) -> None:
    """Copy full (unsharded) tensors into a DMP model's local shards and dense params.

    Each rank writes only the slices it owns, so no table is ever gathered. Keys are
    those of the unsharded module (DMP's ``state_dict`` uses the same names).
    """
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    if missing:
        raise KeyError(f"state dict lacks {len(missing)} keys, e.g. {missing[:3]}")
    for key, target in own.items():
        source = state[key]
        if isinstance(target, ShardedTensor):
            for shard in target.local_shards():
                index = tuple(
                    slice(o, o + s) for o, s in zip(shard.metadata.shard_offsets, shard.metadata.shard_sizes)
                )
                shard.tensor.copy_(source[index])
        else:
            target.copy_(source)


@torch.no_grad()
def sync_batchnorm_stats(model: nn.Module) -> None:
    """Collective: average every BatchNorm's running mean and variance over the ranks.

    TorchRec's data-parallel wrapper does not broadcast buffers, so each rank's running
    statistics follow its own batches. Training uses batch statistics and is unaffected,
    but evaluation and checkpoints use the running ones: averaging them before each makes
    every rank evaluate the same model and a checkpoint (which keeps rank 0's copy) hold it.
    """
    if dist.get_world_size() == 1:
        return
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            for buf in (m.running_mean, m.running_var):
                dist.all_reduce(buf)
                buf.div_(dist.get_world_size())
