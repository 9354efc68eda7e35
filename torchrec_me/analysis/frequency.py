"""Id frequencies from training batches: which rows were trained, and how often."""

from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_me.analysis.sharded import find_embedding_tables
from torchrec_me.modules.naming import parse_table_name


class IdFrequencyTracker:
    """Counts how often each id of each feature was looked up in training batches.

    Why: a table's rows that training never touched keep their random initialisation
    and inflate its information abundance; the counts give the mask of trained rows and
    the weights of the frequency-weighted Gram. All K sets read the same KJT, so table
    ``set{k}__{feature}`` of every k uses the feature's counts.

    Counts live in one flat int64 buffer (sum of vocabularies); ``update`` adds a batch
    with one ``index_add_`` over the batch's ids, i.e. O(ids in the batch), not
    O(vocabulary) as a per-feature ``bincount(minlength=N)`` would be.

    Args:
        num_embeddings (Mapping[str, int]): vocabulary size of each tracked feature.
        device (Optional[torch.device]): where counts live (the KJTs' device).
        validate (bool): check every id is in ``[0, N)`` (one host sync per update).

    Example::

        tracker = IdFrequencyTracker.for_model(model)
        for batch in batches:
            tracker.update(batch.sparse_features)
        report = collapse_report(model, tracker.synced())
    """

    def __init__(
        self,
        num_embeddings: Mapping[str, int],
        device: Optional[torch.device] = None,
        validate: bool = True,
    ) -> None:
        self._features: List[str] = list(num_embeddings)
        self._sizes: Dict[str, int] = {f: int(n) for f, n in num_embeddings.items()}
        self._offsets: Dict[str, int] = {}
        total = 0
        for f in self._features:
            self._offsets[f] = total
            total += self._sizes[f]
        self._device = device if device is not None else torch.device("cpu")
        self._flat = torch.zeros(total, dtype=torch.int64, device=self._device)
        self._validate = validate
        self._is_synced = False
        self._key_cache: Dict[Tuple[str, ...], Tuple[Tensor, Tensor]] = {}

    @classmethod
    def for_model(
        cls, model: Union[nn.Module, Mapping[str, Any]], device: Optional[torch.device] = None
    ) -> "IdFrequencyTracker":
        """A tracker for every feature of the model's tables (vocabulary = table rows)."""
        sizes: Dict[str, int] = {}
        for t in sorted(find_embedding_tables(model).values(), key=lambda t: (t.set_index, t.name)):
            if sizes.setdefault(t.feature, t.num_rows) != t.num_rows:
                raise ValueError(f"feature {t.feature!r}: tables of different sizes")
        return cls(sizes, device=device)

    @property
    def feature_names(self) -> List[str]:
        """The tracked features, in buffer order."""
        return list(self._features)

    @property
    def num_embeddings(self) -> Dict[str, int]:
        """Vocabulary size N of each tracked feature."""
        return dict(self._sizes)

    @property
    def is_synced(self) -> bool:
        """True for the result of :meth:`synced` (global counts; no further updates)."""
        return self._is_synced

    @property
    def total_ids(self) -> int:
        """Number of id lookups counted so far, over all features."""
        return int(self._flat.sum())

    def _per_key(self, keys: Tuple[str, ...]) -> Tuple[Tensor, Tensor]:
        """(offset, vocabulary) per KJT key; offset -1 for keys not tracked."""
        cached = self._key_cache.get(keys)
        if cached is None:
            off = torch.tensor([self._offsets.get(k, -1) for k in keys], dtype=torch.int64, device=self._device)
            lim = torch.tensor([self._sizes.get(k, 0) for k in keys], dtype=torch.int64, device=self._device)
            cached = self._key_cache[keys] = (off, lim)
        return cached

    def update(self, kjt: KeyedJaggedTensor) -> None:
        """Add every id of every tracked feature in ``kjt`` (weights are ignored)."""
        if self._is_synced:
            raise RuntimeError("a synced tracker is a snapshot; update the local tracker and sync again")
        keys = tuple(kjt.keys())
        if not keys:
            return
        off, lim = self._per_key(keys)
        lengths = kjt.length_per_key()
        n = int(sum(lengths))
        if n == 0:
            return
        lens = torch.tensor(lengths, dtype=torch.int64, device=self._device)
        values = kjt.values()[:n].to(device=self._device, dtype=torch.int64)
        per_off = torch.repeat_interleave(off, lens, output_size=n)
        tracked = per_off >= 0
        if self._validate:
            per_lim = torch.repeat_interleave(lim, lens, output_size=n)
            bad = tracked & ((values < 0) | (values >= per_lim))
            if bool(bad.any()):
                first = int(bad.nonzero()[0, 0])
                key = keys[int((torch.tensor(lengths).cumsum(0) <= first).sum())]
                raise ValueError(f"feature {key!r}: id {int(values[first])} outside [0, {self._sizes[key]})")
        flat = (values + per_off)[tracked]
        self._flat.index_add_(0, flat, torch.ones_like(flat))

    def synced(self, group: Optional[dist.ProcessGroup] = None) -> "IdFrequencyTracker":
        """A copy holding the counts summed over all ranks (collective when distributed).

        Each rank's tracker saw only its own batches; the trained-row mask must be the
        global one, and identical on every rank for the sharded Gram computation.
        """
        if self._is_synced:
            raise RuntimeError("tracker is already synced")
        out = IdFrequencyTracker(self._sizes, device=self._device, validate=self._validate)
        out._flat = self._flat.clone()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1:
            dist.all_reduce(out._flat, group=group)
        out._is_synced = True
        return out

    @classmethod
    def from_global_counts(cls, num_embeddings: Mapping[str, int], flat: Tensor) -> "IdFrequencyTracker":
        """A synced tracker from global counts (e.g. :meth:`flat_counts` of a synced one)."""
        out = cls(num_embeddings, device=flat.device)
        if flat.shape != out._flat.shape:
            raise ValueError(f"counts of shape {tuple(flat.shape)} do not fit vocabularies of {out._flat.numel()} ids")
        out._flat = flat.to(torch.int64).clone()
        out._is_synced = True
        return out

    def flat_counts(self) -> Tensor:
        """All counts in one (sum of vocabularies,) int64 tensor, features in order."""
        return self._flat.clone()

    def add_counts(self, flat: Tensor) -> None:
        """Add counts saved by :meth:`flat_counts` (e.g. when resuming training)."""
        if self._is_synced:
            raise RuntimeError("a synced tracker is a snapshot")
        if flat.shape != self._flat.shape:
            raise ValueError(f"counts of shape {tuple(flat.shape)} do not fit vocabularies of {self._flat.numel()} ids")
        self._flat += flat.to(device=self._device, dtype=torch.int64)

    def counts(self, feature: str) -> Tensor:
        """(N,) int64 occurrence count of every id of ``feature``."""
        if feature not in self._offsets:
            raise KeyError(f"feature {feature!r} is not tracked")
        o = self._offsets[feature]
        return self._flat[o : o + self._sizes[feature]].clone()

    def row_frequency(self, table: str) -> Tensor:
        """(N,) float64 counts of the feature of table ``set{k}__{feature}``."""
        return self.counts(parse_table_name(table)[1]).double()

    def row_mask(self, table: str) -> Tensor:
        """(N,) bool: rows of table ``set{k}__{feature}`` looked up at least once."""
        return self.counts(parse_table_name(table)[1]) > 0

    def reset(self) -> None:
        """Zero the counts, e.g. to measure the rows touched in one window of training."""
        if self._is_synced:
            raise RuntimeError("a synced tracker is a snapshot")
        self._flat.zero_()
