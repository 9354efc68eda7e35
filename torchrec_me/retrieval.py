"""Full-corpus evaluation of the sequential models, and the two non-learned baselines.

Every item is scored for every evaluated user, never a sample of 100. The item vectors
are read once per evaluation through the (sharded) item tables, in the same chunks on
every rank, so every rank holds all of them and each rank ranks its own users exactly:
the top-k needs no cross-rank merge, and the target ranks are gathered for the metrics
(HR@k, NDCG@k for k in 10, 50, 200, and MRR; ranks count ties against the target).

``train.exclude_history`` (default on) leaves out of the ranking every item the user has
already interacted with: the task is recommending items new to the user, and MovieLens
ratings are one per (user, movie), so there the rule changes nothing but the candidates.
A target the user had already seen (possible in the synthetic data) is then a miss, the
same rule as the synthetic data's oracle (``oracle_metrics(exclude_seen=True)``), so the
model and its upper bound are measured alike. Turn it off to rank the whole corpus.
"""

from typing import Any, Dict, Iterator, List, Tuple

import torch
from torch import nn

from torchrec_me.data.sequence_batch import SequenceBatch
from torchrec_me.distributed.sharding import DistContext
from torchrec_me.evaluation import gather_cat
from torchrec_me.models.retrieval_metrics import exclude_history, ranking_metrics, target_ranks


def _sequential_model(model: nn.Module) -> nn.Module:
    """The SequentialModel inside a DMP-wrapped (or plain) SequentialTrain."""
    train = getattr(model, "module", model)
    return train.model


def _batches(dataset: Any, ctx: DistContext, batch_size: int, split: str, max_seq_len: int) -> Iterator[Tuple[SequenceBatch, bool]]:
    for batch, real in dataset.eval_batches(split, ctx.rank, ctx.world_size, batch_size, max_seq_len):
        yield batch.to(ctx.device), real


def _ranks(scores: torch.Tensor, batch: SequenceBatch, dataset: Any, split: str, exclude: bool) -> torch.Tensor:
    if exclude:
        seen = dataset.seen_items(split, batch.users)
        values, lengths = seen.values().to(scores.device), seen.lengths().to(scores.device)
        scores = exclude_history(scores, values, lengths, batch.targets, keep_targets=False)
    return target_ranks(scores, batch.targets)


@torch.no_grad()
def evaluate_retrieval(model: nn.Module, dataset: Any, ctx: DistContext, cfg: Any, split: str = "val") -> Dict[str, float]:
    """Collective: HR/NDCG@{10,50,200}, MRR and ``users`` of ``model`` on ``split``.

    Args:
        model (nn.Module): a (DMP-wrapped) ``SequentialTrain``.
        dataset (Any): a sequence dataset (``eval_batches``, ``seen_items``).
        ctx (DistContext): this rank.
        cfg (Any): the job's Config (eval batch size, max_seq_len, exclude_history).
        split (str): ``val`` or ``test``.
    """
    was_training = model.training
    model.eval()
    inner = _sequential_model(model)
    items = inner.all_item_vectors()
    ranks: List[torch.Tensor] = []
    for batch, real in _batches(dataset, ctx, cfg.train.eval_batch_size, split, cfg.model.max_seq_len):
        _, (_, users, _) = model(batch)
        batch_ranks = _ranks(inner.score_all_items(users, items), batch, dataset, split, cfg.train.exclude_history)
        if real:
            ranks.append(batch_ranks)
    model.train(was_training)
    all_ranks = gather_cat(torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long, device=ctx.device))
    return {**ranking_metrics(all_ranks), "users": int(all_ranks.numel())}


@torch.no_grad()
def popularity_baseline(dataset: Any, ctx: DistContext, cfg: Any, split: str = "test") -> Dict[str, float]:
    """Collective: the metrics of ranking every item by its training-split popularity."""
    counts = torch.as_tensor(dataset.item_counts, dtype=torch.float64, device=ctx.device)
    ranks: List[torch.Tensor] = []
    for batch, real in _batches(dataset, ctx, cfg.train.eval_batch_size, split, cfg.model.max_seq_len):
        scores = counts.expand(batch.targets.numel(), -1).clone()
        batch_ranks = _ranks(scores, batch, dataset, split, cfg.train.exclude_history)
        if real:
            ranks.append(batch_ranks)
    all_ranks = gather_cat(torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long, device=ctx.device))
    return ranking_metrics(all_ranks)


@torch.no_grad()
def recent_items_baseline(dataset: Any, ctx: DistContext, cfg: Any, split: str = "test") -> Dict[str, float]:
    """Collective: rank the user's own history, most recent first (then everything else).

    Only meaningful with ``train.exclude_history=false`` (it recommends seen items)."""
    ranks: List[torch.Tensor] = []
    for batch, real in _batches(dataset, ctx, cfg.train.eval_batch_size, split, cfg.model.max_seq_len):
        lengths = batch.items.lengths().long()
        rows = torch.repeat_interleave(torch.arange(lengths.numel(), device=lengths.device), lengths)
        scores = torch.zeros(lengths.numel(), dataset.num_items, dtype=torch.float64, device=lengths.device)
        recency = torch.arange(batch.items.values().numel(), device=lengths.device, dtype=torch.float64) + 1
        flat = rows * dataset.num_items + batch.items.values().long()
        scores.view(-1).scatter_reduce_(0, flat, recency, reduce="amax")  # a repeated item: its latest position
        if real:
            ranks.append(target_ranks(scores, batch.targets))
    all_ranks = gather_cat(torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long, device=ctx.device))
    return ranking_metrics(all_ranks)
