"""The README's "Multi-embedding in your own TorchRec model" example, run as written on 2 ranks."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[1] / "README.md"
HEADING = "## Multi-embedding in your own TorchRec model"


def _example() -> str:
    text = README.read_text()
    section = text[text.index(HEADING):]
    match = re.search(r"```python\n(.*?)```", section, flags=re.S)
    assert match is not None, "the section has no python block"
    return match.group(1)


def test_readme_example_trains_on_two_ranks(tmp_path: Path) -> None:
    script = tmp_path / "my_ranker.py"
    script.write_text(_example())
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = re.findall(r"rank (\d)/2: (\d+) steps, loss ([\d.]+) -> ([\d.]+)", done.stdout)
    assert sorted(r for r, *_ in lines) == ["0", "1"], done.stdout[-2000:]
    for _, steps, first, last in lines:
        assert int(steps) == 60
        assert float(last) < 0.5 * float(first)  # the item tables learned the item-parity target
