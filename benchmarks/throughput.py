"""Training throughput of SE/ME models against the dense-compute roofline.

Measures training samples/s (forward, backward, the fused sparse update and the dense
Adam step, through ``TrainPipelineSparseDist``) and peak memory on synthetic data with
Criteo's full vocabularies (``data.cardinality_scale=1.0``), and in the same run the
roofline (``roofline.py``). The report (``report.py``) has these tables:

* SE vs ME by scale K: ME-Kx is K sets of dim D, SE-Kx one set of dim K*D;
* the layouts of the K sets (``separate``, ``grouped``, ``packed``) at K = ``--layout-k``;
* the dense path at K = ``--layout-k``: the fused kernels against the plain
  TorchRec/PyTorch ones, which is the same config with ``model.fused_dense=false``;
* world size 1 and 2 (gloo on CPU, nccl on GPU).

    python benchmarks/throughput.py --json results.json
    python benchmarks/throughput.py --quick                       # < 2 min on 2 CPU cores
    torchrun --nproc_per_node 2 benchmarks/throughput.py --quick  # only world size 2

Shaped like TorchRec's benchmark harness (``torchrec/distributed/benchmark``): what to run
is one :class:`ThroughputOptions`, each configuration gives one :class:`ThroughputResult`
(a JSON row), every job is built by ``torchrec_me.job.build_job``, and :func:`time_steps`
is the one timer of training steps. Other world sizes than this process's run on
spawned ranks (``benchmarks/worlds.py``); under torchrun (``WORLD_SIZE`` set) only the
configurations at its world size run, and rank 0 reports.

``--batch-size`` is per rank; samples/s count every rank and use the median step time
(the machine may be shared). All configurations of one world size are built first and
timed in interleaved rounds (``--rounds``), so drifting contention hits them alike; each
one's peak memory is taken while it is built and warmed up, as its rise over the
process baseline (plus that baseline). The sparse optimizer defaults to ``adagrad``
(EXACT_ADAGRAD), the one fused CPU optimizer under which every layout is the same
model. A CUDA device is used when available.
"""

import argparse
import dataclasses
import itertools
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torchrec.datasets.utils import Batch
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

if __package__ in (None, ""):  # run as a script: import the parts beside it as the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import measure, report, worlds  # noqa: E402
from benchmarks.phases import time_phases  # noqa: E402
from benchmarks.roofline import dense_flops_per_sample, matmul_peak_gflops, roofline_fraction  # noqa: E402
from torchrec_me.config import Config, ConfigError  # noqa: E402
from torchrec_me.data import Dataset  # noqa: E402
from torchrec_me.distributed.sharding import DistContext, init_distributed  # noqa: E402
from torchrec_me.job import Job, build_job, job_config_from_dict, load_dataset  # noqa: E402
from torchrec_me.models import BACKBONE_REGISTRY  # noqa: E402
from torchrec_me.modules.layouts import LAYOUT_REGISTRY  # noqa: E402


