"""Training throughput of SE/ME models against the dense-compute roofline.

Measures training samples/s (forward, backward, the fused sparse update and the dense
Adam step, through ``TrainPipelineSparseDist``) and peak memory on synthetic data with
Criteo's full vocabularies (``data.cardinality_scale=1.0``), and in the same run the
roofline: the backbone's dense FLOPs per sample (forward matmul FLOPs of every Linear,
CrossNet kernel, CIN/product einsum..., times 3 for forward + backward) against the
aggregate fp32 matmul peak of all ranks, measured now (between the timing rounds).

Sections (each a markdown table; ``--json FILE`` writes every row):

* SE vs ME by scale K: ME-Kx is K sets of dim D, SE-Kx one set of dim K*D;
* the layouts of the K sets (``separate``, ``grouped``, ``packed``) at K = ``--layout-k``;
* the dense path at K = ``--layout-k``: the library (fused DCNv2 cross kernels, fused
  ReLU + Dropout, fused Adam) against the straightforward version (TorchRec's
  ``CrossNet`` forward, ``nn.ReLU`` + ``nn.Dropout``, ``mean`` over stacked sets,
  multi-tensor Adam);
* world size 1 and 2 (gloo on CPU, nccl on GPU): world size 2 is run by this script
  under torchrun (``torch.distributed.run --standalone``), one rank per process.

    python benchmarks/throughput.py --json results.json
    python benchmarks/throughput.py --quick                       # < 2 min on 2 CPU cores
    torchrun --nproc_per_node 2 benchmarks/throughput.py --quick  # only world size 2

Under torchrun (``WORLD_SIZE`` set) only configurations at that world size run and rank
0 reports. ``--batch-size`` is per rank (as ``train.batch_size``); samples/s count every
rank and use the median step time (the machine may be shared). All configurations of
one world size are built first and timed in interleaved rounds (``--rounds``), so
drifting contention hits them alike; each one's peak memory is taken while it is built
and warmed up, as its rise over the process baseline (plus that baseline).

``roofline_fraction`` pairs each round with the machine's speed in that round: the
matmul peak is measured (best of ``--peak-reps``) before the first round and after each,
a round's peak is the better of the two around it, and the fraction is the median over
rounds of (round samples/s) / (round peak / dense FLOPs per sample).
``roofline_fraction_best_peak`` divides by the best peak of the whole run instead (the
stricter figure when the machine's speed drifts). The sparse
optimizer defaults to ``adagrad`` (EXACT_ADAGRAD), the one fused CPU optimizer under
which every layout is the same model. A CUDA device is used when available.
"""

import argparse
import contextlib
import ctypes
import gc
import itertools
import json
import logging
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, replace
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode
from torchrec.datasets.utils import Batch
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

from torchrec_me.config import Config, ConfigError, ModelConfig, validate
from torchrec_me.data.synthetic import SyntheticCriteo
from torchrec_me.distributed import sharding
from torchrec_me.distributed.sharding import DistContext, apply_sparse_optimizer, build_optimizer, init_distributed
from torchrec_me.distributed.sharding import plan_and_shard
from torchrec_me.models import BACKBONE_REGISTRY, MultiEmbeddingModel, MultiEmbeddingTrain, build_model
from torchrec_me.modules import interactions
from torchrec_me.modules.layouts import LAYOUT_REGISTRY
from torchrec_me.modules.mlp import ReLUDropout


@dataclass(frozen=True)
class Spec:
    """One measured configuration; ``sections`` are the tables it appears in."""

    backbone: str
    num_sets: int
    embedding_dim: int
    layout: str
    world_size: int
    dense: str = "fused"
    sections: Tuple[str, ...] = ()

    @property
    def key(self) -> Tuple[Any, ...]:
        return (self.backbone, self.num_sets, self.embedding_dim, self.layout, self.world_size, self.dense)


