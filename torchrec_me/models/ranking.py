"""A sequential ranker: the user's history and the candidate in one causal sequence.

The shape of the DLRM-v3 / HSTU ranking model. Each row of a
:class:`~torchrec_me.data.sequences.ranking.RankingBatch` is the history (items with the
user's actions on them) followed by the candidate item (action unknown). Set k embeds
the tokens with its own item table ``set{k}__item`` plus an action embedding, reads
them with its own encoder stack (HSTU, SASRec or Llama-style; causal, so the candidate
sees the whole history and nothing sees it), and fuses the state at the candidate with
the candidate's own embedding into a vector of ``hidden_dim``. As in the CTR
multi-embedding model, the K fused vectors are averaged and one shared MLP head gives
the logit::

    RankingBatch.items (KJT "item", B rows of L_b tokens)
        |                 set k of K
        +--> EC k (set{k}__item, D_k) + action embedding --> (B, L, D_k)
        |        --> encoder stack k --> state at the candidate (B, D_k)
        |        --> Linear([state ; candidate embedding]) --> (B, H)
        +--> mean over k --> MLP head (H -> H/2 -> 1) --> logit (B,)

The batch's item KJT goes straight into the K collections (one feature, ``item``), so
``TrainPipelineSparseDist`` pipelines every set's lookup. Training minimises the binary
cross-entropy; :class:`SequentialRankerTrain` has TorchRec's ``(loss, (loss, logits,
labels))`` contract, in evaluation too, so the CTR evaluation scores it unchanged.
"""

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torchrec.modules.mlp import MLP

from torchrec_me.data.sequence_batch import ITEM_FEATURE
from torchrec_me.data.sequences.ranking import NUM_ACTIONS, RankingBatch
from torchrec_me.models.sequential import SequentialConfig
from torchrec_me.modules.sequential.common import padding_mask, to_padded
from torchrec_me.modules.sequential.encoders import SetEncoders
from torchrec_me.modules.sequential.items import ItemEmbeddingSets


@dataclass
class RankingViews:
    """A ranking batch right-padded (L = the longest row).

    Args:
        items (List[torch.Tensor]): K x (B, L, D_k) item embeddings.
        mask (torch.Tensor): (B, L) bool, True at the valid tokens.
        timestamps (torch.Tensor): (B, L) int64.
        actions (torch.Tensor): (B, L) int64 actions (the candidate's unknown).
        candidate (torch.Tensor): (B,) int64 index of each row's candidate (its last token).
    """

    items: List[torch.Tensor]
    mask: torch.Tensor
    timestamps: torch.Tensor
    actions: torch.Tensor
    candidate: torch.Tensor


@torch.fx.wrap
def ranking_views(
    item_values: List[torch.Tensor], lengths: torch.Tensor, timestamps: torch.Tensor, actions: torch.Tensor
) -> RankingViews:
    """Pad the K sets' jagged (N, D_k) lookups and the batch's tokens. A leaf for
    ``torch.fx`` (the pipeline traces the model around it)."""
    lengths = lengths.long()
    mask = padding_mask(lengths, int(lengths.max()) if lengths.numel() else 1)
    return RankingViews(
        items=[to_padded(v, mask) for v in item_values], mask=mask, timestamps=to_padded(timestamps, mask),
        actions=to_padded(actions, mask), candidate=(lengths - 1).clamp(min=0),
    )  # fmt: skip


