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
warning) and removed by the next prune. ``meta.json`` holds the sha256 of every other
file; a checkpoint whose files no longer match (bit flips, truncation, a lost file) is
corrupt: :func:`latest_checkpoint` falls back to the newest intact one with a warning
naming both, and :func:`load_checkpoint` refuses it. DCP saves every rank's shards in parallel and
can load them at another world size (resharding).
"""

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper

from torchrec_me.atomic import write_text_atomic

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


class CorruptCheckpointError(ValueError):
    """A checkpoint's files do not match the checksums its meta recorded."""


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_digests(path: Path) -> Dict[str, str]:
    """sha256 of every file of checkpoint ``path`` but the meta and the marker."""
    return {
        str(f.relative_to(path)): _digest(f)
        for f in sorted(Path(path).rglob("*"))
        if f.is_file() and f.name not in (META, COMPLETE)
    }


def checkpoint_problem(path: Path) -> Optional[str]:
    """Why checkpoint ``path`` cannot be trusted, or None when it is complete and intact."""
    path = Path(path)
    if not is_complete(path):
        return f"no {COMPLETE} marker (an interrupted write)"
    try:
        meta = read_meta(path)
    except (OSError, ValueError) as e:
        return f"its {META} is unreadable ({type(e).__name__}: {e})"
    if not isinstance(meta, dict) or "step" not in meta:
        return f"its {META} is not a checkpoint's meta"
    expected = meta.get("files")
    if expected is None:
        logger.warning("checkpoint %s predates checksums; its files are not verified", path)
        return None
    actual = file_digests(path)
    for name in sorted(set(expected) | set(actual)):
        if name not in actual:
            return f"file {name} is missing"
        if name not in expected:
            return f"file {name} was not part of the checkpoint"
        if actual[name] != expected[name]:
            return f"file {name} does not match its sha256 (corrupt or truncated)"
    return None


def _newest_intact(paths: List[Path]) -> Optional[Path]:
    """The newest of ``paths`` (oldest first) that is intact; warns naming what it skips."""
    for i in range(len(paths) - 1, -1, -1):
        problem = checkpoint_problem(paths[i])
        if problem is None:
            return paths[i]
        fallback = paths[i - 1] if i > 0 else None
        logger.warning("checkpoint %s is corrupt: %s; falling back to %s", paths[i], problem, fallback or "none")
    return None


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
    """The newest complete and intact step checkpoint (see the module docstring)."""
    return _newest_intact(list_checkpoints(run_dir))


def best_checkpoint(run_dir: Path) -> Optional[Path]:
    """The newest complete and intact best checkpoint."""
    root = checkpoints_dir(run_dir)
    found = [p for p in sorted(root.glob(f"{BEST_PREFIX}*")) if is_complete(p)] if root.is_dir() else []
    return _newest_intact(found)


def step_path(run_dir: Path, step: int, best: bool = False) -> Path:
    return checkpoints_dir(run_dir) / f"{BEST_PREFIX if best else STEP_PREFIX}{step:08d}"


def read_meta(path: Path) -> Dict[str, Any]:
    return json.loads((Path(path) / META).read_text())


def read_extra(path: Path) -> Dict[str, Any]:
    f = Path(path) / EXTRA
    return torch.load(f, weights_only=False) if f.is_file() else {}


def _app_state(model: nn.Module, optimizer: CombinedOptimizer) -> Dict[str, Any]:
    return {"model": model.state_dict(), "optim": optimizer.state_dict()}


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
        meta = {**meta, "world_size": dist.get_world_size(), "files": file_digests(path)}
        write_text_atomic(path / META, json.dumps(meta, indent=2))
        write_text_atomic(path / COMPLETE, "")
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
    problem = [checkpoint_problem(path) if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(problem, src=0)
    if problem[0] is not None:
        raise CorruptCheckpointError(f"checkpoint {path} cannot be loaded: {problem[0]}")
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


def prune_checkpoints(run_dir: Path, keep_last: int, just_written: Optional[Path] = None) -> None:
    """Rank 0 keeps the newest ``keep_last`` intact step checkpoints and the newest intact
    best one; it removes older ones, corrupt ones among them, and incomplete writes older
    than the newest kept checkpoint. An intact checkpoint is never removed to make room
    for a corrupt one. ``just_written`` (its checksums were computed from its files a
    moment ago) is taken as intact without reading it again."""
    if dist.get_rank() != 0:
        return
    root = checkpoints_dir(run_dir)
    for prefix, keep in ((STEP_PREFIX, keep_last), (BEST_PREFIX, 1)):
        paths = sorted(root.glob(f"{prefix}*"))
        kept: List[Path] = []
        for p in reversed([p for p in paths if is_complete(p)]):
            if len(kept) < keep and (p == just_written or checkpoint_problem(p) is None):
                kept.append(p)
        if not kept:
            continue
        for p in paths:
            if p not in kept and p.name < kept[0].name:
                shutil.rmtree(p, ignore_errors=True)


def resolve_checkpoint(path: str) -> Tuple[Path, Optional[Path]]:
    """(checkpoint dir, run dir or None) for a checkpoint dir, or a run dir (its newest)."""
    p = Path(path)
    if is_complete(p):
        run = p.parent.parent if p.parent.name == "checkpoints" else None
        return p, run
    latest = latest_checkpoint(p)
    if latest is None:
        raise FileNotFoundError(f"{path!r} is neither a complete checkpoint nor a run dir with an intact one")
    return latest, p