@dataclass
class ThroughputOptions:
    """What to run: the sweep, the timing and the output.

    Args:
        backbones (List[str]): backbones of the scale table; the first one also gets the
            layout and dense-path tables.
        scales (List[int]): K of SE-Kx / ME-Kx.
        no_se (bool): skip SE-Kx (one set of dim K*D) for K > 1.
        layouts (List[str]): layouts of the K sets compared at K = ``layout_k``.
        layout_k (int): K of the layout and dense-path comparisons.
        embedding_dim (int): base dim D (the paper's 10, rounded to a multiple of 4).
        world_sizes (Optional[List[int]]): None: 1 and 2 (under torchrun: its own).
        batch_size (int): per rank (``train.batch_size``).
        steps (int): timed steps per configuration, over all rounds.
        rounds (int): interleaved timing rounds over all configurations.
        warmup (int): untimed steps after building.
        num_batches (int): distinct pre-generated batches per rank, cycled.
        sparse_optimizer (str): fused table optimizer (``train.sparse_optimizer``).
        cardinality_scale (float): ``data.cardinality_scale``; 1.0 is Criteo's vocabularies.
        device (str): ``auto``, ``cpu`` or ``cuda`` (``train.device``).
        peak_reps (int): matmuls per peak measurement (the best counts).
        profile (bool): also time the phases of an eager step (world size 1).
        quick (bool): the quick sweep: at world size > 1 only K = ``layout_k`` in the
            ``separate`` layout (:meth:`quick_preset` also shortens the timing).
        json_path (Optional[str]): write every row here (a JSON list).
    """

    backbones: List[str] = field(default_factory=lambda: ["dcnv2"])
    scales: List[int] = field(default_factory=lambda: [1, 2, 4, 10])
    no_se: bool = False
    layouts: List[str] = field(default_factory=lambda: list(LAYOUT_REGISTRY))
    layout_k: int = 4
    embedding_dim: int = 12
    world_sizes: Optional[List[int]] = None
    batch_size: int = 2048
    steps: int = 30
    rounds: int = 5
    warmup: int = 5
    num_batches: int = 4
    sparse_optimizer: str = "adagrad"
    cardinality_scale: float = 1.0
    device: str = "auto"
    peak_reps: int = 10
    profile: bool = False
    quick: bool = False
    json_path: Optional[str] = None

    def quick_preset(self) -> "ThroughputOptions":
        """These options under ``--quick``: K in {1, 4}, no SE-Kx, 6 steps in 2 rounds."""
        return dataclasses.replace(
            self, quick=True, scales=[1, 4], no_se=True, steps=6, rounds=2, warmup=2, num_batches=2
        )

    def validate(self) -> None:
        """Raise ValueError naming the first option out of range."""
        if not 1 <= self.rounds <= self.steps:
            raise ValueError(f"rounds must be between 1 and steps ({self.steps}), got {self.rounds}")
        unknown = set(self.backbones) - set(BACKBONE_REGISTRY) or set(self.layouts) - set(LAYOUT_REGISTRY)
        if unknown:
            raise ValueError(f"unknown backbones or layouts: {sorted(unknown)}")

    def job_config(self, model: Dict[str, Any]) -> Config:
        """The checked config of one configuration: ``model`` keys, the data and train
        keys of these options (raises ConfigError)."""
        return job_config_from_dict({
            "data": {"cardinality_scale": self.cardinality_scale, "max_cardinality": 10**9},
            "model": model,
            "train": {"batch_size": self.batch_size, "sparse_optimizer": self.sparse_optimizer, "device": self.device},
        }, origin="benchmark options")  # fmt: skip


@dataclass(frozen=True)
class Case:
    """One configuration to measure at one world size; ``sections`` are its tables.

    ``fused_dense=False`` is the reference dense path: the same model and weights on
    the plain TorchRec/PyTorch kernels (``model.fused_dense=false``).
    """

    backbone: str
    num_sets: int
    embedding_dim: int
    layout: str
    world_size: int
    fused_dense: bool = True
    sections: Tuple[str, ...] = ()

    @property
    def key(self) -> Tuple[Any, ...]:
        return dataclasses.astuple(dataclasses.replace(self, sections=()))

    def config(self, options: ThroughputOptions) -> Config:
        keys = ("backbone", "num_sets", "embedding_dim", "layout", "fused_dense")
        return options.job_config({k: getattr(self, k) for k in keys})


