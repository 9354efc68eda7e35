"""Multi-embedding sparse arch: K independent EmbeddingBagCollections on one KJT.

This is the default ``separate`` layout of the K sets; ``torchrec_me.modules.layouts``
has the ``grouped`` and ``packed`` alternatives and the registry that picks one.
"""

from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor


def set_table_name(set_index: int, feature: str) -> str:
    """Table name of ``feature`` in set ``set_index``: ``set{k}__{feature}``.

    Planner ``ParameterConstraints`` are keyed by table name, so the prefix lets a
    constraint target one set without touching the others.
    """
    return f"set{set_index}__{feature}"


def check_set_dims(num_features: int, num_embeddings: Sequence[int], embedding_dims: Sequence[int]) -> None:
    """Raise ValueError unless there is one vocabulary per feature and every dim is valid."""
    if num_features != len(num_embeddings):
        raise ValueError(f"{num_features} feature names but {len(num_embeddings)} vocabulary sizes")
    bad = [d for d in embedding_dims if d <= 0 or d % 4]
    if not embedding_dims or bad:
        raise ValueError(
            f"embedding dims {list(embedding_dims)}: need at least one set and every dim a "
            "positive multiple of 4 (FBGEMM TBE requirement)"
        )


def table_configs(
    set_index: int, feature_names: Sequence[str], num_embeddings: Sequence[int], dim: int
) -> List[EmbeddingBagConfig]:
    """The F sum-pooled tables ``set{k}__{feature}`` of one set."""
    return [
        EmbeddingBagConfig(
            name=set_table_name(set_index, feature),
            embedding_dim=dim,
            num_embeddings=n,
            feature_names=[feature],
            pooling=PoolingType.SUM,
        )
        for feature, n in zip(feature_names, num_embeddings)
    ]


_SplitPlan = Tuple[Optional[torch.Tensor], List[int]]
# Per (device, keys, key widths, groups): column gather (None when already in order) and
# per-group widths. Sharded EBCs return the same key order every step, so it is built once.
_SPLIT_CACHE: Dict[Tuple[str, Tuple[str, ...], Tuple[int, ...], Tuple[Tuple[str, ...], ...]], _SplitPlan] = {}


def _split_plan(kt: KeyedTensor, groups: List[List[str]]) -> _SplitPlan:
    cache_key = (str(kt.values().device), tuple(kt.keys()), tuple(kt.length_per_key()), tuple(map(tuple, groups)))
    plan = _SPLIT_CACHE.get(cache_key)
    if plan is None:
        offsets = dict(zip(kt.keys(), kt.offset_per_key()))
        widths = dict(zip(kt.keys(), kt.length_per_key()))
        columns = [c for g in groups for key in g for c in range(offsets[key], offsets[key] + widths[key])]
        in_order = columns == list(range(kt.values().shape[1]))
        index = None if in_order else torch.tensor(columns, device=kt.values().device)
        plan = (index, [sum(widths[key] for key in g) for g in groups])
        _SPLIT_CACHE[cache_key] = plan
    return plan


@torch.fx.wrap
def split_keyed_tensor(kt: KeyedTensor, groups: List[List[str]], dims: List[int]) -> List[torch.Tensor]:
    """Group k of ``kt`` (its keys ``groups[k]``, each of width ``dims[k]``) as (B, F_k, D_k).

    One column gather at most (none when the keys already come in group order, the
    usual case), then zero-copy views, instead of one split and one stack per set.
    A leaf for ``torch.fx`` so ``TrainPipelineSparseDist`` can trace the model.
    """
    index, widths = _split_plan(kt, groups)
    values = kt.values() if index is None else kt.values().index_select(1, index)
    parts = values.split(widths, dim=1)
    return [p.unflatten(1, (len(g), d)) for p, g, d in zip(parts, groups, dims)]


class MultiEmbeddingSets(nn.Module):
    """What every layout of the K embedding sets provides (see ``modules.layouts``).

    Attributes:
        feature_names (List[str]): the F features, in output order.
        embedding_dims (List[int]): D_k of each of the K sets.

    ``forward(kjt)`` returns K tensors, set k of shape (B, F, D_k).
    """

    layout: str
    feature_names: List[str]
    embedding_dims: List[int]

    @property
    def num_sets(self) -> int:
        return len(self.embedding_dims)

    def set_weights(self) -> List[Dict[str, torch.Tensor]]:
        """Per set, feature -> its (N_f, D_k) table as a view of the parameter (unsharded only)."""
        raise NotImplementedError

    @torch.no_grad()
    def load_set_weights(self, weights: Sequence[Mapping[str, torch.Tensor]]) -> None:
        """Copy per-set tables (e.g. another layout's ``set_weights()``) into this layout."""
        for own, new in zip(self.set_weights(), weights, strict=True):
            for feature, table in own.items():
                table.copy_(new[feature])


class MultiEmbeddingBagCollection(MultiEmbeddingSets):
    """K embedding sets for the same features, one ``EmbeddingBagCollection`` each.

    Multi-embedding (arXiv 2310.04400) gives every set its own tables so that each set
    can be read by its own interaction module. Keeping one EBC per set means TorchRec's
    planner sees K ordinary EBCs: each is planned, sharded and given a fused optimizer
    on its own, and ``TrainPipelineSparseDist`` pipelines all of them because every EBC
    consumes the batch's KJT unchanged. This is the ``separate`` layout (the default);
    see ``torchrec_me.modules.layouts`` for one-EBC alternatives.

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

    layout = "separate"

    def __init__(
        self,
        feature_names: Sequence[str],
        num_embeddings: Sequence[int],
        embedding_dims: Sequence[int],
        device: Optional[torch.device] = None,
    ) -> None:
        super().__init__()
        check_set_dims(len(feature_names), num_embeddings, embedding_dims)
        self.feature_names = list(feature_names)
        self.embedding_dims = list(embedding_dims)
        self.ebcs = nn.ModuleList(
            EmbeddingBagCollection(tables=table_configs(k, self.feature_names, num_embeddings, dim), device=device)
            for k, dim in enumerate(self.embedding_dims)
        )

    def set_weights(self) -> List[Dict[str, torch.Tensor]]:
        return [
            {f: ebc.embedding_bags[set_table_name(k, f)].weight for f in self.feature_names}
            for k, ebc in enumerate(self.ebcs)
        ]

    def forward(self, features: KeyedJaggedTensor) -> List[torch.Tensor]:
        # A sharded EBC may order its output keys by sharding type; split by name.
        return [
            split_keyed_tensor(ebc(features), [self.feature_names], [dim])[0]
            for ebc, dim in zip(self.ebcs, self.embedding_dims)
        ]
