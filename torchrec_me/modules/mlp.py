"""MLP blocks of the multi-embedding reference models.

TorchRec's ``MLP``/``Perceptron`` are Linear + activation; the paper's models put
BatchNorm and Dropout in every hidden layer, so the block is written here.
"""

from typing import Sequence

import torch
from torch import nn


def mlp_block(in_features: int, out_features: int, dropout: float) -> nn.Sequential:
    """Linear -> BatchNorm1d -> ReLU -> Dropout: one hidden layer of the reference MLP."""
    return nn.Sequential(
        nn.Linear(in_features, out_features),
        nn.BatchNorm1d(out_features),
        nn.ReLU(),
        nn.Dropout(dropout),
    )


class MLPHead(nn.Module):
    """Shared head: hidden MLP blocks, then a Linear to one logit.

    Shapes: (B, in_features) -> (B,).

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
        self.hidden = nn.Sequential(
            *(mlp_block(i, o, dropout) for i, o in zip(dims[:-1], dims[1:]))
        )
        self.out = nn.Linear(dims[-1], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.hidden(x)).squeeze(-1)
