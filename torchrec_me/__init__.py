"""torchrec_me: multi-embedding recommendation models on TorchRec (arXiv 2310.04400).

The drop-in pieces for a TorchRec pipeline::

    from torchrec_me import MultiEmbeddingBagCollection, DCNv2Interaction, plan_and_shard

* :class:`MultiEmbeddingBagCollection`: K ``EmbeddingBagCollection``s (tables
  ``set{k}__{feature}``) over one shared KJT, returning K pooled (B, F, D_k) tensors.
* the interaction modules (one per set), :class:`MultiEmbeddingModel` (K sets -> K
  interactions -> mean -> head) and :class:`MultiEmbeddingTrain` (the loss wrapper
  ``TrainPipelineSparseDist`` expects).
* :func:`apply_sparse_optimizer`, :func:`plan_and_shard` and :func:`build_optimizer`:
  the fused FBGEMM table optimizer, TorchRec's planner (one plan per set over several
  ranks) with DistributedModelParallel, and dense Adam combined with the fused one.
* :func:`build_job`: all of the above from a :class:`Config`, as ``torchrec-me train`` does.
"""

from torchrec_me.config import Config, ConfigError, DataConfig, ModelConfig, TrainConfig
from torchrec_me.distributed.optimizers import SPARSE_OPTIMIZERS, apply_sparse_optimizer, build_optimizer
from torchrec_me.distributed.sharding import DistContext, init_distributed, plan_and_shard
from torchrec_me.job import Job, build_job, load_job_config
from torchrec_me.models import MultiEmbeddingModel, MultiEmbeddingTrain, build_model
from torchrec_me.modules import (
    DCNv2Interaction,
    DLRMInteraction,
    DNNInteraction,
    FinalMLPInteraction,
    IPNNInteraction,
    MultiEmbeddingBagCollection,
    NFwFMInteraction,
    XDeepFMInteraction,
)
from torchrec_me.modules.naming import set_table_name

__version__ = "0.1.0"

__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "DCNv2Interaction",
    "DistContext",
    "DLRMInteraction",
    "DNNInteraction",
    "FinalMLPInteraction",
    "IPNNInteraction",
    "Job",
    "ModelConfig",
    "MultiEmbeddingBagCollection",
    "MultiEmbeddingModel",
    "MultiEmbeddingTrain",
    "NFwFMInteraction",
    "SPARSE_OPTIMIZERS",
    "TrainConfig",
    "XDeepFMInteraction",
    "apply_sparse_optimizer",
    "build_job",
    "build_model",
    "build_optimizer",
    "init_distributed",
    "load_job_config",
    "plan_and_shard",
    "set_table_name",
]
