"""Tests of the data-based initial loadings and bias."""

import pytest
import torch

from pyro_deq import families
from pyro_deq.initialization import degenerate_columns, initial_bias, initial_weight


def poisson_with_zero_columns():
    """A 60 x 300 count matrix with 5 all-zero columns and 1 all-zero row."""
    generator = torch.Generator().manual_seed(0)
    y = torch.poisson(torch.full((60, 300), 2.0), generator=generator)
    y[:, :5] = 0
    y[7] = 0
    return y


def test_poisson_bias_is_log_mean():
    y = torch.tensor([[1.0, 4.0], [3.0, 0.0]])
    bias = initial_bias(families.get("poisson"), y)
    assert torch.allclose(bias, torch.log(torch.tensor([2.0, 2.0])))


def test_zero_count_columns_finite_and_reported():
    family = families.get("poisson")
    y = poisson_with_zero_columns()
    bias = initial_bias(family, y)
    weight = initial_weight(family, y, 5)
    assert torch.isfinite(bias).all()
    assert torch.isfinite(weight).all()
    assert torch.allclose(bias[:5], torch.log(torch.tensor(0.5 / 60)).expand(5))
    assert degenerate_columns(family, y) == [0, 1, 2, 3, 4]


def test_binary_constant_columns_degenerate():
    family = families.get("bernoulli")
    y = (torch.rand(20, 4, generator=torch.Generator().manual_seed(1)) < 0.5).float()
    y[:, 0] = 0
    y[:, 3] = 1
    bias = initial_bias(family, y)
    assert torch.isfinite(bias).all()
    assert bias[0] == pytest.approx(torch.logit(torch.tensor(0.5 / 20)).item())
    assert bias[3] == pytest.approx(-bias[0].item())
    assert degenerate_columns(family, y) == [0, 3]
    assert torch.isfinite(initial_weight(family, y, 2)).all()


def test_binomial_full_column_degenerate():
    family = families.get("binomial", total_count=16)
    y = torch.tensor([[16.0, 3.0, 0.0], [16.0, 5.0, 0.0]])
    bias = initial_bias(family, y)
    assert torch.isfinite(bias).all()
    assert bias[1] == pytest.approx(torch.logit(torch.tensor(8 / 32)).item())
    assert degenerate_columns(family, y) == [0, 2]


def test_continuous_bernoulli_bias_inverts_mean():
    family = families.get("continuous_bernoulli")
    y = torch.tensor([[0.2, 0.0, 0.5], [0.6, 0.0, 0.5]], dtype=torch.float64)
    bias = initial_bias(family, y)
    assert family.mean(bias[[0, 2]]).tolist() == pytest.approx([0.4, 0.5], abs=1e-9)
    assert torch.isfinite(bias[1])
    assert degenerate_columns(family, y) == [1]


def test_mask_excludes_entries_and_empty_columns():
    family = families.get("poisson")
    y = torch.tensor([[2.0, 0.0], [100.0, 0.0]])
    mask = torch.tensor([[True, False], [False, False]])
    bias = initial_bias(family, y, mask)
    assert bias[0] == pytest.approx(torch.log(torch.tensor(2.0)).item())
    assert torch.isfinite(bias[1])
    assert degenerate_columns(family, y, mask) == [1]
    assert torch.isfinite(initial_weight(family, y, 2, mask=mask)).all()


def test_gaussian_weight_spans_principal_direction():
    generator = torch.Generator().manual_seed(2)
    direction = torch.tensor([3.0, 4.0]) / 5
    y = torch.randn(200, 1, generator=generator) * 5 * direction + 0.01 * torch.randn(200, 2, generator=generator)
    weight = initial_weight(families.get("gaussian"), y, 1, scale=0.2)
    assert torch.linalg.matrix_norm(weight, 2).item() == pytest.approx(0.2, rel=1e-5)
    assert abs(torch.dot(weight[:, 0] / 0.2, direction)).item() == pytest.approx(1.0, abs=1e-3)


def test_rank_deficient_weight_is_nonzero():
    y = torch.zeros(1, 6)
    weight = initial_weight(families.get("poisson"), y, 3)
    assert torch.isfinite(weight).all()
    assert (weight.norm(dim=0) > 0).all()


def test_invalid_arguments_rejected():
    with pytest.raises(ValueError, match="n_components"):
        initial_weight(families.get("poisson"), torch.ones(3, 2), 0)
    with pytest.raises(ValueError, match="scale"):
        initial_weight(families.get("poisson"), torch.ones(3, 2), 1, scale=-1.0)