def sweep(args: argparse.Namespace, world_sizes: Sequence[int]) -> List[Spec]:
    """Every configuration, in report order; one spec per configuration.

    SE-Kx and the reference dense path run at world size 1 only; ``--quick`` runs only
    K = ``--layout-k`` in the default layout at world size > 1.
    """
    d, k0, first = args.embedding_dim, args.layout_k, args.backbones[0]
    specs: Dict[Tuple[Any, ...], Spec] = {}

    def add(section: str, spec: Spec) -> None:
        old = specs.get(spec.key, spec)
        specs[spec.key] = replace(old, sections=old.sections + (section,))

    for ws in world_sizes:
        small = ws > 1 and args.quick
        if ws == 1 and first == "dcnv2":  # first: reference and fused measured back to back
            add("dense", Spec(first, k0, d, "separate", ws, dense="reference"))
            add("dense", Spec(first, k0, d, "separate", ws))
        for backbone in args.backbones:
            for k in [k0] if small else args.scales:
                add("scale", Spec(backbone, k, d, "separate", ws))
                if k > 1 and ws == 1 and not args.no_se:
                    add("scale", Spec(backbone, 1, d * k, "separate", ws))
        for layout in ["separate"] if small else args.layouts:
            add("layout", Spec(first, k0, d, layout, ws))
    return list(specs.values())


def _config(spec: Spec, args: argparse.Namespace) -> Config:
    cfg = Config()
    cfg.model = ModelConfig(
        backbone=spec.backbone, num_sets=spec.num_sets, embedding_dim=spec.embedding_dim, layout=spec.layout
    )
    cfg.data.cardinality_scale, cfg.data.max_cardinality = args.cardinality_scale, 10**9
    cfg.train.batch_size, cfg.train.sparse_optimizer = args.batch_size, args.sparse_optimizer
    cfg.train.device = args.device
    validate(cfg)
    return cfg


def _reference_logits(self: MultiEmbeddingModel, dense_features: torch.Tensor, per_set: List[torch.Tensor]) -> torch.Tensor:
    if self.dense_archs is not None:
        per_set = [torch.cat([a(dense_features).unsqueeze(1), e], dim=1) for a, e in zip(self.dense_archs, per_set)]
    hidden = [self.interactions[0 if len(self.interactions) == 1 else k](e) for k, e in enumerate(per_set)]
    return self.head(torch.stack(hidden, dim=0).mean(0))


def _reference_relu_dropout(self: ReLUDropout, x: torch.Tensor) -> torch.Tensor:
    return F.dropout(F.relu(x), self.p, self.training)


@contextlib.contextmanager
def dense_path(name: str) -> Iterator[None]:
    """``reference``: the straightforward version the fused path replaced (TorchRec's
    ``CrossNet`` forward, ``nn.ReLU`` + ``nn.Dropout``, ``mean`` over stacked sets, and
    the multi-tensor rather than the fused Adam); ``fused``: the library as is. Models
    and optimizers must be built inside it."""
    saved = interactions.cross_net, MultiEmbeddingModel._logits, ReLUDropout.forward, sharding._fused_adam_ok
    if name == "reference":
        interactions.cross_net = lambda x0, cross: cross(x0)  # type: ignore[assignment]
        MultiEmbeddingModel._logits = _reference_logits  # type: ignore[method-assign]
        ReLUDropout.forward = _reference_relu_dropout  # type: ignore[method-assign]
        sharding._fused_adam_ok = lambda params: False  # type: ignore[assignment]
    try:
        yield
    finally:
        (interactions.cross_net, MultiEmbeddingModel._logits, ReLUDropout.forward,
         sharding._fused_adam_ok) = saved  # type: ignore[method-assign]  # fmt: skip


def dense_flops_per_sample(cfg: ModelConfig, num_fields: int) -> float:
    """Training FLOPs per sample of the dense part: 3 x the forward matmul FLOPs.

    Counted by ``FlopCounterMode`` (mm/addmm/bmm/einsum shapes) on the interactions and
    head of a tiny-vocabulary copy of the model, fed random embeddings; element-wise
    ops, normalisation and the embedding lookups are not dense compute and not counted.
    """
    model = build_model(cfg, [f"f{i}" for i in range(num_fields)], [4] * num_fields).eval()
    batch = 64
    per_set = [torch.randn(batch, num_fields, d) for d in cfg.dims()]
    with FlopCounterMode(display=False) as counter, torch.no_grad(), dense_path("reference"):
        model._logits(torch.zeros(batch, 0), per_set)
    return 3.0 * counter.get_total_flops() / batch


