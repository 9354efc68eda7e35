"""Bad inputs and faults of train / predict / analyze: one clear error, nothing lost.

Table-driven: each case is (argv, expected exit code, fragment of the expected message).
Every case also checks that no traceback was printed and that every file that existed
before the command still exists afterwards. The checkpoint faults (bit flips, a corrupt
meta, a resume with another model) run on one small trained run dir.
"""

import json
import shutil
from pathlib import Path
from typing import Callable, Dict, List

import pytest
import torch

from torchrec_me.cli import main as cli_main
from torchrec_me.distributed import checkpoint as ckpt

TINY = ["model.num_sets=2", "model.hidden_dim=16", "model.num_cross_layers=1", "train.batch_size=64",
        "train.eval_batch_size=128", "data.val_samples=256", "data.cardinality_scale=0.002", "train.log_every=1"]  # fmt: skip


def _tree(root: Path) -> List[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _run(argv: List[str], root: Path, capsys: pytest.CaptureFixture) -> "tuple[int, str, str]":
    before = _tree(root)
    code = cli_main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "Exception ignored" not in err, err[-2000:]
    missing = sorted(set(before) - set(_tree(root)))
    assert not missing, f"files lost: {missing}"
    return code, out, err


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run with checkpoints at steps 2 and 4 (K=2)."""
    run = tmp_path_factory.mktemp("bad_inputs") / "run"
    argv = ["train", *TINY, "train.steps=4", "train.checkpoint_every=2", "--run-dir", str(run), "--no-progress"]
    assert cli_main(argv) == 0
    assert [ckpt.read_meta(p)["step"] for p in ckpt.list_checkpoints(run)] == [2, 4]
    return run


def _copy(run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


def _flip_bytes(checkpoint: Path) -> None:
    shard = max(checkpoint.glob("*.distcp"), key=lambda p: p.stat().st_size)
    data = bytearray(shard.read_bytes())
    for i in range(64):
        data[len(data) // 2 + 8 * i] ^= 0xFF
    shard.write_bytes(bytes(data))


CASES: Dict[str, "tuple[Callable[[Path, Path], List[str]], int, str]"] = {
    "adam on cpu": (lambda r, t: ["train", "train.sparse_optimizer=adam"], 2, "no CPU kernel"),
    "negative lr": (lambda r, t: ["train", "train.dense_lr=-1e-3"], 2, "'train.dense_lr'"),
    "nan lr": (lambda r, t: ["train", "train.sparse_lr=.nan"], 2, "'train.sparse_lr'"),
    "run dir is a file": (lambda r, t: ["train", "--run-dir", str(t / "a_file")], 2, "is not a directory"),
    "metrics out is a dir": (lambda r, t: ["train", "--metrics-out", str(t)], 2, "is a directory"),
    "predict negative batch": (
        lambda r, t: ["predict", "--checkpoint", str(r), "--data", str(t), "--out", str(t / "o.parquet"),
                      "--batch-size", "-5"], 2, "--batch-size"),  # fmt: skip
    "analyze zero chunk": (
        lambda r, t: ["analyze", "--checkpoint", str(r), "--out", str(t / "ia"), "--chunk-rows", "0"], 2, "--chunk-rows"),
    "resume with more sets": (
        lambda r, t: ["train", *TINY, "train.steps=6", "model.num_sets=3", "--resume", "--run-dir", str(r)], 2,
        "model.num_sets"),  # fmt: skip
    "resume with fewer sets": (
        lambda r, t: ["train", *TINY, "train.steps=6", "model.num_sets=1", "--resume", "--run-dir", str(r)], 2,
        "model.num_sets"),  # fmt: skip
    "no checkpoint to analyze": (lambda r, t: ["analyze", "--checkpoint", str(t), "--out", str(t / "ia")], 2,
                                 "neither a complete checkpoint"),  # fmt: skip
}
if not torch.cuda.is_available():
    CASES["cuda without cuda"] = (lambda r, t: ["train", "train.device=cuda"], 2, "no CUDA device")


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_gives_one_clear_error(case: str, run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "a_file").write_text("keep me\n")
    run = _copy(run_dir, tmp_path / "copy")
    config_before = (run / "config.yaml").read_text()
    argv, expected, fragment = CASES[case]
    code, _, err = _run(argv(run, tmp_path), tmp_path, capsys)
    assert code == expected, err
    lines = [line for line in err.strip().splitlines() if line.startswith("torchrec-me: error:")]
    assert len(lines) == 1 and fragment in lines[0], err[-2000:]
    assert (run / "config.yaml").read_text() == config_before  # a refused resume rewrites nothing
    assert not list(tmp_path.glob("**/.*.tmp*"))


def test_corrupt_newest_checkpoint_falls_back(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                              caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    run = _copy(run_dir, tmp_path)
    previous, newest = ckpt.list_checkpoints(run)
    _flip_bytes(newest)
    assert "does not match its sha256" in (ckpt.checkpoint_problem(newest) or "")
    code = cli_main(["train", *TINY, "train.steps=6", "--resume", "--run-dir", str(run), "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0 and "Traceback" not in err, err[-2000:]
    assert f"resumed from {previous} at step 2" in out
    assert str(newest) in caplog.text and str(previous) in caplog.text
    # Retention keeps the two newest intact checkpoints: the corrupt one goes, the one it fell back to stays.
    assert ckpt.list_checkpoints(run) == [previous, ckpt.step_path(run, 6)]


def test_corrupt_meta_falls_back_and_none_intact_is_an_error(run_dir: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    run = _copy(run_dir, tmp_path)
    first, newest = ckpt.list_checkpoints(run)
    (newest / ckpt.META).write_text("{not json")
    assert ckpt.latest_checkpoint(run) == first
    _flip_bytes(first)
    assert ckpt.latest_checkpoint(run) is None
    code, _, err = _run(["train", *TINY, "train.steps=6", "--resume", "--run-dir", str(run)], tmp_path, capsys)
    assert code == 2 and "intact" in err


def test_resume_of_an_empty_run_dir_says_so_before_the_plan(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["train", *TINY, "train.steps=2", "--resume", "--run-dir", str(tmp_path / "new"), "--no-progress"]
    code, out, err = _run(argv, tmp_path, capsys)
    assert code == 0, err
    assert out.index("starting from step 0") < out.index("sharding plan")


def test_validation_without_run_dir_reports_the_final_model(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    metrics = tmp_path / "m.json"
    argv = ["train", *TINY, "train.steps=4", "train.eval_every=2", "data.val_samples=200", "--metrics-out",
            str(metrics), "--no-progress"]  # fmt: skip
    code, out, err = _run(argv, tmp_path, capsys)
    assert code == 0, err
    got = json.loads(metrics.read_text())
    assert got["test_model"] == "final" and "test (final model, step 4" in out
    assert "test (best checkpoint" not in out
    assert got["val_samples"] == 200  # the size asked for, not a multiple of the batch


def test_non_finite_loss_stops_the_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    argv = ["train", *TINY, "train.steps=40", "train.dense_lr=1e30", "train.sparse_lr=1e30", "--run-dir", str(run),
            "--no-progress"]  # fmt: skip
    code, _, err = _run(argv, tmp_path, capsys)
    assert code == 2 and "non-finite training loss" in err and "at step" in err, err[-2000:]
    assert not (run / "metrics.json").exists()


def test_overrides_after_flags_train(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    metrics = tmp_path / "m.json"
    argv = ["train", "--no-progress", *TINY, "train.steps=1", "--metrics-out", str(metrics), "model.num_sets=1"]
    code, _, err = _run(argv, tmp_path, capsys)
    assert code == 0, err
    assert json.loads(metrics.read_text())["num_sets"] == 1
