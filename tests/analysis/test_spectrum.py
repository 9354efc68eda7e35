"""Singular values from Gram matrices and information abundance against numpy's SVD."""

import math

import numpy as np
import pytest
import torch

from torchrec_me.analysis.spectrum import (
    information_abundance,
    normalized_spectrum,
    singular_values,
    singular_values_from_gram,
)


def _gram(e: torch.Tensor) -> torch.Tensor:
    e = e.double()
    return e.T @ e


def test_rank_one_table_has_ia_one() -> None:
    g = torch.Generator().manual_seed(0)
    e = torch.randn(200, 1, generator=g) @ torch.randn(1, 16, generator=g) * 7.0
    sv = singular_values_from_gram(_gram(e))
    assert sv.shape == (16,)
    assert information_abundance(sv) == pytest.approx(1.0, abs=1e-9)
    assert float(sv[1]) == 0.0


@pytest.mark.parametrize("dim", [4, 16, 48])
def test_orthogonal_columns_have_ia_d(dim: int) -> None:
    g = torch.Generator().manual_seed(dim)
    q, _ = torch.linalg.qr(torch.randn(120, dim, generator=g, dtype=torch.float64))
    sv = singular_values_from_gram(_gram(3.0 * q))
    assert information_abundance(sv) == pytest.approx(dim, rel=1e-9)
    torch.testing.assert_close(sv, torch.full((dim,), 3.0, dtype=torch.float64), rtol=1e-9, atol=0.0)


@pytest.mark.parametrize("rank", [None, 1, 3, 7])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_numpy_svd(rank: "int | None", seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    rows, dim = 300, 16
    if rank is None:
        e = torch.randn(rows, dim, generator=g) * torch.linspace(0.2, 3.0, dim)
    else:
        e = torch.randn(rows, rank, generator=g) @ torch.randn(rank, dim, generator=g)
    ref = np.linalg.svd(e.double().numpy(), compute_uv=False)
    got = singular_values_from_gram(_gram(e)).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6 * ref[0])
    ref_ia = ref.sum() / ref.max()
    assert information_abundance(torch.from_numpy(got)) == pytest.approx(ref_ia, rel=1e-6)
    np.testing.assert_allclose(singular_values(e).numpy(), ref, rtol=1e-6, atol=1e-6 * ref[0])
    if rank is not None:
        assert information_abundance(torch.from_numpy(got)) <= rank + 1e-6


def test_normalized_spectrum_is_descending_from_one() -> None:
    s = torch.tensor([0.5, 2.0, 1.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(normalized_spectrum(s), torch.tensor([1.0, 0.5, 0.25, 0.0], dtype=torch.float64))
    assert information_abundance(s) == pytest.approx(3.5 / 2.0)


def test_zero_table_is_undefined_and_bad_shapes_raise() -> None:
    assert math.isnan(information_abundance(singular_values_from_gram(torch.zeros(8, 8))))
    assert torch.isnan(normalized_spectrum(torch.zeros(3))).all()
    with pytest.raises(ValueError):
        singular_values_from_gram(torch.zeros(3, 4))
