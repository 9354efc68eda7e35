"""Fault tolerance: automatic resume, restarts at another world size, dry runs of the launch.

* **Dry runs** (fast lane): what ``torchx run --dryrun launch/components.py:train`` would
  submit to Slurm and Kubernetes, as text, with and without ``--gpu 8``: image,
  resources, retries, rendezvous, mounts, and ``--resume`` with the run dir.
* **Killed worker, same world size** (slow): a ``local_cwd`` TorchX job of one node with
  two workers and ``max_retries=1``; one worker is SIGKILLed after the second checkpoint,
  torchrun restarts both, and the job finishes by itself with the uninterrupted run's
  final model, optimizer state and metrics. (A ``-j 2x1`` job cannot restart under
  ``local_cwd``: TorchX's local scheduler has no retries, and an in-place torchrun
  restart on one of two nodes is not supported; see ``launch/README.md``.)
* **Restart at another world size** (slow): 2 ranks killed after a checkpoint, resumed by
  1 rank with the same global batch; the sample ids every rank read are recorded.
* **predict without --data** (slow): scores the run's own synthetic split.
"""

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import pyarrow.parquet as pq
import pytest
import torch
from torchmetrics.functional.classification import binary_auroc
from torchx.runner import get_runner
from torchx.runner.config import apply as apply_torchxconfig

from tests.processes import assert_same, descendants, flat_checkpoint, kill_tree
from torchrec_me.config import config_from_dict
from torchrec_me.data.synthetic import SyntheticCriteo
from torchrec_me.distributed import checkpoint as ckpt

REPO = Path(__file__).resolve().parents[2]
COMPONENT = "launch/components.py:train"
VENV_BIN = Path(sys.executable).parent
TIMEOUT_S = 600
slow = pytest.mark.slow

STEPS, EVERY, BATCH = 40, 10, 64  # per-rank batch at world size 2: global batch 128
OVERRIDES = [
    f"train.steps={STEPS}", f"train.batch_size={BATCH}", f"train.checkpoint_every={EVERY}", "train.keep_checkpoints=5",
    "train.log_every=1", "train.eval_batch_size=512", "model.num_sets=2", "model.hidden_dim=16",
    "data.cardinality_scale=0.002", "data.val_samples=2048",
]  # fmt: skip

# Runs torchrec_me.train and records, per rank and attempt, the samples of every training
# batch the reader yields: one JSON line per step, each sample as a hash of its 39 ids and
# its label (a synthetic sample's identity).
RECORDER = '''
import hashlib, json, os, sys
from torchrec_me.data.synthetic import SyntheticCriteo
from torchrec_me.train import main

read = SyntheticCriteo.train_batches

def recorded(self, rank, world_size, batch_size, start=0, stop=None):
    path = os.path.join(os.environ["SAMPLE_LOG"], f"attempt{os.environ['SAMPLE_ATTEMPT']}_rank{rank}.jsonl")
    with open(path, "a") as f:
        for step, batch in enumerate(read(self, rank, world_size, batch_size, start, stop), start):
            kjt = batch.sparse_features
            ids = kjt.values().view(len(kjt.keys()), -1).t().tolist()
            samples = [hashlib.blake2b(repr((row, int(y))).encode(), digest_size=8).hexdigest()
                       for row, y in zip(ids, batch.labels.tolist())]
            f.write(json.dumps({"step": step, "world_size": world_size, "samples": samples}) + "\\n")
            f.flush()
            yield batch

SyntheticCriteo.train_batches = recorded
sys.exit(main(sys.argv[1:]))
'''


# --------------------------------------------------------------------------- dry runs


def _dryrun(scheduler: str, *args: str, cfg: Optional[Dict[str, Any]] = None) -> str:
    """The text ``torchx run -s SCHEDULER --dryrun launch/components.py:train ARGS`` prints
    as its scheduler request, with this repository's ``.torchxconfig`` applied."""
    resolved = dict(cfg or {})
    apply_torchxconfig(scheduler=scheduler, cfg=resolved, dirs=[str(REPO)])
    old = os.getcwd()
    os.chdir(REPO)  # components load by a path relative to the repository root
    try:
        with get_runner() as runner:
            info = runner.dryrun_component(COMPONENT, list(args), scheduler, cfg=resolved, workspace=None)
    finally:
        os.chdir(old)
    return str(info)


