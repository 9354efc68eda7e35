"""Shared heads: the set-averaged interaction output (B, H) -> logits (B,).

Everything after the mean over sets is shared by all K sets. Shape letters as in
:mod:`torchrec_me.modules`.
"""

from typing import Sequence

import torch
from torch import nn

from torchrec_me.modules.layers import BilinearFusion
from torchrec_me.modules.mlp import LayerConfig, mlp_block


class MLPHead(nn.Module):
    """Hidden MLP blocks (Linear, BatchNorm, ReLU, Dropout), then a Linear to one logit.

    Input (B, H_in); output (B,).

    Args:
        in_features (int): H_in, width of the averaged per-set output.
        hidden_dims (Sequence[int]): widths of the hidden blocks (may be empty).
        layers (LayerConfig): dropout and fused/plain kernels of the hidden blocks.

    Example::

        head = MLPHead(in_features=16, hidden_dims=[16])
        logits = head(torch.randn(8, 16))  # (8,)
    """

    def __init__(self, in_features: int, hidden_dims: Sequence[int], layers: LayerConfig = LayerConfig()) -> None:
        super().__init__()
        dims = [in_features, *hidden_dims]
        self.hidden = nn.Sequential(*(mlp_block(i, o, layers) for i, o in zip(dims[:-1], dims[1:])))
        self.out = nn.Linear(dims[-1], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x (torch.Tensor): (B, H_in), the mean over sets.

        Returns:
            torch.Tensor: (B,) logits.
        """
        return self.out(self.hidden(x)).squeeze(-1)


class XDeepFMHead(nn.Module):
    """xDeepFM's two shared outputs: a Linear on the CIN part + an MLP head on the MLP part.

    The input is :class:`~torchrec_me.modules.interactions.XDeepFMInteraction`'s
    ``[cin (C) ‖ mlp (H)]``, averaged over sets; the two logits are summed.

    Input (B, C + H); output (B,).

    Args:
        cin_dim (int): C, the CIN part's width.
        hidden_dim (int): H, the MLP part's width and its hidden block's.
        layers (LayerConfig): dropout and fused/plain kernels of the hidden block.

    Example::

        head = XDeepFMHead(cin_dim=32, hidden_dim=16)
        logits = head(torch.randn(8, 48))  # (8,)
    """

    def __init__(self, cin_dim: int, hidden_dim: int, layers: LayerConfig = LayerConfig()) -> None:
        super().__init__()
        self.cin_dim = cin_dim
        self.cin_out = nn.Linear(cin_dim, 1)
        self.mlp = MLPHead(hidden_dim, [hidden_dim], layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x (torch.Tensor): (B, C + H), ``[cin ‖ mlp]``.

        Returns:
            torch.Tensor: (B,) logits.
        """
        cin, mlp = x[:, : self.cin_dim], x[:, self.cin_dim :]
        return self.cin_out(cin).squeeze(-1) + self.mlp(mlp)


class FinalMLPHead(nn.Module):
    """FinalMLP's shared bilinear fusion of the set-averaged streams.

    The fusion is :class:`~torchrec_me.modules.layers.BilinearFusion`, written by hand
    (TorchRec has no FinalMLP).

    Input (B, 2H), ``[stream 1 ‖ stream 2]``; output (B,).

    Args:
        hidden_dim (int): H, the width of each stream.

    Example::

        head = FinalMLPHead(hidden_dim=16)
        logits = head(torch.randn(8, 32))  # (8,)
    """

    def __init__(self, hidden_dim: int) -> None:
        super().__init__()
        self.hidden_dim = hidden_dim
        self.fusion = BilinearFusion(hidden_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x (torch.Tensor): (B, 2H), ``[stream 1 ‖ stream 2]``.

        Returns:
            torch.Tensor: (B,) logits.
        """
        return self.fusion(x[:, : self.hidden_dim], x[:, self.hidden_dim :])
