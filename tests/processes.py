"""Helpers of the tests that kill training jobs and compare their checkpoints."""

import os
import signal
import subprocess
from pathlib import Path
from typing import Any, Dict, List

import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save


def descendants(pid: int) -> List[int]:
    """All live descendants of ``pid`` (torchrun starts its workers in new sessions)."""
    children: Dict[int, List[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def kill_tree(proc: "subprocess.Popen[Any]") -> None:
    """SIGKILL ``proc`` and every descendant, then reap it."""
    for pid in [proc.pid, *descendants(proc.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def flat_checkpoint(path: Path, tmp: Path) -> Dict[str, Any]:
    """A DCP checkpoint directory as one ``torch.load``-ed dict (unsharded)."""
    target = tmp / f"{path.parent.parent.name}_{path.name}.pt"
    dcp_to_torch_save(str(path), str(target))
    return torch.load(target, weights_only=False)


def assert_same(a: Any, b: Any, where: str = "") -> None:
    """Nested dicts/lists of tensors and values are equal, tensors bitwise."""
    if isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where
