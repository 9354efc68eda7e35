"""One real ``torchx run -s local_cwd launch/components.py:train -j 2x1 -- ...`` on CPU.

Two simulated nodes, one worker each, c10d rendezvous on localhost, gloo; the tests
below share the run through a module-scoped fixture. The AppDefs themselves are tested
without running anything in ``test_components.py``.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
TIMEOUT_S = 300

# Small enough for ~30 s on two cores. eval_batch_size keeps both ranks' share of the
# 4096 validation samples non-empty.
RUN_OVERRIDES = [
    "train.steps=5",
    "train.batch_size=256",
    "train.eval_batch_size=1024",
    "data.val_samples=4096",
    "model.hidden_dim=32",
    "model.num_sets=2",
]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _communicate(proc: "subprocess.Popen[str]") -> str:
    """Output of ``proc``; fails the test if it runs past ``TIMEOUT_S`` (a hung rendezvous)."""
    try:
        return proc.communicate(timeout=TIMEOUT_S)[0]
    except subprocess.TimeoutExpired:
        # On SIGTERM torchx's local scheduler stops the replicas it started (each runs in
        # a session of its own); only then is torchx itself killed.
        proc.send_signal(signal.SIGTERM)
        try:
            log = proc.communicate(timeout=60)[0]
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            log = proc.communicate()[0]
        pytest.fail(f"torchx run did not finish in {TIMEOUT_S} s:\n{log[-5000:]}")


@pytest.fixture(scope="module")
def local_cwd_run(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    torchx = shutil.which("torchx", path=str(VENV_BIN)) or shutil.which("torchx")
    if torchx is None:
        pytest.fail("the torchx CLI is not installed (requirements/cpu.txt pins torchx)")
    tmp = tmp_path_factory.mktemp("torchx_local_cwd")
    run_dir, metrics = tmp / "run", tmp / "metrics.json"
    env = dict(os.environ)
    # local_cwd starts `torchrun` from PATH: the venv's.
    env["PATH"] = os.pathsep.join([str(VENV_BIN), env.get("PATH", "")])
    env.pop("TORCHX_CONFIG", None)
    # A free rendezvous port (the default 29500 may be taken by another job on the host).
    cmd = [torchx, "run", "-s", "local_cwd", "launch/components.py:train", "-j", "2x1",
           "--rdzv_port", str(_free_port()), "--env", "LOGLEVEL=INFO",
           "--", *RUN_OVERRIDES, "--run-dir", str(run_dir), "--metrics-out", str(metrics)]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)  # fmt: skip
    log = _communicate(proc)
    return {"cmd": cmd, "rc": proc.returncode, "log": log, "run_dir": run_dir, "metrics": metrics}


def _tail(run: Dict[str, Any]) -> str:
    return "\n".join(run["log"].splitlines()[-60:])


def test_local_cwd_run_succeeds(local_cwd_run: Dict[str, Any]) -> None:
    assert local_cwd_run["rc"] == 0, _tail(local_cwd_run)
    assert "Job finished: SUCCEEDED" in local_cwd_run["log"], _tail(local_cwd_run)


def test_local_cwd_run_wrote_metrics_with_world_size_two(local_cwd_run: Dict[str, Any]) -> None:
    assert local_cwd_run["metrics"].is_file(), _tail(local_cwd_run)
    m = json.loads(local_cwd_run["metrics"].read_text())
    assert m["world_size"] == 2
    assert m["steps"] == 5
    assert m["num_sets"] == 2
    assert m["val_samples"] == 4096
    assert 0.0 <= m["val_auc"] <= 1.0
    # --run-dir went through too
    run_dir = local_cwd_run["run_dir"]
    assert json.loads((run_dir / "metrics.json").read_text())["world_size"] == 2
    assert "hidden_dim: 32" in (run_dir / "config.yaml").read_text()


def test_local_cwd_run_both_nodes_took_part(local_cwd_run: Dict[str, Any]) -> None:
    log = local_cwd_run["log"]
    # TorchX prefixes every line with {role}/{replica}; each replica is one torchrun
    # agent (a simulated node), and each logged its place in the rendezvous.
    for node in (0, 1):
        lines = [ln for ln in log.splitlines() if ln.startswith(f"train/{node} ")]
        assert lines, f"no output from replica train/{node}\n{_tail(local_cwd_run)}"
        text = "\n".join(lines)
        assert re.search(r"group_world_size=2\b", text), text[-3000:]
        ranks = set(re.findall(r"\bgroup_rank=(\d)\b", text))
        assert len(ranks) == 1, text[-3000:]
    all_ranks = set(re.findall(r"\bgroup_rank=(\d)\b", log))
    assert all_ranks == {"0", "1"}
    assert "sharding plan (world size 2, cpu)" in log
    assert re.search(r"validation: auc \d\.\d+", log)