def sweep(options: ThroughputOptions, world_size: int) -> List[Case]:
    """Every configuration at ``world_size``, in report order, each once.

    SE-Kx and the reference dense path run at world size 1 only; ``quick`` runs only
    K = ``layout_k`` in the ``separate`` layout at world size > 1.
    """
    d, k0, first, ws = options.embedding_dim, options.layout_k, options.backbones[0], world_size
    cases: Dict[Tuple[Any, ...], Case] = {}

    def add(section: str, case: Case) -> None:
        old = cases.get(case.key, case)
        cases[case.key] = dataclasses.replace(old, sections=old.sections + (section,))

    small = ws > 1 and options.quick
    if ws == 1 and first == "dcnv2":  # the plain and the fused kernels measured back to back
        add("dense", Case(first, k0, d, "separate", ws, fused_dense=False))
        add("dense", Case(first, k0, d, "separate", ws))
    for backbone in options.backbones:
        for k in [k0] if small else options.scales:
            add("scale", Case(backbone, k, d, "separate", ws))
            if k > 1 and ws == 1 and not options.no_se:
                add("scale", Case(backbone, 1, d * k, "separate", ws))
    for layout in ["separate"] if small else options.layouts:
        add("layout", Case(first, k0, d, layout, ws))
    return list(cases.values())


@dataclass
class ThroughputResult:
    """One measured configuration: a row of the tables and of the ``--json`` list.

    Samples/s count every rank (``batch_size * world_size`` per step); step times are
    the slowest rank's. ``roofline_fraction`` is the median over rounds of each round's
    fraction against that round's matmul peak (``roofline_fraction_by_round``);
    ``roofline_fraction_best_peak`` is against the best peak of the run.
    ``peak_mem_mb`` is the largest rank's; ``profile`` the eager phases (``--profile``).
    """

    backbone: str
    model: str  # SE or ME
    num_sets: int
    embedding_dim: int
    layout: str
    world_size: int
    device: str
    dense_path: str  # fused or reference (model.fused_dense=false)
    sections: List[str]
    batch_size: int
    sparse_optimizer: str
    threads_per_rank: int
    steps: int
    rounds: int
    step_ms: float
    samples_per_s: float
    samples_per_s_mean: float
    samples_per_s_best: float
    dense_gflop_per_sample: float
    roofline_fraction: float
    roofline_fraction_by_round: List[float]
    peak_mem_mb: float
    cores_busy_per_rank: float
    profile: Optional[Dict[str, float]]
    matmul_peak_gflops: float
    matmul_peak_gflops_best: float
    roofline_samples_per_s: float
    roofline_fraction_best_peak: float
    machine: str


@dataclass
class StepTimes:
    """Wall seconds of each timed step, and the process CPU seconds they took."""

    seconds: List[float]
    cpu_seconds: float


def time_steps(pipeline: TrainPipelineSparseDist, batches: Iterator[Batch], steps: int,
               device: torch.device) -> StepTimes:  # fmt: skip
    """Collective: one untimed step (another configuration may have left the caches
    cold), then ``steps`` training steps of ``pipeline``, each timed."""
    pipeline.progress(batches)
    measure.sync(device)
    dist.barrier()
    cpu_start, seconds = time.process_time(), []
    for _ in range(steps):
        start = time.perf_counter()
        pipeline.progress(batches)
        measure.sync(device)
        seconds.append(time.perf_counter() - start)
    return StepTimes(seconds, time.process_time() - cpu_start)


@dataclass
class _Bench:
    """A built configuration, its pipeline and its timing rounds so far."""

    case: Case
    job: Job
    pipeline: TrainPipelineSparseDist
    batches: Iterator[Batch]
    peak_mem_mb: float
    rounds: List[StepTimes] = field(default_factory=list)


def build_bench(case: Case, options: ThroughputOptions, ctx: DistContext, dataset: Dataset,
                batches: Sequence[Batch], baseline_mb: float) -> _Bench:  # fmt: skip
    """Collective: build ``case``'s job and run its warm-up steps; its own peak memory.

    The peak is this configuration's rise above the memory in use before it was built,
    plus the process baseline ``baseline_mb`` (data, runtime): what it would take alone,
    though other configurations stay built for the interleaved timing.
    """
    before = measure.reset_peak_memory(ctx.device)
    job = build_job(case.config(options), ctx, dataset)
    pipeline = TrainPipelineSparseDist(job.model, job.optimizer, ctx.device)
    stream = itertools.cycle(batches)
    for _ in range(options.warmup):
        pipeline.progress(stream)
    measure.sync(ctx.device)
    peak = baseline_mb + measure.peak_memory_mb(ctx.device) - before
    return _Bench(case, job, pipeline, stream, measure.reduce_scalar(peak, dist.ReduceOp.MAX))