def matmul_peak_gflops(device: torch.device, reps: int) -> float:
    """Best fp32 GFLOP/s of an n x n matmul on this rank, run by all ranks at once."""
    n = 8192 if device.type == "cuda" else 2048
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    dist.barrier()
    best = float("inf")
    for _ in range(reps + 1):
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return _reduce(2 * n**3 / best / 1e9, dist.ReduceOp.SUM)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reduce(value: float, op: Any) -> float:
    t = torch.tensor([value], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=op)
    return float(t.item())


def _reset_peak_memory(device: torch.device) -> float:
    """Free what can be freed, restart the peak counter; the memory in use now (MB)."""
    gc.collect()
    with contextlib.suppress(OSError):  # return freed heap pages, so the peak starts from what is live
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    elif os.path.exists("/proc/self/clear_refs"):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM, the peak resident set, to the current one
    return _current_memory_mb(device)


def _current_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    with open("/proc/self/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) / 1024  # type: ignore[union-attr]


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1)) / 1024  # type: ignore[union-attr]


@dataclass
class _Running:
    """A built configuration: its pipeline and what was measured so far."""

    spec: Spec
    cfg: Config
    dmp: Any
    pipeline: Any
    stream: Iterator[Batch]
    peak_mem_mb: float
    rounds: List[List[float]]  # step seconds, one list per timing round
    cpu_seconds: float = 0.0


def build_one(spec: Spec, args: argparse.Namespace, ctx: DistContext, data: SyntheticCriteo,
              batches: Sequence[Batch], baseline_mb: float) -> _Running:  # fmt: skip
    """Shard ``spec``'s model and run its warm-up steps; its own peak memory (collective).

    The peak is this configuration's rise above the memory in use before it was built,
    plus the process baseline ``baseline_mb`` (data, runtime): what it would take alone,
    though other configurations stay built for the interleaved timing.
    """
    cfg = _config(spec, args)
    before = _reset_peak_memory(ctx.device)
    torch.manual_seed(0)
    stream = itertools.cycle(batches)
    with dense_path(spec.dense):
        model = build_model(cfg.model, data.feature_names, data.num_embeddings, device=torch.device("meta"))
        module = MultiEmbeddingTrain(model)
        apply_sparse_optimizer(module, cfg.train.sparse_optimizer, cfg.train.sparse_lr)
        dmp, _ = plan_and_shard(module, ctx, cfg.train.batch_size)
        pipeline = TrainPipelineSparseDist(dmp, build_optimizer(dmp, cfg.train), ctx.device)
        for _ in range(args.warmup):
            pipeline.progress(stream)
    _sync(ctx.device)
    mem = _reduce(baseline_mb + _peak_memory_mb(ctx.device) - before, dist.ReduceOp.MAX)
    return _Running(spec, cfg, dmp, pipeline, stream, mem, [])


def time_round(run: _Running, steps: int, ctx: DistContext) -> None:
    """One untimed step (the previous configuration left the caches cold), then ``steps`` timed."""
    with dense_path(run.spec.dense):
        run.pipeline.progress(run.stream)
        _sync(ctx.device)
        dist.barrier()
        cpu_start = time.process_time()
        run.rounds.append([])
        for _ in range(steps):
            start = time.perf_counter()
            run.pipeline.progress(run.stream)
            _sync(ctx.device)
            run.rounds[-1].append(time.perf_counter() - start)
        run.cpu_seconds += time.process_time() - cpu_start


