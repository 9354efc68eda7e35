"""Multi-embedding CTR model: K embedding sets, K interaction modules, one shared head."""

from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn
from torchrec.datasets.utils import Batch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_me.modules.multi_embedding import MultiEmbeddingSets
from torchrec_me.modules.regularizers import Regularizer


class MultiEmbeddingModel(nn.Module):
    """Sparse arch -> per-set interaction -> mean over sets -> shared head.

    Set k's embeddings (B, F, D_k) go through its own interaction module to (B, H); the
    K outputs are averaged to (B, H) and the shared head maps that to one logit per
    sample. With K = 1 this is the single-embedding (SE) model. Passing a single
    interaction module for K > 1 sets gives the paper's "shared interaction" ablation.

    Dense features (the DLRM convention) enter through a per-set dense arch that
    projects them to one more field of that set's dim, placed first: set k then
    reads (B, 1 + F, D_k).

    Args:
        sparse_arch (MultiEmbeddingSets): the K embedding sets, in any layout
            (``torchrec_me.modules.layouts``).
        interactions (Sequence[nn.Module]): K modules (module k maps (B, F, D_k) ->
            (B, H)), or one module shared by all sets (equal dims required).
        head (nn.Module): maps (B, H) -> (B,) logits.
        regularizer (Optional[Regularizer]): maps the K per-set embeddings to a scalar
            added to the training loss by :class:`MultiEmbeddingTrain`.
        reg_weight (float): its weight.
        dense_archs (Optional[Sequence[nn.Module]]): K modules mapping the (B, num_dense)
            dense features to (B, D_k), e.g. TorchRec's ``DenseArch``; None without
            dense features.

    Example::

        sparse = MultiEmbeddingBagCollection(["f1", "f2"], [10, 10], [8, 8])
        inters = [DCNv2Interaction(2, 8, 2, 16, 0.0) for _ in range(2)]
        model = MultiEmbeddingModel(sparse, inters, MLPHead(16, [16], 0.0))
        logits = model(torch.zeros(2, 0), kjt)  # (2,)
    """

    def __init__(
        self,
        sparse_arch: MultiEmbeddingSets,
        interactions: Sequence[nn.Module],
        head: nn.Module,
        regularizer: Optional[Regularizer] = None,
        reg_weight: float = 0.0,
        dense_archs: Optional[Sequence[nn.Module]] = None,
    ) -> None:
        super().__init__()
        k = sparse_arch.num_sets
        if len(interactions) not in (1, k):
            raise ValueError(f"{len(interactions)} interaction modules for {k} embedding sets (need {k} or 1 shared)")
        if len(interactions) == 1 and len(set(sparse_arch.embedding_dims)) > 1:
            raise ValueError(
                f"a shared interaction needs equal set dims, got {sparse_arch.embedding_dims}"
            )
        self.sparse_arch = sparse_arch
        self.interactions = nn.ModuleList(interactions)
        self.head = head
        self.regularizer = regularizer
        self.reg_weight = reg_weight
        if dense_archs is not None and len(dense_archs) != k:
            raise ValueError(f"{len(dense_archs)} dense archs for {k} embedding sets")
        self.dense_archs = nn.ModuleList(dense_archs) if dense_archs is not None else None

    def _logits(self, dense_features: torch.Tensor, per_set: List[torch.Tensor]) -> torch.Tensor:
        if self.dense_archs is not None:
            per_set = [
                torch.cat([arch(dense_features).unsqueeze(1), emb], dim=1)
                for arch, emb in zip(self.dense_archs, per_set)
            ]
        shared = len(self.interactions) == 1
        hidden = [self.interactions[0 if shared else k](emb) for k, emb in enumerate(per_set)]
        # The mean over sets as a chain of adds, then / K: no (K, B, H) stack is written,
        # an add's backward passes the gradient through, and the division is one (B, H) pass.
        return self.head(hidden[0] if len(hidden) == 1 else sum(hidden[1:], hidden[0]) / len(hidden))

    def forward(self, dense_features: torch.Tensor, sparse_features: KeyedJaggedTensor) -> torch.Tensor:
        return self._logits(dense_features, self.sparse_arch(sparse_features))

    def forward_train(
        self, dense_features: torch.Tensor, sparse_features: KeyedJaggedTensor
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Logits and the weighted regularisation term (None without a regulariser)."""
        per_set = self.sparse_arch(sparse_features)
        reg = self.reg_weight * self.regularizer(per_set) if self.regularizer is not None else None
        return self._logits(dense_features, per_set), reg


class MultiEmbeddingTrain(nn.Module):
    """Training wrapper with TorchRec's contract (as ``DLRMTrain``).

    Takes a ``Batch`` and returns ``(loss, (loss, logits, labels))``, detached in the
    inner tuple, which is what ``TrainPipelineSparseDist`` expects. The loss is the mean
    binary cross-entropy plus the model's weighted regulariser, if any.

    Args:
        model (MultiEmbeddingModel): maps ``(dense_features, sparse_features)`` to (B,) logits.
    """

    def __init__(self, model: MultiEmbeddingModel) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = nn.BCEWithLogitsLoss()

    def forward(self, batch: Batch) -> Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        logits, reg = self.model.forward_train(batch.dense_features, batch.sparse_features)
        loss = self.loss_fn(logits, batch.labels.float())
        if reg is not None:
            loss = loss + reg
        return loss, (loss.detach(), logits.detach(), batch.labels.detach())
