"""Sampled softmax for next-item prediction at every position, over the K sets.

The score of user state u and item e is the multi-embedding mean of the per-set cosine
similarities, ``s(u, e) = (1/K) sum_k <u_k, e_k / |e_k|>`` (u_k is already unit-norm),
divided by the temperature. At each valid position the positive (the next item) competes
with the sampled negatives; a negative equal to the positive is masked out (its logit
is ``-inf``). Shape letters as in :mod:`torchrec_me.modules.sequential`; M negatives.
"""

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn


def _negative_scores(users: List[torch.Tensor], negatives: List[torch.Tensor]) -> torch.Tensor:
    """(B, L, M) mean over sets of ``<u, e / |e|>`` for negatives shared by a row
    (B, M, D_k) or drawn per position (B, L, M, D_k)."""
    total: Optional[torch.Tensor] = None
    for u, neg in zip(users, negatives):
        unit = F.normalize(neg, dim=-1)
        s = torch.bmm(u, unit.transpose(1, 2)) if unit.dim() == 3 else (unit @ u.unsqueeze(-1)).squeeze(-1)
        total = s if total is None else total + s
    assert total is not None
    return total / len(users)


#: Score every position against every distinct negative with one matmul while the
#: distinct negatives are at most this many times the negatives per position; else
#: gather each position's M rows. Measured on 2 CPU cores (forward and backward, 128
#: negatives, d = 48): the matmul is faster at U = 3,706 (ML-1M's items; 358 vs 482 ms
#: at 6,400 positions, 15 vs 32 ms at 392), the gather at U = 20,000 (630 vs 1,552 ms).
MATMUL_OVER_GATHER = 32
#: Positions per chunk of the gathered path (bounds its (chunk, M, sum D_k) tensor).
GATHER_CHUNK = 4096


def indexed_negative_scores(users: List[torch.Tensor], uniques: List[torch.Tensor], index: torch.Tensor) -> torch.Tensor:
    """(P, M) mean over sets of ``<u_p, e / |e|>`` for position p's negatives given as
    ``index`` (P, M) into the distinct negative rows ``uniques`` (K x (U, D_k)).

    Each distinct row is normalised once, and the scores come from one matmul of the
    positions against the U rows followed by a gather of each position's M columns, or
    (U large) from a gather of the M rows per position in chunks: the same numbers as
    normalising the P x M looked-up rows one by one, for a fraction of the work."""
    u = torch.cat(users, dim=-1)
    e = torch.cat([F.normalize(n, dim=-1) for n in uniques], dim=-1)
    if e.shape[0] <= MATMUL_OVER_GATHER * index.shape[1]:
        return (u @ e.T).gather(1, index) / len(users)
    parts = [
        (e[index[lo : lo + GATHER_CHUNK]] @ u[lo : lo + GATHER_CHUNK].unsqueeze(-1)).squeeze(-1)
        for lo in range(0, index.shape[0], GATHER_CHUNK)
    ]
    return (torch.cat(parts) if parts else u.new_zeros(index.shape)) / len(users)