def finish_one(run: _Running, args: argparse.Namespace, ctx: DistContext, data: SyntheticCriteo,
               batches: Sequence[Batch], round_peaks: Sequence[float]) -> Dict[str, Any]:  # fmt: skip
    """The configuration's row (collective); frees it.

    ``round_peaks[r]`` is the matmul peak while round r ran (the better of the
    measurements just before and just after it). The roofline fraction is the median
    over rounds of that round's samples/s against that round's roofline: the machine's
    speed right then, on both sides of the ratio.
    """
    spec, times = run.spec, [t for r in run.rounds for t in r]
    flops = dense_flops_per_sample(run.cfg.model, len(data.feature_names))
    global_batch = args.batch_size * ctx.world_size
    per_round = [
        global_batch / _reduce(statistics.median(r), dist.ReduceOp.MAX) * flops / (peak * 1e9)
        for r, peak in zip(run.rounds, round_peaks)
    ]
    step = _reduce(statistics.median(times), dist.ReduceOp.MAX)
    mean = _reduce(sum(times) / len(times), dist.ReduceOp.MAX)
    best = _reduce(min(times), dist.ReduceOp.MAX)
    cores_busy = _reduce(run.cpu_seconds / sum(times), dist.ReduceOp.SUM) / ctx.world_size
    run.pipeline.detach()
    breakdown = None
    if args.profile and spec.dense == "fused" and ctx.world_size == 1:
        breakdown = time_phases(run.dmp, run.pipeline._optimizer, batches, args.steps)
    run.pipeline = run.dmp = run.stream = None
    return {
        "backbone": spec.backbone, "model": "SE" if spec.num_sets == 1 else "ME", "num_sets": spec.num_sets,
        "embedding_dim": spec.embedding_dim, "layout": spec.layout, "world_size": ctx.world_size,
        "device": ctx.device.type, "dense_path": spec.dense, "sections": list(spec.sections),
        "batch_size": args.batch_size, "sparse_optimizer": args.sparse_optimizer,
        "threads_per_rank": torch.get_num_threads(), "steps": len(times), "rounds": args.rounds,
        "step_ms": 1e3 * step, "samples_per_s": global_batch / step, "samples_per_s_mean": global_batch / mean,
        "samples_per_s_best": global_batch / best,
        "dense_gflop_per_sample": flops / 1e9, "roofline_fraction": statistics.median(per_round),
        "roofline_fraction_by_round": per_round, "peak_mem_mb": run.peak_mem_mb, "cores_busy_per_rank": cores_busy, "profile": breakdown,
    }  # fmt: skip


def time_phases(dmp: Any, optimizer: Any, batches: Sequence[Batch], steps: int) -> Dict[str, float]:
    """Milliseconds per eager (unpipelined) training step, by phase; world size 1 only.

    The sets' embeddings are detached before the interactions, so the dense backward
    and the embedding backward (FBGEMM's backward with the fused sparse update) are
    timed apart; a sharded EBC's forward includes its input and output distribution.
    """
    model = dmp.module.model
    loss_fn = torch.nn.BCEWithLogitsLoss()
    phases = ["embeddings: forward (incl. dist)", "interactions + head: forward", "interactions + head: backward",
              "embeddings: backward + fused update", "dense Adam step"]  # fmt: skip
    out = {p: 0.0 for p in phases}
    for i in range(steps + 1):
        batch = batches[i % len(batches)]
        marks = [time.perf_counter()]
        optimizer.zero_grad()
        per_set = model.sparse_arch(batch.sparse_features)
        marks.append(time.perf_counter())
        leaves = [e.detach().requires_grad_() for e in per_set]
        loss = loss_fn(model._logits(batch.dense_features, leaves), batch.labels.float())
        marks.append(time.perf_counter())
        loss.backward()
        marks.append(time.perf_counter())
        torch.autograd.backward(per_set, [e.grad for e in leaves])
        marks.append(time.perf_counter())
        optimizer.step()
        marks.append(time.perf_counter())
        if i:  # the first step warms up
            for p, a, b in zip(phases, marks, marks[1:]):
                out[p] += (b - a) * 1e3 / steps
    out["eager step (sum)"] = sum(out[p] for p in phases)
    return out


