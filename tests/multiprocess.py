"""Run one function on W spawned ranks sharing a gloo process group; collect returns.

A test module calls :func:`run_ranks` once (in a module-scoped fixture) and asserts on
what each rank returned, so the spawn and group set-up cost is paid once per module.
"""

import io
import os
import socket
import traceback
from typing import Any, Callable, Dict, List

import torch
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world_size: int, port: int, fn: Callable[..., Any], kwargs: Dict[str, Any], queue: Any) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo")
        result = fn(rank=rank, world_size=world_size, **kwargs)
        # Bytes, not tensors: shared-memory tensors would die with this process.
        buf = io.BytesIO()
        torch.save(result, buf)
        queue.put((rank, "ok", buf.getvalue()))
    except BaseException:  # report to the parent instead of hanging it
        queue.put((rank, "error", traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_ranks(fn: Callable[..., Any], world_size: int = 2, timeout: float = 600, **kwargs: Any) -> List[Any]:
    """Spawn ``world_size`` ranks running ``fn(rank=, world_size=, **kwargs)``; return results by rank."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [
        ctx.Process(target=_entry, args=(r, world_size, port, fn, kwargs, queue)) for r in range(world_size)
    ]
    for p in procs:
        p.start()
    results: Dict[int, Any] = {}
    errors: List[str] = []
    try:
        for _ in range(world_size):
            rank, status, payload = queue.get(timeout=timeout)
            if status == "ok":
                results[rank] = torch.load(io.BytesIO(payload), weights_only=False)
            else:
                errors.append(f"rank {rank}:\n{payload}")
                break
    finally:
        for p in procs:
            p.join(timeout=5 if errors else 60)
            if p.is_alive():
                p.kill()
    if errors:
        raise RuntimeError("a rank failed:\n" + "\n".join(errors))
    return [results[r] for r in range(world_size)]
