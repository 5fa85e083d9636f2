"""ExpFamPCAProblem's strong convexity, its lazy evaluation, and Newton's steps certified by them."""

from __future__ import annotations

import pytest
import torch

import pyro_deq
from pyro_deq.solvers.newton import ROUNDING_ULPS

from expfam_helpers import FAMILY_IDS, make_problem_data


def _problem(family_id, nonlinearity="identity", dtype=torch.float64, **kwargs):
    model, y = make_problem_data(family_id, dtype=dtype, nonlinearity=nonlinearity, **kwargs)
    with torch.no_grad():
        return model.problem(y)


def _uncertified(problem):
    """The same problem without strong convexity, so Newton checks the objective of every step."""
    cls = type("Uncertified", (type(problem),), {"strong_convexity": None})
    clone = cls.__new__(cls)
    clone.__dict__.update(problem.__dict__)
    return clone


@pytest.mark.parametrize("nonlinearity, expected", [("identity", 1.0), ("relu", None)])
def test_strong_convexity_declared_for_identity_only(nonlinearity, expected):
    assert _problem("bernoulli", nonlinearity).strong_convexity == expected


@pytest.mark.parametrize("family_id", FAMILY_IDS)
def test_residual_is_strongly_monotone(family_id):
    problem = _problem(family_id, n_rows=12, weight_scale=2.0, seed=5)
    generator = torch.Generator().manual_seed(6)
    for _ in range(20):
        z = 2 * torch.randn(12, 2, generator=generator, dtype=torch.float64)
        other = z + torch.randn(12, 2, generator=generator, dtype=torch.float64)
        step = other - z
        monotone = ((problem.residual(z) - problem.residual(other)) * step).sum(-1)
        bound = problem.strong_convexity * step.square().sum(-1)
        assert (monotone >= bound * (1 - 1e-10)).all()


@pytest.mark.parametrize("nonlinearity", ["identity", "relu"])
@pytest.mark.parametrize("family_id", FAMILY_IDS)
def test_complete_equals_full_evaluation(family_id, nonlinearity):
    problem = _problem(family_id, nonlinearity, n_rows=7, seed=2)
    z = torch.randn(7, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    full = problem.evaluate(z, jacobian=True)
    partial = problem.evaluate(z, objective=False)
    assert partial.objective is None and partial.jacobian is None
    torch.testing.assert_close(partial.value, full.value, rtol=0, atol=0)

    for objective, jacobian in ((True, False), (False, True), (True, True)):
        completed = problem.complete(z, partial, objective=objective, jacobian=jacobian)
        assert (completed.objective is not None) == objective
        assert (completed.jacobian is not None) == jacobian
        if objective:
            torch.testing.assert_close(completed.objective, full.objective, rtol=1e-13, atol=1e-13)
        if jacobian:
            torch.testing.assert_close(completed.jacobian, full.jacobian, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("family_id", FAMILY_IDS)
def test_certified_newton_matches_objective_line_search(family_id):
    problem = _problem(family_id, n_rows=40, n_features=20, n_components=3, weight_scale=2.0, seed=1)
    z0 = torch.zeros(40, 3, dtype=torch.float64)

    certified = pyro_deq.solve(problem, z0, tol=1e-12)
    checked = pyro_deq.solve(_uncertified(problem), z0, tol=1e-12)

    assert certified.converged.all() and checked.converged.all()
    assert certified.stats["n_certified"] > 0
    assert checked.stats["n_certified"] == 0
    assert certified.objective_history is None
    assert checked.objective_history is not None
    torch.testing.assert_close(certified.z, checked.z, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("family_id, weight_scale", [("bernoulli", 4.0), ("poisson", 2.0), ("poisson", 4.0)])
def test_certified_steps_never_raise_objective(family_id, weight_scale, dtype):
    problem = _problem(family_id, dtype=dtype, n_rows=40, n_features=20, n_components=3,
                       weight_scale=weight_scale, seed=1)
    objectives = [problem.objective(torch.zeros(40, 3, dtype=dtype))]

    def record(n_iter, z, residual):
        objectives.append(problem.objective(z))

    result = pyro_deq.solve(problem, torch.zeros(40, 3, dtype=dtype), callback=record)

    assert result.converged.all()
    history = torch.stack(objectives)
    allowance = ROUNDING_ULPS * torch.finfo(dtype).eps * (1 + history[:-1].abs())
    assert (history[1:] <= history[:-1] + allowance).all()
    if family_id == "poisson":
        # Overshooting exponentials leave steps the certificate cannot decide.
        assert result.stats["n_uncertified"] > 0
        assert result.stats["n_backtracks"] > 0
