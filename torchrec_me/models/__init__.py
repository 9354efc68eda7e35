"""Models: the generic multi-embedding model, its backbones and presets.

``build_model(cfg, feature_names, num_embeddings, device, num_dense)`` assembles any
registered backbone over the K sets (see :class:`MultiEmbeddingModel` for the flow);
``device`` applies to the embedding tables (``meta`` when DistributedModelParallel will
allocate them). ``cfg.fused_dense`` is the one switch between torchrec_me's fused dense
kernels and the plain TorchRec/PyTorch modules: it picks the cross net of DCNv2, the
ReLU + Dropout of every hidden layer and the mean over sets. Shape letters as in
:mod:`torchrec_me.modules`.
"""

from typing import Optional, Sequence

import torch
from torchrec.models.dlrm import DenseArch

from torchrec_me.config import ModelConfig
from torchrec_me.models.backbones import BACKBONE_REGISTRY, PRESET_REGISTRY, Backbone, layer_config
from torchrec_me.models.me_model import MultiEmbeddingModel, MultiEmbeddingModelConfig, MultiEmbeddingTrain, set_mean
from torchrec_me.modules.layouts import build_sets
from torchrec_me.modules.regularizers import REGULARIZER_REGISTRY


def build_model(
    cfg: ModelConfig,
    feature_names: Sequence[str],
    num_embeddings: Sequence[int],
    device: Optional[torch.device] = None,
    num_dense: int = 0,
) -> MultiEmbeddingModel:
    """Assemble ``cfg.backbone`` over the K sets in layout ``cfg.layout``.

    With ``num_dense > 0`` each set gets a DLRM-style dense arch (MLP ``num_dense ->
    dense_hidden_dims -> D_k``) as one more field, placed first. ``cfg.fused_dense``
    chooses fused or plain kernels for every dense part (see the module docstring).
    """
    backbone = BACKBONE_REGISTRY[cfg.backbone]
    dims = cfg.dims()
    num_fields = len(feature_names) + (1 if num_dense else 0)
    dense_archs = [DenseArch(num_dense, [*cfg.dense_hidden_dims, d]) for d in dims] if num_dense else None
    if cfg.shared_interaction:
        interactions = [backbone.interaction(num_fields, dims[0], cfg)]
    else:
        interactions = [backbone.interaction(num_fields, d, cfg) for d in dims]
    config = MultiEmbeddingModelConfig(
        regularizer=REGULARIZER_REGISTRY.get(cfg.regularizer), reg_weight=cfg.reg_weight, fused=cfg.fused_dense
    )
    return MultiEmbeddingModel(
        build_sets(cfg.layout, feature_names, num_embeddings, dims, device=device),
        interactions,
        backbone.head(cfg),
        dense_archs=dense_archs,
        config=config,
    )


__all__ = [
    "BACKBONE_REGISTRY",
    "PRESET_REGISTRY",
    "Backbone",
    "MultiEmbeddingModel",
    "MultiEmbeddingModelConfig",
    "MultiEmbeddingTrain",
    "build_model",
    "layer_config",
    "set_mean",
]
