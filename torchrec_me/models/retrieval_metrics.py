"""Full-corpus ranking metrics of next-item prediction: HR@k, NDCG@k, MRR.

Every item is scored (never a sample of 100). Per row, the target's rank is computed
from the full score row; the metrics are means over rows of functions of that rank, so
a sharded evaluation gathers the per-row ranks of every rank and calls
:func:`ranking_metrics` once (exact, whatever the split).

* rank: 0-based; the number of other items scoring at least as high as the target.
  Ties count against the target, so a model that scores everything equally gets the last
  rank, never a free hit.
* HR@k: ``rank < k``; NDCG@k (one relevant item): ``1 / log2(rank + 2)`` if
  ``rank < k`` else 0; MRR: ``1 / (rank + 1)`` with no cut-off.
* History exclusion (:func:`exclude_history`): the items of the user's own history get
  score ``-inf``, except the target itself (a re-consumed item stays rankable). Whether
  to apply it is the caller's choice, reported with the numbers.
"""

from typing import Dict, Sequence

import torch

DEFAULT_KS = (10, 50, 200)


def exclude_history(
    scores: torch.Tensor, history: torch.Tensor, history_lengths: torch.Tensor, targets: torch.Tensor,
    keep_targets: bool = True,
) -> torch.Tensor:
    """A copy of ``scores`` (B, I) with each row's history items at ``-inf``; with
    ``keep_targets`` a target that is also in the history keeps its score.

    Args:
        scores (torch.Tensor): (B, I) scores of every item.
        history (torch.Tensor): (N,) item ids of the B histories, concatenated.
        history_lengths (torch.Tensor): (B,) length of each history.
        targets (torch.Tensor): (B,) the item to rank per row.
        keep_targets (bool): keep the target's score (else a repeated target is a miss).

    Returns:
        torch.Tensor: (B, I) masked scores.
    """
    rows = torch.repeat_interleave(torch.arange(scores.shape[0], device=scores.device), history_lengths.long())
    rows_all = torch.arange(scores.shape[0], device=scores.device)
    target_scores = scores[rows_all, targets]
    out = scores.index_put((rows, history.long()), scores.new_tensor(float("-inf")))
    if keep_targets:
        out[rows_all, targets] = target_scores
    return out


def target_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B,) int64 0-based rank of ``targets[b]`` in row b of ``scores`` (B, I): the count
    of other items with a score >= the target's (ties against the target)."""
    target_scores = scores.gather(1, targets.long().unsqueeze(1))
    return (scores >= target_scores).sum(dim=1) - 1


def ranking_metrics(ranks: torch.Tensor, ks: Sequence[int] = DEFAULT_KS) -> Dict[str, float]:
    """``hr@k``, ``ndcg@k`` for each k, and ``mrr``: means over the rows' ranks (B,).

    An empty ``ranks`` gives NaN for every metric.
    """
    r = ranks.to(torch.float64)
    out: Dict[str, float] = {}
    for k in ks:
        hit = r < k
        out[f"hr@{k}"] = float(hit.double().mean())
        out[f"ndcg@{k}"] = float(torch.where(hit, 1.0 / torch.log2(r + 2.0), torch.zeros_like(r)).mean())
    out["mrr"] = float((1.0 / (r + 1.0)).mean())
    return out