def run_world(specs: Sequence[Spec], args: argparse.Namespace) -> List[Dict[str, Any]]:
    """Every spec at this process group's world size; rows on every rank.

    All configurations are built first, then timed in ``args.rounds`` interleaved rounds
    (each configuration ``steps / rounds`` steps per round), so a slow minute of a shared
    machine slows all of them alike and the ratios between them hold.
    """
    ctx = init_distributed(args.device)
    data = SyntheticCriteo(_config(specs[0], args).data)
    batches = [
        data.batch("train", g * ctx.world_size + ctx.rank, args.batch_size)[0].to(ctx.device)
        for g in range(args.num_batches)
    ]
    peaks = [matmul_peak_gflops(ctx.device, args.peak_reps)]
    baseline = _current_memory_mb(ctx.device)
    running = []
    for spec in specs:
        try:
            running.append(build_one(spec, args, ctx, data, batches, baseline))
        except ConfigError as e:
            if ctx.rank == 0:
                print(f"skipped {spec}: {e}", file=sys.stderr, flush=True)
    per_round = [args.steps // args.rounds + (r < args.steps % args.rounds) for r in range(args.rounds)]
    for steps in per_round:
        for run in running:
            time_round(run, steps, ctx)
        peaks.append(matmul_peak_gflops(ctx.device, args.peak_reps))
    round_peaks = [max(a, b) for a, b in zip(peaks, peaks[1:])]
    rows = []
    for run in running:
        rows.append(finish_one(run, args, ctx, data, batches, round_peaks))
        if ctx.rank == 0:
            r, s = rows[-1], run.spec
            print(f"  {s.backbone} K={s.num_sets} D={s.embedding_dim} {s.layout} W={ctx.world_size} "
                  f"{s.dense}: {r['samples_per_s']:,.0f} samples/s", file=sys.stderr, flush=True)  # fmt: skip
    for r in rows:  # also against the best peak of the whole run: the stricter ratio
        r["matmul_peak_gflops"] = statistics.median(round_peaks)
        r["matmul_peak_gflops_best"] = max(peaks)
        r["roofline_samples_per_s"] = r["matmul_peak_gflops"] / r["dense_gflop_per_sample"]
        r["roofline_fraction_best_peak"] = r["samples_per_s"] * r["dense_gflop_per_sample"] / max(peaks)
    return rows


def spawn_world(args: argparse.Namespace, world_size: int) -> List[Dict[str, Any]]:
    """Run the ``world_size`` configurations under torchrun on this host; their rows."""
    keep = ["--backbones", *args.backbones, "--scales", *map(str, args.scales), "--layouts", *args.layouts]
    for flag in ("layout_k", "embedding_dim", "batch_size", "steps", "rounds", "warmup", "num_batches",
                 "sparse_optimizer", "cardinality_scale", "device", "peak_reps"):  # fmt: skip
        keep += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    keep += [f for f, on in (("--quick-sweep", args.quick), ("--no-se", args.no_se)) if on]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rows.json")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world_size}",
               os.path.abspath(__file__), *keep, "--world-sizes", str(world_size), "--json", out, "--no-report"]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR")}
        subprocess.run(cmd, check=True, env=env)
        with open(out) as f:
            return json.load(f)


