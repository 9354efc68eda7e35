"""Training and evaluation throughput of the sequential models (HSTU, SASRec, Llama-style).

The shape of ``throughput.py``: what to run is one :class:`SequentialOptions`, each
configuration gives one :class:`SequentialResult` (a JSON row), every job is built by
``torchrec_me.job.build_job`` and trained through the pipeline ``torchrec-me train``
uses (``TrainPipelineSparseDist``), all configurations of a world size are built first
and timed in interleaved rounds, and the roofline is measured in the same run.

    python benchmarks/sequential.py --quick                      # < 3 min on 2 CPU cores
    python benchmarks/sequential.py --json rows.json             # the full grid (hours on a CPU)
    python benchmarks/sequential.py --peer /path/to/peer --sizes ml1m ml1m-large --lengths 200

**Grid** (``--backbones``, ``--sizes``, ``--scales``, ``--lengths``, ``--world-sizes``):
backbones at the published ML-1M sizes (``ml1m``: 2 blocks, 1 head, d = 48 for the
published 50; ``ml1m-large``: 8 blocks, 2 heads) and a larger one (``ml20m``: 4 blocks, 4
heads, d = 256); SE and ME-Kx (K sets of d, each read by its own stack, as the
``-me-Kx`` presets); sequence lengths (``model.max_seq_len``); world sizes 1 and 2 (gloo
on CPU, nccl on GPU; other world sizes run on spawned ranks). A step has
``--tokens-per-batch`` predicted positions per rank (``max(1, tokens // L)`` full-length
rows of L + 1 items), the reference's 128 uniform negatives per position, AdamW on the
dense parameters and the fused row-wise Adagrad on the tables.

**Per row**: training tokens/s (predicted positions, all ranks) and sequences/s; the
users/s of full-corpus evaluation (user vectors, a score for every item, top 200; the
item vectors are computed once per evaluation and not counted); the peak memory of
building and warming up; training FLOPs per token of the encoders and the sampled
softmax, attention included, counted from the model (``torchrec_me.scaling.cost``); and
the roofline fraction, tokens/s x FLOPs/token over the fp32 matmul peak measured
between the rounds of the same run.

**Profile** (``--profile``, world size 1): an eager step cut in phases (the lookups,
the jagged-to-padded views, the encoders, the sampled softmax, the backward of each,
the embeddings' backward with the fused update, the dense step), and the encoders'
forward and backward by kind of operator (attention matmuls, projections, norms, the
rest) from ``torch.profiler``.

**Jagged** (``--jagged``): padding to the longest row against length buckets
(``model.length_buckets``: the encoders run on groups of rows of similar length, each
padded to its own longest row; the same function) at realistic length distributions:
a long-tailed synthetic one (lognormal, median L / 8) and, with ``--lengths-from
DIR``, the training-sequence lengths of a prepared sequence dataset (e.g. MovieLens).

**The peer** (``--peer DIR``): a module ``gr_peer`` in DIR, kept outside this repository,
that builds the reference implementation's HSTU training step (see benchmarks/README.md
for how it is set up) and checks first that the two compute the same function
(``parity``: the reference's weights loaded into our encoder, outputs and weight
gradients compared, the largest difference reported). Its step is timed in the same interleaved rounds as ours, at the
same sizes, batch, lengths and negatives, dropout 0 on both sides, for HSTU SE; ours runs
twice: with the fused row-wise Adagrad (the default) and with ``adam_dense`` (Adam on
replicated tables, the reference's optimizer math).
"""

import argparse
import dataclasses
import importlib
import itertools
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

if __package__ in (None, ""):  # run as a script: import the parts beside it as the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import measure, report, worlds  # noqa: E402
from benchmarks.phases import average_phases  # noqa: E402
from benchmarks.roofline import matmul_peak_gflops, roofline_fraction  # noqa: E402
from torchrec_me.config import Config, ConfigError, ModelConfig  # noqa: E402
from torchrec_me.data.sequence_batch import ITEM_FEATURE, SequenceBatch  # noqa: E402
from torchrec_me.distributed.sharding import DistContext, init_distributed  # noqa: E402
from torchrec_me.job import Job, build_job, job_config_from_dict, load_dataset  # noqa: E402
from torchrec_me.loop import make_pipeline  # noqa: E402
from torchrec_me.models.sequential import train_views  # noqa: E402
from torchrec_me.scaling.cost import training_flops  # noqa: E402

#: size -> (blocks, heads, dim): the published ML-1M HSTU and HSTU-large (d = 50 -> 48),
#: and the published ML-20M HSTU as the larger size.
SIZES: Dict[str, Tuple[int, int, int]] = {"ml1m": (2, 1, 48), "ml1m-large": (8, 2, 48), "ml20m": (4, 4, 256)}
#: Length distributions of the jagged comparison ("full": every row L + 1 items).
DISTRIBUTIONS = ("full", "longtail", "dataset")
EVAL_TOP_K = 200


