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

import time

import torch
import torch.distributed as dist

from benchmarks.measure import reduce_scalar, sync
from torchrec_me.config import Config
from torchrec_me.data import Dataset
from torchrec_me.scaling.cost import matmul_flops, training_flops  # noqa: F401 (re-exported)


def dense_flops_per_sample(cfg: Config, dataset: Dataset, batch_size: int = 64) -> float:
    """Training FLOPs per sample of ``cfg``'s dense part (dense archs, interactions, head),
    counted by :func:`torchrec_me.scaling.cost.training_flops` on the plain kernels."""
    return training_flops(cfg, dataset, rows=batch_size)["flops_per_sample"]


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
