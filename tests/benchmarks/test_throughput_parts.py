"""The parts of benchmarks/throughput.py, in one process: FLOP counts against hand
counts, the sweep, the options, the report's tables, and the reference dense path
against the fused one (same weights, same losses; marked slow).
"""

import dataclasses
import itertools
import re
from typing import Any, Dict, Iterator, List

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from torchrec.modules.crossnet import CrossNet

from benchmarks import report
from benchmarks.roofline import dense_flops_per_sample, matmul_flops
from benchmarks.throughput import Case, ThroughputOptions, parse_args, sweep
from tests.benchmarks import markdown
from torchrec_me.distributed.sharding import DistContext
from torchrec_me.job import build_job
from torchrec_me.modules.interactions import FusedCrossNet

B = 8


# --- FLOPs: FlopCounterMode against counts by hand -------------------------------------


def test_matmul_flops_of_a_linear_and_an_mlp() -> None:
    x = torch.randn(B, 20)
    assert matmul_flops(lambda: nn.Linear(20, 7)(x)) == 2 * B * 20 * 7
    mlp = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.BatchNorm1d(16), nn.Linear(16, 1))
    assert matmul_flops(lambda: mlp(x)) == 2 * B * (20 * 16 + 16 * 1)  # ReLU and BatchNorm are not matmuls


@pytest.mark.parametrize("cross_net", [CrossNet, FusedCrossNet])
def test_matmul_flops_of_a_cross_net(cross_net: type) -> None:
    # Each layer's W_l x_l is an (N x N) matmul; the products with x0 are element-wise.
    n, layers = 20, 3
    net = cross_net(in_features=n, num_layers=layers)
    assert matmul_flops(lambda: net(torch.randn(B, n))) == layers * 2 * B * n * n


def _options(**kw: Any) -> ThroughputOptions:
    return ThroughputOptions(**{"batch_size": 16, "cardinality_scale": 0.0002, "device": "cpu", **kw})


def test_dense_flops_of_dcnv2_me_by_hand(small_dataset: Any) -> None:
    f, d, k, layers, h = len(small_dataset.feature_names), 12, 2, 4, 400
    n = f * d
    per_set = layers * 2 * n * n + 2 * n * h  # cross layers, then the first MLP layer
    head = 2 * h * h + 2 * h  # one hidden layer of H, then H -> 1
    cfg = Case("dcnv2", k, d, "separate", 1).config(_options())
    assert dense_flops_per_sample(cfg, small_dataset) == 3 * (k * per_set + head)
    # README: ME-DCNv2-4x has 0.0265 dense GFLOP/sample at F = 39.
    cfg4 = Case("dcnv2", 4, d, "separate", 1).config(_options())
    assert dense_flops_per_sample(cfg4, small_dataset) / 1e9 == pytest.approx(0.0265, abs=5e-5)


def test_dense_flops_of_dnn_se_by_hand(small_dataset: Any) -> None:
    f, d, h = len(small_dataset.feature_names), 24, 400
    cfg = Case("dnn", 1, d, "separate", 1).config(_options())
    assert dense_flops_per_sample(cfg, small_dataset) == 3 * (2 * f * d * h + 2 * h * h + 2 * h)


def test_fused_and_plain_count_the_same_flops(small_dataset: Any) -> None:
    fused = Case("dcnv2", 2, 12, "separate", 1).config(_options())
    plain = Case("dcnv2", 2, 12, "separate", 1, fused_dense=False).config(_options())
    assert dense_flops_per_sample(fused, small_dataset) == dense_flops_per_sample(plain, small_dataset)


# --- the sweep and the options ----------------------------------------------------------


def _keys(cases: List[Case]) -> set:
    return {(c.num_sets, c.embedding_dim, c.layout, c.fused_dense) for c in cases}


def test_sweep_at_world_size_1() -> None:
    cases = sweep(_options(scales=[1, 2], layout_k=2), 1)
    assert _keys(cases) == {
        (2, 12, "separate", False), (2, 12, "separate", True), (1, 12, "separate", True),
        (1, 24, "separate", True), (2, 12, "grouped", True), (2, 12, "packed", True),
    }  # fmt: skip
    assert len(cases) == len(_keys(cases))  # each configuration once, in every table it belongs to
    me2 = next(c for c in cases if (c.num_sets, c.layout, c.fused_dense) == (2, "separate", True))
    assert set(me2.sections) == {"dense", "scale", "layout"}


def test_quick_sweep_at_world_size_2() -> None:
    options = parse_args(["--quick"])
    assert (options.scales, options.steps, options.rounds, options.no_se) == ([1, 4], 6, 2, True)
    assert _keys(sweep(options, 2)) == {(4, 12, "separate", True)}  # no reference path, no SE, no layouts
    assert _keys(sweep(options, 1)) >= {(4, 12, "separate", False), (1, 12, "separate", True)}


def test_bad_rounds_are_refused() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--steps", "4", "--rounds", "5"])


