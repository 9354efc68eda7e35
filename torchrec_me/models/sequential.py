"""Sequential (generative) recommenders on K item-embedding sets: HSTU, SASRec, Llama-style.

One harness for every backbone: the same item tables, the same sampled softmax, the same
full-corpus scoring. Shape letters as in :mod:`torchrec_me.modules.sequential`.

Multi-embedding for sequences mirrors the CTR family (:class:`MultiEmbeddingModel`):
K item tables ``set{k}__item``, set k read by its own encoder stack, and the score of a
user state against an item is the mean over sets of the cosine similarities,
``s = (1/K) sum_k <u_k, e_k>`` with u_k and e_k L2-normalised, which is one matmul of
the K user vectors concatenated against the K item vectors concatenated, divided by K.

Embedding dims: FBGEMM needs multiples of 4, so the published d = 50 maps to 48, not 52.
Both are 2 away, but 48 splits into K = 2, 3 or 4 equal sets of 24, 16 or 12 (each a
multiple of 4, as an equal-parameter ME grid needs) and into 1, 2, 3, 4, 6 or 8 heads,
while 52 / 2 = 26 is not a multiple of 4; and 48 never gives our model more capacity
than the published one.
"""

from dataclasses import dataclass, fields
from typing import Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

from torchrec_me.config import ConfigError
from torchrec_me.data.sequence_batch import ITEM_FEATURE, SequenceBatch
from torchrec_me.modules.sequential.common import padding_mask, to_padded
from torchrec_me.modules.sequential.config import EncoderConfig
from torchrec_me.modules.sequential.encoders import SetEncoders
from torchrec_me.modules.sequential.items import (
    NEGATIVE_FEATURE,
    ItemEmbeddingSets,
    NegativeSampler,
    item_features,
    item_id_features,
)
from torchrec_me.modules.sequential.loss import SampledSoftmaxLoss


@dataclass(frozen=True)
class SequentialConfig(EncoderConfig):
    """What a sequential model is: backbone, K item sets, encoder and loss settings.

    The encoder settings (``num_blocks``, ``num_heads``, ``max_seq_len``, ``dropout``,
    ``rab``, ``attention``, ``attention_scale``, ``time_bias_source``,
    ``num_time_buckets``) are :class:`EncoderConfig`'s fields, inherited: one definition,
    one validation, and :meth:`encoder_config` hands them to the stacks. Every set dim
    must be divisible by ``num_heads``; the training window is one longer than
    ``max_seq_len``. The fields added here:

    Args:
        backbone (str): ``hstu``, ``sasrec`` or ``llama`` (``ENCODER_REGISTRY``).
        num_sets (int): K, item-embedding sets; 1 is single-embedding (SE).
        embedding_dim (int): D of every set, a multiple of 4 (48 stands for the
            published 50, see the module docstring).
        set_dims (Optional[List[int]]): heterogeneous set dims, one per set, overriding
            ``embedding_dim``.
        shared_encoder (bool): one encoder for all K sets (ablation; equal dims).
        num_negatives (int): M uniform negatives (per row of the batch).
        negatives_per_position (bool): M negatives per predicted position instead.
        temperature (float): softmax temperature.
        in_batch_negatives (bool): add M negatives drawn from the batch's positives.

    Example::

        config = SequentialConfig(backbone="hstu", num_sets=4, embedding_dim=12)  # ME-4x of 48
        config.dims()  # [12, 12, 12, 12]
    """

    backbone: str = "hstu"
    num_sets: int = 1
    embedding_dim: int = 48
    set_dims: Optional[List[int]] = None
    shared_encoder: bool = False
    num_negatives: int = 128
    negatives_per_position: bool = False
    temperature: float = 0.05
    in_batch_negatives: bool = False

    def __post_init__(self) -> None:
        for key in ("num_sets", "num_negatives"):
            if getattr(self, key) < 1:
                raise ConfigError(f"config key 'model.{key}': must be >= 1, got {getattr(self, key)}")
        if self.set_dims is not None and len(self.set_dims) != self.num_sets:
            raise ConfigError(
                f"config key 'model.set_dims': has {len(self.set_dims)} entries but model.num_sets={self.num_sets}"
            )
        key = "model.set_dims" if self.set_dims is not None else "model.embedding_dim"
        if any(d <= 0 or d % 4 for d in self.dims()):
            raise ConfigError(f"config key '{key}': {self.dims()} must be positive multiples of 4 (FBGEMM)")
        if self.shared_encoder and len(set(self.dims())) > 1:
            raise ConfigError(f"config key 'model.shared_encoder': needs equal set dims, got {self.dims()}")
        if not self.temperature > 0:
            raise ConfigError(f"config key 'model.temperature': must be > 0, got {self.temperature}")
        super().__post_init__()
        for dim in self.dims():
            self.check_dim(dim)

    def dims(self) -> List[int]:
        """The K set dims D_k."""
        return list(self.set_dims) if self.set_dims is not None else [self.embedding_dim] * self.num_sets

    def encoder_config(self) -> EncoderConfig:
        """The encoders' share of this config, as a plain :class:`EncoderConfig`."""
        return EncoderConfig(**{f.name: getattr(self, f.name) for f in fields(EncoderConfig)})


