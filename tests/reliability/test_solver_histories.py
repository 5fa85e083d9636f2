"""Degenerate solver histories on model problems: duplicate rows, one-step fixed points, zero loadings.

The same cases on toy maps are in tests/solvers/test_anderson.py; here they
come from an ExpFamPCA model, through the guide, as a user meets them.
"""

import pytest
import torch

import pyro_deq


def duplicate_rows():
    generator = torch.Generator().manual_seed(0)
    row = torch.bernoulli(torch.full((1, 12), 0.5), generator=generator)
    return row.expand(6, 12).clone().double()


@pytest.mark.parametrize("method", ["anderson", "picard", "newton"])
def test_duplicate_rows_give_equal_latents(method):
    y = duplicate_rows()
    weight = 0.3 * torch.randn(12, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    model = pyro_deq.ExpFamPCA(12, 2, family="bernoulli", weight=weight)
    z = pyro_deq.AutoDEQ(model, method=method).median(y)["z"]
    assert bool(torch.isfinite(z).all())
    # Equal up to rounding only: torch's vectorized sigmoid can differ in the
    # last bit between equal entries at different positions in memory.
    torch.testing.assert_close(z, z[:1].expand_as(z), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("method", ["anderson", "picard", "newton"])
def test_zero_loadings_converge_at_zero(method):
    y = duplicate_rows()
    model = pyro_deq.ExpFamPCA(12, 3, family="bernoulli", weight=torch.zeros(12, 3, dtype=torch.float64))
    guide = pyro_deq.AutoDEQ(model, method=method)
    z = guide.median(y)["z"]
    assert bool((z == 0).all())
    assert guide.diagnostics["n_iter"] == 0
    assert guide.diagnostics["status"] == "converged"


def test_anderson_gaussian_one_step():
    # For a Gaussian with identity link the map f is affine, and with a
    # contraction factor near 0 the first iterate is already the fixed point
    # to rounding; Anderson's least-squares history is then nearly singular.
    generator = torch.Generator().manual_seed(2)
    y = torch.randn(5, 4, generator=generator, dtype=torch.float64)
    weight = 1e-9 * torch.randn(4, 2, generator=generator, dtype=torch.float64)
    model = pyro_deq.ExpFamPCA(4, 2, family="gaussian", weight=weight)
    guide = pyro_deq.AutoDEQ(model, method="anderson")
    z = guide.median(y)["z"]
    assert guide.diagnostics["status"] == "converged"
    assert guide.diagnostics["n_iter"] <= 2
    assert bool(torch.isfinite(z).all())
