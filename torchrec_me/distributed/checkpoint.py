"""Complete-or-absent checkpoints of sharded training with torch.distributed.checkpoint.

Layout of a run directory::

    RUN/checkpoints/step_00000040/   DCP files of {"model", "optim"} (sharded tables, fused
                                     optimizer state, dense model, dense Adam state)
                                     rank{r}.pt   per-rank RNG states
                                     extra.pt     global id counts (trained rows)
                                     meta.json    step, reader position, config, metrics
                                     .complete    written last, atomically (tmp + rename)
    RUN/checkpoints/best_step_00000020/  the best checkpoint by validation AUC, same layout

A directory without ``.complete`` is an interrupted write: it is ignored (with a
warning) and removed by the next prune. DCP saves every rank's shards in parallel and
can load them at another world size (resharding).
"""

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper

logger = logging.getLogger(__name__)

COMPLETE = ".complete"
META = "meta.json"
EXTRA = "extra.pt"
STEP_PREFIX = "step_"
BEST_PREFIX = "best_step_"


def checkpoints_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def is_complete(path: Path) -> bool:
    return (Path(path) / COMPLETE).is_file()


def list_checkpoints(run_dir: Path) -> List[Path]:
    """Complete step checkpoints, oldest first; incomplete ones are reported and skipped."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    found = []
    for path in sorted(root.glob(f"{STEP_PREFIX}*")):
        if is_complete(path):
            found.append(path)
        else:
            logger.warning("ignoring incomplete checkpoint %s (no %s marker)", path, COMPLETE)
    return found


def latest_checkpoint(run_dir: Path) -> Optional[Path]:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def best_checkpoint(run_dir: Path) -> Optional[Path]:
    root = checkpoints_dir(run_dir)
    found = [p for p in sorted(root.glob(f"{BEST_PREFIX}*")) if is_complete(p)] if root.is_dir() else []
    return found[-1] if found else None


def step_path(run_dir: Path, step: int, best: bool = False) -> Path:
    return checkpoints_dir(run_dir) / f"{BEST_PREFIX if best else STEP_PREFIX}{step:08d}"


def read_meta(path: Path) -> Dict[str, Any]:
    return json.loads((Path(path) / META).read_text())


def read_extra(path: Path) -> Dict[str, Any]:
    f = Path(path) / EXTRA
    return torch.load(f, weights_only=False) if f.is_file() else {}


def _app_state(model: nn.Module, optimizer: CombinedOptimizer) -> Dict[str, Any]:
    return {"model": model.state_dict(), "optim": optimizer.state_dict()}


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: CombinedOptimizer,
    meta: Dict[str, Any],
    extra: Optional[Dict[str, Any]] = None,
) -> Path:
    """Collectively write one checkpoint to ``path``; mark it complete when all ranks are done.

    ``extra`` (rank 0's, e.g. global id counts) is saved with ``torch.save`` beside the
    DCP files; :func:`read_extra` returns it.
    """
    path = Path(path)
    rank = dist.get_rank()
    if rank == 0 and path.exists():
        shutil.rmtree(path)  # a stale, incomplete write of the same step
    dist.barrier()
    dcp.save(_app_state(model, optimizer), checkpoint_id=str(path))
    torch.save({"torch": torch.get_rng_state()}, path / f"rank{rank}.pt")
    dist.barrier()
    if rank == 0:
        if extra is not None:
            torch.save(extra, path / EXTRA)
        _write_atomic(path / META, json.dumps({**meta, "world_size": dist.get_world_size()}, indent=2))
        _write_atomic(path / COMPLETE, "")
    dist.barrier()
    return path


def init_optimizer_state(optimizer: CombinedOptimizer) -> None:
    """Materialise the dense optimizer's lazy state so DCP can load into it in place.

    The fused (in-backward) table optimizer keeps its state in the TBE already.
    """
    for _, opt in optimizer.optimizers:
        if isinstance(opt, KeyedOptimizerWrapper):
            opt.init_state()
            opt.zero_grad(set_to_none=True)


def load_checkpoint(path: Path, model: nn.Module, optimizer: Optional[CombinedOptimizer] = None) -> Dict[str, Any]:
    """Collectively load ``path`` into ``model`` (and ``optimizer``) at any world size.

    Restores this rank's RNG state when the checkpoint has one for it. Returns the meta.
    """
    path = Path(path)
    if not is_complete(path):
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {COMPLETE} marker)")
    if optimizer is not None:
        init_optimizer_state(optimizer)
        state = _app_state(model, optimizer)
    else:
        state = {"model": model.state_dict()}
    dcp.load(state, checkpoint_id=str(path))
    model.load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optim"])
    rng_file = path / f"rank{dist.get_rank()}.pt"
    if rng_file.is_file():
        torch.set_rng_state(torch.load(rng_file)["torch"])
    return read_meta(path)


def prune_checkpoints(run_dir: Path, keep_last: int) -> None:
    """Rank 0 keeps the newest ``keep_last`` step checkpoints and the newest best one,
    and removes incomplete writes older than the newest complete checkpoint."""
    if dist.get_rank() != 0:
        return
    root = checkpoints_dir(run_dir)
    for prefix, keep in ((STEP_PREFIX, keep_last), (BEST_PREFIX, 1)):
        paths = sorted(root.glob(f"{prefix}*"))
        complete = [p for p in paths if is_complete(p)]
        for p in complete[: max(0, len(complete) - keep)]:
            shutil.rmtree(p, ignore_errors=True)
        if complete:
            for p in paths:
                if not is_complete(p) and p.name < complete[-1].name:
                    shutil.rmtree(p, ignore_errors=True)


def load_sharded_model(path: Path, cfg: Any, dataset: Any, ctx: Any) -> nn.Module:
    """Collective: ``cfg``'s model over ``dataset``'s tables, sharded at the current world
    size, with the weights of checkpoint ``path`` (DCP reshards them as needed)."""
    from torchrec_me.distributed.sharding import apply_sparse_optimizer, plan_and_shard
    from torchrec_me.models import MultiEmbeddingTrain, build_model

    module = MultiEmbeddingTrain(
        build_model(cfg.model, dataset.feature_names, dataset.num_embeddings, torch.device("meta"), dataset.num_dense)
    )
    apply_sparse_optimizer(module, cfg.train.sparse_optimizer, cfg.train.sparse_lr)
    dmp, _ = plan_and_shard(module, ctx, cfg.train.batch_size)
    load_checkpoint(path, dmp)
    return dmp