GPU_ARGS = ("-j", "2x8", "--gpu", "8", "--max_retries", "3", "--run_dir", "/shared/runs/r1",
            "--mounts", "type=volume,src=runs-pvc,dst=/shared/runs", "--", "train.steps=600")  # fmt: skip
CPU_ARGS = ("-j", "2x2", "--max_retries", "1", "--", "train.steps=600", "--run-dir", "/shared/runs/r2")


def _torchrun_line(text: str) -> List[str]:
    """The words of the first torchrun command in a dry-run text (quotes and srun's
    ``:\\`` group separator removed)."""
    start = text.index("torchrun ")
    line = text[start:].split("\n", 1)[0]
    return [w for w in line.replace("'", " ").replace('"', " ").split() if w != ":\\"]


def test_slurm_dryrun_with_gpus() -> None:
    text = _dryrun("slurm", *GPU_ARGS)
    sbatch = [ln for ln in text.splitlines() if ln.startswith("#SBATCH --job-name=train-")]
    assert len(sbatch) == 2  # one heterogeneous group per node
    for line in sbatch:
        assert "--gpus-per-task=8" in line and "--cpus-per-task=64" in line and "--mem=524288" in line, line
        assert "--requeue" in line and "--time=2:00:00" in line, line  # time from .torchxconfig
    assert "export TORCHX_MAX_RETRIES=3" in text and 'scontrol requeue "$SLURM_JOB_ID"' in text
    cmd = _torchrun_line(text)
    assert cmd[cmd.index("--nnodes") + 1] == "2" and cmd[cmd.index("--nproc_per_node") + 1] == "8"
    assert cmd[cmd.index("--rdzv_backend") + 1] == "c10d"
    assert "${SLURM_JOB_NODELIST_HET_GROUP_0:=localhost}:29500" in text  # rendezvous on the first node
    assert cmd[cmd.index("-m") + 1 :][:4] == ["torchrec_me.train", "--run-dir", "/shared/runs/r1", "--resume"]
    assert "PET_MAX_RESTARTS" not in text  # two nodes: the scheduler retries the whole job


def test_slurm_dryrun_cpu_defaults() -> None:
    text = _dryrun("slurm", *CPU_ARGS)
    for line in (ln for ln in text.splitlines() if ln.startswith("#SBATCH --job-name=train-")):
        assert "--cpus-per-task=2" in line and "--mem=8192" in line and "gpus" not in line, line
    cmd = _torchrun_line(text)
    # a run dir after `--` counts too: --resume goes before the arguments passed through
    assert cmd[cmd.index("-m") + 1 :][:2] == ["torchrec_me.train", "--resume"]
    assert cmd[-2:] == ["--run-dir", "/shared/runs/r2"]


def test_kubernetes_dryrun_with_gpus() -> None:
    pytest.importorskip("kubernetes", reason="TorchX's kubernetes scheduler needs the kubernetes client (pip install kubernetes)")
    with pytest.warns(UserWarning, match=r"\nRole train configured with restarts: 3\. As of 1\.4\.0 Volcano"):
        text = _dryrun("kubernetes", *GPU_ARGS)  # TorchX's caveat on retries (launch/README.md repeats it)
    assert text.count("image: torchrec-me:cuda") == 2 and "torchrec-me:cpu" not in text
    assert text.count("nvidia.com/gpu: '8'") == 4  # limits and requests of both pods
    assert text.count("cpu: 64000m") == 2 and text.count("memory: 524288M") == 2  # limits
    assert "maxRetry: 3" in text and "RestartJob" in text and "queue: default" in text
    assert "${VC_TRAIN_0_HOSTS:=localhost}:29500" in text and "containerPort: 29500" in text
    assert "claimName: runs-pvc" in text and "mountPath: /shared/runs" in text
    assert "--run-dir /shared/runs/r1 --resume" in " ".join(text.split())


