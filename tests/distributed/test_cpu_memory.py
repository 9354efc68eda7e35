"""keep_freed_memory: a freed 16 MiB tensor stays resident instead of being unmapped."""

import subprocess
import sys

import pytest

SCRIPT = """
import re, sys, torch
from torchrec_me.distributed.cpu_memory import keep_freed_memory
def rss():
    return int(re.search(r"VmRSS:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) / 1024
applied = keep_freed_memory() if sys.argv[1] == "tuned" else None
before = rss()
t = torch.ones(4 * 2**20)  # 16 MiB, touched
mid = rss()
del t
print(applied, mid - before, mid - rss())
"""


def _run(mode: str):
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
    applied, grew, released = out.stdout.split()
    return applied, float(grew), float(released)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc and /proc")
def test_freed_memory_is_kept_only_when_tuned() -> None:
    _, grew, released = _run("default")
    assert grew > 14 and released > 14  # glibc's default: mmap'd, unmapped when freed
    applied, grew, released = _run("tuned")
    assert applied == "True"
    assert grew > 14 and released < 2  # served from the heap and kept for the next step
