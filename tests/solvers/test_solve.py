import logging

import pytest
import torch

from pyro_deq.errors import ConvergenceWarning, NumericalError
from pyro_deq.solvers import DEFAULT_MAX_ITER, SolverError, default_tolerance, solve


@pytest.mark.parametrize("method", ["newton", "anderson", "picard"])
def test_methods_agree_on_contractive_problem(contractive_problem, zeros, method):
    z0 = zeros(contractive_problem)
    reference = solve(contractive_problem, z0, method="newton", tol=1e-13)
    result = solve(contractive_problem, z0, method=method, tol=1e-12)

    assert result.converged.all()
    assert result.method == method
    torch.testing.assert_close(result.z, reference.z, atol=1e-8, rtol=0)


def test_default_method_is_newton_for_problem(contractive_problem, zeros):
    result = solve(contractive_problem, zeros(contractive_problem))

    assert result.method == "newton"
    assert result.tol == default_tolerance(torch.float64)


def test_default_method_is_anderson_for_callable():
    result = solve(lambda z: 0.5 * torch.tanh(z) + 1.0, torch.zeros(5, 2))

    assert result.method == "anderson"
    assert result.converged.all()
    assert result.tol == default_tolerance(torch.float32)


def test_default_max_iter_per_method():
    z0 = torch.zeros(2, 1, dtype=torch.float64)
    # Rate 0.99: the residual halves every 69 steps, steadily enough to run
    # all 1000 iterations, and still ends far above the float64 tolerance.
    with pytest.warns(ConvergenceWarning):
        result = solve(lambda z: 0.99 * z + 1.0, z0, method="picard")

    assert DEFAULT_MAX_ITER == {"newton": 50, "anderson": 500, "picard": 1000}
    assert result.n_iter == DEFAULT_MAX_ITER["picard"]
    assert result.status == "max_iter"


def test_cycling_picard_stops_as_diverged():
    z0 = torch.zeros(2, 1, dtype=torch.float64)
    with pytest.warns(ConvergenceWarning, match="stopped decreasing"):
        result = solve(lambda z: -z + 1.0, z0, method="picard")

    assert result.status == "diverged"
    assert result.n_iter == 100


def test_result_keeps_dtype_and_detaches(contractive_problem, zeros):
    z0 = zeros(contractive_problem, torch.float32).requires_grad_(True)
    p = contractive_problem
    problem = type(p)(p.y.float(), p.weight.float(), p.bias.float(), p.prior_precision, p.family)
    result = solve(problem, z0)

    assert result.z.dtype == torch.float32
    assert result.residual.dtype == torch.float32
    assert not result.z.requires_grad


def test_solve_under_no_grad(contractive_problem, zeros):
    with torch.no_grad():
        result = solve(contractive_problem, zeros(contractive_problem))

    assert result.converged.all()


def test_warm_start_takes_zero_iterations(contractive_problem, zeros):
    solved = solve(contractive_problem, zeros(contractive_problem), tol=1e-12)
    result = solve(contractive_problem, solved.z, tol=1e-12)

    assert result.n_iter == 0
    assert result.converged.all()
    assert result.residual_history.shape == (1, solved.z.shape[0])


def test_max_iter_zero_reports_start(contractive_problem, zeros):
    z0 = zeros(contractive_problem)
    with pytest.warns(ConvergenceWarning, match="after 0 iterations"):
        result = solve(contractive_problem, z0, max_iter=0)

    assert result.n_iter == 0
    assert result.status == "max_iter"
    assert torch.equal(result.z, z0)


def test_empty_batch_converges():
    result = solve(lambda z: z, torch.zeros(0, 3))

    assert result.converged.shape == (0,)
    assert result.status == "converged"


def test_throw_raises_solver_error(expanding_problem, zeros):
    with pytest.raises(SolverError, match="contraction bound") as info:
        solve(expanding_problem, zeros(expanding_problem), method="picard", max_iter=20, throw=True)

    assert isinstance(info.value, NumericalError)
    assert info.value.diagnostics["n_iter"] == 20
    assert info.value.diagnostics["failed_rows"].numel() > 0
    assert info.value.diagnostics["result"].status == "max_iter"


def test_warning_points_at_caller(expanding_problem, zeros):
    with pytest.warns(ConvergenceWarning) as record:
        solve(expanding_problem, zeros(expanding_problem), method="picard", max_iter=5)

    assert len(record) == 1
    assert record[0].filename == __file__


def test_callback_sees_every_iteration(contractive_problem, zeros):
    seen = []
    result = solve(contractive_problem, zeros(contractive_problem), method="picard", callback=lambda *args: seen.append(args))

    assert [n_iter for n_iter, _, _ in seen] == list(range(1, result.n_iter + 1))
    assert seen[-1][1].shape == result.z.shape
    assert seen[-1][2].shape == result.residual.shape


def test_progress_is_logged_at_debug(contractive_problem, zeros, caplog):
    with caplog.at_level(logging.DEBUG, logger="pyro_deq.solvers"):
        result = solve(contractive_problem, zeros(contractive_problem), method="newton")

    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == result.n_iter
    assert all(record.levelno == logging.DEBUG for record in caplog.records)
    assert "newton iteration 1" in messages[0]


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        ({"method": "broyden"}, ValueError, r"`method` 'broyden'.*\['anderson', 'newton', 'picard'\]"),
        ({"tol": 0.0}, ValueError, r"`tol` must be a positive finite number, got 0.0"),
        ({"tol": -1e-6}, ValueError, r"`tol`"),
        ({"tol": float("nan")}, ValueError, r"`tol`"),
        ({"max_iter": -1}, ValueError, r"`max_iter` must be a non-negative integer, got -1"),
        ({"max_iter": 2.5}, ValueError, r"`max_iter`"),
        ({"method": "picard", "memory": 3}, TypeError, r"unknown options \['memory'\]"),
        ({"method": "newton", "dampign": 0.5}, TypeError, r"unknown options \['dampign'\]"),
        ({"method": "picard", "damping": 0.0}, ValueError, r"`damping` must be a positive"),
        ({"method": "anderson", "memory": 0}, ValueError, r"`memory` must be an integer >= 1, got 0"),
        ({"method": "anderson", "divergence_factor": 0.5}, ValueError, r"`divergence_factor`"),
        ({"method": "newton", "max_backtracks": -2}, ValueError, r"`max_backtracks`"),
        ({"method": "picard", "callback": 3}, TypeError, r"`callback` must be callable"),
    ],
)
def test_invalid_arguments_name_the_argument(contractive_problem, zeros, kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        solve(contractive_problem, zeros(contractive_problem), **kwargs)


@pytest.mark.parametrize(
    "z0, error, pattern",
    [
        (torch.zeros(3), ValueError, r"`z0` must have shape \(N, k\).*got shape \(3,\)"),
        (torch.zeros(2, 3, 4), ValueError, r"`z0`.*\(2, 3, 4\)"),
        (torch.zeros(3, 2, dtype=torch.long), TypeError, r"`z0` must have a floating-point dtype, got torch.int64"),
        (torch.full((3, 2), float("nan")), ValueError, r"`z0` contains NaN"),
        ([[0.0, 0.0]], TypeError, r"`z0` must be a torch.Tensor"),
    ],
)
def test_invalid_z0_is_rejected(z0, error, pattern):
    with pytest.raises(error, match=pattern):
        solve(lambda z: z, z0)


def test_invalid_problem_is_rejected():
    with pytest.raises(TypeError, match="`fn_or_problem`"):
        solve(42, torch.zeros(2, 2))
