"""Per-set interaction modules: one set's (B, F, D) embeddings -> a (B, H) hidden vector.

Each multi-embedding backbone instantiates one of these per set, so the K sets never
share interaction weights (the paper's point: shared interaction would let one set's
collapse leak into the others).
"""

import torch
from torch import nn
from torchrec.modules.crossnet import CrossNet

from torchrec_me.modules.mlp import mlp_block


class DCNv2Interaction(nn.Module):
    """DCNv2 (stacked) for one set: full-rank cross network, then the first MLP layer.

    Matches ``MultiDCNnew2`` of the reference code: on the flattened input
    ``x0 = flatten(E)`` of width N = F * D, each cross layer computes
    ``x_{l+1} = x0 * (W_l x_l + b_l) + x_l`` with a full N x N ``W_l``; TorchRec's
    ``CrossNet`` is exactly this. The first MLP layer (Linear, BatchNorm, ReLU, Dropout)
    follows.

    Shapes: (B, F, D) -> (B, H).

    Args:
        num_fields (int): F.
        embedding_dim (int): D of this set.
        num_cross_layers (int): cross layers (the paper uses 4).
        hidden_dim (int): H, width of the first MLP layer (the paper's 400).
        dropout (float): dropout of the MLP layer.

    Example::

        inter = DCNv2Interaction(num_fields=39, embedding_dim=12, num_cross_layers=4, hidden_dim=400, dropout=0.0)
        h = inter(torch.randn(8, 39, 12))  # (8, 400)
    """

    def __init__(
        self, num_fields: int, embedding_dim: int, num_cross_layers: int, hidden_dim: int, dropout: float
    ) -> None:
        super().__init__()
        n = num_fields * embedding_dim
        self.cross = CrossNet(in_features=n, num_layers=num_cross_layers)
        self.mlp = mlp_block(n, hidden_dim, dropout)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.cross(embeddings.flatten(1)))
