"""The hidden layer of the multi-embedding reference models, fused or plain.

TorchRec's ``MLP``/``Perceptron`` are Linear + activation; the paper's models put
BatchNorm and Dropout in every hidden layer, so the block is written here. Its ReLU and
Dropout run either as one pass (:class:`ReLUDropout`) or as ``nn.ReLU`` + ``nn.Dropout``;
:class:`LayerConfig` ``.fused`` chooses, and both give the same state dict.
"""

from dataclasses import dataclass
from typing import Any, Tuple

import torch
from torch import nn


@dataclass(frozen=True)
class LayerConfig:
    """How the hidden layers of an interaction or a head run.

    Args:
        dropout (float): drop probability after every hidden ReLU, in [0, 1).
        fused (bool): run torchrec_me's fused kernels (:class:`ReLUDropout`, and in
            DCNv2 :class:`~torchrec_me.modules.interactions.FusedCrossNet`) instead of
            the plain PyTorch/TorchRec modules with the same math and parameters.

    Example::

        layers = LayerConfig(dropout=0.2, fused=False)
        block = mlp_block(16, 8, layers)  # Linear, BatchNorm1d, ReLU, Dropout
    """

    dropout: float = 0.0
    fused: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {self.dropout}")


class _ReLUDropout(torch.autograd.Function):
    """``dropout(relu(x), p)`` in float and integer passes: ``y = relu(x) * m / (1 - p)``.

    The keep mask is ``m = [u >= t]`` for ``u`` a uniform 32-bit integer (two per
    ``int64`` draw of the generator) and ``t = -2^31 + round(p * 2^32)``: an element is
    kept with probability 1 - p up to 2^-33 (``torch.rand`` resolves 2^-24) and scaled by
    1 / (1 - p), as ``nn.Dropout``. ``m`` is computed as ``clamp(u, t - 1, t) - (t - 1)``,
    exact 0/1 integers, so that no bool kernel (compare, ``mul`` by a bool tensor) and no
    ``bernoulli_`` runs. Backward: ``g * sign(y) / (1 - p)``, since ``y > 0`` exactly
    where x > 0 and the element was kept (y is never negative). Saves only ``y``, the
    next Linear's input, which autograd keeps anyway.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, p: float) -> torch.Tensor:
        n = x.numel()
        bits = torch.empty((n + 1) // 2, dtype=torch.int64, device=x.device).random_(-(2**63), None)
        t = min(-(2**31) + round(p * 2**32), 2**31 - 1)
        keep = bits.view(torch.int32)[:n].view(x.shape).clamp_(t - 1, t).sub_(t - 1)
        scale = 1.0 / (1.0 - p)
        y = torch.relu(x).mul_(keep.to(x.dtype)).mul_(scale)
        ctx.scale = scale
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Tuple[torch.Tensor, None]:
        (y,) = ctx.saved_tensors
        return torch.sign(y).mul_(ctx.scale).mul_(grad), None


@torch.fx.wrap
def relu_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Training-mode ``dropout(relu(x), p)`` through :class:`_ReLUDropout`; a ``torch.fx`` leaf."""
    return _ReLUDropout.apply(x, p)


class ReLUDropout(nn.Module):
    """``Dropout(p)(ReLU()(x))`` in one pass; plain ReLU in eval mode or when p = 0.

    Written by hand (PyTorch has no fused ReLU + Dropout on CPU). Same distribution as
    ``nn.Sequential(nn.ReLU(), nn.Dropout(p))``, from a different random stream. Input
    and output have the same shape, any shape. No parameters.

    Args:
        p (float): drop probability, in [0, 1).

    Example::

        act = ReLUDropout(0.2)
        y = act(torch.randn(8, 16))  # (8, 16): zeros, or relu(x) / 0.8
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0 - 2**-31:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x (torch.Tensor): any shape.

        Returns:
            torch.Tensor: ``dropout(relu(x))``, the shape of ``x``.
        """
        if not self.training or self.p == 0.0:
            return torch.relu(x)
        return relu_dropout(x, self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def mlp_block(in_features: int, out_features: int, layers: LayerConfig) -> nn.Sequential:
    """One hidden layer of the reference MLP: Linear -> BatchNorm1d -> ReLU -> Dropout.

    ReLU and Dropout are one :class:`ReLUDropout` when ``layers.fused``, else ``nn.ReLU``
    and ``nn.Dropout``; the Linear is entry 0 and the BatchNorm entry 1 either way, so
    the state dicts of the two are the same.
    """
    if layers.fused:
        activation: Tuple[nn.Module, ...] = (ReLUDropout(layers.dropout),)
    else:
        activation = (nn.ReLU(), nn.Dropout(layers.dropout))
    return nn.Sequential(nn.Linear(in_features, out_features), nn.BatchNorm1d(out_features), *activation)
