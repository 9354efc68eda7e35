"""The dense-compute roofline of a training step: FLOPs per sample and the matmul peak.

A configuration's roofline is the samples/s it would reach if its dense matmuls ran at
the machine's fp32 matmul peak, and its roofline fraction is how much of that it gets::

    roofline samples/s = matmul peak (FLOP/s) / dense training FLOPs per sample
    roofline fraction  = measured samples/s / roofline samples/s

The FLOPs are counted, not derived by hand: ``torch.utils.flop_counter`` records the
shapes of every matmul (mm, addmm, bmm, einsum) that the interactions and the head run
on a batch of random embeddings, and a training step counts 3x the forward (the
backward computes the gradients of both the inputs and the weights). Element-wise work
(cross-layer products, BatchNorm, dropout) and the embedding lookups are not dense
compute and are not counted. The peak is measured, not quoted: the best of a few n x n
fp32 matmuls, run by all ranks at once, so that they share the machine as training does.

On a shared machine the peak drifts, so ``throughput.py`` measures it before the first
timing round and after each: a round's peak is the better of the two around it, and
``roofline_fraction`` is the median over rounds of the round's fraction (the machine's
speed right then on both sides of the ratio). ``roofline_fraction_best_peak`` divides
by the best peak of the whole run instead, the stricter figure when the speed drifts.
"""

import dataclasses
import time
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.measure import reduce_scalar, sync
from torchrec_me.config import Config
from torchrec_me.data import Dataset
from torchrec_me.job import build_train_module

#: Training FLOPs per forward FLOP: the forward, and a backward of twice its matmuls.
TRAINING_PASSES = 3


def matmul_flops(fn: Callable[[], Any]) -> int:
    """The matmul FLOPs (2 per multiply-add) of what ``fn()`` runs, without autograd."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return counter.get_total_flops()


def dense_flops_per_sample(cfg: Config, dataset: Dataset, batch_size: int = 64) -> float:
    """Training FLOPs per sample of ``cfg``'s dense part (dense archs, interactions, head).

    Counted on the plain kernels (``model.fused_dense=false``), so that the figure is
    the model's math whichever kernels run it; the tables stay on ``meta``.
    """
    plain = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, fused_dense=False))
    model = build_train_module(plain, dataset, torch.device("meta")).model.eval()
    num_fields = len(dataset.feature_names)
    per_set = [torch.randn(batch_size, num_fields, d) for d in cfg.model.dims()]
    dense = torch.randn(batch_size, dataset.num_dense)
    return TRAINING_PASSES * matmul_flops(lambda: model._logits(dense, per_set)) / batch_size


def matmul_peak_gflops(device: torch.device, reps: int) -> float:
    """Collective: the fp32 matmul GFLOP/s of all ranks together, each its best of ``reps``."""
    n = 8192 if device.type == "cuda" else 2048
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    dist.barrier()
    best = float("inf")
    for _ in range(reps + 1):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return reduce_scalar(2 * n**3 / best / 1e9, dist.ReduceOp.SUM)


def roofline_fraction(samples_per_s: float, gflop_per_sample: float, peak_gflops: float) -> float:
    """The share of the matmul peak that ``samples_per_s`` spends on dense FLOPs."""
    return samples_per_s * gflop_per_sample / peak_gflops
