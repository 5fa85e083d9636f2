"""Non-contractive fixed-point maps: Newton converges where plain and Anderson iteration cannot."""

import pytest
import torch

import pyro_deq


@pytest.fixture(scope="module")
def weak_prior_problem():
    """500 x 50 binary data with prior precision 0.01, so ||W||^2 sup A'' / lambda is far above 1."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(50, 3, generator=generator, dtype=torch.float64)
    z = torch.randn(500, 3, generator=generator, dtype=torch.float64)
    y = torch.bernoulli(torch.sigmoid(z @ weight.T), generator=generator)
    model = pyro_deq.ExpFamPCA(50, 3, family="bernoulli", prior_precision=0.01, weight=weight)
    return model.problem(y)


def test_contraction_bound_above_one(weak_prior_problem):
    assert weak_prior_problem.contraction_bound == pytest.approx(1505.906, rel=1e-5)


def test_default_solver_converges(weak_prior_problem):
    result = pyro_deq.solve(weak_prior_problem, torch.zeros(500, 3, dtype=torch.float64))
    assert result.method == "newton"
    assert result.status == "converged"
    assert result.n_iter <= 20
    with torch.no_grad():
        gradient = weak_prior_problem.gradient(result.z)
    assert float(gradient.norm(dim=-1).max()) < 1e-6


@pytest.mark.parametrize("method", ["picard", "anderson"])
def test_iteration_warning_names_bound(weak_prior_problem, method):
    with pytest.warns(pyro_deq.ConvergenceWarning) as caught:
        result = pyro_deq.solve(weak_prior_problem, torch.zeros(500, 3, dtype=torch.float64), method=method)
    message = str(caught[0].message)
    assert "contraction bound ||W||^2 sup A'' / lambda is 1.51e+03 >= 1" in message
    assert "use method='newton' or a damping below 0.00133" in message
    assert result.status == "diverged"
    assert result.n_iter < 400
    assert "stopped decreasing" in message
    assert bool(torch.isfinite(result.z).all())
    assert bool(torch.isfinite(result.residual).all())
