"""Backbone registry and the paper's SE/ME scale-grid presets.

A backbone is a per-set interaction factory plus a shared head factory. Every backbone
handles heterogeneous set dims (e.g. ``[8, 16, 32]``), since each set's interaction is
built for its own dim; only the shared-interaction ablation needs equal dims.

Presets follow the paper's table: ``{backbone}-se-{1,2,3,4,10}x`` multiplies the
embedding dim of one set, ``{backbone}-me-{2,3,4,10}x`` multiplies the number of sets at
the base dim, so SE and ME have the same embedding parameter count at each scale. ME at
1x is SE at 1x, so it has one name, ``{backbone}-se-1x``. The paper's base dim 10
becomes 12 (FBGEMM needs multiples of 4); NFwFM's base 50 becomes 48.
"""

from dataclasses import dataclass
from typing import Any, Callable, Dict

from torch import nn

from torchrec_me.config import ModelConfig
from torchrec_me.modules import (
    DCNv2Interaction,
    DLRMInteraction,
    DNNInteraction,
    FinalMLPHead,
    FinalMLPInteraction,
    IPNNInteraction,
    LayerConfig,
    MLPHead,
    NFwFMInteraction,
    XDeepFMHead,
    XDeepFMInteraction,
)


@dataclass(frozen=True)
class Backbone:
    """How one backbone is built.

    Args:
        interaction (Callable[[int, int, ModelConfig], nn.Module]): ``(F, D_k, cfg)`` to
            set k's interaction module.
        head (Callable[[ModelConfig], nn.Module]): the shared head.
        base_dim (int): the 1x embedding dim of its presets.
    """

    interaction: Callable[[int, int, ModelConfig], nn.Module]
    head: Callable[[ModelConfig], nn.Module]
    base_dim: int = 12


def layer_config(cfg: ModelConfig) -> LayerConfig:
    """The dropout and the fused/plain kernels (``model.fused_dense``) of every hidden layer."""
    return LayerConfig(dropout=cfg.dropout, fused=cfg.fused_dense)


def _mlp_head(cfg: ModelConfig) -> nn.Module:
    return MLPHead(cfg.hidden_dim, [cfg.hidden_dim], layer_config(cfg))


def _finalmlp(f: int, d: int, c: ModelConfig) -> nn.Module:
    return FinalMLPInteraction(f, d, c.hidden_dim, c.fs_hidden_dim if c.feature_selection else None, layer_config(c))


BACKBONE_REGISTRY: Dict[str, Backbone] = {
    "dnn": Backbone(lambda f, d, c: DNNInteraction(f, d, c.hidden_dim, layer_config(c)), _mlp_head),
    "ipnn": Backbone(lambda f, d, c: IPNNInteraction(f, d, c.hidden_dim, layer_config(c)), _mlp_head),
    "nfwfm": Backbone(lambda f, d, c: NFwFMInteraction(f, d, c.hidden_dim, layer_config(c)), _mlp_head, base_dim=48),
    "xdeepfm": Backbone(
        lambda f, d, c: XDeepFMInteraction(f, d, c.hidden_dim, c.cin_layer_sizes, layer_config(c)),
        lambda c: XDeepFMHead(sum(c.cin_layer_sizes), c.hidden_dim, layer_config(c)),
    ),
    "dcnv2": Backbone(
        lambda f, d, c: DCNv2Interaction(f, d, c.num_cross_layers, c.hidden_dim, layer_config(c)), _mlp_head
    ),
    "finalmlp": Backbone(_finalmlp, lambda c: FinalMLPHead(c.hidden_dim)),
    "dlrm": Backbone(lambda f, d, c: DLRMInteraction(f, d, c.hidden_dim, layer_config(c)), _mlp_head),
}

SCALES = (1, 2, 3, 4, 10)


def _preset_grid() -> Dict[str, Dict[str, Any]]:
    grid: Dict[str, Dict[str, Any]] = {}
    for name, backbone in BACKBONE_REGISTRY.items():
        for s in SCALES:
            common = {"backbone": name, "set_dims": None}
            grid[f"{name}-se-{s}x"] = {**common, "num_sets": 1, "embedding_dim": backbone.base_dim * s}
            if s > 1:  # ME-1x is SE-1x
                grid[f"{name}-me-{s}x"] = {**common, "num_sets": s, "embedding_dim": backbone.base_dim}
    return grid


# Preset name -> the ModelConfig fields it sets; used by ``model=NAME`` overrides.
PRESET_REGISTRY: Dict[str, Dict[str, Any]] = _preset_grid()
