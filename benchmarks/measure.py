"""What one rank measures, and how the ranks agree on it.

* :func:`sync` waits for the device, so a wall-clock reading covers the work queued.
* :func:`reduce_scalar` combines one number over all ranks (the slowest step, the summed
  peak), on the device the backend needs.
* :func:`reset_peak_memory` and :func:`peak_memory_mb` bracket a configuration's build
  and warm-up: on CUDA the allocator's peak, on CPU the peak resident set (``VmHWM``,
  which ``/proc/self/clear_refs`` restarts from the current resident set).
"""

import contextlib
import ctypes
import gc
import os
import re

import torch
import torch.distributed as dist


def sync(device: torch.device) -> None:
    """Wait until the work queued on ``device`` is done (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reduce_scalar(value: float, op: dist.ReduceOp.RedOpType) -> float:
    """Collective: ``value`` combined over all ranks with ``op`` (e.g. MAX, SUM)."""
    t = torch.tensor([value], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=op)
    return float(t.item())


def _proc_status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1)) / 1024  # type: ignore[union-attr]


def current_memory_mb(device: torch.device) -> float:
    """Memory in use now (MB): allocated on CUDA, resident on CPU."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    return _proc_status_mb("VmRSS")


def peak_memory_mb(device: torch.device) -> float:
    """The peak (MB) since the last :func:`reset_peak_memory`."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return _proc_status_mb("VmHWM")


def reset_peak_memory(device: torch.device) -> float:
    """Free what can be freed and restart the peak counter; the memory in use now (MB)."""
    gc.collect()
    with contextlib.suppress(OSError):  # return freed heap pages, so the peak starts from what is live
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    elif os.path.exists("/proc/self/clear_refs"):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM, the peak resident set, to the current one
    return current_memory_mb(device)