@dataclass
class TrainViews:
    """A training batch as right-padded tensors over the P predicted positions.

    Position i of row b reads item i and predicts item i + 1 (valid for i < L_b - 1).

    Args:
        inputs (List[torch.Tensor]): K x (B, L', D_k) input item embeddings (L' = L - 1).
        positives (List[torch.Tensor]): K x (B, L', D_k) next-item embeddings.
        negatives (List[torch.Tensor]): K x (B, M, D_k) per row; per position, K x (U,
            D_k), the U distinct negative rows once each.
        mask (torch.Tensor): (B, L') bool, True at the P predicted positions.
        timestamps (torch.Tensor): (B, L') time of each input item.
        next_timestamps (torch.Tensor): (B, L') time of each next item.
        positive_ids (torch.Tensor): (B, L') next-item ids.
        negative_ids (torch.Tensor): (B, M) per row, or (P, M) per position (the valid
            positions in row-major order).
        negative_index (Optional[torch.Tensor]): per position, (P, M): which of the U
            distinct rows each negative is (None per row).
    """

    inputs: List[torch.Tensor]
    positives: List[torch.Tensor]
    negatives: List[torch.Tensor]
    mask: torch.Tensor
    timestamps: torch.Tensor
    next_timestamps: torch.Tensor
    positive_ids: torch.Tensor
    negative_ids: torch.Tensor
    negative_index: Optional[torch.Tensor] = None


@torch.fx.wrap
def train_views(
    per_set: List[Dict[str, JaggedTensor]],
    features: KeyedJaggedTensor,
    negative_index: torch.Tensor,
    timestamps: torch.Tensor,
    num_negatives: int,
    per_position: bool,
) -> TrainViews:
    """Pad the lookups of a training batch (``features`` and ``negative_index`` from
    :class:`NegativeSampler`: ``num_negatives`` per row or, with ``per_position``, per
    predicted position, given as distinct ids and the (P, M) index into them).

    Per position, the negatives stay the U distinct rows, each looked up once, and the
    loss normalises and scores those U rows rather than P * M copies (the reference
    looks up and normalises all P * M).

    A leaf for ``torch.fx``: ``TrainPipelineSparseDist`` traces the model around it.
    """
    items, negatives = features[ITEM_FEATURE], features[NEGATIVE_FEATURE]
    lengths = items.lengths().long()
    full = padding_mask(lengths, max(int(lengths.max()) if lengths.numel() else 0, 2))
    mask = padding_mask(lengths - 1, full.shape[1] - 1)

    if per_position:  # the U distinct rows as they are, and the ids each position drew
        negative_ids = negatives.values()[negative_index]
        neg_views = [out[NEGATIVE_FEATURE].values() for out in per_set]
    else:
        negative_ids = negatives.values().reshape(lengths.numel(), num_negatives)
        neg_views = [out[NEGATIVE_FEATURE].values().reshape(lengths.numel(), num_negatives, -1) for out in per_set]

    padded = [to_padded(out[ITEM_FEATURE].values(), full) for out in per_set]
    ids, times = to_padded(items.values(), full), to_padded(timestamps, full)
    return TrainViews(
        inputs=[p[:, :-1] for p in padded],
        positives=[p[:, 1:] for p in padded],
        negatives=neg_views,
        mask=mask,
        timestamps=times[:, :-1],
        next_timestamps=times[:, 1:],
        positive_ids=ids[:, 1:],
        negative_ids=negative_ids,
        negative_index=negative_index if per_position else None,
    )


