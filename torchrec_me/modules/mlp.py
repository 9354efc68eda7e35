"""MLP block of the multi-embedding reference models.

TorchRec's ``MLP``/``Perceptron`` are Linear + activation; the paper's models put
BatchNorm and Dropout in every hidden layer, so the block is written here.
"""

from torch import nn


def mlp_block(in_features: int, out_features: int, dropout: float) -> nn.Sequential:
    """Linear -> BatchNorm1d -> ReLU -> Dropout: one hidden layer of the reference MLP."""
    return nn.Sequential(
        nn.Linear(in_features, out_features),
        nn.BatchNorm1d(out_features),
        nn.ReLU(),
        nn.Dropout(dropout),
    )
