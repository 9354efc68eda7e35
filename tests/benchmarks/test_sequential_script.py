"""benchmarks/sequential.py: its parts in one process (fast), and the script end to end
on tiny sizes at world sizes 1 and 2 with a stand-in peer (slow lane, untimed).

The numbers are the script's output, not asserted; what is asserted is that it measured
exactly the configurations asked for, with the documented JSON keys, the batches it
says (full rows, or rows drawn from the length distributions), the FLOPs ordered as the
models' shapes, the peer called with the same sizes, and every table printed.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Dict

import numpy as np
import pytest

from benchmarks.sequential import Case, SequentialOptions, main, make_batch, parse_args, row_lengths, sweep
from tests.benchmarks import markdown
from tests.data.sequences.rawseq import random_log, write_udata
from torchrec_me.config import ModelConfig
from torchrec_me.data.prepare.common import PrepareOptions
from torchrec_me.data.sequences.prepare import prepare_sequences

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTED_KEYS = {
    "implementation", "backbone", "size", "model", "num_sets", "embedding_dim", "num_blocks", "num_heads",
    "max_seq_len", "distribution", "length_buckets", "world_size", "sparse_optimizer", "dropout", "sections",
    "rows_per_step", "tokens_per_step", "steps", "rounds", "step_ms", "tokens_per_s", "sequences_per_s",
    "eval_users_per_s", "peak_mem_mb", "gflop_per_token", "roofline_fraction", "roofline_fraction_by_round",
    "matmul_peak_gflops", "matmul_peak_gflops_best", "threads_per_rank", "device", "machine", "profile",
    "reference_commit", "parity",
}  # fmt: skip

# A stand-in for the reference's harness: the interface benchmarks/sequential.py calls
# (setup, build_train_step), recording what it was asked for.
FAKE_PEER = '''
import json, os
import torch

def setup(reference_dir=None):
    return "0123456789abcdef-stand-in"

def build_train_step(num_items, dim, num_blocks, num_heads, max_seq_len, num_negatives, lengths, seed=0, num_batches=2):
    with open(os.path.join(os.path.dirname(__file__), "calls.jsonl"), "a") as f:
        f.write(json.dumps([num_items, dim, num_blocks, num_heads, max_seq_len, num_negatives, [int(x) for x in lengths]]) + "\\n")
    w = torch.nn.Parameter(torch.randn(dim, dim))
    opt = torch.optim.AdamW([w], lr=1e-3)
    x = torch.randn(int(sum(lengths)), dim)

    def step():
        opt.zero_grad()
        (x @ w).square().mean().backward()
        opt.step()

    return step, int(sum(lengths) - len(lengths))

def parity(dim, num_blocks, num_heads, max_seq_len, batch):
    return {"max_abs_diff": 1.5e-8, "max_abs_output": 0.9, "positions_compared": batch * max_seq_len,
            "max_abs_grad_diff": 2e-6, "time_bucket_mismatches": 0, "notes": "dropped"}
'''


def test_sweep_has_the_grid_the_peer_and_the_jagged_rows(tmp_path: Path) -> None:
    (tmp_path / "gr_peer.py").write_text(FAKE_PEER)
    options = SequentialOptions(backbones=["hstu", "llama"], sizes=["ml1m"], scales=[1, 4], lengths=[50, 200],
                                peer=str(tmp_path), peer_sizes=["ml1m"], jagged=True, buckets=[1, 4])  # fmt: skip
    w1, w2 = sweep(options, 1), sweep(options, 2)
    assert len([c for c in w1 if "grid" in c.sections]) == 8 == len(w2)
    peer = [c for c in w1 if "peer" in c.sections]
    assert sorted((c.implementation, c.sparse_optimizer, c.max_seq_len) for c in peer) == sorted(
        (impl, opt, length) for length in (50, 200)
        for impl, opt in [("reference", "rowwise_adagrad"), ("torchrec_me", "rowwise_adagrad"), ("torchrec_me", "adam_dense")]
    )  # fmt: skip
    assert all(c.dropout == 0.0 and c.time_bias_source == "next" and c.num_sets == 1 for c in peer)
    jagged = [c for c in w1 if "jagged" in c.sections]
    assert [(c.distribution, c.length_buckets) for c in jagged] == [("longtail", 1), ("longtail", 4)]
    assert not any("peer" in c.sections or "jagged" in c.sections for c in w2)
    cfg = peer[1].config(options)
    assert (cfg.model.negatives_per_position, cfg.model.num_negatives, cfg.train.batch_size) == (True, 128, 512)


def test_batches_have_the_lengths_asked_for() -> None:
    options = SequentialOptions(tokens_per_batch=64 * 40)
    rng = np.random.default_rng(0)
    full = row_lengths(Case("hstu", "ml1m", 1, 40, 1), options, rng)
    assert full.tolist() == [41] * 64
    tail = row_lengths(Case("hstu", "ml1m", 1, 40, 1, distribution="longtail"), options, rng)
    assert tail.min() >= 2 and tail.max() <= 41 and np.median(tail) < 20  # long-tailed: median about L / 8
    batch = make_batch(tail, 30, rng)
    assert batch.lengths.tolist() == tail.tolist() and int(batch.items.values().max()) < 30
    times = np.split(batch.timestamps.numpy(), np.cumsum(tail)[:-1])
    assert all(np.all(np.diff(t) > 0) for t in times)


def test_bad_options_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for argv, message in [(["--sizes", "huge"], "unknown sizes"), (["--peer", str(tmp_path)], "no gr_peer.py"),
                          (["--lengths-from", str(tmp_path)], "not a prepared sequence dataset")]:  # fmt: skip
        with pytest.raises(SystemExit):
            parse_args(argv)
        assert message in capsys.readouterr().err
    quick = parse_args(["--quick", "--lengths", "30"])
    assert quick.quick and quick.lengths == [30] and quick.backbones == ["hstu", "sasrec"]
    quick = parse_args(["--quick"])
    assert len(sweep(quick, 1)) == 8 + 2  # 2 backbones x 2 scales x 2 lengths, and the jagged pair
    assert [(c.backbone, c.num_sets, c.max_seq_len) for c in sweep(quick, 2)] == [("hstu", 1, 200)]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    tmp = tmp_path_factory.mktemp("sequential")
    raw = write_udata(tmp / "raw" / "u.data", random_log(n_users=40, n_items=30, max_len=20, seed=1))
    seq = tmp / "seq"
    prepare_sequences(str(raw), str(seq), PrepareOptions(summary=False), fmt="movielens")
    peer = tmp / "peer"
    peer.mkdir()
    (peer / "gr_peer.py").write_text(FAKE_PEER)
    out = tmp / "rows.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "sequential.py"), "--backbones", "hstu", "sasrec",
           "--sizes", "ml1m", "--scales", "1", "2", "--lengths", "8", "--world-sizes", "1", "2",
           "--tokens-per-batch", "32", "--num-items", "50", "--num-negatives", "4", "--steps", "2", "--rounds", "2",
           "--warmup", "1", "--eval-steps", "1", "--peak-reps", "1", "--device", "cpu", "--profile", "--jagged",
           "--jagged-length", "8", "--buckets", "1", "2", "--lengths-from", str(seq), "--peer", str(peer),
           "--peer-sizes", "ml1m", "--json", str(out)]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    calls = [json.loads(line) for line in (peer / "calls.jsonl").read_text().splitlines()]
    return {"stdout": proc.stdout, "rows": json.loads(out.read_text()), "calls": calls}


@pytest.mark.slow
def test_it_measured_exactly_the_configurations_asked_for(run: Dict[str, Any]) -> None:
    got = sorted((r["implementation"], r["backbone"], r["model"], r["distribution"], r["length_buckets"],
                  r["world_size"], r["sparse_optimizer"]) for r in run["rows"])  # fmt: skip
    k = ModelConfig.length_buckets  # the model's default
    grid = [("torchrec_me", b, m, "full", k, w, "rowwise_adagrad") for b in ("hstu", "sasrec")
            for m in ("SE", "ME-2x") for w in (1, 2)]  # fmt: skip
    peer = [("reference", "hstu", "SE", "full", k, 1, "adamw (dense table)"),
            ("torchrec_me", "hstu", "SE", "full", k, 1, "adam_dense")]  # fmt: skip
    peer_ours = ("torchrec_me", "hstu", "SE", "full", k, 1, "rowwise_adagrad")  # dropout 0: its own row
    jagged = [("torchrec_me", "hstu", "SE", d, k, 1, "rowwise_adagrad") for d in ("longtail", "dataset") for k in (1, 2)]
    assert got == sorted(grid + peer + [peer_ours] + jagged)


@pytest.mark.slow
def test_rows_have_the_documented_keys_and_counts(run: Dict[str, Any]) -> None:
    for r in run["rows"]:
        assert set(r) == DOCUMENTED_KEYS
        assert (r["steps"], r["rounds"], r["device"]) == (2, 2, "cpu")
        assert r["tokens_per_s"] > 0 and r["peak_mem_mb"] > 0 and r["gflop_per_token"] > 0
        full = r["distribution"] == "full"
        assert r["rows_per_step"] == 4 * r["world_size"]  # 32 tokens // length 8, every rank
        assert (r["tokens_per_step"] == 32 * r["world_size"]) == full  # full rows: 8 predicted positions each
        own_eval = full and r["implementation"] == "torchrec_me"
        assert (r["eval_users_per_s"] is not None) == own_eval
        has_profile = own_eval and r["world_size"] == 1  # also our two peer rows
        assert (r["profile"] is not None) == has_profile
        if has_profile:
            assert r["profile"]["eager step (sum)"] > 0
            assert any(k.startswith("encoders fwd+bwd: attention") for k in r["profile"])
    # The peer got the sizes of our row: 2 blocks, 1 head, d 48, length 8, 4 negatives, 4 full rows.
    assert run["calls"] == [[50, 48, 2, 1, 8, 4, [9, 9, 9, 9]]]
    assert {r["reference_commit"] for r in run["rows"] if r["implementation"] == "reference"} == {
        "0123456789abcdef-stand-in"
    }


@pytest.mark.slow
def test_flops_follow_the_shapes(run: Dict[str, Any]) -> None:
    by = {(r["backbone"], r["model"]): r["gflop_per_token"] for r in run["rows"] if r["distribution"] == "full"}
    for backbone in ("hstu", "sasrec"):  # ME-2x: two stacks of the same size
        assert by[(backbone, "ME-2x")] == pytest.approx(2 * by[(backbone, "SE")], rel=0.05)
    assert by[("sasrec", "SE")] > by[("hstu", "SE")]  # SASRec adds a feed-forward sublayer


@pytest.mark.slow
def test_every_table_is_printed_with_its_machine(run: Dict[str, Any]) -> None:
    tables = markdown.tables(run["stdout"])
    titles = list(tables)
    assert titles[:4] == ["Training and evaluation (world size 1)", "World size",
                          "Against the reference (HSTU SE, dropout 0; facebookresearch/generative-recommenders "
                          "0123456789ab)", "Padded vs length-bucketed"]  # fmt: skip
    # header + rows: 4 grid rows; 4 configurations x 2 world sizes; 3 peer rows; 2 x 2 jagged
    assert [len(tables[t]) for t in titles[:4]] == [5, 9, 4, 5]
    profiles = run["stdout"].count("### Profile:")
    assert profiles == 6  # the 4 grid rows at world size 1 and our 2 peer rows
    assert run["stdout"].count("Machine: ") == 4 + profiles
    header, *rows = tables[titles[2]]
    col = {name: i for i, name in enumerate(header)}
    assert [r[col["vs_reference"]] for r in rows if r[col["implementation"]] == "reference"] == ["1.00x"]
    assert "ml1m L=8: max |ours - reference| 1.5e-08 (outputs up to 0.90, 64 positions), weight gradients 2.0e-06" in run["stdout"]
    parity = [r["parity"] for r in run["rows"] if r["parity"]]
    assert len(parity) == 1 and "notes" not in parity[0]


@pytest.mark.slow
def test_saved_rows_render_the_same_tables(run: Dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    saved = tmp_path / "rows.json"
    saved.write_text(json.dumps(run["rows"]))
    main(["--render", str(saved)])
    assert capsys.readouterr().out == run["stdout"]
    main(["--render", str(saved), "--recount-flops", "--num-negatives", "4", "--num-items", "50",
          "--json", str(tmp_path / "recounted.json")])  # fmt: skip
    capsys.readouterr()
    recounted = json.loads((tmp_path / "recounted.json").read_text())
    for old, new in zip(run["rows"], recounted):  # the same counter: the same FLOPs and fractions
        assert new["gflop_per_token"] == pytest.approx(old["gflop_per_token"])
        assert new["roofline_fraction"] == pytest.approx(old["roofline_fraction"])


def test_fake_peer_is_valid_python() -> None:
    compile(textwrap.dedent(FAKE_PEER), "gr_peer.py", "exec")
