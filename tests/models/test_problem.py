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


def _overriding(problem, **attributes):
    """Return a copy of ``problem`` whose class overrides ``attributes``, to switch a solver shortcut off."""
    cls = type(f"{type(problem).__name__}Variant", (type(problem),), attributes)
    clone = cls.__new__(cls)
    clone.__dict__.update(problem.__dict__)
    return clone


def _uncertified(problem):
    """The same problem without strong convexity, so Newton checks the objective of every step."""
    return _overriding(problem, strong_convexity=None)


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
    assert partial.objective is None
    assert partial.jacobian is None
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

    assert certified.converged.all()
    assert checked.converged.all()
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


@pytest.mark.parametrize("family_id", FAMILY_IDS)
def test_evaluate_shared_equals_row_evaluation(family_id):
    problem = _problem(family_id, n_rows=6, seed=4)
    for start in (torch.zeros(6, 2, dtype=torch.float64), torch.tensor([[0.3, -1.2]], dtype=torch.float64).expand(6, 2)):
        evaluation, shared = problem.evaluate_shared(start)
        rows = problem.evaluate(start, jacobian=True)
        assert shared.shape == (2, 2)
        torch.testing.assert_close(shared.expand(6, 2, 2), rows.jacobian, rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(evaluation.value, rows.value, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(evaluation.residual, rows.residual, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(evaluation.objective, rows.objective, rtol=1e-12, atol=1e-12)
        without_objective, _ = problem.evaluate_shared(start, objective=False)
        assert without_objective.objective is None
        torch.testing.assert_close(without_objective.residual, rows.residual, rtol=1e-12, atol=1e-12)


def test_evaluate_shared_none_when_rows_differ():
    zeros = torch.zeros(6, 2, dtype=torch.float64)
    model, y = make_problem_data("binomial5", n_rows=6, seed=4)
    mask = torch.ones_like(y, dtype=torch.bool)
    mask[0, 0] = False
    with torch.no_grad():
        cases = {
            "relu": _problem("bernoulli", "relu", n_rows=6, seed=4),
            "mask": model.problem(y, mask=mask),
            "row offset": model.problem(y, offset=torch.linspace(0, 1, 6, dtype=torch.float64)[:, None]),
            "entry counts": pyro_deq.ExpFamPCA(
                6, 2, family=pyro_deq.families.get("binomial", total_count=torch.full((6, 6), 5.0)),
                weight=model.weight.detach(), bias=model.bias.detach(),
            ).problem(y),
        }
    for name, problem in cases.items():
        assert problem.evaluate_shared(zeros) is None, name
    unequal = zeros.clone()
    unequal[3, 1] = 0.5
    assert model.problem(y).evaluate_shared(unequal) is None


def test_evaluate_shared_kept_for_feature_offset():
    model, y = make_problem_data("poisson", n_rows=6, seed=4)
    with torch.no_grad():
        problem = model.problem(y, offset=torch.linspace(0, 1, 6, dtype=torch.float64)[None, :])
    zeros = torch.zeros(6, 2, dtype=torch.float64)
    evaluation, shared = problem.evaluate_shared(zeros)
    rows = problem.evaluate(zeros, jacobian=True)
    torch.testing.assert_close(shared.expand(6, 2, 2), rows.jacobian, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(evaluation.objective, rows.objective, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("family_id", FAMILY_IDS)
def test_newton_with_shared_start_matches_row_start(family_id):
    problem = _problem(family_id, n_rows=40, n_features=20, n_components=3, weight_scale=2.0, seed=1)
    unshared = _overriding(problem, evaluate_shared=lambda self, z, objective=True: None)
    z0 = torch.zeros(40, 3, dtype=torch.float64)

    shared_result = pyro_deq.solve(problem, z0, tol=1e-12)
    row_result = pyro_deq.solve(unshared, z0, tol=1e-12)

    assert shared_result.converged.all()
    assert shared_result.n_iter == row_result.n_iter
    torch.testing.assert_close(shared_result.z, row_result.z, rtol=1e-10, atol=1e-10)


def _without_rows(problem):
    """The same problem with ``has_rows`` off, so Newton iterates on every row to the end."""
    return _overriding(problem, has_rows=False)


def _masked_offset_binomial_problem():
    model, y = make_problem_data("binomial5", n_rows=40, n_features=20, n_components=3, weight_scale=2.0, seed=7)
    generator = torch.Generator().manual_seed(8)
    mask = torch.rand(40, 20, generator=generator) > 0.2
    offset = 0.3 * torch.randn(40, 1, generator=generator, dtype=torch.float64)
    counts = torch.full((40, 20), 5.0, dtype=torch.float64)
    family = pyro_deq.families.get("binomial", total_count=counts)
    entry_model = pyro_deq.ExpFamPCA(20, 3, family=family, weight=model.weight.detach(), bias=model.bias.detach())
    with torch.no_grad():
        return entry_model.problem(y, mask=mask, offset=offset)


@pytest.mark.parametrize("case", ["bernoulli", "poisson", "masked binomial"])
def test_newton_on_active_rows_matches_all_rows(case):
    if case == "masked binomial":
        problem = _masked_offset_binomial_problem()
    else:
        problem = _problem(case, n_rows=40, n_features=20, n_components=3, weight_scale=2.0, seed=2)
    z0 = torch.zeros(40, 3, dtype=torch.float64)
    seen = []

    compacted = pyro_deq.solve(problem, z0, tol=1e-12, callback=lambda n_iter, z, residual: seen.append(z.shape))
    full = pyro_deq.solve(_without_rows(problem), z0, tol=1e-12)

    assert compacted.stats["n_compactions"] > 0
    assert full.stats["n_compactions"] == 0
    assert compacted.converged.all()
    assert compacted.n_iter == full.n_iter
    assert torch.equal(compacted.stats["row_iterations"], full.stats["row_iterations"])
    assert set(seen) == {(40, 3)}
    torch.testing.assert_close(compacted.z, full.z, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(compacted.residual_history, full.residual_history, rtol=1e-9, atol=1e-12)


def test_newton_from_mostly_converged_start():
    problem = _problem("bernoulli", n_rows=40, n_features=20, n_components=3, weight_scale=2.0, seed=1)
    solved = pyro_deq.solve(problem, torch.zeros(40, 3, dtype=torch.float64), tol=1e-13).z
    z0 = solved.clone()
    z0[[3, 17]] = 0.0

    result = pyro_deq.solve(problem, z0, tol=1e-12)

    assert result.converged.all()
    assert result.stats["n_compactions"] == 1
    assert (result.stats["row_iterations"][[3, 17]] > 0).all()
    assert result.stats["row_iterations"].sum() == result.stats["row_iterations"][[3, 17]].sum()
    torch.testing.assert_close(result.z, solved, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("family_id", ["bernoulli", "poisson"])
def test_cholesky_newton_matches_lu(family_id, monkeypatch):
    from pyro_deq.solvers import newton

    problem = _problem(family_id, n_rows=30, n_features=40, n_components=newton.CHOLESKY_MIN_SIZE + 2,
                       weight_scale=0.5, seed=9)
    z0 = torch.zeros(30, newton.CHOLESKY_MIN_SIZE + 2, dtype=torch.float64)

    cholesky = pyro_deq.solve(problem, z0, tol=1e-12)
    monkeypatch.setattr(newton, "CHOLESKY_MIN_SIZE", 10_000)
    lu = pyro_deq.solve(problem, z0, tol=1e-12)

    assert cholesky.converged.all()
    assert cholesky.n_iter == lu.n_iter
    torch.testing.assert_close(cholesky.z, lu.z, rtol=1e-10, atol=1e-10)


def test_reused_problem_keeps_gradients_to_loadings():
    model, y = make_problem_data("bernoulli", n_rows=5, n_features=6, n_components=2, seed=11)
    weight = model.weight.detach().clone().requires_grad_(True)
    bias = model.bias.detach().clone().requires_grad_(True)
    solved = model.problem(y, weight=weight, bias=bias)
    z = pyro_deq.solve(solved, torch.zeros(5, 2, dtype=torch.float64)).z
    fresh = model.problem(y, weight=weight, bias=bias)

    for name in ("precision", "evaluate"):
        def loss(problem):
            if name == "precision":
                return torch.logdet(problem.precision(z)).sum()
            evaluation = problem.evaluate(z, jacobian=True)
            return evaluation.objective.sum() + evaluation.value.sum() + evaluation.jacobian.sum()

        reused_grads = torch.autograd.grad(loss(solved), (weight, bias))
        fresh_grads = torch.autograd.grad(loss(fresh), (weight, bias))
        for reused, expected in zip(reused_grads, fresh_grads):
            torch.testing.assert_close(reused, expected, rtol=1e-12, atol=1e-12)


def test_solve_result_can_enter_autograd():
    model, y = make_problem_data("poisson", n_rows=5, n_features=6, n_components=2, seed=12)
    weight = model.weight.detach().clone().requires_grad_(True)
    problem = model.problem(y, weight=weight)
    assert not problem.uses_autograd

    result = pyro_deq.solve(problem, torch.zeros(5, 2, dtype=torch.float64))
    tensors = [result.z, result.converged, result.residual, result.residual_history, result.row_status,
               result.stats["row_iterations"]]

    assert not any(tensor.is_inference() for tensor in tensors)
    (gradient,) = torch.autograd.grad((result.z @ weight.T).exp().sum(), weight)
    assert torch.isfinite(gradient).all()
    assert torch.linalg.vector_norm(problem.precision(result.z)) > 0


def test_float64_parameters_on_float32_model():
    model64, y = make_problem_data("bernoulli", n_rows=6, n_features=5, n_components=2, seed=13)
    weight, bias = model64.weight.detach(), model64.bias.detach()
    model32 = pyro_deq.ExpFamPCA(5, 2, family="bernoulli", weight=weight.float(), bias=bias.float())

    problem = model32.problem(y, weight=weight, bias=bias)
    assert problem.dtype == torch.float64
    assert problem.data.y.dtype == torch.float64
    z = pyro_deq.solve(problem, torch.zeros(6, 2, dtype=torch.float64), tol=1e-12).z
    expected = pyro_deq.solve(model64.problem(y), torch.zeros(6, 2, dtype=torch.float64), tol=1e-12).z
    torch.testing.assert_close(z, expected, rtol=1e-12, atol=1e-12)

    with pytest.raises(ValueError, match=r"`weight` is torch.float64 but `bias` is torch.float32"):
        model32.problem(y, weight=weight)


@pytest.mark.parametrize(
    "z0, error, message",
    [
        (torch.zeros(5, 2, dtype=torch.float64), ValueError, r"shape \(5, 2\) but the problem has 6 rows of 2"),
        (torch.zeros(6, 3, dtype=torch.float64), ValueError, r"torch.zeros\(6, 2, dtype=torch.float64\)"),
        (torch.zeros(6, 2), TypeError, r"`z0` is torch.float32 but the problem is torch.float64"),
    ],
)
def test_solve_rejects_mismatched_start(z0, error, message):
    problem = _problem("poisson", n_rows=6, n_features=5, seed=14)
    with pytest.raises(error, match=message):
        pyro_deq.solve(problem, z0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("size", [1, 2, 5, 10])
def test_elimination_matches_lapack_solve(size, dtype):
    from pyro_deq.solvers.newton import _eliminate

    generator = torch.Generator().manual_seed(size)
    factor = torch.randn(50, size, size, generator=generator, dtype=torch.float64)
    jacobian = -(torch.eye(size, dtype=torch.float64) + factor @ factor.mT)
    residual = torch.randn(50, size, generator=generator, dtype=torch.float64)

    solution = _eliminate(jacobian.to(dtype), residual.to(dtype))
    expected = torch.linalg.solve(jacobian, -residual)
    tolerance = 1e-10 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(solution.double(), expected, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("family_id", ["bernoulli", "poisson"])
@pytest.mark.parametrize("n_components", [3, 10])
def test_eliminating_newton_matches_lapack(family_id, n_components, monkeypatch):
    from pyro_deq.solvers import newton

    problem = _problem(family_id, n_rows=40, n_features=30, n_components=n_components, weight_scale=0.5, seed=12)
    z0 = torch.zeros(40, n_components, dtype=torch.float64)

    monkeypatch.setattr(newton, "ELIMINATION_MIN_ROWS", 1)
    monkeypatch.setattr(newton, "ELIMINATION_MIN_ROWS_LARGE", 1)
    eliminated = pyro_deq.solve(problem, z0, tol=1e-12)
    monkeypatch.setattr(newton, "ELIMINATION_MIN_ROWS", 10**9)
    monkeypatch.setattr(newton, "ELIMINATION_MIN_ROWS_LARGE", 10**9)
    lapack = pyro_deq.solve(problem, z0, tol=1e-12)

    assert eliminated.converged.all()
    assert eliminated.n_iter == lapack.n_iter
    torch.testing.assert_close(eliminated.z, lapack.z, rtol=1e-10, atol=1e-10)


def test_eliminated_row_with_singular_system_falls_back(monkeypatch):
    from pyro_deq.solvers import newton

    monkeypatch.setattr(newton, "ELIMINATION_MIN_ROWS", 1)
    jacobian = -torch.eye(3, dtype=torch.float64).expand(4, 3, 3).clone()
    jacobian[2] = 0.0
    residual = torch.arange(12, dtype=torch.float64).reshape(4, 3)

    direction, fallback = newton._newton_direction(jacobian, residual, has_objective=True, convex=True)

    assert fallback.tolist() == [False, False, True, False]
    torch.testing.assert_close(direction, residual)


def test_certified_newton_rejects_overflowing_trial_point():
    # From zero, the full Newton step for a count of 1e6 lands at a canonical
    # parameter near 5e5, where exp overflows float32. The step must be halved.
    weight = torch.ones(2, 1, dtype=torch.float32)
    model = pyro_deq.ExpFamPCA(2, 1, family="poisson", weight=weight, bias=torch.zeros(2), name="overflow")
    y = torch.tensor([[1e6, 1e6], [1.0, 2.0]])
    with torch.no_grad():
        result = pyro_deq.solve(model.problem(y), torch.zeros(2, 1))
        reference = pyro_deq.solve(model.problem(y.double(), weight=weight.double(), bias=torch.zeros(2).double()),
                                   torch.zeros(2, 1, dtype=torch.float64), tol=1e-12)

    assert result.converged.all()
    assert result.stats["n_backtracks"] > 0
    assert torch.isfinite(result.z).all()
    torch.testing.assert_close(result.z.double(), reference.z, rtol=1e-5, atol=1e-5)
