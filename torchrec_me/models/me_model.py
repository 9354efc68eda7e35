"""Multi-embedding CTR model: K embedding sets, K interaction modules, one shared head."""

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn
from torchrec.datasets.utils import Batch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_me.modules.multi_embedding import MultiEmbeddingSets
from torchrec_me.modules.regularizers import Regularizer


@dataclass(frozen=True)
class MultiEmbeddingModelConfig:
    """What :class:`MultiEmbeddingModel` does besides running its modules.

    Args:
        regularizer (Optional[Regularizer]): maps the K per-set embeddings to a scalar
            added to the training loss by :class:`MultiEmbeddingTrain`; None for none.
        reg_weight (float): its weight.
        fused (bool): average the K per-set outputs as a chain of adds and one division
            (no (K, B, H) stack is written, and an add's backward passes the gradient
            through) rather than ``torch.stack(...).mean(0)``; same value.

    Example::

        from torchrec_me.modules.regularizers import singular_value_regularization

        config = MultiEmbeddingModelConfig(regularizer=singular_value_regularization, reg_weight=1e-4)
    """

    regularizer: Optional[Regularizer] = None
    reg_weight: float = 0.0
    fused: bool = True


def set_mean(hidden: List[torch.Tensor], fused: bool = True) -> torch.Tensor:
    """The mean of the K per-set outputs, each (B, H): (B, H).

    ``fused`` sums them in a chain of K - 1 adds and divides once; otherwise
    ``torch.stack(hidden).mean(0)``. Either way the value is the same up to rounding.
    """
    if not fused:
        return torch.stack(hidden, dim=0).mean(0)
    return hidden[0] if len(hidden) == 1 else sum(hidden[1:], hidden[0]) / len(hidden)


