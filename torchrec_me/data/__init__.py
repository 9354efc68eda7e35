"""Datasets: each maps a DataConfig to batches of ``torchrec.datasets.utils.Batch``.

A dataset exposes ``feature_names``, ``num_embeddings`` (one vocabulary size per
feature), ``num_dense``, ``train_batches(rank, world_size, batch_size, start, stop)``
and ``eval_batches(split, rank, world_size, batch_size)``.
"""

from typing import Callable, Dict

from torchrec_me.config import DataConfig
from torchrec_me.data.synthetic import SyntheticCriteo

DATASET_REGISTRY: Dict[str, Callable[[DataConfig], object]] = {
    "synthetic": SyntheticCriteo,
}


def build_dataset(cfg: DataConfig) -> SyntheticCriteo:
    return DATASET_REGISTRY[cfg.name](cfg)
