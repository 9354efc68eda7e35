"""Multi-embedding sparse arch: K independent EmbeddingBagCollections on one KJT.

This is the default ``separate`` layout of the K sets; ``torchrec_me.modules.layouts``
has the ``grouped`` and ``packed`` alternatives and the registry that picks one. Table
names come from :mod:`torchrec_me.modules.naming`. Shape letters as in
:mod:`torchrec_me.modules`.
"""

from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from torchrec_me.modules.naming import set_table_name


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
    """K embedding sets for the same F features, in some layout over TorchRec modules.

    The base of every layout in ``torchrec_me.modules.layouts``: it checks the
    arguments, keeps ``feature_names`` and ``embedding_dims``, and has the subclass
    build its tables in ``_build``. Every layout computes the same model.

    Input: one ``KeyedJaggedTensor`` with the F features (one or more ids per feature and
    sample, sum-pooled). Output: a list of K tensors, set k of shape (B, F, D_k),
    features in the order of ``feature_names``.

    Args:
        feature_names (Sequence[str]): F names, the KJT keys read and the output order.
        num_embeddings (Sequence[int]): rows of each feature's table, in every set.
        embedding_dims (Sequence[int]): the K set dims D_k, multiples of 4 (FBGEMM).
        device (Optional[torch.device]): device of the tables (``meta``: DMP allocates).

    Example::

        from torchrec_me.modules.layouts import build_sets

        sets: MultiEmbeddingSets = build_sets("grouped", ["f1", "f2"], [10, 20], [8, 16])
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=["f1", "f2"], values=torch.tensor([1, 2, 3, 4]), lengths=torch.ones(4, dtype=torch.int32)
        )
        outs = sets(kjt)  # [(2, 2, 8), (2, 2, 16)]
    """

    layout: str

    def __init__(
        self,
        feature_names: Sequence[str],
        num_embeddings: Sequence[int],
        embedding_dims: Sequence[int],
        device: Optional[torch.device] = None,
    ) -> None:
        super().__init__()
        check_set_dims(len(feature_names), num_embeddings, embedding_dims)
        self.feature_names: List[str] = list(feature_names)
        self.embedding_dims: List[int] = list(embedding_dims)
        self._build(list(num_embeddings), device)

    @property
    def num_sets(self) -> int:
        return len(self.embedding_dims)

    def _build(self, num_embeddings: List[int], device: Optional[torch.device]) -> None:
        """Create this layout's TorchRec modules for ``feature_names`` x ``embedding_dims``."""
        raise NotImplementedError

    def forward(self, features: KeyedJaggedTensor) -> List[torch.Tensor]:
        """
        Args:
            features (KeyedJaggedTensor): the batch's KJT with the F features.

        Returns:
            List[torch.Tensor]: K tensors, set k of shape (B, F, D_k).
        """
        raise NotImplementedError

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
    see ``torchrec_me.modules.layouts`` for one-EBC alternatives. Set k's EBC holds the
    tables ``set{k}__{feature}``.

    Input: one KJT with the F features (one or more ids per feature and sample,
    sum-pooled). Output: a list of K tensors, set k of shape (B, F, D_k), features in
    the order of ``feature_names``::

        KJT (F features) --+--> EBC 0 (set0__f, D_0) --> (B, F, D_0)
                           +--> EBC 1 (set1__f, D_1) --> (B, F, D_1)
                           +--> ...
                           +--> EBC K-1              --> (B, F, D_{K-1})

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

    def _build(self, num_embeddings: List[int], device: Optional[torch.device]) -> None:
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
        """
        Args:
            features (KeyedJaggedTensor): the batch's KJT with the F features.

        Returns:
            List[torch.Tensor]: K tensors, set k of shape (B, F, D_k).
        """
        # A sharded EBC may order its output keys by sharding type; split by name.
        return [
            split_keyed_tensor(ebc(features), [self.feature_names], [dim])[0]
            for ebc, dim in zip(self.ebcs, self.embedding_dims)
        ]