@dataclass
class SequentialOptions:
    """What to run: the grid, the timing and the output.

    Args:
        backbones (List[str]): ``hstu``, ``sasrec``, ``llama``.
        sizes (List[str]): keys of :data:`SIZES`.
        scales (List[int]): K of SE (1) and ME-Kx.
        lengths (List[int]): ``model.max_seq_len`` values.
        world_sizes (Optional[List[int]]): None: 1 and 2 (under torchrun: its own).
        tokens_per_batch (int): predicted positions per rank and step.
        num_items (int): item vocabulary (ML-1M's 3,706).
        num_negatives (int): uniform negatives per predicted position.
        dropout (float): ``model.dropout`` of the grid (the peer rows use 0).
        steps (int): timed steps per configuration, over all rounds.
        rounds (int): interleaved timing rounds.
        warmup (int): untimed steps after building.
        num_batches (int): distinct pre-generated batches per rank, cycled.
        eval_steps (int): timed evaluation batches per configuration.
        device (str): ``auto``, ``cpu`` or ``cuda``.
        peak_reps (int): matmuls per peak measurement (the best counts).
        profile (bool): time the phases of an eager step (world size 1).
        jagged (bool): run the padded vs length-bucketed comparison (world size 1).
        buckets (List[int]): ``model.length_buckets`` values of the jagged comparison.
        lengths_from (Optional[str]): a prepared sequence dataset whose training lengths
            are the ``dataset`` distribution.
        jagged_length (int): ``model.max_seq_len`` of the jagged comparison.
        peer (Optional[str]): directory of the ``gr_peer`` module (the reference).
        peer_sizes (List[str]): sizes the peer is compared at (HSTU SE).
        quick (bool): the quick preset (:meth:`quick_preset`).
        json_path (Optional[str]): write every row here (a JSON list).
        render (Optional[str]): only print the tables of this saved JSON list.
        recount_flops (bool): with ``render``, count the FLOPs per token again (after a
            fix of the counter) and rescale the roofline fractions by new / old; the
            times are the saved ones.
    """

    backbones: List[str] = field(default_factory=lambda: ["hstu", "sasrec", "llama"])
    sizes: List[str] = field(default_factory=lambda: list(SIZES))
    scales: List[int] = field(default_factory=lambda: [1, 2, 4])
    lengths: List[int] = field(default_factory=lambda: [50, 200, 1000])
    world_sizes: Optional[List[int]] = None
    tokens_per_batch: int = 128 * 200
    num_items: int = 3706
    num_negatives: int = 128
    dropout: float = 0.2
    steps: int = 12
    rounds: int = 3
    warmup: int = 2
    num_batches: int = 2
    eval_steps: int = 3
    device: str = "auto"
    peak_reps: int = 5
    profile: bool = False
    jagged: bool = False
    buckets: List[int] = field(default_factory=lambda: [1, 2, 4, 8])
    lengths_from: Optional[str] = None
    jagged_length: int = 200
    peer: Optional[str] = None
    peer_sizes: List[str] = field(default_factory=lambda: ["ml1m", "ml1m-large"])
    quick: bool = False
    json_path: Optional[str] = None
    render: Optional[str] = None
    recount_flops: bool = False

    def quick_preset(self) -> "SequentialOptions":
        """``--quick``: HSTU and SASRec at ml1m, SE and ME-2x, lengths 50 and 200 (at world
        size 2 only HSTU SE at 200), a small batch, the jagged comparison at length 200
        with 1 and 4 buckets, few steps."""
        return dataclasses.replace(
            self, quick=True, backbones=["hstu", "sasrec"], sizes=["ml1m"], scales=[1, 2], lengths=[50, 200],
            tokens_per_batch=32 * 200, steps=4, rounds=2, warmup=1, eval_steps=2, peak_reps=3, jagged=True,
            buckets=[1, 4], peer_sizes=["ml1m"],
        )  # fmt: skip

    def validate(self) -> None:
        """Raise ValueError naming the first option out of range."""
        if not 1 <= self.rounds <= self.steps:
            raise ValueError(f"rounds must be between 1 and steps ({self.steps}), got {self.rounds}")
        unknown = sorted(set(self.sizes + self.peer_sizes) - set(SIZES))
        if unknown:
            raise ValueError(f"unknown sizes {unknown}; choose from {sorted(SIZES)}")
        if min(self.lengths + [self.jagged_length]) < 2 or min(self.scales + self.buckets) < 1:
            raise ValueError("lengths must be >= 2, scales and buckets >= 1")
        if self.peer is not None and not (Path(self.peer) / "gr_peer.py").is_file():
            raise ValueError(f"--peer {self.peer}: no gr_peer.py there")
        if self.lengths_from is not None and not Path(self.lengths_from, "users.parquet").is_file():
            raise ValueError(f"--lengths-from {self.lengths_from}: not a prepared sequence dataset (no users.parquet)")