class RankerArch(nn.Module):
    """The dense part of the ranker: per set an action embedding, an encoder stack and a
    fusion of the candidate's state with its embedding; their mean through the head.

    A module of its own (it holds no table), so the pipeline's tracer keeps it whole.

    Args:
        dims (List[int]): the K set dims D_k.
        config (SequentialConfig): backbone and encoder settings.
        hidden_dim (int): H, the fused width; the head is MLP H -> H/2 -> 1.

    Example::

        arch = RankerArch([8], SequentialConfig(embedding_dim=8, max_seq_len=4), 16)
        views = RankingViews([torch.randn(2, 3, 8)], torch.ones(2, 3, dtype=torch.bool),
                             torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.long), torch.tensor([2, 2]))
        logits = arch(views)  # (2,)
    """

    def __init__(self, dims: List[int], config: SequentialConfig, hidden_dim: int) -> None:
        super().__init__()
        self.actions = nn.ModuleList(nn.Embedding(NUM_ACTIONS, d) for d in dims)
        self.encoders = SetEncoders(config.backbone, dims, config.encoder_config(), config.shared_encoder)
        self.fuse = nn.ModuleList(nn.Linear(2 * d, hidden_dim) for d in dims)
        half = max(hidden_dim // 2, 1)
        self.head = nn.Sequential(MLP(hidden_dim, [half]), nn.Linear(half, 1))

    def forward(self, views: RankingViews) -> torch.Tensor:
        """
        Args:
            views (RankingViews): a padded batch, the candidate of row b at ``candidate[b]``.

        Returns:
            torch.Tensor: (B,) logits.
        """
        rows = torch.arange(views.candidate.numel(), device=views.candidate.device)
        inputs = [x + emb(views.actions) for x, emb in zip(views.items, self.actions)]
        hidden = self.encoders(inputs, views.mask, views.timestamps, views.timestamps)
        fused = [
            fuse(torch.cat([h[rows, views.candidate], x[rows, views.candidate]], dim=-1))
            for h, x, fuse in zip(hidden, views.items, self.fuse)
        ]
        return self.head(torch.stack(fused).mean(0)).squeeze(-1)


class SequentialRanker(nn.Module):
    """K item sets, each with its own encoder stack and fusion, averaged into one head.

    Args:
        num_items (int): item vocabulary; ids in ``[0, num_items)``.
        config (SequentialConfig): backbone, sets and encoder settings (the sampled-softmax
            keys are unused).
        hidden_dim (int): H, the fused width; the head is MLP H -> H/2 -> 1.
        device (Optional[torch.device]): device of the item tables (``meta`` for DMP).

    Example::

        from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
        model = SequentialRanker(50, SequentialConfig(num_sets=2, embedding_dim=8, max_seq_len=4), 16)
        items = KeyedJaggedTensor.from_lengths_sync(["item"], torch.tensor([3, 1, 4, 1, 5]), torch.tensor([2, 3]))
        batch = RankingBatch(items, torch.arange(5), torch.tensor([2, 0, 5, 4, 0]), torch.tensor([1.0, 0.0]), torch.arange(2))
        logits = model(batch)  # (2,)
    """

    def __init__(
        self, num_items: int, config: SequentialConfig, hidden_dim: int, device: Optional[torch.device] = None
    ) -> None:
        super().__init__()
        self.num_items = num_items
        self.dims = config.dims()
        self.item_sets = ItemEmbeddingSets(num_items, self.dims, device, features=(ITEM_FEATURE,))
        self.arch = RankerArch(self.dims, config, hidden_dim)

    def forward(self, batch: RankingBatch) -> torch.Tensor:
        """
        Args:
            batch (RankingBatch): B rows, the candidate last in each.

        Returns:
            torch.Tensor: (B,) logits.
        """
        per_set = self.item_sets(batch.items)
        values = [out[ITEM_FEATURE].values() for out in per_set]
        return self.arch(ranking_views(values, batch.items.lengths(), batch.timestamps, batch.actions))


class SequentialRankerTrain(nn.Module):
    """Binary cross-entropy of a :class:`SequentialRanker`, with TorchRec's contract
    (as ``DLRMTrain``): ``(loss, (loss, logits, labels))``, the inner tuple detached, in
    training and evaluation alike.

    Args:
        model (SequentialRanker): the model.

    Example::

        from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
        train = SequentialRankerTrain(SequentialRanker(50, SequentialConfig(embedding_dim=8, max_seq_len=4), 16))
        items = KeyedJaggedTensor.from_lengths_sync(["item"], torch.tensor([3, 1, 4]), torch.tensor([2, 1]))
        batch = RankingBatch(items, torch.arange(3), torch.tensor([2, 0, 0]), torch.tensor([1.0, 0.0]), torch.arange(2))
        loss, (_, logits, labels) = train(batch)
        loss.backward()
    """

    def __init__(self, model: SequentialRanker) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: RankingBatch) -> Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """
        Args:
            batch (RankingBatch): labelled rows.

        Returns:
            Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]: the
            mean loss, and (loss, logits (B,), labels (B,)) detached.
        """
        logits = self.model(batch)
        loss = F.binary_cross_entropy_with_logits(logits, batch.labels)
        return loss, (loss.detach(), logits.detach(), batch.labels)