class SampledSoftmaxLoss(nn.Module):
    """Sampled softmax cross-entropy of the next item at every valid position.

    For valid position (b, i) with user vectors ``u`` (unit-norm per set), positive ``p``
    and negatives ``n_1..n_M``::

        logits = [s(u, p), s(u, n_1), ..., s(u, n_M)] / temperature
        loss   = mean over valid positions of  -log softmax(logits)[0]

    with ``logit(n_m) = -inf`` where ``n_m``'s id equals the positive's. Negatives come
    per row, shared by the row's positions (B, M, D_k), or per position (B, L, M, D_k).
    With ``in_batch_negatives`` each row also gets M negatives drawn uniformly (global
    RNG, like dropout) among the batch's valid positives, a popularity-shaped sample from
    the batch on this rank, added to the uniform ones and masked the same way; no logQ
    correction is applied.

    Args:
        temperature (float): divides the scores (0.05 in the HSTU configs).
        in_batch_negatives (bool): add M in-batch negatives per row.

    Example::

        loss_fn = SampledSoftmaxLoss(0.05)
        users = [F.normalize(torch.randn(2, 3, 8), dim=-1)]
        mask = torch.tensor([[True, True, False], [True, False, False]])
        loss, logits, labels = loss_fn(
            users, [torch.randn(2, 3, 8)], [torch.randn(2, 4, 8)], mask,
            torch.randint(10, (2, 3)), torch.randint(10, (2, 4)),
        )  # logits (3, 5), labels (3,) zeros
    """

    def __init__(self, temperature: float, in_batch_negatives: bool = False) -> None:
        super().__init__()
        self.temperature = temperature
        self.in_batch_negatives = in_batch_negatives

    def _in_batch(
        self, units: List[torch.Tensor], mask: torch.Tensor, positive_ids: torch.Tensor, num: int
    ) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """Per row, ``num`` of the batch's valid positives: K x (B, M, D_k) and ids (B, M)."""
        flat_ids = positive_ids[mask]
        pick = torch.randint(max(flat_ids.numel(), 1), (mask.shape[0], num), device=mask.device)
        if flat_ids.numel() == 0:
            return [u.new_zeros((*pick.shape, u.shape[-1])) for u in units], pick
        return [u[mask][pick] for u in units], flat_ids[pick]

    def forward(
        self,
        users: List[torch.Tensor],
        positives: List[torch.Tensor],
        negatives: List[torch.Tensor],
        mask: torch.Tensor,
        positive_ids: torch.Tensor,
        negative_ids: torch.Tensor,
        negative_index: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """
        Args:
            users (List[torch.Tensor]): K unit-norm user vectors (B, L, D_k).
            positives (List[torch.Tensor]): K embeddings (B, L, D_k) of each position's
                next item.
            negatives (List[torch.Tensor]): K embeddings (B, M, D_k) (per row) or
                (B, L, M, D_k) (per position).
            mask (torch.Tensor): (B, L) bool, True at the P valid positions.
            positive_ids (torch.Tensor): (B, L) int64 next-item ids.
            negative_ids (torch.Tensor): (B, M) or (B, L, M) int64 negative ids; with
                ``negative_index``, (P, M) over the valid positions.
            negative_index (Optional[torch.Tensor]): per-position negatives given once
                each: ``negatives`` are then K x (U, D_k) distinct rows and this (P, M)
                int64 tensor says which row is each valid position's m-th negative
                (:func:`indexed_negative_scores`).

        Returns:
            Tuple[torch.Tensor, torch.Tensor, torch.Tensor]: the scalar loss, the logits
            (P, 1 + M') of the valid positions (positive first; M' = M, or 2M with
            in-batch negatives) and the labels (P,) int64 zeros.
        """
        units = [F.normalize(p, dim=-1) for p in positives]
        pos = sum((u * p).sum(-1) for u, p in zip(users, units)) / len(users)
        # Every part as (P, .) over the valid positions.
        if negative_index is None:
            ids = negative_ids if negative_ids.dim() == 3 else negative_ids.unsqueeze(1)
            neg = _negative_scores(users, negatives).masked_fill(ids == positive_ids.unsqueeze(-1), float("-inf"))[mask]
        else:  # per-position negatives, each distinct row once
            neg = indexed_negative_scores([u[mask] for u in users], negatives, negative_index)
            neg = neg.masked_fill(negative_ids == positive_ids[mask].unsqueeze(-1), float("-inf"))
        parts = [pos[mask].unsqueeze(-1), neg]
        if self.in_batch_negatives:
            extra, extra_ids = self._in_batch(units, mask, positive_ids, negative_ids.shape[-1])
            scores = _negative_scores(users, extra)
            parts.append(scores.masked_fill(extra_ids.unsqueeze(1) == positive_ids.unsqueeze(-1), float("-inf"))[mask])
        logits = torch.cat(parts, dim=-1) / self.temperature
        labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        if logits.shape[0] == 0:
            return logits.sum(), logits, labels
        return F.cross_entropy(logits, labels), logits, labels
