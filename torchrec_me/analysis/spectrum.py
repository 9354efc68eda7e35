"""Singular spectra and information abundance of embedding tables (arXiv 2310.04400).

Why Gram matrices: a table E of shape (N, D) can have millions of rows but D is small,
so its singular values are read off the D x D Gram matrix ``G = E^T E`` (whose
eigenvalues are the squared singular values). ``G`` is a sum over rows, so it can be
accumulated shard by shard and chunk by chunk (see :mod:`torchrec_me.analysis.sharded`)
without ever holding E in one place; this module only turns such a Gram into numbers.

Information abundance: for singular values ``s_1 >= ... >= s_D``,
``IA(E) = ||s||_1 / ||s||_inf = sum_k s_k / s_1``. It is 1 when E has rank one (a fully
collapsed table) and D when all singular values are equal (a perfectly spread one).
"""

import math

import torch
from torch import Tensor

__all__ = [
    "information_abundance",
    "normalized_spectrum",
    "singular_values",
    "singular_values_from_gram",
]


def singular_values_from_gram(gram: Tensor) -> Tensor:
    """Singular values of E from its Gram matrix ``gram = E^T E``, descending.

    Why: the Gram is what the sharded code can accumulate; its eigenvalues are the
    squared singular values of E. The eigen-decomposition runs in float64 on the
    symmetrised matrix. Round-off in ``E^T E`` is about ``D * eps * s_1^2``, which would
    turn exact zeros into spurious singular values near ``sqrt(eps) * s_1`` (and inflate
    the IA of a rank-1 table by ~1e-7 per dimension); eigenvalues below that floor are
    set to zero, so singular values under roughly ``sqrt(D * eps) * s_1`` (~1e-7 s_1) are
    not resolved.

    Args:
        gram (Tensor): (D, D) symmetric positive semi-definite matrix, any float dtype.

    Returns:
        Tensor: (D,) float64 singular values, ``s[0] >= s[1] >= ... >= 0``.
    """
    if gram.dim() != 2 or gram.shape[0] != gram.shape[1]:
        raise ValueError(f"expected a square (D, D) Gram matrix, got shape {tuple(gram.shape)}")
    dim = gram.shape[0]
    if dim == 0:
        return torch.zeros(0, dtype=torch.float64)
    g = gram.detach().to(device="cpu", dtype=torch.float64)
    g = (g + g.T) / 2
    eig = torch.linalg.eigvalsh(g)  # ascending
    top = float(eig[-1].clamp(min=0.0))
    floor = dim * torch.finfo(torch.float64).eps * top
    eig = torch.where(eig > floor, eig, torch.zeros_like(eig))
    return eig.sqrt().flip(0)


def singular_values(matrix: Tensor) -> Tensor:
    """Singular values of a dense (N, D) matrix in float64, descending (via its Gram).

    Why: a convenience for small in-memory tables that goes through the same Gram path
    as the sharded code, so both give the same numbers for the same table.

    Args:
        matrix (Tensor): (N, D).

    Returns:
        Tensor: (D,) float64 singular values.
    """
    if matrix.dim() != 2:
        raise ValueError(f"expected an (N, D) matrix, got shape {tuple(matrix.shape)}")
    m = matrix.detach().to(torch.float64)
    return singular_values_from_gram(m.T @ m)


def information_abundance(singular_values: Tensor) -> float:
    """``IA = ||s||_1 / ||s||_inf``: 1 for a rank-1 table, D for a perfectly spread one.

    Args:
        singular_values (Tensor): (D,) non-negative singular values, any order.

    Returns:
        float: the information abundance, in ``[1, D]``; NaN when every singular value is
        zero (the IA of a zero table is undefined).
    """
    s = singular_values.detach().to(torch.float64).abs().flatten()
    if s.numel() == 0:
        return math.nan
    top = float(s.max())
    if top == 0.0:
        return math.nan
    return float(s.sum()) / top


def normalized_spectrum(singular_values: Tensor) -> Tensor:
    """Singular values divided by the largest one, ``s_k / s_1``, in descending order.

    Why: the paper compares spectra of tables with different scales; after this, the
    first value is 1 and a collapsed table drops towards 0 after a few indices.

    Args:
        singular_values (Tensor): (D,) non-negative singular values, any order.

    Returns:
        Tensor: (D,) float64, descending, first entry 1; all NaN when every value is zero.
    """
    s = singular_values.detach().to(torch.float64).abs().flatten().sort(descending=True).values
    if s.numel() == 0 or float(s[0]) == 0.0:
        return torch.full_like(s, math.nan)
    return s / s[0]
