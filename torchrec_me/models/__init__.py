"""Model registry: backbone name -> builder of a MultiEmbeddingModel.

A builder takes ``(cfg: ModelConfig, feature_names, num_embeddings, device)``; the
device applies to the embedding tables (``meta`` when DistributedModelParallel will
allocate them).
"""

from typing import Callable, Dict, List, Optional, Sequence

import torch

from torchrec_me.config import ModelConfig
from torchrec_me.models.me_model import MultiEmbeddingModel, MultiEmbeddingTrain
from torchrec_me.modules import DCNv2Interaction, MLPHead, MultiEmbeddingBagCollection

ModelBuilder = Callable[[ModelConfig, Sequence[str], Sequence[int], Optional[torch.device]], MultiEmbeddingModel]


def build_dcnv2(
    cfg: ModelConfig,
    feature_names: Sequence[str],
    num_embeddings: Sequence[int],
    device: Optional[torch.device] = None,
) -> MultiEmbeddingModel:
    """ME-DCNv2: per set CrossNet + first MLP layer, shared head ``H -> H -> 1``."""
    dims: List[int] = cfg.dims()
    return MultiEmbeddingModel(
        MultiEmbeddingBagCollection(feature_names, num_embeddings, dims, device=device),
        [
            DCNv2Interaction(len(feature_names), d, cfg.num_cross_layers, cfg.hidden_dim, cfg.dropout)
            for d in dims
        ],
        MLPHead(cfg.hidden_dim, [cfg.hidden_dim], cfg.dropout),
    )


MODEL_REGISTRY: Dict[str, ModelBuilder] = {
    "dcnv2": build_dcnv2,
}


def build_model(
    cfg: ModelConfig,
    feature_names: Sequence[str],
    num_embeddings: Sequence[int],
    device: Optional[torch.device] = None,
) -> MultiEmbeddingModel:
    return MODEL_REGISTRY[cfg.backbone](cfg, feature_names, num_embeddings, device)


__all__ = ["MODEL_REGISTRY", "MultiEmbeddingModel", "MultiEmbeddingTrain", "build_model"]
