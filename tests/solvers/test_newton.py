import pytest
import torch

from pyro_deq.errors import ConvergenceWarning
from pyro_deq.solvers import Evaluation, solve
from pyro_deq.solvers.newton import ROUNDING_ULPS, newton_solve



def test_newton_converges_on_expanding_problem(expanding_problem, zeros):
    z0 = zeros(expanding_problem)
    result = solve(expanding_problem, z0, method="newton", tol=1e-12)

    assert expanding_problem.contraction_bound == pytest.approx(8.0)
    assert result.converged.all()
    assert result.n_iter <= 10
    assert result.residual.max() <= 1e-12
    assert torch.isfinite(result.z).all()


def test_newton_objective_history_never_rises(expanding_problem, zeros):
    z0 = zeros(expanding_problem)
    result = solve(expanding_problem, z0, method="newton", tol=1e-12)

    history = result.objective_history
    assert history.shape == (result.n_iter + 1, z0.shape[0])
    eps = torch.finfo(history.dtype).eps
    allowance = ROUNDING_ULPS * eps * (1 + history[:-1].abs())
    assert (history[1:] <= history[:-1] + allowance).all()
    assert result.residual_history.shape == (result.n_iter + 1, z0.shape[0])


def test_newton_poisson_large_loadings_from_zero(make_problem, zeros):
    problem = make_problem("poisson", n_rows=30, n_features=20, n_components=3, loading_scale=3.0)
    z0 = zeros(problem)
    result = solve(problem, z0, method="newton", tol=1e-10)

    assert result.converged.all()
    assert result.stats["n_backtracks"] > 0
    assert torch.isfinite(result.z).all()
    assert torch.isfinite(result.residual_history).all()
    assert torch.isfinite(result.objective_history).all()


def test_newton_matches_stationarity(contractive_problem, zeros):
    z0 = zeros(contractive_problem)
    result = solve(contractive_problem, z0, method="newton", tol=1e-13)

    z = result.z.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(contractive_problem.log_joint(z).sum(), z)
    assert gradient.abs().max() < 1e-10


def test_newton_freezes_converged_rows(contractive_problem, zeros):
    solved = solve(contractive_problem, zeros(contractive_problem), method="newton", tol=1e-13).z
    z0 = zeros(contractive_problem)
    z0[:5] = solved[:5]
    result = solve(contractive_problem, z0, method="newton", tol=1e-12)

    assert (result.stats["row_iterations"][:5] == 0).all()
    assert (result.stats["row_iterations"][5:] > 0).all()
    assert torch.equal(result.z[:5], solved[:5])


def test_newton_falls_back_on_singular_jacobian(contractive_problem, toy_problem_class, zeros):
    class ZeroJacobianProblem(toy_problem_class):
        """Returns a zero Jacobian, so every Newton solve is singular."""

        def evaluate(self, z, jacobian=False):
            evaluation = super().evaluate(z, jacobian)
            if jacobian:
                evaluation.jacobian = torch.zeros_like(evaluation.jacobian)
            return evaluation

    p = contractive_problem
    problem = ZeroJacobianProblem(p.y, p.weight, p.bias, p.prior_precision, p.family)
    result = solve(problem, zeros(problem), method="newton", tol=1e-10, max_iter=200)

    assert result.converged.all()
    assert result.stats["n_fallbacks"] > 0


def test_newton_marks_stalled_rows_and_keeps_start(contractive_problem, toy_problem_class, zeros):
    class FlippedObjectiveProblem(toy_problem_class):
        """Reports +l(z) as objective, so no step along the residual decreases it."""

        def evaluate(self, z, jacobian=False):
            evaluation = super().evaluate(z, jacobian)
            evaluation.objective = -evaluation.objective
            return evaluation

    p = contractive_problem
    problem = FlippedObjectiveProblem(p.y, p.weight, p.bias, p.prior_precision, p.family)
    z0 = zeros(problem)
    with pytest.warns(ConvergenceWarning, match="line search"):
        result = solve(problem, z0, method="newton", max_backtracks=5)

    assert result.status == "stalled"
    assert not result.converged.any()
    assert torch.equal(result.z, z0)
    assert result.n_iter == 1


def test_newton_on_callable_uses_residual_merit():
    def fn(z):
        return 0.5 * torch.tanh(z) + 1.0

    z0 = torch.zeros(4, 3, dtype=torch.float64)
    result = solve(fn, z0, method="newton", tol=1e-12)

    assert result.converged.all()
    assert result.objective_history is None
    torch.testing.assert_close(result.z, fn(result.z), atol=1e-11, rtol=0)


def test_newton_rejects_problem_without_jacobian(make_problem, toy_problem_class, zeros):
    class NoJacobian(toy_problem_class):
        has_jacobian = False

    p = make_problem()
    problem = NoJacobian(p.y, p.weight, p.bias)
    with pytest.raises(NotImplementedError, match="anderson"):
        solve(problem, zeros(problem), method="newton")


def test_newton_checks_problem_flags(make_problem, toy_problem_class, zeros):
    class MissingObjective(toy_problem_class):
        def evaluate(self, z, jacobian=False):
            evaluation = super().evaluate(z, jacobian)
            return Evaluation(evaluation.value, evaluation.residual, None, evaluation.jacobian)

    p = make_problem()
    problem = MissingObjective(p.y, p.weight, p.bias)
    with pytest.raises(TypeError, match="objective"):
        newton_solve(problem, zeros(problem), tol=1e-8, max_iter=5)


def test_newton_float32_reaches_default_tolerance(make_problem, zeros):
    problem = make_problem(bound=8.0, n_features=32, dtype=torch.float32)
    result = solve(problem, zeros(problem, torch.float32), method="newton")

    assert result.converged.all()
    assert result.z.dtype == torch.float32