@dataclass(frozen=True)
class Case:
    """One configuration at one world size; ``sections`` are the tables it is in.

    ``implementation`` is ``torchrec_me`` or ``reference`` (the peer's step);
    ``distribution`` the row lengths (:data:`DISTRIBUTIONS`).
    """

    backbone: str
    size: str
    num_sets: int
    max_seq_len: int
    world_size: int
    implementation: str = "torchrec_me"
    distribution: str = "full"
    length_buckets: int = ModelConfig.length_buckets  # the default (full rows run unbucketed)
    sparse_optimizer: str = "rowwise_adagrad"
    dropout: float = 0.2
    time_bias_source: str = "seen"
    sections: Tuple[str, ...] = ()

    @property
    def key(self) -> Tuple[Any, ...]:
        return dataclasses.astuple(dataclasses.replace(self, sections=()))

    def rows(self, options: SequentialOptions) -> int:
        """Rows per rank and step: ``tokens_per_batch`` positions of full-length rows."""
        return max(1, options.tokens_per_batch // self.max_seq_len)

    def config(self, options: SequentialOptions) -> Config:
        blocks, heads, dim = SIZES[self.size]
        return job_config_from_dict({
            "data": {"name": "synthetic_sequences", "num_items": options.num_items, "num_users": 64},
            "model": {
                "backbone": self.backbone, "num_sets": self.num_sets, "embedding_dim": dim, "num_blocks": blocks,
                "num_heads": heads, "max_seq_len": self.max_seq_len, "dropout": self.dropout,
                "num_negatives": options.num_negatives, "negatives_per_position": True,
                "time_bias_source": self.time_bias_source,
                "length_buckets": self.length_buckets,
            },
            "train": {"batch_size": self.rows(options), "sparse_optimizer": self.sparse_optimizer,
                      "device": options.device, "dense_optimizer": "adamw", "dense_betas": [0.9, 0.98],
                      "dense_weight_decay": 0.0},
        }, origin="benchmark options")  # fmt: skip


def sweep(options: SequentialOptions, world_size: int) -> List[Case]:
    """Every configuration at ``world_size``, in report order, each once: the grid; at
    world size 1 also the peer comparison and the jagged comparison."""
    cases: Dict[Tuple[Any, ...], Case] = {}

    def add(section: str, case: Case) -> None:
        old = cases.get(case.key, case)
        cases[case.key] = dataclasses.replace(old, sections=old.sections + (section,))

    small = options.quick and world_size > 1  # --quick: at world size > 1 only the first of each axis
    backbones, scales = (options.backbones[:1], options.scales[:1]) if small else (options.backbones, options.scales)
    lengths = options.lengths[-1:] if small else options.lengths
    for backbone, size, k, length in itertools.product(backbones, options.sizes, scales, lengths):
        add("grid", Case(backbone, size, k, length, world_size, dropout=options.dropout))
    if world_size == 1 and options.peer:
        for size, length in itertools.product(options.peer_sizes, options.lengths):
            # The reference's math: dropout 0 (its harness's), the next item's time in the bias.
            same = {"dropout": 0.0, "time_bias_source": "next"}
            add("peer", Case("hstu", size, 1, length, 1, implementation="reference", **same))  # type: ignore[arg-type]
            for optimizer in ("rowwise_adagrad", "adam_dense"):
                add("peer", Case("hstu", size, 1, length, 1, sparse_optimizer=optimizer, **same))  # type: ignore[arg-type]
    if world_size == 1 and options.jagged:
        dists = ["longtail"] + (["dataset"] if options.lengths_from else [])
        for dist_name, buckets in itertools.product(dists, options.buckets):
            add("jagged", Case("hstu", options.sizes[0], 1, options.jagged_length, 1, distribution=dist_name,
                               length_buckets=buckets, dropout=options.dropout))  # fmt: skip
    return list(cases.values())


# ---------------------------------------------------------------------- data


def row_lengths(case: Case, options: SequentialOptions, rng: np.random.Generator) -> np.ndarray:
    """(rows,) items per row (L + 1 at most, 2 at least: one predicted position)."""
    n, cap = case.rows(options), case.max_seq_len + 1
    if case.distribution == "full":
        return np.full(n, cap)
    if case.distribution == "longtail":
        drawn = np.exp(rng.normal(np.log(case.max_seq_len / 8), 1.0, n))
    else:
        drawn = rng.choice(dataset_lengths(str(options.lengths_from)), n)
    return np.clip(np.rint(drawn), 2, cap).astype(np.int64)


_DATASET_LENGTHS: Dict[str, np.ndarray] = {}


def dataset_lengths(path: str) -> np.ndarray:
    """Training-sequence lengths (items before the validation target) of a prepared dataset."""
    if path not in _DATASET_LENGTHS:
        from torchrec_me.data.sequences.dataset import read_table

        _DATASET_LENGTHS[path] = read_table(path).train_len
    return _DATASET_LENGTHS[path]


def make_batch(lengths: np.ndarray, num_items: int, rng: np.random.Generator) -> SequenceBatch:
    """A training batch of rows of ``lengths`` items: uniform ids, increasing times."""
    n = int(lengths.sum())
    times = np.cumsum(rng.integers(1, 10**5, n))  # increasing, so within every row too
    items = KeyedJaggedTensor.from_lengths_sync(
        keys=[ITEM_FEATURE], values=torch.from_numpy(rng.integers(0, num_items, n)),
        lengths=torch.from_numpy(lengths.astype(np.int32)),
    )  # fmt: skip
    b = len(lengths)
    return SequenceBatch(items, torch.from_numpy(times.astype(np.int64)), torch.ones(n), torch.full((b,), -1),
                         torch.zeros(b, dtype=torch.long), torch.arange(b))  # fmt: skip


def make_eval_batch(rows: int, length: int, num_items: int, rng: np.random.Generator) -> SequenceBatch:
    """Histories of ``length`` items with a target each (full-corpus evaluation)."""
    batch = make_batch(np.full(rows, length), num_items, rng)
    batch.targets = torch.from_numpy(rng.integers(0, num_items, rows))
    batch.target_timestamps = batch.timestamps.reshape(rows, length)[:, -1] + 60
    return batch


# ---------------------------------------------------------------------- timing


@dataclass
class _Bench:
    """A built configuration: its step, its evaluation, and its timed rounds so far."""

    case: Case
    step: Callable[[], None]
    tokens_per_step: int  # over all ranks
    rows_per_step: int  # over all ranks
    peak_mem_mb: float
    job: Optional[Job] = None
    pipeline: Any = None
    batches: Sequence[SequenceBatch] = ()
    eval_batch: Optional[SequenceBatch] = None
    rounds: List[List[float]] = field(default_factory=list)


def time_calls(fn: Callable[[], Any], calls: int, device: torch.device, collective: bool = True) -> List[float]:
    """Wall seconds of each of ``calls`` calls of ``fn``, after one untimed call."""
    fn()
    measure.sync(device)
    if collective:
        dist.barrier()
    seconds = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        measure.sync(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def _evaluator(job: Job, batch: SequenceBatch) -> Callable[[], int]:
    """Full-corpus evaluation of ``batch``: user vectors, every item scored, top 200."""
    model = job.model.module.model
    with torch.no_grad():
        job.model.eval()
        items = model.all_item_vectors()  # once per evaluation, not timed
        job.model.train()

    def evaluate() -> int:
        job.model.eval()
        with torch.no_grad():
            _, (_, users, _) = job.model(batch)
            scores = model.score_all_items(users, items)
            torch.topk(scores, min(EVAL_TOP_K, scores.shape[1]), dim=1)
        job.model.train()
        return users.shape[0]

    return evaluate


def build_ours(case: Case, options: SequentialOptions, ctx: DistContext, baseline_mb: float) -> _Bench:
    """Collective: ``case``'s job, batches, pipeline and warm-up; its own peak memory."""
    cfg = case.config(options)
    # The same batches for every length_buckets value of one distribution.
    rng = np.random.default_rng([ctx.rank, case.max_seq_len, DISTRIBUTIONS.index(case.distribution), 7])
    batches = [make_batch(row_lengths(case, options, rng), options.num_items, rng).to(ctx.device)
               for _ in range(options.num_batches)]  # fmt: skip
    before = measure.reset_peak_memory(ctx.device)
    job = build_job(cfg, ctx, load_dataset(cfg))
    pipeline = make_pipeline(job)
    stream = itertools.cycle(batches)
    for _ in range(options.warmup):
        pipeline.progress(stream)
    measure.sync(ctx.device)
    peak = measure.reduce_scalar(baseline_mb + measure.peak_memory_mb(ctx.device) - before, dist.ReduceOp.MAX)
    tokens = measure.reduce_scalar(float(sum(int(b.lengths.sum()) - len(b.lengths) for b in batches)), dist.ReduceOp.SUM)
    rows = case.rows(options) * ctx.world_size
    eval_batch = None
    if case.distribution == "full":
        eval_batch = make_eval_batch(case.rows(options), case.max_seq_len, options.num_items, rng).to(ctx.device)
    return _Bench(case, lambda: pipeline.progress(stream), round(tokens / len(batches)), rows, peak, job, pipeline,
                  batches, eval_batch)  # fmt: skip


def build_peer(case: Case, options: SequentialOptions, ctx: DistContext, baseline_mb: float) -> _Bench:
    """The reference's training step (``gr_peer.build_train_step``) at ``case``'s sizes."""
    peer = load_peer(str(options.peer))
    blocks, heads, dim = SIZES[case.size]
    lengths = np.full(case.rows(options), case.max_seq_len + 1)
    before = measure.reset_peak_memory(ctx.device)
    step, tokens = peer.build_train_step(options.num_items, dim, blocks, heads, case.max_seq_len,
                                         options.num_negatives, lengths, seed=0, num_batches=options.num_batches)  # fmt: skip
    for _ in range(options.warmup):
        step()
    peak = baseline_mb + measure.peak_memory_mb(ctx.device) - before
    return _Bench(case, step, tokens, len(lengths), peak)


_PEER: Dict[str, Any] = {}


def load_peer(directory: str) -> Any:
    """The ``gr_peer`` module in ``directory``, set up once (returns the module)."""
    if directory not in _PEER:
        sys.path.insert(0, directory)
        module = importlib.import_module("gr_peer")
        module.commit = module.setup()
        _PEER[directory] = module
    return _PEER[directory]


# ---------------------------------------------------------------------- profile

PHASES = [
    "sampler + lookups: forward (incl. dist)",
    "jagged -> padded views",
    "encoders: forward",
    "sampled softmax: forward",
    "sampled softmax + encoders: backward",
    "lookups: backward + fused update",
    "dense AdamW step",
]
#: operator name fragments -> kind, for the encoders' operators (first match wins).
OPERATOR_KINDS = [
    (("bmm", "baddbmm", "scaled_dot_product", "flash_attention", "_efficient_attention"), "attention matmuls"),
    (("aten::mm", "aten::addmm", "aten::linear", "aten::matmul"), "projections (mm)"),
    (("layer_norm", "rms_norm"), "norms"),
]


def _phase_marks(job: Job, batch: SequenceBatch) -> List[float]:
    """One eager training step of ``job`` on ``batch``: the clock before and after each phase."""
    model = job.model.module.model
    marks = [time.perf_counter()]
    job.optimizer.zero_grad()
    features, negative_index = model.sampler(batch.items, batch.users)
    per_set = model.item_sets(features)
    marks.append(time.perf_counter())
    leaves = [{k: JaggedTensor(jt.values().detach().requires_grad_(), lengths=jt.lengths()) for k, jt in s.items()}
              for s in per_set]  # fmt: skip
    views = train_views(leaves, features, negative_index, batch.timestamps, model.num_negatives, model.per_position)
    marks.append(time.perf_counter())
    users = model.encoders(views.inputs, views.mask, views.timestamps, views.next_timestamps)
    marks.append(time.perf_counter())
    loss, _, _ = model.loss(users, views.positives, views.negatives, views.mask, views.positive_ids,
                            views.negative_ids, views.negative_index)  # fmt: skip
    marks.append(time.perf_counter())
    loss.backward()
    marks.append(time.perf_counter())
    outs = [jt.values() for s in per_set for jt in s.values()]
    grads = [jt.values().grad for s in leaves for jt in s.values()]
    torch.autograd.backward([o for o, g in zip(outs, grads) if g is not None], [g for g in grads if g is not None])
    marks.append(time.perf_counter())
    job.optimizer.step()
    marks.append(time.perf_counter())
    return marks


def _operator_kind(name: str) -> str:
    for fragments, kind in OPERATOR_KINDS:
        if any(f in name for f in fragments):
            return kind
    return "element-wise and the rest"


def encoder_operators(job: Job, batch: SequenceBatch, steps: int) -> Dict[str, float]:
    """Milliseconds per step of the encoders' forward and backward (on the batch's padded
    inputs), by kind of operator: the self CPU time of ``torch.profiler``'s operators."""
    model = job.model.module.model
    with torch.no_grad():
        features, negative_index = model.sampler(batch.items, batch.users)
        views = train_views(model.item_sets(features), features, negative_index, batch.timestamps,
                            model.num_negatives, model.per_position)  # fmt: skip
    inputs = [x.detach().requires_grad_() for x in views.inputs]

    def run() -> None:
        users = model.encoders(inputs, views.mask, views.timestamps, views.next_timestamps)
        torch.autograd.backward(users, [torch.ones_like(u) for u in users])

    run()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            run()
    out: Dict[str, float] = {}
    for event in prof.key_averages():
        kind = _operator_kind(event.key)
        out[kind] = out.get(kind, 0.0) + event.self_cpu_time_total / 1e3 / steps
    return {f"encoders fwd+bwd: {k}": v for k, v in sorted(out.items(), key=lambda kv: -kv[1])}


def time_phases(job: Job, batches: Sequence[SequenceBatch], steps: int) -> Dict[str, float]:
    """Milliseconds per eager step by phase (after one warm-up step), their sum, and the
    encoders' operators by kind (:func:`encoder_operators`, profiled apart)."""
    out = average_phases(lambda batch: _phase_marks(job, batch), PHASES, batches, steps)
    out.update(encoder_operators(job, batches[0], max(1, steps // 2)))
    return out


# ---------------------------------------------------------------------- rows


@dataclass
class SequentialResult:
    """One measured configuration: a row of the tables and of the ``--json`` list.

    Tokens are predicted positions, over every rank; step times are the slowest rank's
    median. ``roofline_fraction`` is the median over rounds of each round's fraction
    against that round's matmul peak; ``gflop_per_token`` is counted at full-length rows
    (the jagged rows' attention is shorter). ``eval_users_per_s``: full-corpus
    evaluation (None for the peer and the jagged rows).
    """

    implementation: str
    backbone: str
    size: str
    model: str
    num_sets: int
    embedding_dim: int
    num_blocks: int
    num_heads: int
    max_seq_len: int
    distribution: str
    length_buckets: int
    world_size: int
    sparse_optimizer: str
    dropout: float
    sections: List[str]
    rows_per_step: int
    tokens_per_step: int
    steps: int
    rounds: int
    step_ms: float
    tokens_per_s: float
    sequences_per_s: float
    eval_users_per_s: Optional[float]
    peak_mem_mb: float
    gflop_per_token: float
    roofline_fraction: float
    roofline_fraction_by_round: List[float]
    matmul_peak_gflops: float
    matmul_peak_gflops_best: float
    threads_per_rank: int
    device: str
    machine: str
    profile: Optional[Dict[str, float]] = None
    reference_commit: Optional[str] = None
    parity: Optional[Dict[str, Any]] = None


_FLOPS: Dict[Tuple[Any, ...], float] = {}
#: What a row keeps of the peer's ``parity()`` report.
PARITY_KEYS = ("max_abs_diff", "max_abs_output", "positions_compared", "max_abs_grad_diff", "time_bucket_mismatches")


def gflop_per_token(case: Case, options: SequentialOptions) -> float:
    """Training GFLOPs per token of ``case``'s model (the peer: of the same HSTU SE)."""
    ours = dataclasses.replace(case, implementation="torchrec_me", world_size=1, sections=(), length_buckets=1,
                               distribution="full", sparse_optimizer="rowwise_adagrad")  # fmt: skip
    if ours.key not in _FLOPS:
        cfg = ours.config(options)
        _FLOPS[ours.key] = training_flops(cfg, load_dataset(cfg))["flops_per_token"] / 1e9
    return _FLOPS[ours.key]


def _max_over_ranks(value: float) -> float:
    return measure.reduce_scalar(value, dist.ReduceOp.MAX)


def finish(bench: _Bench, options: SequentialOptions, peaks: Sequence[float], ctx: DistContext) -> SequentialResult:
    """Collective: ``bench``'s row (``peaks``: before the first round and after each)."""
    case = bench.case
    blocks, heads, dim = SIZES[case.size]
    times = [t for r in bench.rounds for t in r]
    step = _max_over_ranks(statistics.median(times))
    gflop = gflop_per_token(case, options)
    round_peaks = [max(a, b) for a, b in zip(peaks, peaks[1:])]
    by_round = [roofline_fraction(bench.tokens_per_step / _max_over_ranks(statistics.median(r)), gflop, p)
                for r, p in zip(bench.rounds, round_peaks)]  # fmt: skip
    if hasattr(bench.pipeline, "detach"):  # TrainPipelineBase (adam_dense) has nothing to detach
        bench.pipeline.detach()  # the modules' own forwards again, for evaluation and the profile
    eval_users = None
    if bench.job is not None and bench.eval_batch is not None:
        eval_times = time_calls(_evaluator(bench.job, bench.eval_batch), options.eval_steps, ctx.device)
        eval_users = case.rows(options) * ctx.world_size / _max_over_ranks(statistics.median(eval_times))
    profile = None
    if options.profile and bench.job is not None and ctx.world_size == 1 and case.distribution == "full":
        profile = time_phases(bench.job, bench.batches, max(2, options.steps // options.rounds))
    peer = _PEER.get(str(options.peer)) if case.implementation == "reference" else None
    parity = None
    if peer is not None:  # the same weights in both encoders: do they compute the same function?
        parity = peer.parity(dim=dim, num_blocks=blocks, num_heads=heads, max_seq_len=case.max_seq_len, batch=8)
        parity = {k: v for k, v in parity.items() if k in PARITY_KEYS}
    return SequentialResult(
        implementation=case.implementation, backbone=case.backbone, size=case.size,
        model="SE" if case.num_sets == 1 else f"ME-{case.num_sets}x", num_sets=case.num_sets, embedding_dim=dim,
        num_blocks=blocks, num_heads=heads, max_seq_len=case.max_seq_len, distribution=case.distribution,
        length_buckets=case.length_buckets, world_size=ctx.world_size,
        sparse_optimizer=case.sparse_optimizer if case.implementation == "torchrec_me" else "adamw (dense table)",
        dropout=case.dropout, sections=list(case.sections), rows_per_step=bench.rows_per_step,
        tokens_per_step=bench.tokens_per_step, steps=len(times), rounds=len(bench.rounds), step_ms=1e3 * step,
        tokens_per_s=bench.tokens_per_step / step, sequences_per_s=bench.rows_per_step / step,
        eval_users_per_s=eval_users, peak_mem_mb=bench.peak_mem_mb, gflop_per_token=gflop,
        roofline_fraction=statistics.median(by_round), roofline_fraction_by_round=by_round,
        matmul_peak_gflops=statistics.median(round_peaks), matmul_peak_gflops_best=max(peaks),
        threads_per_rank=torch.get_num_threads(), device=ctx.device.type,
        machine=report.describe_machine(ctx.device), profile=profile,
        reference_commit=getattr(peer, "commit", None), parity=parity,
    )  # fmt: skip


def _say(ctx: DistContext, message: str) -> None:
    if ctx.rank == 0:
        print(message, file=sys.stderr, flush=True)


def run_world(cases: Sequence[Case], options: SequentialOptions) -> List[SequentialResult]:
    """Collective: every case at this process group's world size, built first, then timed
    in ``options.rounds`` interleaved rounds; the rows, on every rank."""
    ctx = init_distributed(options.device)
    peaks = [matmul_peak_gflops(ctx.device, options.peak_reps)]
    baseline = measure.current_memory_mb(ctx.device)
    benches = []
    for case in cases:
        try:
            build = build_peer if case.implementation == "reference" else build_ours
            benches.append(build(case, options, ctx, baseline))
        except ConfigError as e:
            _say(ctx, f"skipped {case}: {e}")
    for r in range(options.rounds):
        steps = options.steps // options.rounds + (r < options.steps % options.rounds)
        for bench in benches:
            bench.rounds.append(time_calls(bench.step, steps, ctx.device, bench.case.implementation == "torchrec_me"))
        peaks.append(matmul_peak_gflops(ctx.device, options.peak_reps))
    rows = []
    for bench in benches:
        rows.append(finish(bench, options, peaks, ctx))
        r = rows[-1]
        _say(ctx, f"  {r.implementation} {r.backbone} {r.size} {r.model} L={r.max_seq_len} {r.distribution} "
                  f"buckets={r.length_buckets} W={r.world_size}: {r.tokens_per_s:,.0f} tokens/s")  # fmt: skip
    return rows


def measure_world(options: SequentialOptions, world_size: int) -> List[SequentialResult]:
    """Collective: the rows of every configuration at ``world_size`` (a target of
    :func:`benchmarks.worlds.run_world_sizes`)."""
    return run_world(sweep(options, world_size), options)


# ---------------------------------------------------------------------- report

FORMATS = {
    **report.FORMATS,
    "tokens_per_s": "{:,.0f}", "sequences_per_s": "{:,.1f}", "eval_users_per_s": "{:,.0f}", "step_ms": "{:.0f}",
    "peak_mem_mb": "{:,.0f}", "gflop_per_token": "{:.4f}", "roofline_fraction": "{:.1%}", "ms_per_step": "{:.1f}",
    "vs_reference": "{:.2f}x", "vs_padded": "{:.2f}x",
}  # fmt: skip
CONFIG = ["backbone", "size", "model", "max_seq_len", "world_size"]
PERF = ["tokens_per_s", "sequences_per_s", "step_ms", "gflop_per_token", "roofline_fraction", "peak_mem_mb"]


def markdown_table(rows: Sequence[Dict[str, Any]], columns: Sequence[str]) -> str:
    return report.markdown_table(rows, columns, FORMATS)


def machine_line(rows: Sequence[Dict[str, Any]]) -> str:
    return report.machine_line(rows, threads=True)


def render(rows: Sequence[Dict[str, Any]]) -> str:
    """The markdown tables: the grid, world sizes, the peer, the jagged paths, profiles."""
    out = []
    grid = [r for r in rows if "grid" in r["sections"] and r["world_size"] == 1]
    if grid:
        table = markdown_table(grid, CONFIG + PERF[:2] + ["eval_users_per_s"] + PERF[2:])
        out.append(f"### Training and evaluation (world size 1)\n\n{table}\n\n{machine_line(grid)}")
    keys = {(r["backbone"], r["size"], r["model"], r["max_seq_len"]) for r in rows if r["world_size"] > 1}
    if keys:
        ws = sorted((r for r in rows if "grid" in r["sections"] and (r["backbone"], r["size"], r["model"],
                     r["max_seq_len"]) in keys), key=lambda r: (r["backbone"], r["size"], r["num_sets"],
                                                               r["max_seq_len"], r["world_size"]))  # fmt: skip
        out.append(f"### World size\n\n{markdown_table(ws, CONFIG + PERF)}\n\n{machine_line(ws)}")
    peer = [dict(r) for r in rows if "peer" in r["sections"]]
    if peer:
        ref = {(r["size"], r["max_seq_len"]): r["tokens_per_s"] for r in peer if r["implementation"] == "reference"}
        for r in peer:
            r["vs_reference"] = r["tokens_per_s"] / ref[(r["size"], r["max_seq_len"])] if ref.get((r["size"], r["max_seq_len"])) else None
        commit = next((r["reference_commit"] for r in peer if r.get("reference_commit")), "?")
        cols = ["implementation", "sparse_optimizer", "size", "max_seq_len", "rows_per_step", "tokens_per_s",
                "vs_reference", "step_ms", "roofline_fraction", "peak_mem_mb"]  # fmt: skip
        checks = [
            f"{r['size']} L={r['max_seq_len']}: max |ours - reference| {r['parity']['max_abs_diff']:.1e} "
            f"(outputs up to {r['parity']['max_abs_output']:.2f}, {r['parity']['positions_compared']} positions), "
            f"weight gradients {r['parity']['max_abs_grad_diff']:.1e}"
            for r in peer if r.get("parity")
        ]  # fmt: skip
        parity = ("\n\nSame function (the reference's weights loaded into our encoder, eval, float32): "
                  + "; ".join(checks) + ".") if checks else ""  # fmt: skip
        out.append(f"### Against the reference (HSTU SE, dropout 0; facebookresearch/generative-recommenders "
                   f"{commit[:12]})\n\n{markdown_table(peer, cols)}{parity}\n\n{machine_line(peer)}")  # fmt: skip
    jagged = [dict(r) for r in rows if "jagged" in r["sections"]]
    if jagged:
        padded = {r["distribution"]: r["tokens_per_s"] for r in jagged if r["length_buckets"] == 1}
        for r in jagged:
            r["vs_padded"] = r["tokens_per_s"] / padded[r["distribution"]] if r["distribution"] in padded else None
        cols = ["backbone", "size", "max_seq_len", "distribution", "length_buckets", "tokens_per_step",
                "tokens_per_s", "vs_padded", "step_ms", "peak_mem_mb"]  # fmt: skip
        out.append(f"### Padded vs length-bucketed\n\n{markdown_table(jagged, cols)}\n\n{machine_line(jagged)}")
    for r in rows:
        if r.get("profile"):
            phases = [{"where": k, "ms_per_step": v} for k, v in r["profile"].items()]
            phases.append({"where": "pipelined step (median, above)", "ms_per_step": r["step_ms"]})
            title = f"{r['backbone']} {r['size']} {r['model']} L={r['max_seq_len']}"
            out.append(f"### Profile: {title}\n\n{markdown_table(phases, ['where', 'ms_per_step'])}\n\n{machine_line([r])}")
    return "\n\n".join(out)


# ---------------------------------------------------------------------- main


def parse_args(argv: Optional[Sequence[str]] = None) -> SequentialOptions:
    """The options of a command line (``--quick`` applies :meth:`SequentialOptions.quick_preset`)."""
    d = SequentialOptions()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a small grid and few steps: < 3 min on 2 cores")
    p.add_argument("--backbones", nargs="+", default=d.backbones, choices=["hstu", "sasrec", "llama"])
    p.add_argument("--sizes", nargs="+", default=d.sizes, help=f"of {sorted(SIZES)}")
    p.add_argument("--scales", nargs="+", type=int, default=d.scales, help="K: 1 is SE, K > 1 ME-Kx")
    p.add_argument("--lengths", nargs="+", type=int, default=d.lengths, help="model.max_seq_len values")
    p.add_argument("--world-sizes", nargs="+", type=int, help="default 1 2 (under torchrun: its)")
    p.add_argument("--tokens-per-batch", type=int, default=d.tokens_per_batch, help="predicted positions per rank")
    p.add_argument("--num-items", type=int, default=d.num_items)
    p.add_argument("--num-negatives", type=int, default=d.num_negatives, help="per predicted position")
    p.add_argument("--dropout", type=float, default=d.dropout)
    p.add_argument("--steps", type=int, default=d.steps, help="timed steps per configuration")
    p.add_argument("--rounds", type=int, default=d.rounds, help="interleaved timing rounds")
    p.add_argument("--warmup", type=int, default=d.warmup)
    p.add_argument("--num-batches", type=int, default=d.num_batches)
    p.add_argument("--eval-steps", type=int, default=d.eval_steps)
    p.add_argument("--device", default=d.device, choices=["auto", "cpu", "cuda"])
    p.add_argument("--peak-reps", type=int, default=d.peak_reps)
    p.add_argument("--profile", action="store_true", help="time the phases of an eager step (world size 1)")
    p.add_argument("--jagged", action="store_true", help="padded vs length-bucketed (world size 1)")
    p.add_argument("--buckets", nargs="+", type=int, default=d.buckets, help="model.length_buckets values")
    p.add_argument("--lengths-from", help="a prepared sequence dataset: its training lengths as a distribution")
    p.add_argument("--jagged-length", type=int, default=d.jagged_length, help="max_seq_len of the jagged rows")
    p.add_argument("--peer", help="directory of gr_peer.py (the reference's HSTU, outside this repository)")
    p.add_argument("--peer-sizes", nargs="+", default=d.peer_sizes)
    p.add_argument("--json", dest="json_path", help="write every row here (a JSON list)")
    p.add_argument("--render", help="print the tables of a saved --json file instead of measuring")
    p.add_argument("--recount-flops", action="store_true",
                   help="with --render: count each row's FLOPs/token again and rescale its roofline fractions")
    args = vars(p.parse_args(argv))
    quick = args.pop("quick")
    options = SequentialOptions(**args)
    if quick:  # the preset, then what was given explicitly on the command line
        given = {k: v for k, v in args.items() if v != getattr(d, k)}
        options = dataclasses.replace(options.quick_preset(), **given)
    try:
        options.validate()
    except ValueError as e:
        p.error(str(e))
    return options


def recount(rows: List[Dict[str, Any]], options: SequentialOptions) -> List[Dict[str, Any]]:
    """``rows`` with ``gflop_per_token`` counted again and the roofline fractions scaled
    by new / old (the measured times unchanged)."""
    out = []
    for r in rows:
        case = Case(r["backbone"], r["size"], r["num_sets"], r["max_seq_len"], 1, dropout=r["dropout"])
        new = gflop_per_token(case, options)
        scale = new / r["gflop_per_token"]
        out.append(dict(r, gflop_per_token=new, roofline_fraction=r["roofline_fraction"] * scale,
                        roofline_fraction_by_round=[f * scale for f in r["roofline_fraction_by_round"]]))  # fmt: skip
    return out


def main(argv: Optional[Sequence[str]] = None) -> None:
    options = parse_args(argv)
    worlds.quiet()
    if options.render:
        with open(options.render) as f:
            saved = json.load(f)
        saved = recount(saved, options) if options.recount_flops else saved
        print(render(saved), flush=True)
        if options.json_path:
            with open(options.json_path, "w") as f:
                json.dump(saved, f, indent=1)
        return
    rows = worlds.run_world_sizes(measure_world, options, options.world_sizes, SequentialResult)
    if rows is None:  # not the reporting rank
        return
    dicts = [dataclasses.asdict(r) for r in rows]
    print(render(dicts), flush=True)
    if options.json_path:
        with open(options.json_path, "w") as f:
            json.dump(dicts, f, indent=1)


if __name__ == "__main__":
    main()
