"""Layouts of the K embedding sets over TorchRec modules, and the registry that picks one.

Every layout computes the same model: set k's tables, looked up with the same shared
KJT, give set k's (B, F, D_k) embeddings. They differ in how many TorchRec modules,
tables and FBGEMM kernels carry the K sets:

* ``separate`` (default, :class:`MultiEmbeddingBagCollection`): K EBCs of F tables
  each. Each EBC is planned, sharded and pipelined on its own, so it has its own input
  and output distribution and its own TBE launch.
* ``grouped`` (:class:`GroupedMultiEmbeddingBagCollection`): one EBC of all K*F tables
  ``set{k}__{feature}``, each feature shared by K tables. One input/output distribution;
  the planner's sharded EBC groups the tables of one sharding type into one TBE.
* ``packed`` (:class:`PackedMultiEmbeddingBagCollection`): one EBC of F tables
  ``packed__{feature}`` of dim sum_k D_k; set k reads its columns. One lookup reads one
  wide row per id instead of K narrow ones. Set dims may differ (the columns of set k
  start at D_0 + ... + D_{k-1}).

Packed equals K sets only under an element-wise sparse optimizer (EXACT_ADAGRAD, SGD,
Adam: ``SPARSE_OPTIMIZERS[name].elementwise`` in ``torchrec_me.distributed.optimizers``):
a row-wise optimizer such as the default ``rowwise_adagrad`` keeps one state per row,
which packed would share across the K sets and so couple their updates. The job builder
refuses that combination (``model.layout``). The collapse analysis reads per-set tables
``set{k}__{feature}``: ``separate`` and ``grouped`` have them; ``packed`` tables are
refused there. Table names come from :mod:`torchrec_me.modules.naming`.
"""

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Type

import torch
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection, get_embedding_names_by_table
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from torchrec_me.modules.multi_embedding import (
    MultiEmbeddingBagCollection,
    MultiEmbeddingSets,
    split_keyed_tensor,
    table_configs,
)
from torchrec_me.modules.naming import packed_table_name, set_table_name

# A leaf for torch.fx in this module too: TrainPipelineSparseDist traces the model.
torch.fx.wrap("split_keyed_tensor")


class GroupedMultiEmbeddingBagCollection(MultiEmbeddingSets):
    """The K sets as one ``EmbeddingBagCollection`` holding all K*F tables.

    Table ``set{k}__{feature}`` reads ``feature`` of the shared KJT; TorchRec names a
    feature read by several tables ``{feature}@{table}`` in the output, which is split
    back into the K sets. Same arguments, input and output as
    :class:`MultiEmbeddingBagCollection`: one KJT with the F features in, K tensors
    out, set k of shape (B, F, D_k).

    Args:
        feature_names (Sequence[str]): the F sparse features, in output order.
        num_embeddings (Sequence[int]): vocabulary size of each feature.
        embedding_dims (Sequence[int]): D_k of each set (multiples of 4).
        device (Optional[torch.device]): where the tables live (``meta`` for DMP).

    Example::

        grouped = GroupedMultiEmbeddingBagCollection(["f1", "f2"], [10, 20], [8, 8])
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=["f1", "f2"], values=torch.tensor([1, 2, 3, 4]), lengths=torch.ones(4, dtype=torch.int32)
        )
        outs = grouped(kjt)  # [(2, 2, 8), (2, 2, 8)]; tables set0__f1, set0__f2, set1__f1, set1__f2
    """

    layout = "grouped"

    def _build(self, num_embeddings: List[int], device: Optional[torch.device]) -> None:
        tables = [
            table
            for k, dim in enumerate(self.embedding_dims)
            for table in table_configs(k, self.feature_names, num_embeddings, dim)
        ]
        self.ebc = EmbeddingBagCollection(tables=tables, device=device)
        names = get_embedding_names_by_table(tables)
        f = len(self.feature_names)
        # Output keys of set k, in feature order (tables are set-major).
        self._set_keys: List[List[str]] = [
            [n for ns in names[k * f : (k + 1) * f] for n in ns] for k in range(self.num_sets)
        ]

    def set_weights(self) -> List[Dict[str, torch.Tensor]]:
        return [
            {f: self.ebc.embedding_bags[set_table_name(k, f)].weight for f in self.feature_names}
            for k in range(self.num_sets)
        ]

    def forward(self, features: KeyedJaggedTensor) -> List[torch.Tensor]:
        """
        Args:
            features (KeyedJaggedTensor): the batch's KJT with the F features.

        Returns:
            List[torch.Tensor]: K tensors, set k of shape (B, F, D_k).
        """
        sets = split_keyed_tensor(self.ebc(features), self._set_keys, self.embedding_dims)
        return [sets[k] for k in range(self.num_sets)]  # indexed: a list of K fx proxies when traced