def test_reference_config_differs_only_in_fused_dense() -> None:
    fused = Case("dcnv2", 4, 12, "separate", 1).config(_options()).to_dict()
    plain = Case("dcnv2", 4, 12, "separate", 1, fused_dense=False).config(_options()).to_dict()
    assert (fused["model"].pop("fused_dense"), plain["model"].pop("fused_dense")) == (True, False)
    assert fused == plain


# --- the report -------------------------------------------------------------------------


def _row(**kw: Any) -> Dict[str, Any]:
    row = {
        "backbone": "dcnv2", "model": "ME", "num_sets": 4, "embedding_dim": 12, "layout": "separate",
        "world_size": 1, "device": "cpu", "dense_path": "fused", "sections": ["scale"], "threads_per_rank": 2,
        "samples_per_s": 5000.0, "step_ms": 409.6, "roofline_fraction": 0.7, "roofline_fraction_best_peak": 0.69,
        "peak_mem_mb": 1200.0, "dense_gflop_per_sample": 0.0265, "roofline_samples_per_s": 7000.0,
        "matmul_peak_gflops": 186.0, "matmul_peak_gflops_best": 187.0, "machine": "Test CPU, 2 cores",
        "profile": None,
    }  # fmt: skip
    return {**row, **kw}


def test_report_has_a_row_per_configuration_and_the_machine_under_every_table() -> None:
    rows = [
        _row(num_sets=1, model="SE"), _row(),
        _row(layout="grouped", sections=["layout"], samples_per_s=4000.0),
        _row(sections=["layout", "dense"]), _row(dense_path="reference", sections=["dense"]),
        _row(world_size=2, sections=["layout"], matmul_peak_gflops=190.0, matmul_peak_gflops_best=194.0),
        _row(profile={"a": 1.0, "b": 2.0}, sections=["scale"], num_sets=2),
    ]  # fmt: skip
    text = report.render(rows)
    tables = markdown.tables(text)
    scale = tables["SE vs ME by scale (world size 1)"]
    assert scale[0][:6] == ["backbone", "model", "num_sets", "embedding_dim", "layout", "world_size"]
    assert {"samples_per_s", "roofline_fraction", "peak_mem_mb", "dense_gflop_per_sample"} <= set(scale[0])
    assert [r[2] for r in scale[1:]] == ["1", "4", "2"]
    layouts = tables["Layouts (world size 1)"]
    assert layouts[0][-1] == "cost_vs_fastest" and [r[-1] for r in layouts[1:]] == ["1.25x", "1.00x"]
    assert [r[layouts[0].index("samples_per_s")] for r in layouts[1:]] == ["4,000", "5,000"]
    assert [r[6] for r in tables["Dense path (world size 1)"][1:]] == ["fused", "reference"]
    assert "Layouts (world size 2)" not in tables  # one configuration: nothing to compare
    assert [r[1] for r in tables["Profile: dcnv2 ME K=2 D=12 separate W=1"][1:]] == ["1.0", "2.0", "409.6"]
    assert len(tables) == 5
    machine_lines = [line for line in text.splitlines() if line.startswith("Machine: ")]
    assert len(machine_lines) == len(tables) and all("Test CPU, 2 cores (cpu)" in m for m in machine_lines)
    world = text.split("### World size")[1]
    assert re.search(r"W=1: 186 / 187 GFLOP/s, W=2: 190 / 194 GFLOP/s", world)


# --- the reference dense path trains the same model -------------------------------------


@pytest.fixture
def one_rank_group() -> Iterator[DistContext]:
    """A process group of this process alone (TorchRec's sharded modules need one)."""
    assert not dist.is_initialized()
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield DistContext(rank=0, world_size=1, local_world_size=1, device=torch.device("cpu"))
    finally:
        dist.destroy_process_group()


def _losses(case: Case, ctx: DistContext, dataset: Any, steps: int) -> List[torch.Tensor]:
    cfg = case.config(_options())
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dropout=0.0))  # same masks: none
    job = build_job(cfg, ctx, dataset)
    pipeline = TrainPipelineSparseDist(job.model, job.optimizer, ctx.device)
    batches = itertools.repeat(next(dataset.train_batches(0, 1, 32)))
    return [pipeline.progress(batches)[0] for _ in range(steps)]


@pytest.mark.slow  # two sharded jobs and their pipelines: seconds, more on a loaded machine
def test_fused_and_reference_paths_train_alike(one_rank_group: DistContext, small_dataset: Any) -> None:
    fused = Case("dcnv2", 2, 12, "separate", 1)
    plain = dataclasses.replace(fused, fused_dense=False)
    a = torch.stack(_losses(fused, one_rank_group, small_dataset, 4))
    b = torch.stack(_losses(plain, one_rank_group, small_dataset, 4))
    assert len(set(a.tolist())) == 4  # one batch again and again: the losses move as the model trains
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