def _table(rows: Sequence[Dict[str, Any]], columns: Sequence[str]) -> str:
    fmt = {
        "samples_per_s": "{:,.0f}", "step_ms": "{:.0f}", "dense_gflop_per_sample": "{:.4f}",
        "roofline_samples_per_s": "{:,.0f}", "roofline_fraction": "{:.1%}", "peak_mem_mb": "{:,.0f}",
        "roofline_fraction_best_peak": "{:.1%}",
    }  # fmt: skip
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt.get(c, "{}").format(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def _with_ratio(rows: Sequence[Dict[str, Any]], name: str) -> List[Dict[str, Any]]:
    fastest = max(r["samples_per_s"] for r in rows)
    return [dict(r, **{name: f"{fastest / r['samples_per_s']:.2f}x"}) for r in rows]


def _key(row: Dict[str, Any]) -> Tuple[Any, ...]:
    return (row["backbone"], row["num_sets"], row["embedding_dim"], row["layout"], row["dense_path"])


def report(rows: Sequence[Dict[str, Any]]) -> str:
    """The markdown tables: by scale, by layout, dense path, by world size, profile."""
    base = ["backbone", "model", "num_sets", "embedding_dim", "layout", "world_size"]
    perf = ["samples_per_s", "step_ms", "roofline_fraction", "roofline_fraction_best_peak", "peak_mem_mb"]
    out = []
    scale = [r for r in rows if "scale" in r["sections"] and r["world_size"] == 1]
    if scale:
        cols = base + ["dense_gflop_per_sample", "roofline_samples_per_s"] + perf
        out.append("### SE vs ME by scale (world size 1)\n\n" + _table(scale, cols))
    for ws in sorted({r["world_size"] for r in rows}):
        group = [r for r in rows if "layout" in r["sections"] and r["world_size"] == ws]
        if len(group) > 1:
            table = _table(_with_ratio(group, "cost_vs_fastest"), base + perf + ["cost_vs_fastest"])
            out.append(f"### Layouts (world size {ws})\n\n" + table)
    dense = [r for r in rows if "dense" in r["sections"]]
    if dense:
        out.append("### Dense path (world size 1)\n\n" + _table(dense, base + ["dense_path"] + perf))
    multi = {_key(r) for r in rows if r["world_size"] > 1}
    if multi:
        ws_rows = sorted((r for r in rows if _key(r) in multi), key=lambda r: (_key(r), r["world_size"]))
        out.append("### World size\n\n" + _table(ws_rows, base + ["threads_per_rank"] + perf))
    for r in rows:
        if r.get("profile"):
            prof = [{"where": k, "ms_per_step": f"{v:.1f}"} for k, v in r["profile"].items()]
            prof.append({"where": "pipelined step (median, above)", "ms_per_step": f"{r['step_ms']:.1f}"})
            title = (f"### Profile: {r['backbone']} {r['model']} K={r['num_sets']} D={r['embedding_dim']} "
                     f"{r['layout']} W={r['world_size']}")  # fmt: skip
            out.append(title + "\n\n" + _table(prof, ["where", "ms_per_step"]))
    peaks = sorted({(r["world_size"], round(r["matmul_peak_gflops"]), round(r["matmul_peak_gflops_best"])) for r in rows})
    out.append("matmul peak (fp32, all ranks at once; median of rounds / best of run): "
               + ", ".join(f"W={w}: {p} / {b} GFLOP/s" for w, p, b in peaks))  # fmt: skip
    return "\n\n".join(out)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="dcnv2, K in {1, 4}, few steps: < 2 min on 2 cores")
    p.add_argument("--quick-sweep", action="store_true", help=argparse.SUPPRESS)  # --quick's sweep, own steps
    p.add_argument("--backbones", nargs="+", default=["dcnv2"], choices=sorted(BACKBONE_REGISTRY))
    p.add_argument("--scales", nargs="+", type=int, default=[1, 2, 4, 10], help="K of SE-Kx / ME-Kx")
    p.add_argument("--no-se", action="store_true", help="skip SE-Kx (one set of dim K*D) for K > 1")
    p.add_argument("--layouts", nargs="+", default=list(LAYOUT_REGISTRY), choices=list(LAYOUT_REGISTRY))
    p.add_argument("--layout-k", type=int, default=4, help="K of the layout and dense-path comparisons")
    p.add_argument("--embedding-dim", type=int, default=12, help="base dim D (the paper's 10, rounded to x4)")
    p.add_argument("--world-sizes", nargs="+", type=int, default=None, help="default 1 2 (under torchrun: its)")
    p.add_argument("--batch-size", type=int, default=2048, help="per rank")
    p.add_argument("--steps", type=int, default=30, help="timed steps per configuration")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds over all configurations")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--num-batches", type=int, default=4, help="distinct pre-generated batches per rank")
    p.add_argument("--sparse-optimizer", default="adagrad", help="fused table optimizer (train.sparse_optimizer)")
    p.add_argument("--cardinality-scale", type=float, default=1.0, help="1.0: Criteo's full vocabularies")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--peak-reps", type=int, default=10, help="matmuls per peak measurement (the best counts)")
    p.add_argument("--profile", action="store_true", help="also time the phases of an eager step (world size 1)")
    p.add_argument("--json", help="write every row here (a JSON list)")
    p.add_argument("--no-report", action="store_true", help=argparse.SUPPRESS)  # a spawned world: rows only
    args = p.parse_args(argv)
    if args.quick:
        args.scales, args.steps, args.rounds, args.warmup, args.num_batches, args.no_se = [1, 4], 6, 2, 2, 2, True
    args.quick = args.quick or args.quick_sweep
    if not 1 <= args.rounds <= args.steps:
        p.error(f"--rounds must be between 1 and --steps ({args.steps}), got {args.rounds}")
    return args


def main(argv: Optional[Sequence[str]] = None) -> None:
    warnings.filterwarnings("ignore")
    logging.getLogger("torchrec").setLevel(logging.ERROR)
    args = parse_args(argv)
    under_torchrun = "WORLD_SIZE" in os.environ
    here = int(os.environ.get("WORLD_SIZE", 1))
    specs = sweep(args, args.world_sizes or ([here] if under_torchrun else [1, 2]))
    local = [s for s in specs if s.world_size == here]
    rows = run_world(local, args) if local else []
    if not under_torchrun:
        for ws in sorted({s.world_size for s in specs} - {here}):
            rows += spawn_world(args, ws)
    if dist.is_initialized():
        rank = dist.get_rank()
        dist.destroy_process_group()
        if rank != 0:
            return
    if not args.no_report:
        print(report(rows), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