class PackedMultiEmbeddingBagCollection(MultiEmbeddingSets):
    """The K sets packed side by side: one table per feature of dim sum_k D_k.

    Set k owns columns ``[D_0 + ... + D_{k-1}, ... + D_k)`` of every table
    ``packed__{feature}``. Sum pooling is per column, so the column slice of a pooled
    row is the pooled row of set k's table. Equivalent to K separate sets only with an
    element-wise sparse optimizer (see the module docstring). Input one KJT with the
    F features; output K tensors, set k of shape (B, F, D_k) (column views).

    Args:
        feature_names (Sequence[str]): the F sparse features, in output order.
        num_embeddings (Sequence[int]): vocabulary size of each feature.
        embedding_dims (Sequence[int]): D_k of each set (multiples of 4), may differ.
        device (Optional[torch.device]): where the tables live (``meta`` for DMP).

    Example::

        packed = PackedMultiEmbeddingBagCollection(["f1", "f2"], [10, 20], [8, 16])
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=["f1", "f2"], values=torch.tensor([1, 2, 3, 4]), lengths=torch.ones(4, dtype=torch.int32)
        )
        outs = packed(kjt)  # [(2, 2, 8), (2, 2, 16)]; tables packed__f1, packed__f2 of dim 24
    """

    layout = "packed"

    def _build(self, num_embeddings: List[int], device: Optional[torch.device]) -> None:
        tables = [
            EmbeddingBagConfig(
                name=packed_table_name(f),
                embedding_dim=sum(self.embedding_dims),
                num_embeddings=n,
                feature_names=[f],
                pooling=PoolingType.SUM,
            )
            for f, n in zip(self.feature_names, num_embeddings)
        ]
        self.ebc = EmbeddingBagCollection(tables=tables, device=device)

    def _columns(self) -> List[Tuple[int, int]]:
        starts = [sum(self.embedding_dims[:k]) for k in range(self.num_sets)]
        return [(s, s + d) for s, d in zip(starts, self.embedding_dims)]

    def set_weights(self) -> List[Dict[str, torch.Tensor]]:
        return [
            {f: self.ebc.embedding_bags[packed_table_name(f)].weight[:, a:b] for f in self.feature_names}
            for a, b in self._columns()
        ]

    def forward(self, features: KeyedJaggedTensor) -> List[torch.Tensor]:
        """
        Args:
            features (KeyedJaggedTensor): the batch's KJT with the F features.

        Returns:
            List[torch.Tensor]: K column views, set k of shape (B, F, D_k).
        """
        sets = _unpack(self.ebc(features), self.feature_names, self.embedding_dims)
        return [sets[k] for k in range(self.num_sets)]  # indexed: a list of K fx proxies when traced


@torch.fx.wrap
def _unpack(kt: KeyedTensor, feature_names: List[str], dims: List[int]) -> List[torch.Tensor]:
    """(B, F, sum D_k) packed embeddings -> K column views (B, F, D_k)."""
    packed = split_keyed_tensor(kt, [feature_names], [sum(dims)])[0]
    return list(packed.split(dims, dim=2))


@dataclass(frozen=True)
class Layout:
    """One layout of the K sets.

    Args:
        module (Type[MultiEmbeddingSets]): built as ``module(feature_names,
            num_embeddings, embedding_dims, device)``.
        elementwise_optimizer_only (bool): the layout shares rows across sets, so only an
            element-wise sparse optimizer keeps the K sets' updates independent.
        per_set_tables (bool): tables are named ``set{k}__{feature}``, which the collapse
            analysis and per-set planner constraints rely on.
    """

    module: Type[MultiEmbeddingSets]
    elementwise_optimizer_only: bool = False
    per_set_tables: bool = True


LAYOUT_REGISTRY: Dict[str, Layout] = {
    "separate": Layout(MultiEmbeddingBagCollection),
    "grouped": Layout(GroupedMultiEmbeddingBagCollection),
    "packed": Layout(PackedMultiEmbeddingBagCollection, elementwise_optimizer_only=True, per_set_tables=False),
}


def build_sets(
    layout: str,
    feature_names: Sequence[str],
    num_embeddings: Sequence[int],
    embedding_dims: Sequence[int],
    device: Optional[torch.device] = None,
) -> MultiEmbeddingSets:
    """The K sets in the registered ``layout``."""
    return LAYOUT_REGISTRY[layout].module(feature_names, num_embeddings, embedding_dims, device)
