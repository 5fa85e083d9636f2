"""Objective going up: Newton's line search keeps the negative log joint from rising."""

import torch

import pyro_deq


def binary_with_duplicates():
    """A 45 x 395 binary matrix: columns 10-19 copy column 0, columns 390-394 are all one."""
    generator = torch.Generator().manual_seed(0)
    y = torch.bernoulli(torch.full((45, 395), 0.3), generator=generator).double()
    y[:, 10:20] = y[:, 0:1]
    y[:, 390:] = 1
    return y


def make_problem(weight_scale):
    y = binary_with_duplicates()
    weight = weight_scale * torch.randn(395, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    model = pyro_deq.ExpFamPCA(395, 2, family="bernoulli", weight=weight)
    return model.problem(y)


def solve(weight_scale):
    problem = make_problem(weight_scale)
    return pyro_deq.solve(problem, torch.zeros(45, 2, dtype=torch.float64)), problem


def objective_path(weight_scale):
    """Solve from zero and return the result and the objective at every iterate, shape ``(n_iter + 1, 45)``."""
    problem = make_problem(weight_scale)
    z0 = torch.zeros(45, 2, dtype=torch.float64)
    objectives = [problem.objective(z0)]

    def record(n_iter, z, residual):
        objectives.append(problem.objective(z))

    result = pyro_deq.solve(problem, z0, callback=record)
    return result, torch.stack(objectives).detach()


def test_objective_never_rises():
    for weight_scale in (0.5, 200.0):
        result, history = objective_path(weight_scale)
        assert history.shape == (result.n_iter + 1, 45)
        rise = history[1:] - history[:-1]
        assert float(rise.max()) <= 1e-9 * float(history.abs().max())
        assert result.converged.shape == (45,)


def test_large_loadings_converge_to_stationary_point():
    result, problem = solve(200.0)
    assert result.stats["n_backtracks"] >= 0
    assert result.status == "converged"
    with torch.no_grad():
        gradient = problem.gradient(result.z)
    assert float(gradient.norm(dim=-1).max()) < 1e-4