@torch.fx.wrap
def eval_views(
    per_set: List[Dict[str, JaggedTensor]],
    lengths: torch.Tensor,
    timestamps: torch.Tensor,
    target_timestamps: torch.Tensor,
) -> Tuple[List[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
    """Histories padded: K x (B, L, D_k) inputs, mask (B, L), timestamps and next
    timestamps (B, L) (the last valid position's next time is the target's)."""
    lengths = lengths.long()
    mask = padding_mask(lengths, max(int(lengths.max()) if lengths.numel() else 0, 1))
    times = to_padded(timestamps, mask)
    nxt = F.pad(times[:, 1:], (0, 1))
    nxt = nxt.scatter(1, (lengths - 1).clamp(min=0).unsqueeze(1), target_timestamps.to(times.dtype).unsqueeze(1))
    return [to_padded(out[ITEM_FEATURE].values(), mask) for out in per_set], mask, times, nxt


class SequentialModel(nn.Module):
    """Sampler -> K item lookups -> K encoder stacks -> user vectors, scored per set.

    Training (:meth:`forward_train`): the sampler adds negatives to the batch's item KJT;
    each set's ``EmbeddingCollection`` reads items and negatives in one lookup; stack k
    maps set k's input embeddings to unit-norm user vectors; the sampled softmax scores
    every position's next item against the negatives with the mean over sets::

        SequenceBatch.items (KJT item) --> NegativeSampler --> KJT {item, item_negative}
                                                                  |
                        item_sets: K EmbeddingCollections (set{k}__item, pipelined)
                    /                           |                             \\
          set 0 (B, L, D_0)              set 1 (B, L, D_1)      ...    set K-1 (B, L, D_{K-1})
                 |                              |                             |
          encoders[0]                    encoders[1]            ...    encoders[K-1]
                 |                              |                             |
          u_0 (B, L, D_0)                u_1 (B, L, D_1)                u_{K-1}
                    \\                           |                             /
               sampled softmax of s = (1/K) sum_k <u_k, e_k> / temperature

    Evaluation (:meth:`forward`): the user vector at each row's last position, the K
    unit-norm vectors concatenated (B, sum_k D_k). :meth:`item_vectors` gives items the
    same layout and :meth:`score_all_items` scores every item with one matmul.

    Args:
        num_items (int): item vocabulary; ids in ``[0, num_items)``.
        config (SequentialConfig): backbone, sets and loss settings.
        device (Optional[torch.device]): device of the item tables (``meta`` for DMP).
        sampler (Optional[NegativeSampler]): the negative sampler; None builds one with
            ``config.num_negatives`` per row (or per position) and seed 0.

    Example::

        model = SequentialModel(50, SequentialConfig(num_sets=2, embedding_dim=8, max_seq_len=4, num_negatives=5))
        items = KeyedJaggedTensor.from_lengths_sync(["item"], torch.tensor([3, 1, 4, 1, 5]), torch.tensor([2, 3]))
        batch = SequenceBatch(items, torch.arange(5), torch.ones(5), torch.tensor([7, 9]),
                              torch.tensor([9, 9]), torch.arange(2))
        loss, logits, labels = model.forward_train(batch)  # logits (3, 6)
        model.eval()
        users = model(batch)  # (2, 16)
        scores = model.score_all_items(users, model.item_vectors(torch.arange(50)))  # (2, 50)
    """

    def __init__(
        self,
        num_items: int,
        config: SequentialConfig,
        device: Optional[torch.device] = None,
        sampler: Optional[NegativeSampler] = None,
    ) -> None:
        super().__init__()
        self.num_items = num_items
        self.dims = config.dims()
        if sampler is None:
            sampler = NegativeSampler(num_items, config.num_negatives, per_position=config.negatives_per_position)
        self.per_position = sampler.per_position
        self.num_negatives = sampler.num_negatives
        self.sampler = sampler
        self.item_sets = ItemEmbeddingSets(num_items, self.dims, device)
        self.encoders = SetEncoders(config.backbone, self.dims, config.encoder_config(), config.shared_encoder)
        self.loss = SampledSoftmaxLoss(config.temperature, config.in_batch_negatives)

    def forward_train(self, batch: SequenceBatch) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The sampled-softmax loss, the logits (P, 1 + M') and labels (P,) of ``batch``
        (training rows: items ``0..L_b-2`` predict ``1..L_b-1``)."""
        sampled = self.sampler(batch.items, batch.users)
        features, negative_index = sampled[0], sampled[1]  # indexing, not unpacking: traced by torch.fx
        per_set = self.item_sets(features)
        views = train_views(per_set, features, negative_index, batch.timestamps, self.num_negatives, self.per_position)
        users = self.encoders(views.inputs, views.mask, views.timestamps, views.next_timestamps)
        return self.loss(users, views.positives, views.negatives, views.mask, views.positive_ids, views.negative_ids,
                         views.negative_index)  # fmt: skip

    def forward(self, batch: SequenceBatch) -> torch.Tensor:
        """
        Args:
            batch (SequenceBatch): evaluation rows: each user's history (``targets`` and
                ``target_timestamps`` give the item to rank and its time).

        Returns:
            torch.Tensor: (B, sum_k D_k) user vectors at each row's last position, the K
            unit-norm vectors concatenated.
        """
        per_set = self.item_sets(item_features(batch.items, batch.items.values()[:0], torch.zeros_like(batch.lengths)))
        inputs, mask, times, nxt = eval_views(per_set, batch.items.lengths(), batch.timestamps, batch.target_timestamps)
        hidden = self.encoders(inputs, mask, times, nxt)
        last = (batch.items.lengths().long() - 1).clamp(min=0)
        rows = torch.arange(last.numel(), device=last.device)
        return torch.cat([h[rows, last] for h in hidden], dim=-1)

    def item_vectors(self, item_ids: torch.Tensor) -> torch.Tensor:
        """(N, sum_k D_k): the K unit-norm embeddings of ``item_ids`` (N,), concatenated.

        Reads the (possibly sharded) tables through the collections, so on a sharded
        model it is collective: every rank calls it with the same number of chunks.
        """
        per_set = self.item_sets(item_id_features(item_ids))
        return torch.cat([F.normalize(out[ITEM_FEATURE].values(), dim=-1) for out in per_set], dim=-1)

    def all_item_vectors(self, chunk_size: int = 65536) -> torch.Tensor:
        """(num_items, sum_k D_k): :meth:`item_vectors` of every item, read in chunks
        (collective on a sharded model; every rank gets the whole matrix)."""
        device = next(iter(self.encoders.parameters())).device
        ids = torch.arange(self.num_items, device=device)
        return torch.cat([self.item_vectors(chunk) for chunk in ids.split(chunk_size)])

    def score_all_items(self, user_vectors: torch.Tensor, item_vectors: torch.Tensor) -> torch.Tensor:
        """(B, I) scores ``s = (1/K) sum_k <u_k, e_k>`` of every user against every item:
        one matmul of ``user_vectors`` (B, sum_k D_k) from :meth:`forward` and
        ``item_vectors`` (I, sum_k D_k) from :meth:`all_item_vectors`."""
        return user_vectors @ item_vectors.T / len(self.dims)

    def top_k(
        self, user_vectors: torch.Tensor, item_vectors: torch.Tensor, k: int
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """The k best items per user: scores (B, k) and item ids (B, k), best first."""
        return torch.topk(self.score_all_items(user_vectors, item_vectors), k, dim=1)


@torch.fx.wrap
def global_position_mean(local_mean: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``local_mean * P_r * W / P`` under a process group of W > 1 ranks, with P_r =
    ``len(labels)`` this rank's predicted positions and P their sum over ranks (see
    :class:`SequentialTrain`); ``local_mean`` unchanged otherwise. A leaf for the
    pipeline's FX tracing."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return local_mean
    positions = labels.shape[0]
    total = torch.tensor([float(positions)], device=local_mean.device)
    dist.all_reduce(total)
    # No host sync: with no position anywhere every local mean is already 0.
    return local_mean * (positions * dist.get_world_size() / total.clamp(min=1.0))[0]


class SequentialTrain(nn.Module):
    """Training wrapper with TorchRec's contract (as ``DLRMTrain``), for
    ``TrainPipelineSparseDist(..., pipeline_postproc=True)``.

    In training mode it returns ``(loss, (loss, logits, labels))``, the inner tuple
    detached: the sampled-softmax loss, the logits (P, 1 + M') of the predicted positions
    (positive first) and their labels (P,) (zeros). In eval mode the loss is zero and the
    inner tuple carries the user vectors (B, sum_k D_k) and the targets (B,), for
    full-corpus scoring with :meth:`SequentialModel.score_all_items`.

    Sharded over W ranks, each rank's loss is rescaled so that the gradients are those
    of the mean over every predicted position of the global batch: rank r returns
    ``sum_r * W / P``, with ``sum_r`` its summed cross-entropy and P the global count of
    predicted positions (one scalar all-reduce per step). DDP (dense) and TorchRec's
    sharded tables (sparse) both average gradients over ranks, so W ranks take the
    steps of one process on the whole global batch even when the ranks' rows have
    different lengths; a plain per-rank mean would weight a position of a short-row
    rank more. The mean of the ranks' returned losses is the global mean.

    Args:
        model (SequentialModel): the model.

    Example::

        model = SequentialModel(50, SequentialConfig(embedding_dim=8, max_seq_len=4, num_negatives=5))
        items = KeyedJaggedTensor.from_lengths_sync(["item"], torch.tensor([3, 1, 4, 1, 5]), torch.tensor([2, 3]))
        batch = SequenceBatch(items, torch.arange(5), torch.ones(5), torch.full((2,), -1),
                              torch.zeros(2, dtype=torch.long), torch.arange(2))
        loss, (loss_detached, logits, labels) = SequentialTrain(model)(batch)
        loss.backward()
    """

    def __init__(self, model: SequentialModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: SequenceBatch) -> Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """
        Args:
            batch (SequenceBatch): training windows (train mode) or histories (eval mode).

        Returns:
            Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]: train:
            ``loss, (loss, logits (P, 1 + M'), labels (P,))``; eval: ``0, (0, user
            vectors (B, sum_k D_k), targets (B,))``.
        """
        if not self.training:
            users = self.model(batch)
            zero = users.new_zeros(())
            return zero, (zero, users.detach(), batch.targets)
        loss, logits, labels = self.model.forward_train(batch)
        loss = global_position_mean(loss, labels)
        return loss, (loss.detach(), logits.detach(), labels)
