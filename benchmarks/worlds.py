"""Running a benchmark at several world sizes, the same way for every script.

A script hands :func:`run_world_sizes` a *target*, ``target(options, world_size)``, a
module-level function (it is pickled for spawned ranks) that joins the process group,
measures every configuration at that world size and returns the result rows (dataclass
instances) on every rank. The world size of this process (1, or torchrun's) runs here;
the others run on ranks started by ``torch.multiprocessing.spawn``, which hands each
rank the options object itself, as TorchRec's ``multi_process_benchmark`` does: no
command line is rebuilt, so no option can be lost on the way. Under torchrun only its
own world size runs, and rank 0 reports.
"""

import dataclasses
import json
import logging
import os
import tempfile
import warnings
from typing import Any, Callable, List, Optional, Sequence, Type

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torchrec.test_utils import get_free_port

Target = Callable[[Any, int], List[Any]]


def quiet() -> None:
    """No warnings and no TorchRec info logs between the tables."""
    warnings.filterwarnings("ignore")
    logging.getLogger("torchrec").setLevel(logging.ERROR)


def _spawned_rank(rank: int, world_size: int, port: int, threads: int, target: Target, options: Any,
                  out: str) -> None:  # fmt: skip
    """One rank of :func:`spawn_world`: joins the group as a torchrun worker would."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # fmt: skip
    torch.set_num_threads(threads)
    quiet()
    try:
        rows = target(options, world_size)
        if rank == 0:
            with open(out, "w") as f:
                json.dump([dataclasses.asdict(r) for r in rows], f)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def spawn_world(target: Target, options: Any, world_size: int, row_type: Type[Any]) -> List[Any]:
    """The rows of ``target`` at ``world_size``, run on as many spawned ranks here.

    Each rank gets ``options`` itself and this process's CPU threads divided among the
    ranks (torchrun's default is 1 per rank; on 2 cores the two agree).
    """
    threads = max(1, torch.get_num_threads() // world_size)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rows.json")
        mp.spawn(_spawned_rank, args=(world_size, get_free_port(), threads, target, options, out), nprocs=world_size)
        with open(out) as f:
            return [row_type(**row) for row in json.load(f)]


def run_world_sizes(target: Target, options: Any, world_sizes: Optional[Sequence[int]],
                    row_type: Type[Any]) -> Optional[List[Any]]:  # fmt: skip
    """The rows of every world size in ``world_sizes`` (None: 1 and 2; under torchrun:
    its own), here or on spawned ranks; None on the ranks that do not report."""
    under_torchrun = "WORLD_SIZE" in os.environ
    here = int(os.environ.get("WORLD_SIZE", 1))
    rows: List[Any] = []
    for ws in sorted(set(world_sizes or ([here] if under_torchrun else [1, 2]))):
        if ws == here:
            rows += target(options, ws)
        elif not under_torchrun:
            rows += spawn_world(target, options, ws, row_type)
    if dist.is_initialized():
        rank = dist.get_rank()
        dist.destroy_process_group()
        if rank != 0:
            return None
    return rows
