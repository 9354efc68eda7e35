"""Multi-embedding sparse arch: K independent EmbeddingBagCollections on one KJT."""

from typing import List, Optional, Sequence

import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor


def set_table_name(set_index: int, feature: str) -> str:
    """Table name of ``feature`` in set ``set_index``: ``set{k}__{feature}``.

    Planner ``ParameterConstraints`` are keyed by table name, so the prefix lets a
    constraint target one set without touching the others.
    """
    return f"set{set_index}__{feature}"


class MultiEmbeddingBagCollection(nn.Module):
    """K embedding sets for the same features, one ``EmbeddingBagCollection`` each.

    Multi-embedding (arXiv 2310.04400) gives every set its own tables so that each set
    can be read by its own interaction module. Keeping one EBC per set means TorchRec's
    planner sees K ordinary EBCs: each is planned, sharded and given a fused optimizer
    on its own, and ``TrainPipelineSparseDist`` pipelines all of them because every EBC
    consumes the batch's KJT unchanged.

    Shapes: B is the batch size, F the number of features, K the number of sets and
    D_k the embedding dim of set k. Input: one KJT with the F features (one or more ids
    per feature, sum-pooled). Output: a list of K tensors, set k of shape (B, F, D_k),
    features in the order of ``feature_names``.

    Args:
        feature_names (Sequence[str]): the F sparse features, in output order.
        num_embeddings (Sequence[int]): vocabulary size of each feature.
        embedding_dims (Sequence[int]): D_k of each set; K = len(embedding_dims).
            FBGEMM requires every D_k to be a multiple of 4.
        device (Optional[torch.device]): where the tables live; ``meta`` defers
            allocation to ``DistributedModelParallel``.

    Example::

        mebc = MultiEmbeddingBagCollection(["f1", "f2"], [10, 20], [8, 8, 16])
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=["f1", "f2"], values=torch.tensor([1, 2, 3, 4]), lengths=torch.ones(4, dtype=torch.int32)
        )
        outs = mebc(kjt)  # [(2, 2, 8), (2, 2, 8), (2, 2, 16)]
    """

    def __init__(
        self,
        feature_names: Sequence[str],
        num_embeddings: Sequence[int],
        embedding_dims: Sequence[int],
        device: Optional[torch.device] = None,
    ) -> None:
        super().__init__()
        if len(feature_names) != len(num_embeddings):
            raise ValueError(
                f"{len(feature_names)} feature names but {len(num_embeddings)} vocabulary sizes"
            )
        bad = [d for d in embedding_dims if d <= 0 or d % 4]
        if not embedding_dims or bad:
            raise ValueError(
                f"embedding dims {list(embedding_dims)}: need at least one set and every dim a "
                "positive multiple of 4 (FBGEMM TBE requirement)"
            )
        self.feature_names: List[str] = list(feature_names)
        self.embedding_dims: List[int] = list(embedding_dims)
        self.ebcs = nn.ModuleList(
            EmbeddingBagCollection(
                tables=[
                    EmbeddingBagConfig(
                        name=set_table_name(k, feature),
                        embedding_dim=dim,
                        num_embeddings=n,
                        feature_names=[feature],
                        pooling=PoolingType.SUM,
                    )
                    for feature, n in zip(self.feature_names, num_embeddings)
                ],
                device=device,
            )
            for k, dim in enumerate(self.embedding_dims)
        )

    @property
    def num_sets(self) -> int:
        return len(self.ebcs)

    def forward(self, features: KeyedJaggedTensor) -> List[torch.Tensor]:
        outputs: List[torch.Tensor] = []
        for ebc in self.ebcs:
            # A sharded EBC may order its output keys by sharding type; index by name.
            pooled = ebc(features).to_dict()
            outputs.append(torch.stack([pooled[f] for f in self.feature_names], dim=1))
        return outputs