def _max_over_ranks(value: float) -> float:
    return measure.reduce_scalar(value, dist.ReduceOp.MAX)


def finish_bench(bench: _Bench, options: ThroughputOptions, batches: Sequence[Batch],
                 peaks: Sequence[float]) -> ThroughputResult:  # fmt: skip
    """Collective: ``bench``'s row. ``peaks`` are the matmul peaks measured before the
    first round and after each; a round's own peak is the better of the two around it."""
    ctx, case, model = bench.job.ctx, bench.case, bench.job.cfg.model
    times = [t for r in bench.rounds for t in r.seconds]
    gflop = dense_flops_per_sample(bench.job.cfg, bench.job.dataset) / 1e9
    global_batch = options.batch_size * ctx.world_size
    round_peaks = [max(a, b) for a, b in zip(peaks, peaks[1:])]
    by_round = [
        roofline_fraction(global_batch / _max_over_ranks(statistics.median(r.seconds)), gflop, peak)
        for r, peak in zip(bench.rounds, round_peaks)
    ]
    step = _max_over_ranks(statistics.median(times))
    cpu_seconds = sum(r.cpu_seconds for r in bench.rounds)
    cores_busy = measure.reduce_scalar(cpu_seconds / sum(times), dist.ReduceOp.SUM) / ctx.world_size
    bench.pipeline.detach()
    profile = None
    if options.profile and case.fused_dense and ctx.world_size == 1:
        profile = time_phases(bench.job, batches, options.steps)
    peak = statistics.median(round_peaks)
    return ThroughputResult(
        backbone=model.backbone, model="SE" if model.num_sets == 1 else "ME", num_sets=model.num_sets,
        embedding_dim=model.embedding_dim, layout=model.layout, world_size=ctx.world_size,
        device=ctx.device.type, dense_path="fused" if model.fused_dense else "reference",
        sections=list(case.sections), batch_size=options.batch_size, sparse_optimizer=options.sparse_optimizer,
        threads_per_rank=torch.get_num_threads(), steps=len(times), rounds=len(bench.rounds),
        step_ms=1e3 * step, samples_per_s=global_batch / step,
        samples_per_s_mean=global_batch / _max_over_ranks(statistics.mean(times)),
        samples_per_s_best=global_batch / _max_over_ranks(min(times)),
        dense_gflop_per_sample=gflop, roofline_fraction=statistics.median(by_round),
        roofline_fraction_by_round=by_round, peak_mem_mb=bench.peak_mem_mb, cores_busy_per_rank=cores_busy,
        profile=profile, matmul_peak_gflops=peak, matmul_peak_gflops_best=max(peaks),
        roofline_samples_per_s=peak / gflop, roofline_fraction_best_peak=roofline_fraction(
            global_batch / step, gflop, max(peaks)), machine=report.describe_machine(ctx.device),
    )  # fmt: skip


def _say(ctx: DistContext, message: str) -> None:
    if ctx.rank == 0:
        print(message, file=sys.stderr, flush=True)


def run_world(cases: Sequence[Case], options: ThroughputOptions) -> List[ThroughputResult]:
    """Collective: every case at this process group's world size; the rows, on every rank.

    All configurations are built first, then timed in ``options.rounds`` interleaved
    rounds (each configuration ``steps / rounds`` steps per round), so a slow minute of
    a shared machine slows all of them alike and the ratios between them hold.
    """
    ctx = init_distributed(options.device)
    dataset = load_dataset(options.job_config({}))
    batches = [b.to(ctx.device) for b in dataset.train_batches(ctx.rank, ctx.world_size, options.batch_size,
                                                               0, options.num_batches)]  # fmt: skip
    peaks = [matmul_peak_gflops(ctx.device, options.peak_reps)]
    baseline = measure.current_memory_mb(ctx.device)
    benches = []
    for case in cases:
        try:
            benches.append(build_bench(case, options, ctx, dataset, batches, baseline))
        except ConfigError as e:
            _say(ctx, f"skipped {case}: {e}")
    for r in range(options.rounds):
        steps = options.steps // options.rounds + (r < options.steps % options.rounds)
        for bench in benches:
            bench.rounds.append(time_steps(bench.pipeline, bench.batches, steps, ctx.device))
        peaks.append(matmul_peak_gflops(ctx.device, options.peak_reps))
    rows = []
    while benches:
        rows.append(finish_bench(benches.pop(0), options, batches, peaks))
        r = rows[-1]
        _say(ctx, f"  {r.backbone} K={r.num_sets} D={r.embedding_dim} {r.layout} W={r.world_size} "
                  f"{r.dense_path}: {r.samples_per_s:,.0f} samples/s")  # fmt: skip
    return rows


