import math

import pytest
import torch

from pyro_deq.errors import ConvergenceWarning
from pyro_deq.solvers import solve


def test_anderson_converges_on_expanding_problem(expanding_problem, zeros):
    result = solve(expanding_problem, zeros(expanding_problem), method="anderson", tol=1e-12)

    assert result.converged.all()
    assert torch.isfinite(result.z).all()


def test_anderson_duplicate_rows_give_equal_results(make_problem, toy_problem_class, zeros):
    p = make_problem(bound=2.0, n_rows=4)
    y = p.y[:1].expand(6, -1).clone()
    problem = toy_problem_class(y, p.weight, p.bias)
    result = solve(problem, zeros(problem), method="anderson", tol=1e-12)

    # Each row mixes only its own history, so duplicates agree up to rounding;
    # vectorized kernels may round a row differently by its memory position.
    assert result.converged.all()
    torch.testing.assert_close(result.z, result.z[:1].expand(6, -1), atol=1e-14, rtol=0)


def test_anderson_constant_map_converges_in_one_step():
    target = torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=torch.float64)
    result = solve(lambda z: target, torch.zeros(2, 2, dtype=torch.float64), method="anderson")

    assert result.converged.all()
    assert result.n_iter == 1
    assert torch.equal(result.z, target)


def test_anderson_zero_loadings_give_zero(make_problem, toy_problem_class, zeros):
    p = make_problem()
    problem = toy_problem_class(p.y, torch.zeros_like(p.weight), p.bias)
    result = solve(problem, torch.ones_like(zeros(problem)), method="anderson")

    assert result.converged.all()
    assert result.z.abs().max() == 0


def test_anderson_singular_history_falls_back():
    # For f(z) = z / 2 from z = 1 the residuals are exact multiples of each other,
    # so the unregularised Gram matrix is exactly singular.
    z0 = torch.ones(3, 1, dtype=torch.float64)
    result = solve(lambda z: 0.5 * z, z0, method="anderson", regularization=0.0, tol=1e-12)

    assert result.converged.all()
    assert result.stats["n_fallbacks"] > 0


def test_anderson_without_fixed_point_reports_without_raising():
    z0 = torch.zeros(3, 2, dtype=torch.float64)
    with pytest.warns(ConvergenceWarning, match="anderson"):
        result = solve(lambda z: z + 1.0, z0, method="anderson", max_iter=30)

    assert not result.converged.any()
    assert torch.isfinite(result.z).all()
    assert torch.isfinite(result.residual).all()


def test_anderson_non_finite_start_is_reported():
    z0 = torch.zeros(2, 1, dtype=torch.float64)
    with pytest.warns(ConvergenceWarning, match="non-finite"):
        result = solve(lambda z: torch.sqrt(z - 1.0), z0, method="anderson")

    assert result.status == "non_finite"
    assert result.n_iter == 0
    assert torch.equal(result.z, z0)
    assert not torch.isnan(result.residual).any()


def test_anderson_diverging_row_returns_best_iterate():
    z0 = torch.tensor([[0.0], [-1.0]], dtype=torch.float64)
    with pytest.warns(ConvergenceWarning, match="grew far above its smallest value"):
        result = solve(lambda z: 2.0 * z + 1.0, z0, method="anderson", memory=1, divergence_patience=3)

    assert result.row_status.tolist() == [result.STATUSES.index("diverged"), result.STATUSES.index("converged")]
    assert result.z.tolist() == [[0.0], [-1.0]]
    assert torch.isfinite(result.residual_history).all()


def test_anderson_memory_one_equals_damped_iteration(contractive_problem, zeros):
    z0 = zeros(contractive_problem)
    anderson = solve(contractive_problem, z0, method="anderson", memory=1, damping=0.7, tol=1e-12)
    picard = solve(contractive_problem, z0, method="picard", damping=0.7, tol=1e-12)

    assert anderson.n_iter == picard.n_iter
    torch.testing.assert_close(anderson.z, picard.z, atol=1e-12, rtol=0)


def test_anderson_default_regularization_is_relative(contractive_problem, zeros):
    z0 = zeros(contractive_problem)
    result = solve(contractive_problem, z0, method="anderson", tol=1e-12)
    scaled = solve(lambda z: 1e6 * contractive_problem.fixed_point_map(z / 1e6), 1e6 * z0, method="anderson", tol=1e-12)

    assert result.converged.all()
    assert scaled.converged.all()
    assert scaled.n_iter == result.n_iter
    assert math.isclose(float(scaled.z.abs().max()), 1e6 * float(result.z.abs().max()), rel_tol=1e-8)