def test_kubernetes_dryrun_cpu_defaults() -> None:
    pytest.importorskip("kubernetes", reason="TorchX's kubernetes scheduler needs the kubernetes client (pip install kubernetes)")
    text = _dryrun("kubernetes", "-j", "1x2", "--", "train.steps=20")
    assert "image: torchrec-me:cpu" in text and "nvidia.com/gpu" not in text
    assert "cpu: 2000m" in text and "memory: 8192M" in text
    assert "maxRetry: 0" in text and "--resume" not in text  # no run dir, no resume
    assert "localhost:0" in text  # one node: torchrun picks a free port


def test_retries_need_a_run_dir() -> None:
    with pytest.raises(ValueError, match="max_retries=2 needs --run_dir"):
        _dryrun("slurm", "-j", "2x8", "--gpu", "8", "--max_retries", "2", "--", "train.steps=600")
    with pytest.raises(ValueError, match="8 workers per node but --gpu is 4"):
        _dryrun("slurm", "-j", "2x8", "--gpu", "4", "--", "train.steps=600")


# --------------------------------------------------------------------------- processes


def _env(**extra: str) -> Dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}
    env["PATH"] = os.pathsep.join([str(VENV_BIN), env.get("PATH", "")])  # local_cwd starts torchrun from PATH
    env.pop("TORCHX_CONFIG", None)
    return env


def _start(cmd: List[str], env: Dict[str, str]) -> "subprocess.Popen[str]":
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip


def _worker(root: int, rank: int) -> Optional[int]:
    """The pid of the first attempt's training worker of ``rank`` under process ``root``."""
    for pid in descendants(root):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"torchrec_me.train" in cmdline and f"RANK={rank}".encode() in environ \
                and b"TORCHELASTIC_RESTART_COUNT=0" in environ:  # fmt: skip
            return pid
    return None


def _finish(proc: "subprocess.Popen[str]") -> str:
    try:
        log = proc.communicate(timeout=TIMEOUT_S)[0]
    except subprocess.TimeoutExpired:
        kill_tree(proc)
        pytest.fail(f"{shlex.join(proc.args)} did not finish in {TIMEOUT_S} s")  # type: ignore[arg-type]
    assert proc.returncode == 0, log[-5000:]
    return log


def _wait_for_checkpoint(proc: "subprocess.Popen[str]", run_dir: Path, step: int) -> int:
    """Wait until ``run_dir`` has a complete checkpoint of at least ``step``; returns its step."""
    deadline = time.time() + TIMEOUT_S
    while True:
        latest = ckpt.latest_checkpoint(run_dir) if run_dir.exists() else None
        if latest is not None and ckpt.read_meta(latest)["step"] >= step:
            return ckpt.read_meta(latest)["step"]
        assert proc.poll() is None, f"the run ended before its checkpoint of step {step}:\n{proc.communicate()[0][-4000:]}"
        assert time.time() < deadline, f"no checkpoint of step {step} after {TIMEOUT_S} s"
        time.sleep(0.05)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _recorded_train(root: Path, run_dir: Path, attempt: str, nproc: int, *extra: str) -> "subprocess.Popen[str]":
    script = root / "record_samples.py"
    script.write_text(RECORDER)
    launcher = [sys.executable] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]  # fmt: skip
    cmd = [*launcher, str(script), *OVERRIDES, "--run-dir", str(run_dir), "--no-progress", *extra]
    return _start(cmd, _env(SAMPLE_LOG=str(root / "samples"), SAMPLE_ATTEMPT=attempt))


def _samples(root: Path, attempt: str) -> Dict[int, List[str]]:
    """Step -> the global batch's sample ids of one attempt (its ranks in rank order)."""
    per_rank = sorted((root / "samples").glob(f"attempt{attempt}_rank*.jsonl"))
    steps: Dict[int, List[str]] = {}
    for path in per_rank:
        for line in path.read_text().splitlines():
            row = json.loads(line)
            steps.setdefault(row["step"], []).extend(row["samples"])
    return steps


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    """The reference: 2 ranks, no failure, samples recorded."""
    root = tmp_path_factory.mktemp("uninterrupted")
    (root / "samples").mkdir()
    t0 = time.perf_counter()
    log = _finish(_recorded_train(root, root / "run", "0", 2))
    return {"root": root, "run": root / "run", "log": log, "seconds": time.perf_counter() - t0}


