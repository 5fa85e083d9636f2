import pytest
import torch

from pyro_deq.errors import ConvergenceWarning
from pyro_deq.solvers import FixedPointProblem, solve


def test_picard_converges_on_contractive_problem(contractive_problem, zeros):
    result = solve(contractive_problem, zeros(contractive_problem), method="picard", tol=1e-12)

    assert result.converged.all()
    assert result.residual.max() <= 1e-12


def test_picard_fails_on_expanding_problem_with_warning(expanding_problem, zeros):
    z0 = zeros(expanding_problem)
    with pytest.warns(ConvergenceWarning, match=r"contraction bound .* is 8 >= 1") as record:
        result = solve(expanding_problem, z0, method="picard", max_iter=300)

    assert not result.converged.all()
    assert result.status in ("max_iter", "diverged")
    assert "contraction bound" in result.message
    assert record[0].filename == __file__
    for name in ("z", "residual", "residual_history", "objective_history"):
        assert not torch.isnan(getattr(result, name)).any(), name


def test_picard_damping_rescues_linear_expanding_problem(make_problem, zeros):
    problem = make_problem("gaussian", bound=8.0)
    damping = 1.0 / (1.0 + problem.contraction_bound)
    result = solve(problem, zeros(problem), method="picard", damping=damping, tol=1e-12, max_iter=5000)

    assert result.converged.all()
    newton = solve(problem, zeros(problem), method="newton", tol=1e-12)
    torch.testing.assert_close(result.z, newton.z, atol=1e-9, rtol=0)


class DoublingProblem(FixedPointProblem):
    """``f(z) = 2 z + 1``: fixed point -1, and plain iteration moves away from it."""

    contraction_bound = 2.0

    def fixed_point_map(self, z):
        return 2.0 * z + 1.0


def test_picard_diverging_row_returns_best_iterate():
    z0 = torch.tensor([[0.0], [-1.0]], dtype=torch.float64)
    with pytest.warns(ConvergenceWarning, match="2 >= 1"):
        result = solve(DoublingProblem(), z0, method="picard", max_iter=100)

    assert result.row_status.tolist() == [result.STATUSES.index("diverged"), result.STATUSES.index("converged")]
    assert result.status == "diverged"
    assert result.z.tolist() == [[0.0], [-1.0]]
    assert result.n_iter < 20


def test_picard_overflow_is_non_finite_not_nan():
    z0 = torch.ones(2, 2, dtype=torch.float64)
    with pytest.warns(ConvergenceWarning, match="non-finite"):
        result = solve(lambda z: torch.exp(z * 50), z0, method="picard", divergence_factor=float("inf"))

    assert result.status == "non_finite"
    assert torch.isfinite(result.z).all()
    assert not torch.isnan(result.residual).any()
