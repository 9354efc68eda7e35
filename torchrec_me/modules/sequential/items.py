"""Item tables of the K sets, and the negative sampler that feeds them through one KJT.

Shape letters as in :mod:`torchrec_me.modules.sequential`; M negatives.

Why the negatives travel in the tables' input KJT. The sampled softmax needs the
embeddings of M random items, and with sharded tables they can only be read through the
``EmbeddingCollection`` (a row-wise shard holds part of a table). A second lookup with a
KJT built inside the forward would not be pipelined by ``TrainPipelineSparseDist``. So
each table ``set{k}__item`` serves two features, ``item`` (the batch's items) and
``item_negative`` (the sampled ids), and :class:`NegativeSampler` turns the batch's item
KJT into one KJT with both keys: one lookup per set serves inputs, positives and
negatives. The sampler has no parameters and reads only the batch, which makes it a
TorchRec *postproc* module: ``TrainPipelineSparseDist(..., pipeline_postproc=True)``
runs it in the pipeline's data-dist stage and pipelines every set's lookup (with the
default ``pipeline_postproc=False`` the lookups still run, unpipelined).
"""

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingConfig
from torchrec.modules.embedding_modules import EmbeddingCollection
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

from torchrec_me.data.sequence_batch import ITEM_FEATURE
from torchrec_me.modules.naming import set_table_name

NEGATIVE_FEATURE = "item_negative"
# Uniform init bound giving the reference's item-embedding std of 0.02.
ITEM_INIT_BOUND = 0.02 * 3**0.5

_MASK62 = (1 << 62) - 1
_GOLDEN = 0x9E3779B97F4A7C15 - (1 << 64)
_MIX1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_MIX2 = 0x94D049BB133111EB - (1 << 64)


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's ``>>`` is arithmetic)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def hash_ids(keys: Sequence[torch.Tensor]) -> torch.Tensor:
    """A 62-bit hash of broadcast int64 keys: splitmix64's finaliser chained over ``keys``.

    Counter-based randomness: the value depends only on the keys, not on a generator's
    state, so the same user and step draw the same negatives on any rank count.
    """
    h = torch.zeros((), dtype=torch.long, device=keys[0].device)
    for key in keys:
        h = (h ^ key) + _GOLDEN
        h = (h ^ _shift_right(h, 30)) * _MIX1
        h = (h ^ _shift_right(h, 27)) * _MIX2
        h = h ^ _shift_right(h, 31)
    return h & _MASK62


