"""Shared heads: the set-averaged interaction output (B, H) -> logits (B,).

Everything after the mean over sets is shared by all K sets.
"""

from typing import Sequence

import torch
from torch import nn

from torchrec_me.modules.layers import BilinearFusion
from torchrec_me.modules.mlp import mlp_block


class MLPHead(nn.Module):
    """Hidden MLP blocks, then a Linear to one logit. (B, in_features) -> (B,).

    Args:
        in_features (int): width of the averaged per-set output.
        hidden_dims (Sequence[int]): widths of the hidden blocks (may be empty).
        dropout (float): dropout of each hidden block.

    Example::

        head = MLPHead(400, [400], dropout=0.0)
        logits = head(torch.randn(8, 400))  # (8,)
    """

    def __init__(self, in_features: int, hidden_dims: Sequence[int], dropout: float) -> None:
        super().__init__()
        dims = [in_features, *hidden_dims]
        self.hidden = nn.Sequential(*(mlp_block(i, o, dropout) for i, o in zip(dims[:-1], dims[1:])))
        self.out = nn.Linear(dims[-1], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.hidden(x)).squeeze(-1)


class XDeepFMHead(nn.Module):
    """xDeepFM's two shared outputs: Linear on the CIN part + MLP head on the MLP part.

    Input ``[cin (C) ‖ mlp (H)]`` already averaged over sets; the two logits are summed.
    (B, C + H) -> (B,).
    """

    def __init__(self, cin_dim: int, hidden_dim: int, dropout: float) -> None:
        super().__init__()
        self.cin_dim = cin_dim
        self.cin_out = nn.Linear(cin_dim, 1)
        self.mlp = MLPHead(hidden_dim, [hidden_dim], dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cin, mlp = x[:, : self.cin_dim], x[:, self.cin_dim :]
        return self.cin_out(cin).squeeze(-1) + self.mlp(mlp)


class FinalMLPHead(nn.Module):
    """FinalMLP's shared bilinear fusion of the set-averaged streams. (B, 2H) -> (B,)."""

    def __init__(self, hidden_dim: int) -> None:
        super().__init__()
        self.hidden_dim = hidden_dim
        self.fusion = BilinearFusion(hidden_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fusion(x[:, : self.hidden_dim], x[:, self.hidden_dim :])
