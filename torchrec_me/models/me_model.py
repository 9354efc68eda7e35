"""Multi-embedding CTR model: K embedding sets, K interaction modules, one shared head."""

from typing import List, Sequence, Tuple

import torch
from torch import nn
from torchrec.datasets.utils import Batch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_me.modules.multi_embedding import MultiEmbeddingBagCollection


class MultiEmbeddingModel(nn.Module):
    """Sparse arch -> per-set interaction -> mean over sets -> shared head.

    Set k's embeddings (B, F, D_k) go through its own interaction module to (B, H); the
    K outputs are averaged to (B, H) and the shared head maps that to one logit per
    sample. With K = 1 this is the single-embedding (SE) model.

    Args:
        sparse_arch (MultiEmbeddingBagCollection): the K embedding sets.
        interactions (Sequence[nn.Module]): K modules, module k maps (B, F, D_k) -> (B, H).
        head (nn.Module): maps (B, H) -> (B,) logits.

    Example::

        sparse = MultiEmbeddingBagCollection(["f1", "f2"], [10, 10], [8, 8])
        inters = [DCNv2Interaction(2, 8, 2, 16, 0.0) for _ in range(2)]
        model = MultiEmbeddingModel(sparse, inters, MLPHead(16, [16], 0.0))
        logits = model(torch.zeros(2, 0), kjt)  # (2,)
    """

    def __init__(
        self,
        sparse_arch: MultiEmbeddingBagCollection,
        interactions: Sequence[nn.Module],
        head: nn.Module,
    ) -> None:
        super().__init__()
        if len(interactions) != sparse_arch.num_sets:
            raise ValueError(
                f"{len(interactions)} interaction modules for {sparse_arch.num_sets} embedding sets"
            )
        self.sparse_arch = sparse_arch
        self.interactions = nn.ModuleList(interactions)
        self.head = head

    def forward(self, dense_features: torch.Tensor, sparse_features: KeyedJaggedTensor) -> torch.Tensor:
        per_set: List[torch.Tensor] = self.sparse_arch(sparse_features)
        hidden = torch.stack(
            [inter(emb) for inter, emb in zip(self.interactions, per_set)], dim=0
        ).mean(0)
        return self.head(hidden)


class MultiEmbeddingTrain(nn.Module):
    """Training wrapper with TorchRec's contract (as ``DLRMTrain``).

    Takes a ``Batch`` and returns ``(loss, (loss, logits, labels))``, detached in the
    inner tuple, which is what ``TrainPipelineSparseDist`` expects.

    Args:
        model (nn.Module): maps ``(dense_features, sparse_features)`` to (B,) logits.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = nn.BCEWithLogitsLoss()

    def forward(self, batch: Batch) -> Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        logits = self.model(batch.dense_features, batch.sparse_features)
        loss = self.loss_fn(logits, batch.labels.float())
        return loss, (loss.detach(), logits.detach(), batch.labels.detach())
