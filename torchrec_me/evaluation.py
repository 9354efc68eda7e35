"""Evaluation of a sharded model: score a split on every rank, gather, compute metrics.

Each rank scores its share of a split with the dataset's evaluation batches (the same
count of batches on every rank, so the sharded lookups stay collective). Scores and
labels are gathered to every rank, so all ranks compute the same exact metrics:
AUC with torchmetrics' ``binary_auroc`` on all samples (not an average of per-batch
AUCs) and logloss in float64.
"""

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torchmetrics.functional.classification import binary_auroc

from torchrec_me.distributed.sharding import DistContext


def gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's 1-D tensor (of possibly different lengths) on all ranks."""
    sizes = [torch.zeros(1, dtype=torch.long, device=t.device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([t.numel()], device=t.device))
    longest = int(max(s.item() for s in sizes))
    padded = [torch.zeros(longest, dtype=t.dtype, device=t.device) for _ in sizes]
    dist.all_gather(padded, torch.nn.functional.pad(t, (0, longest - t.numel())))
    return torch.cat([p[: int(s.item())] for p, s in zip(padded, sizes)])


@dataclass
class Scores:
    """One split scored by all ranks, gathered (every rank holds all of it).

    Args:
        logits (torch.Tensor): (N,) float32 model logits.
        labels (torch.Tensor): (N,) float32 0/1 labels.
        rows (torch.Tensor): (N,) int64 index of each sample within the split.
        teacher (Optional[torch.Tensor]): (N,) the hidden teacher's click probability,
            for data that has one (synthetic), else None.
    """

    logits: torch.Tensor
    labels: torch.Tensor
    rows: torch.Tensor
    teacher: Optional[torch.Tensor]


def _cat(parts: List[torch.Tensor], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return gather_cat(torch.cat(parts) if parts else torch.zeros(0, dtype=dtype, device=device))


@torch.no_grad()
def score_split(model: nn.Module, dataset: Any, ctx: DistContext, batch_size: int, split: str = "val") -> Scores:
    """Collective: ``model`` (a ``MultiEmbeddingTrain``, sharded or not) scores ``split``."""
    was_training = model.training
    model.eval()
    logits, labels, rows, teacher = [], [], [], []
    batches = dataset.eval_batches(split, ctx.rank, ctx.world_size, batch_size)
    ranges = dataset.eval_ranges(split, ctx.rank, ctx.world_size, batch_size)
    for (batch, teacher_prob, real), (lo, hi, _) in zip(batches, ranges):
        _, (_, batch_logits, batch_labels) = model(batch.to(ctx.device))
        if real:
            logits.append(batch_logits.float())
            labels.append(batch_labels.float())
            rows.append(torch.arange(lo, hi, device=ctx.device))
            if teacher_prob is not None:
                teacher.append(teacher_prob.to(ctx.device).double())
    model.train(was_training)
    has_teacher = bool(getattr(dataset, "has_teacher", False))
    return Scores(
        logits=_cat(logits, ctx.device, torch.float32),
        labels=_cat(labels, ctx.device, torch.float32),
        rows=_cat(rows, ctx.device, torch.long),
        teacher=_cat(teacher, ctx.device, torch.float64) if has_teacher else None,
    )


def binary_metrics(scores: Scores) -> Dict[str, float]:
    """``auc``, ``logloss`` and ``samples`` of ``scores`` (plus ``oracle_auc`` and
    ``oracle_logloss`` of the teacher, where the data has one)."""
    target = scores.labels
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    out: Dict[str, float] = {
        "auc": float(binary_auroc(torch.sigmoid(scores.logits), target.long())),
        "logloss": float(bce(scores.logits.double(), target.double())),
        "samples": int(target.numel()),
    }
    if scores.teacher is not None:
        out["oracle_auc"] = float(binary_auroc(scores.teacher, target.long()))
        out["oracle_logloss"] = float(torch.nn.functional.binary_cross_entropy(scores.teacher, target.double()))
    return out


def gauc(logits: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor) -> Tuple[float, int]:
    """Group AUC: the mean of the per-group (per-user) AUCs weighted by each group's
    impressions (rows), over the groups that hold both labels; and how many such groups
    there are. ``nan`` when none does (e.g. one row per user).

    Per group the AUC is the Mann-Whitney statistic with ties counted half, from the
    ranks of the scores within the group (ties share their mean rank).
    """
    g, score, y = groups.cpu().numpy(), logits.double().cpu().numpy(), labels.cpu().numpy() > 0.5
    order = np.lexsort((score, g))
    g, score, y = g[order], score[order], y[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    total, weight, used = 0.0, 0, 0
    for lo, hi in zip(starts, np.r_[starts[1:], len(g)]):
        pos = int(y[lo:hi].sum())
        neg = hi - lo - pos
        if pos == 0 or neg == 0:
            continue
        ranks = rankdata(score[lo:hi])
        auc = (ranks[y[lo:hi]].sum() - pos * (pos + 1) / 2) / (pos * neg)
        total, weight, used = total + (hi - lo) * auc, weight + (hi - lo), used + 1
    return (float(total / weight) if weight else math.nan), used


def rankdata(values: np.ndarray) -> np.ndarray:
    """1-based ranks of sorted ``values`` (ascending), ties given their mean rank."""
    ranks = np.arange(1, len(values) + 1, dtype=np.float64)
    starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    for lo, hi in zip(starts, ends):
        if hi - lo > 1:
            ranks[lo:hi] = (lo + 1 + hi) / 2
    return ranks


def evaluate_ranking(model: nn.Module, dataset: Any, ctx: DistContext, batch_size: int, split: str = "val") -> Dict[str, Any]:
    """Collective: ``auc``, ``logloss`` and ``samples`` of a sequential ranker on
    ``split``, and ``gauc`` over its users (``gauc_users``: users with both labels;
    ``gauc`` is None when there are none, e.g. one labelled row per user)."""
    scores = score_split(model, dataset, ctx, batch_size, split)
    out: Dict[str, Any] = binary_metrics(scores)
    users = torch.from_numpy(dataset.eval_examples(split)[0]).to(scores.rows.device)[scores.rows]
    value, out["gauc_users"] = gauc(scores.logits, scores.labels, users)
    out["gauc"] = None if math.isnan(value) else value
    out["positive_rate"] = float(scores.labels.mean()) if scores.labels.numel() else math.nan
    return out


def evaluate(model: nn.Module, dataset: Any, ctx: DistContext, batch_size: int, split: str = "val") -> Dict[str, float]:
    """Collective: the metrics of ``model`` on ``split`` (same on every rank)."""
    return binary_metrics(score_split(model, dataset, ctx, batch_size, split))
