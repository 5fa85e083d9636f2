"""Degenerate rows and columns: all-zero counts and constant binary columns fit with finite values."""

import numpy as np
import pyro
import torch

import pyro_deq
from pyro_deq.cli.main import main
from pyro_deq.initialization import degenerate_columns, degenerate_rows, initial_bias, initial_weight
from pyro_deq.training import train


def poisson_with_empty_rows_and_columns():
    """A 60 x 300 count matrix whose columns 0-4 and row 7 are all zero."""
    generator = torch.Generator().manual_seed(0)
    y = torch.poisson(torch.full((60, 300), 2.0), generator=generator)
    y[:, :5] = 0
    y[7] = 0
    return y


def binary_with_constant_columns():
    """A 40 x 10 binary matrix whose column 0 is all zero and column 1 all one."""
    generator = torch.Generator().manual_seed(1)
    y = torch.bernoulli(torch.full((40, 10), 0.4), generator=generator)
    y[:, 0] = 0
    y[:, 1] = 1
    return y


def fit(family, y, n_components, num_steps):
    pyro.set_rng_seed(0)
    model = pyro_deq.ExpFamPCA(
        y.shape[1], n_components, family=family,
        weight=initial_weight(family, y, n_components), bias=initial_bias(family, y),
    )
    guide = pyro_deq.AutoDEQ(model)
    result = train(model, guide, y, num_steps=num_steps)
    return model, guide, result


def test_poisson_empty_rows_and_columns_found():
    y = poisson_with_empty_rows_and_columns()
    family = pyro_deq.families.get("poisson")
    assert degenerate_columns(family, y) == [0, 1, 2, 3, 4]
    assert degenerate_rows(family, y) == [7]


def test_binary_constant_rows_and_columns_found():
    family = pyro_deq.families.get("bernoulli")
    assert degenerate_columns(family, binary_with_constant_columns()) == [0, 1]
    y = torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 1.0]])
    assert degenerate_rows(family, y) == [1, 2]
    mask = torch.tensor([[True, False, True], [True] * 3, [True] * 3, [True] * 3])
    assert degenerate_rows(family, y, mask) == [0, 1, 2]


def test_poisson_empty_rows_and_columns_fit_finite():
    y = poisson_with_empty_rows_and_columns()
    model, guide, result = fit(pyro_deq.families.get("poisson"), y, 3, num_steps=10)
    z = guide.median(y)["z"]
    assert all(np.isfinite(result.losses))
    assert bool(torch.isfinite(z).all())
    assert bool(torch.isfinite(model.weight).all())
    assert bool(torch.isfinite(model.bias).all())
    assert guide.diagnostics["fraction_converged"] == 1.0


def test_binary_constant_columns_fit_finite():
    y = binary_with_constant_columns()
    model, guide, result = fit(pyro_deq.families.get("bernoulli"), y, 2, num_steps=30)
    assert all(np.isfinite(result.losses))
    assert bool(torch.isfinite(guide.median(y)["z"]).all())
    bias = model.bias.detach()
    assert bool(torch.isfinite(bias).all())
    # The bias of the all-zero column heads to -inf and that of the all-one
    # column to +inf, but stays finite after finitely many steps.
    assert bias[0] < -3 < 3 < bias[1]


def test_cli_warns_about_empty_rows(tmp_path, capsys):
    y = poisson_with_empty_rows_and_columns()[:, :40]
    np.save(tmp_path / "counts.npy", y.numpy())
    status = main(["fit", str(tmp_path / "counts.npy"), "--family", "poisson", "--latent-dim", "2",
                   "--out", str(tmp_path / "out"), "--quiet", "--steps", "3", "--drop-degenerate"])
    assert status == 0
    err = capsys.readouterr().err
    assert "1 row (counted from 1) has every observed entry at one end of the support" in err
    assert "all zero: 8;" in err
    assert "dropped 5 degenerate columns (--drop-degenerate): column_1, column_2, column_3, column_4, column_5" in err