def measure_world(options: ThroughputOptions, world_size: int) -> List[ThroughputResult]:
    """Collective: the rows of every configuration at ``world_size`` (a target of
    :func:`benchmarks.worlds.run_world_sizes`)."""
    return run_world(sweep(options, world_size), options)


def parse_args(argv: Optional[Sequence[str]] = None) -> ThroughputOptions:
    """The options of a command line (``--quick`` applies :meth:`ThroughputOptions.quick_preset`)."""
    d = ThroughputOptions()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="K in {1, 4}, few steps: < 2 min on 2 cores")
    p.add_argument("--backbones", nargs="+", default=d.backbones, choices=sorted(BACKBONE_REGISTRY))
    p.add_argument("--scales", nargs="+", type=int, default=d.scales, help="K of SE-Kx / ME-Kx")
    p.add_argument("--no-se", action="store_true", help="skip SE-Kx (one set of dim K*D) for K > 1")
    p.add_argument("--layouts", nargs="+", default=d.layouts, choices=list(LAYOUT_REGISTRY))
    p.add_argument("--layout-k", type=int, default=d.layout_k, help="K of the layout and dense-path comparisons")
    p.add_argument("--embedding-dim", type=int, default=d.embedding_dim, help="base dim D (the paper's 10, to x4)")
    p.add_argument("--world-sizes", nargs="+", type=int, help="default 1 2 (under torchrun: its)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="per rank")
    p.add_argument("--steps", type=int, default=d.steps, help="timed steps per configuration")
    p.add_argument("--rounds", type=int, default=d.rounds, help="interleaved timing rounds over all configurations")
    p.add_argument("--warmup", type=int, default=d.warmup, help="untimed steps first")
    p.add_argument("--num-batches", type=int, default=d.num_batches, help="distinct pre-generated batches per rank")
    p.add_argument("--sparse-optimizer", default=d.sparse_optimizer, help="train.sparse_optimizer")
    p.add_argument("--cardinality-scale", type=float, default=d.cardinality_scale, help="1.0: Criteo's vocabularies")
    p.add_argument("--device", default=d.device, choices=["auto", "cpu", "cuda"])
    p.add_argument("--peak-reps", type=int, default=d.peak_reps, help="matmuls per peak measurement (the best counts)")
    p.add_argument("--profile", action="store_true", help="also time the phases of an eager step (world size 1)")
    p.add_argument("--json", dest="json_path", help="write every row here (a JSON list)")
    options = ThroughputOptions(**vars(p.parse_args(argv)))
    options = options.quick_preset() if options.quick else options
    try:
        options.validate()
    except ValueError as e:
        p.error(str(e))
    return options


def main(argv: Optional[Sequence[str]] = None) -> None:
    options = parse_args(argv)
    worlds.quiet()
    rows = worlds.run_world_sizes(measure_world, options, options.world_sizes, ThroughputResult)
    if rows is None:  # not the reporting rank
        return
    print(report.render([dataclasses.asdict(r) for r in rows]), flush=True)
    if options.json_path:
        report.write_json([dataclasses.asdict(r) for r in rows], options.json_path)


if __name__ == "__main__":
    main()
