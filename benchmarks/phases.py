"""Where the time of one training step goes (``throughput.py --profile``, world size 1).

A diagnostic next to the throughput, not a throughput: the step runs eagerly (not
pipelined) and is cut in five phases. The sets' embeddings are detached before the
interactions, so the dense backward and the embedding backward (FBGEMM's backward with
the fused sparse update) are timed apart; a sharded EBC's forward includes its input
and output distribution.
"""

import time
from typing import Any, Callable, Dict, Sequence

import torch
from torchrec.datasets.utils import Batch

from torchrec_me.job import Job

PHASES = [
    "embeddings: forward (incl. dist)",
    "interactions + head: forward",
    "interactions + head: backward",
    "embeddings: backward + fused update",
    "dense Adam step",
]


def _phase_marks(job: Job, batch: Batch) -> Sequence[float]:
    """One eager training step of ``job`` on ``batch``: the clock before and after each phase."""
    model = job.model.module.model
    marks = [time.perf_counter()]
    job.optimizer.zero_grad()
    per_set = model.sparse_arch(batch.sparse_features)
    marks.append(time.perf_counter())
    leaves = [e.detach().requires_grad_() for e in per_set]
    loss = torch.nn.functional.binary_cross_entropy_with_logits(
        model._logits(batch.dense_features, leaves), batch.labels.float()
    )
    marks.append(time.perf_counter())
    loss.backward()
    marks.append(time.perf_counter())
    torch.autograd.backward(per_set, [e.grad for e in leaves])
    marks.append(time.perf_counter())
    job.optimizer.step()
    marks.append(time.perf_counter())
    return marks


def average_phases(marks: Callable[[Any], Sequence[float]], phases: Sequence[str], batches: Sequence[Any],
                   steps: int) -> Dict[str, float]:  # fmt: skip
    """Milliseconds per step of each of ``phases``, averaged over ``steps`` steps after one
    warm-up step, and their sum: ``marks(batch)`` runs one eager step and returns the clock
    before and after each phase."""
    out = {p: 0.0 for p in phases}
    for i in range(steps + 1):
        clock = marks(batches[i % len(batches)])
        if i:
            for p, a, b in zip(phases, clock, clock[1:]):
                out[p] += (b - a) * 1e3 / steps
    out["eager step (sum)"] = sum(out[p] for p in phases)
    return out


def time_phases(job: Job, batches: Sequence[Batch], steps: int) -> Dict[str, float]:
    """Milliseconds per eager step of ``job``, by phase (averaged over ``steps`` after one
    warm-up step), and their sum."""
    return average_phases(lambda batch: _phase_marks(job, batch), PHASES, batches, steps)