def _metrics(run_dir: Path) -> Dict[str, Any]:
    return json.loads((run_dir / "metrics.json").read_text())


# --------------------------------------------------------------------------- killed worker


@pytest.fixture(scope="module")
def killed_worker(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    """``torchx run -s local_cwd ... -j 1x2 --max_retries 1 --run_dir R``, rank 1 SIGKILLed
    once the checkpoint of step 2 * EVERY is complete."""
    root = tmp_path_factory.mktemp("killed_worker")
    torchx = shutil.which("torchx", path=str(VENV_BIN)) or shutil.which("torchx")
    assert torchx is not None, "the torchx CLI is not installed (requirements/cpu.txt pins torchx)"
    run_dir = root / "run"
    cmd = [torchx, "run", "-s", "local_cwd", COMPONENT, "-j", "1x2", "--max_retries", "1", "--run_dir", str(run_dir),
           "--rdzv_port", str(_free_port()), "--", *OVERRIDES]  # fmt: skip
    t0 = time.perf_counter()
    proc = _start(cmd, _env())
    checkpoint_step = _wait_for_checkpoint(proc, run_dir, 2 * EVERY)
    deadline = time.time() + 60
    while (victim := _worker(proc.pid, rank=1)) is None:
        assert time.time() < deadline and proc.poll() is None, "no worker of rank 1 to kill"
        time.sleep(0.05)
    os.kill(victim, signal.SIGKILL)
    killed_after = ckpt.read_meta(ckpt.latest_checkpoint(run_dir))["step"]
    log = _finish(proc)
    return {"run": run_dir, "log": log, "checkpoint_step": checkpoint_step, "killed_after": killed_after,
            "seconds": time.perf_counter() - t0}  # fmt: skip


@slow
def test_killed_worker_job_finishes_by_itself(killed_worker: Dict[str, Any]) -> None:
    assert "Job finished: SUCCEEDED" in killed_worker["log"], killed_worker["log"][-4000:]
    assert killed_worker["checkpoint_step"] < STEPS
    m = _metrics(killed_worker["run"])
    assert m["steps"] == STEPS and m["world_size"] == 2 and m["resumed_from"]
    assert ckpt.read_meta(Path(m["resumed_from"]))["step"] >= killed_worker["checkpoint_step"]


@slow
def test_killed_worker_log_names_the_attempt_and_step(killed_worker: Dict[str, Any]) -> None:
    resumed = ckpt.read_meta(Path(_metrics(killed_worker["run"])["resumed_from"]))["step"]
    # e.g. "attempt 1: resumed from RUN/checkpoints/step_00000020 at step 20"
    assert re.search(rf"attempt 1: resum\w* from .*\bstep {resumed}\b", killed_worker["log"]), killed_worker["log"][-4000:]


@slow
def test_killed_worker_ends_with_the_uninterrupted_state(
    killed_worker: Dict[str, Any], uninterrupted: Dict[str, Any], tmp_path: Path
) -> None:
    a = flat_checkpoint(ckpt.latest_checkpoint(uninterrupted["run"]), tmp_path)
    b = flat_checkpoint(ckpt.latest_checkpoint(killed_worker["run"]), tmp_path)
    assert any("ebcs.1" in k for k in a["model"]) and a["optim"]["state"]
    assert_same(a["model"], b["model"], "model")
    assert_same(a["optim"], b["optim"], "optim")


@slow
def test_killed_worker_reports_the_uninterrupted_metrics(killed_worker: Dict[str, Any], uninterrupted: Dict[str, Any]) -> None:
    full, resumed = _metrics(uninterrupted["run"]), _metrics(killed_worker["run"])
    assert resumed["steps"] == full["steps"] == STEPS and resumed["val_samples"] == full["val_samples"]
    # As in tests/distributed/test_checkpoint.py: bitwise equal state, metrics to float32 rounding.
    assert resumed["val_auc"] == pytest.approx(full["val_auc"], rel=1e-6, abs=0)
    assert resumed["val_logloss"] == pytest.approx(full["val_logloss"], rel=1e-6, abs=0)


# --------------------------------------------------------------------------- another world size


@pytest.fixture(scope="module")
def world_size_change(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    """2 ranks killed (all processes, SIGKILL) after the checkpoint of step 2 * EVERY, then
    ``--resume`` on 1 rank with the same overrides: the saved global batch is kept."""
    root = tmp_path_factory.mktemp("world_size_change")
    (root / "samples").mkdir()
    run_dir = root / "run"
    proc = _recorded_train(root, run_dir, "0", 2)
    _wait_for_checkpoint(proc, run_dir, 2 * EVERY)
    kill_tree(proc)
    resume_step = ckpt.read_meta(ckpt.latest_checkpoint(run_dir))["step"]
    log = _finish(_recorded_train(root, run_dir, "1", 1, "--resume"))
    return {"root": root, "run": run_dir, "log": log, "resume_step": resume_step}


@slow
def test_restart_at_another_world_size_reads_every_sample_once(
    world_size_change: Dict[str, Any], uninterrupted: Dict[str, Any]
) -> None:
    s = world_size_change["resume_step"]
    assert 0 < s < STEPS
    m = _metrics(world_size_change["run"])
    assert m["world_size"] == 1 and m["steps"] == STEPS
    before, after = _samples(world_size_change["root"], "0"), _samples(world_size_change["root"], "1")
    assert min(after) == s and max(after) == STEPS - 1  # the resumed rank starts at the checkpoint's step
    assert all(len(after[step]) == 2 * BATCH for step in after)  # one rank reads the whole global batch
    read = [x for step in range(s) for x in before[step]] + [x for step in range(s, STEPS) for x in after[step]]
    reference = _samples(uninterrupted["root"], "0")
    expected = [x for step in range(STEPS) for x in reference[step]]
    assert sorted(read) == sorted(expected)
    assert len(set(read)) == len(read) == STEPS * 2 * BATCH  # nothing twice, nothing skipped


@slow
def test_restart_at_another_world_size_continues_the_loss_curve(
    world_size_change: Dict[str, Any], uninterrupted: Dict[str, Any]
) -> None:
    def losses(run: Path) -> Dict[int, float]:
        rows = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
        return {r["step"]: r["loss"] for r in rows if "loss" in r}

    s = world_size_change["resume_step"]
    full, resumed = losses(uninterrupted["run"]), losses(world_size_change["run"])
    after = range(s + 1, STEPS + 1)
    assert all(step in resumed for step in after), sorted(resumed)

    def mean(curve: Dict[int, float], steps: range) -> float:
        return sum(curve[step] for step in steps) / len(steps)

    # The same weights at step s and the same samples after it: the curve goes on where it
    # was. (Rank 0's loss of half the global batch before, the whole batch's after: the
    # per-step noise is ~0.04, ~0.01 over the 20 steps averaged.) A restart from scratch
    # would go back up towards the first steps' loss.
    assert mean(resumed, after) == pytest.approx(mean(full, after), abs=0.03)
    assert mean(resumed, after) < mean(full, range(1, 6)) - 0.03


# --------------------------------------------------------------------------- predict


@slow
def test_predict_without_data_scores_the_runs_own_synthetic_split(uninterrupted: Dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "scores.parquet"
    cmd = [sys.executable, "-m", "torchrec_me.predict", "--checkpoint", str(uninterrupted["run"]), "--out", str(out),
           "--split", "val"]  # fmt: skip
    log = _finish(_start(cmd, _env()))
    m = _metrics(uninterrupted["run"])
    assert f"scored {m['val_samples']} val rows" in log, log[-3000:]
    table = pq.read_table(out).to_pydict()
    assert table["row"] == list(range(m["val_samples"]))
    # The run's own data, rebuilt from its saved config: the same labels, row for row.
    cfg = config_from_dict(ckpt.read_meta(ckpt.latest_checkpoint(uninterrupted["run"]))["config"])
    labels = torch.cat([b.labels for b, _, _ in SyntheticCriteo(cfg.data).eval_batches("val", 0, 1, 512)])
    assert table["label"] == labels.long().tolist()
    auc = float(binary_auroc(torch.tensor(table["score"]), torch.tensor(table["label"])))
    assert auc == pytest.approx(m["val_auc"], abs=0.01)  # the trained model, not a fresh one (near 0.5)
