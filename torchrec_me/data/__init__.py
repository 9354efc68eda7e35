"""Datasets: each maps a DataConfig to batches of ``torchrec.datasets.utils.Batch``.

A dataset (see :class:`Dataset`) exposes ``feature_names``, ``num_embeddings`` (one
vocabulary size per feature), ``num_dense``, ``has_teacher``, ``fingerprint`` (what its
ids mean), ``train_batches(rank, world_size, batch_size, start, stop)`` and
``eval_batches(split, rank, world_size, batch_size)``.

* ``synthetic``: deterministic Criteo-shaped data with a hidden teacher (the default).
* ``parquet``: a dataset written by ``torchrec-me prepare`` (``data.path=DIR``).
"""

from typing import Callable, Dict, Iterator, List, Optional, Protocol, Tuple

import torch
from torchrec.datasets.utils import Batch

from torchrec_me.config import DataConfig
from torchrec_me.data.parquet import ParquetDataset
from torchrec_me.data.synthetic import SyntheticCriteo


class Dataset(Protocol):
    """What the training loop needs from a dataset.

    ``train_batches`` yields one batch per step ``start..stop-1``, the same number on
    every rank, batch ``s`` the same whichever call reads it (exact resume).
    ``eval_batches`` yields ``(batch, teacher probability or None, is_real)``, the same
    count and batch sizes on every rank; the real ones cover the split exactly once.

    ``fingerprint`` is a sha256 (hex) of the vocabularies: equal exactly when every id of
    every feature means the same thing, so a checkpoint trained on one dataset can refuse
    another with tables of the same sizes but other ids. Prepared data hashes its
    ``vocab.parquet`` (:func:`torchrec_me.data.store.vocab_fingerprint`); synthetic data
    the config fields that fix its ids (:func:`torchrec_me.data.synthetic.fingerprint`).
    """

    feature_names: List[str]
    num_embeddings: List[int]
    num_dense: int
    has_teacher: bool
    fingerprint: str

    def train_batches(
        self, rank: int, world_size: int, batch_size: int, start: int = 0, stop: Optional[int] = None
    ) -> Iterator[Batch]: ...

    def eval_batches(
        self, split: str, rank: int, world_size: int, batch_size: int
    ) -> Iterator[Tuple[Batch, Optional[torch.Tensor], bool]]: ...


DATASET_REGISTRY: Dict[str, Callable[[DataConfig], Dataset]] = {
    "synthetic": SyntheticCriteo,
    "parquet": ParquetDataset,
}


def build_dataset(cfg: DataConfig) -> Dataset:
    """The dataset ``cfg.name`` names in :data:`DATASET_REGISTRY`, built from ``cfg``."""
    return DATASET_REGISTRY[cfg.name](cfg)