class MultiEmbeddingModel(nn.Module):
    """Sparse arch -> per-set interaction -> mean over sets -> shared head.

    Set k's embeddings (B, F, D_k) go through its own interaction module to (B, H); the
    K outputs are averaged to (B, H) and the shared head maps that to one logit per
    sample. With K = 1 this is the single-embedding (SE) model. Passing a single
    interaction module for K > 1 sets gives the paper's "shared interaction" ablation.
    Shape letters as in :mod:`torchrec_me.modules`::

                              KeyedJaggedTensor (F features)
                                           |
                        sparse_arch: K embedding sets (K EBCs)
                 /                         |                          \\
        set 0 (B, F, D_0)          set 1 (B, F, D_1)    ...    set K-1 (B, F, D_{K-1})
                |                          |                           |
        interactions[0]            interactions[1]      ...    interactions[K-1]
                |                          |                           |
             (B, H)                     (B, H)                      (B, H)
                 \\                         |                          /
                                  mean over the K sets
                                           |
                                 (B, H) -> head -> (B,) logits

    Dense features (the DLRM convention) enter through a per-set dense arch that
    projects them to one more field of that set's dim, placed first: set k then
    reads (B, 1 + F, D_k).

    Args:
        sparse_arch (MultiEmbeddingSets): the K embedding sets, in any layout
            (``torchrec_me.modules.layouts``).
        interactions (Sequence[nn.Module]): K modules (module k maps (B, F, D_k) ->
            (B, H)), or one module shared by all sets (equal dims required).
        head (nn.Module): maps (B, H) -> (B,) logits.
        dense_archs (Optional[Sequence[nn.Module]]): K modules mapping the (B, num_dense)
            dense features to (B, D_k), e.g. TorchRec's ``DenseArch``; None without
            dense features.
        config (Optional[MultiEmbeddingModelConfig]): regulariser and the fused/plain
            mean over sets; None for the defaults (no regulariser, fused).

    Example::

        from torchrec_me.modules import DCNv2Interaction, MLPHead, MultiEmbeddingBagCollection

        sparse = MultiEmbeddingBagCollection(["f1", "f2"], [10, 10], [8, 8])
        inters = [DCNv2Interaction(num_fields=2, embedding_dim=8, num_cross_layers=2, hidden_dim=16) for _ in range(2)]
        model = MultiEmbeddingModel(sparse, inters, MLPHead(16, [16]))
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=["f1", "f2"], values=torch.tensor([1, 2, 3, 4]), lengths=torch.ones(4, dtype=torch.int32)
        )
        logits = model(torch.zeros(2, 0), kjt)  # (2,)
    """

    def __init__(
        self,
        sparse_arch: MultiEmbeddingSets,
        interactions: Sequence[nn.Module],
        head: nn.Module,
        dense_archs: Optional[Sequence[nn.Module]] = None,
        config: Optional[MultiEmbeddingModelConfig] = None,
    ) -> None:
        super().__init__()
        k = sparse_arch.num_sets
        if len(interactions) not in (1, k):
            raise ValueError(f"{len(interactions)} interaction modules for {k} embedding sets (need {k} or 1 shared)")
        if len(interactions) == 1 and len(set(sparse_arch.embedding_dims)) > 1:
            raise ValueError(f"a shared interaction needs equal set dims, got {sparse_arch.embedding_dims}")
        if dense_archs is not None and len(dense_archs) != k:
            raise ValueError(f"{len(dense_archs)} dense archs for {k} embedding sets")
        config = config or MultiEmbeddingModelConfig()
        self.sparse_arch = sparse_arch
        self.interactions = nn.ModuleList(interactions)
        self.head = head
        self.dense_archs = nn.ModuleList(dense_archs) if dense_archs is not None else None
        self.regularizer = config.regularizer
        self.reg_weight = config.reg_weight
        self.fused = config.fused

    def _logits(self, dense_features: torch.Tensor, per_set: List[torch.Tensor]) -> torch.Tensor:
        """Logits (B,) from the dense features (B, num_dense) and the K sets' (B, F, D_k)."""
        if self.dense_archs is not None:
            per_set = [
                torch.cat([arch(dense_features).unsqueeze(1), emb], dim=1)
                for arch, emb in zip(self.dense_archs, per_set)
            ]
        shared = len(self.interactions) == 1
        hidden = [self.interactions[0 if shared else k](emb) for k, emb in enumerate(per_set)]
        return self.head(set_mean(hidden, self.fused))

    def forward(self, dense_features: torch.Tensor, sparse_features: KeyedJaggedTensor) -> torch.Tensor:
        """
        Args:
            dense_features (torch.Tensor): (B, num_dense); (B, 0) without dense features.
            sparse_features (KeyedJaggedTensor): the batch's KJT with the F sparse features.

        Returns:
            torch.Tensor: (B,) logits.
        """
        return self._logits(dense_features, self.sparse_arch(sparse_features))

    def forward_train(
        self, dense_features: torch.Tensor, sparse_features: KeyedJaggedTensor
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Logits (B,) and the weighted regularisation term (None without a regulariser)."""
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

    Example::

        from torchrec_me.modules import DNNInteraction, MLPHead, MultiEmbeddingBagCollection

        sparse = MultiEmbeddingBagCollection(["f1", "f2"], [10, 10], [8, 8])
        model = MultiEmbeddingModel(sparse, [DNNInteraction(2, 8, 16), DNNInteraction(2, 8, 16)], MLPHead(16, []))
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=["f1", "f2"], values=torch.tensor([1, 2, 3, 4]), lengths=torch.ones(4, dtype=torch.int32)
        )
        batch = Batch(dense_features=torch.zeros(2, 0), sparse_features=kjt, labels=torch.tensor([0, 1]))
        loss, (loss_detached, logits, labels) = MultiEmbeddingTrain(model)(batch)
        loss.backward()
    """

    def __init__(self, model: MultiEmbeddingModel) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = nn.BCEWithLogitsLoss()

    def forward(self, batch: Batch) -> Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """
        Args:
            batch (Batch): dense features (B, num_dense), the sparse KJT and labels (B,).

        Returns:
            Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]: the
            scalar loss, and ``(loss, logits (B,), labels (B,))`` detached.
        """
        logits, reg = self.model.forward_train(batch.dense_features, batch.sparse_features)
        loss = self.loss_fn(logits, batch.labels.float())
        if reg is not None:
            loss = loss + reg
        return loss, (loss.detach(), logits.detach(), batch.labels.detach())