def sample_negatives(num_items: int, shape: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    """Uniform item ids in ``[0, num_items)`` of ``shape`` from ``generator`` (int64).

    For a data pipeline that draws negatives itself; :class:`NegativeSampler` is the
    rank-invariant in-model sampler.
    """
    return torch.randint(num_items, tuple(shape), generator=generator, device=generator.device)


def item_features(
    items: KeyedJaggedTensor, negatives: torch.Tensor, negative_lengths: torch.Tensor
) -> KeyedJaggedTensor:
    """The tables' input: ``items``' rows under ``item`` and the negatives under
    ``item_negative`` (row b holds ``negative_lengths[b]`` ids)."""
    lengths = items.lengths()
    return KeyedJaggedTensor(
        keys=[ITEM_FEATURE, NEGATIVE_FEATURE],
        values=torch.cat([items.values(), negatives.to(items.values().dtype)]),
        lengths=torch.cat([lengths, negative_lengths.to(lengths.dtype)]),
    )


def item_id_features(ids: torch.Tensor) -> KeyedJaggedTensor:
    """The tables' input to read the rows of ``ids`` (N,): N rows of one item, no negatives."""
    ones = torch.ones_like(ids, dtype=torch.int32)
    single = KeyedJaggedTensor(keys=[ITEM_FEATURE], values=ids, lengths=ones)
    return item_features(single, ids.new_zeros(0), torch.zeros_like(ones))


class ItemEmbeddingSets(nn.Module):
    """The K item-embedding sets, one unpooled ``EmbeddingCollection`` each.

    Set k's collection holds one table ``set{k}__item`` (num_items x D_k) read by the two
    features ``item`` and ``item_negative``. K collections, as in the CTR ``separate``
    layout, let the planner plan and shard each set and give each its own fused optimizer.
    Rows start uniform with std 0.02, the reference's item-embedding scale::

        KJT {item, item_negative} --+--> EC 0 (set0__item, D_0) --> {item: JT (N, D_0), item_negative: JT}
                                    +--> ...
                                    +--> EC K-1                 --> {item: JT (N, D_{K-1}), ...}

    Args:
        num_items (int): rows of every table; ids are in ``[0, num_items)``.
        embedding_dims (Sequence[int]): the K set dims D_k (multiples of 4, FBGEMM).
        device (Optional[torch.device]): where the tables live (``meta`` for DMP).
        features (Sequence[str]): the features reading the tables: ``item`` and
            ``item_negative`` (retrieval), or ``item`` alone (ranking: the batch's KJT
            goes straight in, so the pipeline pipelines it without a postproc module).

    Example::

        sets = ItemEmbeddingSets(10, [8, 12])
        outs = sets(item_id_features(torch.tensor([1, 2, 3])))
        outs[1]["item"].values().shape  # (3, 12)
    """

    def __init__(
        self, num_items: int, embedding_dims: Sequence[int], device: Optional[torch.device] = None,
        features: Sequence[str] = (ITEM_FEATURE, NEGATIVE_FEATURE),
    ) -> None:  # fmt: skip
        super().__init__()
        self.num_items = num_items
        self.features = list(features)
        self.embedding_dims = list(embedding_dims)
        self.ecs = nn.ModuleList(
            EmbeddingCollection(tables=[self._table(k, dim)], device=device) for k, dim in enumerate(embedding_dims)
        )

    def _table(self, set_index: int, dim: int) -> EmbeddingConfig:
        return EmbeddingConfig(
            name=set_table_name(set_index, ITEM_FEATURE),
            embedding_dim=dim,
            num_embeddings=self.num_items,
            feature_names=list(self.features),
            weight_init_min=-ITEM_INIT_BOUND,
            weight_init_max=ITEM_INIT_BOUND,
        )

    def set_weights(self) -> List[torch.Tensor]:
        """Set k's (num_items, D_k) table as the parameter itself (unsharded only)."""
        return [ec.embeddings[set_table_name(k, ITEM_FEATURE)].weight for k, ec in enumerate(self.ecs)]

    def forward(self, features: KeyedJaggedTensor) -> List[Dict[str, JaggedTensor]]:
        """
        Args:
            features (KeyedJaggedTensor): keys ``item`` and ``item_negative``.

        Returns:
            List[Dict[str, JaggedTensor]]: per set, each feature's jagged (N_f, D_k)
            embeddings, in the KJT's value order.
        """
        return [ec(features) for ec in self.ecs]


class NegativeSampler(nn.Module):
    """Uniform negatives over all items, added to the batch's item KJT (see the module doc).

    In training, row b of the batch gets M negatives shared by its positions
    (``per_position=False``, the default: B*M lookups per set), or M per predicted
    position, ``(L_b - 1) * M`` ids (the reference's sampling). Per position, the KJT
    carries each distinct id once (all in row 0: at most ``num_items`` lookups instead
    of P*M) and an index (P, M) says which of them is each position's m-th negative; the
    lookup's backward then gets each row's gradient summed over its draws, the sum
    FBGEMM's exact optimizers form anyway. In eval mode no negatives are drawn and
    ``item_negative`` is empty.

    Ids are ``hash(seed, step, user, [position,] m) mod num_items``, counter-based, so
    they do not depend on how the batch is split over ranks: sharded training sees the
    same negatives as one process. ``step`` is a persistent buffer (saved in checkpoints)
    counting the training batches sampled.

    Args:
        num_items (int): ids are drawn from ``[0, num_items)``.
        num_negatives (int): M.
        seed (int): salt of the hash.
        per_position (bool): M negatives per position instead of per row.

    Example::

        sampler = NegativeSampler(100, 4)
        items = KeyedJaggedTensor.from_lengths_sync(["item"], torch.tensor([3, 1, 4, 1, 5]), torch.tensor([2, 3]))
        features, index = sampler(items, torch.tensor([7, 8]))  # keys item (5 ids), item_negative (2 x 4 ids)
    """

    def __init__(self, num_items: int, num_negatives: int, seed: int = 0, per_position: bool = False) -> None:
        super().__init__()
        self.num_items = num_items
        self.num_negatives = num_negatives
        self.seed = seed
        self.per_position = per_position
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def _keys(self, items: KeyedJaggedTensor, users: torch.Tensor) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """Hash keys of every negative and the per-row negative counts (B,)."""
        m = torch.arange(self.num_negatives, device=users.device)
        lengths = items.lengths().long()
        base = [torch.tensor(self.seed, device=users.device), self.step]
        if not self.per_position:
            return base + [users.long().unsqueeze(1), m], torch.full_like(lengths, self.num_negatives)
        predicted = (lengths - 1).clamp(min=0)
        rows = torch.repeat_interleave(torch.arange(lengths.numel(), device=users.device), predicted)
        starts = torch.cumsum(predicted, 0) - predicted
        positions = torch.arange(rows.numel(), device=users.device) - starts[rows]
        return base + [users.long()[rows].unsqueeze(1), positions.unsqueeze(1), m], predicted * self.num_negatives

    def forward(self, items: KeyedJaggedTensor, users: torch.Tensor) -> Tuple[KeyedJaggedTensor, torch.Tensor]:
        """
        Args:
            items (KeyedJaggedTensor): the batch's ``item`` KJT, B rows.
            users (torch.Tensor): (B,) int64 user ids.

        Returns:
            Tuple[KeyedJaggedTensor, torch.Tensor]: the tables' input, keys ``item`` (the
            batch's rows) and ``item_negative`` (per row: row b's M ids; per position:
            the U distinct ids, all in row 0; none in eval), and the (P, M) int64 index
            of each predicted position's negatives into the ``item_negative`` ids (per
            position; an empty tensor otherwise).
        """
        empty = items.values().new_zeros(0)
        if not self.training:
            return item_features(items, empty, torch.zeros_like(items.lengths())), empty
        keys, counts = self._keys(items, users)
        negatives = (hash_ids(keys) % self.num_items).reshape(-1)
        with torch.no_grad():
            self.step += 1
        if not self.per_position:
            return item_features(items, negatives, counts), empty
        # The distinct ids in order, and each draw's place among them: torch.unique's
        # result in O(draws + num_items), without sorting the P * M draws.
        present = torch.zeros(self.num_items, dtype=torch.bool, device=negatives.device)
        present[negatives] = True
        distinct = present.nonzero().squeeze(1)
        place = torch.empty(self.num_items, dtype=torch.long, device=negatives.device)
        place[distinct] = torch.arange(distinct.numel(), device=negatives.device)
        index = place[negatives]
        lengths = torch.zeros_like(counts)
        lengths[:1] = distinct.numel()
        return item_features(items, distinct, lengths), index.reshape(-1, self.num_negatives)
