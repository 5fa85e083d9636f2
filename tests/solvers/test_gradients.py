import pytest
import torch

from pyro_deq.errors import NumericalError
from pyro_deq.solvers import attach_gradient, solve

SOLVE_TOL = 1e-13
STEP = 1e-5


def downstream_loss(z, weight, bias):
    """A loss of ``z*`` that also depends on the parameters directly."""
    return torch.tanh(z @ weight.T + bias).square().sum() + (z * torch.arange(1.0, z.shape[1] + 1, dtype=z.dtype)).sum()


def solve_for(problem_class, problem, weight, bias, z0=None):
    perturbed = problem_class(problem.y, weight, bias, problem.prior_precision, problem.family)
    if z0 is None:
        z0 = torch.zeros(problem.y.shape[0], weight.shape[1], dtype=weight.dtype)
    return perturbed, solve(perturbed, z0, method="newton", tol=SOLVE_TOL)


def implicit_gradients(problem, z_star, **options):
    weight = problem.weight.clone().requires_grad_(True)
    bias = problem.bias.clone().requires_grad_(True)
    z = attach_gradient("implicit", problem.residual_fn, z_star, (weight, bias), **options)
    downstream_loss(z, weight, bias).backward()
    return weight.grad, bias.grad


def finite_difference(problem_class, problem, parameter_name):
    parameter = getattr(problem, parameter_name)
    gradient = torch.zeros_like(parameter)
    for index in range(parameter.numel()):
        values = []
        for sign in (1.0, -1.0):
            shifted = parameter.clone()
            shifted.view(-1)[index] += sign * STEP
            params = {"weight": problem.weight, "bias": problem.bias, parameter_name: shifted}
            _, result = solve_for(problem_class, problem, params["weight"], params["bias"])
            values.append(downstream_loss(result.z, params["weight"], params["bias"]))
        gradient.view(-1)[index] = (values[0] - values[1]) / (2 * STEP)
    return gradient


@pytest.fixture
def small_expanding(make_problem):
    return make_problem(bound=8.0, n_rows=6, n_features=5, n_components=2)


def test_implicit_matches_finite_differences(small_expanding, toy_problem_class):
    _, result = solve_for(toy_problem_class, small_expanding, small_expanding.weight, small_expanding.bias)
    weight_grad, bias_grad = implicit_gradients(small_expanding, result.z)

    torch.testing.assert_close(weight_grad, finite_difference(toy_problem_class, small_expanding, "weight"), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(bias_grad, finite_difference(toy_problem_class, small_expanding, "bias"), rtol=1e-5, atol=1e-7)


def test_implicit_matches_unrolled(contractive_problem):
    z_star = solve(contractive_problem, torch.zeros(20, 3, dtype=torch.float64), tol=SOLVE_TOL).z
    implicit = implicit_gradients(contractive_problem, z_star)

    weight = contractive_problem.weight.clone().requires_grad_(True)
    bias = contractive_problem.bias.clone().requires_grad_(True)
    z = attach_gradient("unrolled", contractive_problem.residual_fn, z_star, (weight, bias), max_iter=200)
    downstream_loss(z, weight, bias).backward()

    torch.testing.assert_close(weight.grad, implicit[0], rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(bias.grad, implicit[1], rtol=1e-8, atol=1e-10)


def test_implicit_matches_damped_unrolled_on_expanding_problem(small_expanding):
    z_star = solve(small_expanding, torch.zeros(6, 2, dtype=torch.float64), tol=SOLVE_TOL).z
    implicit = implicit_gradients(small_expanding, z_star)

    weight = small_expanding.weight.clone().requires_grad_(True)
    bias = small_expanding.bias.clone().requires_grad_(True)
    damping = 1.0 / (1.0 + small_expanding.contraction_bound)
    z = attach_gradient("unrolled", small_expanding.residual_fn, z_star, (weight, bias), max_iter=2000, damping=damping)
    downstream_loss(z, weight, bias).backward()

    torch.testing.assert_close(weight.grad, implicit[0], rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(bias.grad, implicit[1], rtol=1e-6, atol=1e-9)


def test_implicit_after_zero_iterations(small_expanding):
    cold = solve(small_expanding, torch.zeros(6, 2, dtype=torch.float64), tol=SOLVE_TOL)
    warm = solve(small_expanding, cold.z, tol=SOLVE_TOL)
    assert warm.n_iter == 0
    assert not warm.z.requires_grad

    cold_grads = implicit_gradients(small_expanding, cold.z)
    warm_grads = implicit_gradients(small_expanding, warm.z)
    for cold_grad, warm_grad in zip(cold_grads, warm_grads):
        assert torch.isfinite(warm_grad).all()
        torch.testing.assert_close(warm_grad, cold_grad, rtol=0, atol=0)


def test_envelope_equals_implicit_for_log_joint(small_expanding):
    z_star = solve(small_expanding, torch.zeros(6, 2, dtype=torch.float64), tol=SOLVE_TOL).z
    grads = {}
    for strategy in ("envelope", "implicit"):
        weight = small_expanding.weight.clone().requires_grad_(True)
        bias = small_expanding.bias.clone().requires_grad_(True)
        z = attach_gradient(strategy, small_expanding.residual_fn, z_star, (weight, bias))
        small_expanding.log_joint(z, weight, bias).sum().backward()
        grads[strategy] = (weight.grad, bias.grad)

    torch.testing.assert_close(grads["envelope"][0], grads["implicit"][0], rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(grads["envelope"][1], grads["implicit"][1], rtol=1e-9, atol=1e-10)


def test_iterative_adjoint_agrees_with_direct(small_expanding):
    z_star = solve(small_expanding, torch.zeros(6, 2, dtype=torch.float64), tol=SOLVE_TOL).z
    direct = implicit_gradients(small_expanding, z_star)
    iterative = implicit_gradients(small_expanding, z_star, adjoint="iterative", adjoint_tol=1e-13)

    torch.testing.assert_close(iterative[0], direct[0], rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(iterative[1], direct[1], rtol=1e-8, atol=1e-10)


def test_closed_form_jacobian_agrees(small_expanding):
    z_star = solve(small_expanding, torch.zeros(6, 2, dtype=torch.float64), tol=SOLVE_TOL).z
    jacobian = small_expanding.evaluate(z_star, jacobian=True).jacobian
    autograd = implicit_gradients(small_expanding, z_star)
    closed_form = implicit_gradients(small_expanding, z_star, jacobian=jacobian)

    torch.testing.assert_close(closed_form[0], autograd[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(closed_form[1], autograd[1], rtol=1e-10, atol=1e-12)


def test_only_parameters_requiring_grad_receive_it(small_expanding):
    z_star = solve(small_expanding, torch.zeros(6, 2, dtype=torch.float64), tol=SOLVE_TOL).z
    weight = small_expanding.weight.clone().requires_grad_(True)
    bias = small_expanding.bias.clone()
    z = attach_gradient("implicit", small_expanding.residual_fn, z_star, (weight, bias))
    (z.square().sum() + z.sum()).backward()

    assert weight.grad is not None
    assert bias.grad is None


def test_singular_adjoint_raises():
    def residual_fn(z, shift):
        return shift - 0.0 * z

    shift = torch.ones(2, 2, dtype=torch.float64, requires_grad=True)
    z = attach_gradient("implicit", residual_fn, torch.zeros(2, 2, dtype=torch.float64), (shift,))
    with pytest.raises(NumericalError, match="singular"):
        z.sum().backward()


def test_invalid_strategy_and_options(contractive_problem):
    z_star = torch.zeros(20, 3, dtype=torch.float64)
    params = (contractive_problem.weight, contractive_problem.bias)
    with pytest.raises(ValueError, match=r"`strategy` 'exact'.*\['envelope', 'implicit', 'unrolled'\]"):
        attach_gradient("exact", contractive_problem.residual_fn, z_star, params)
    with pytest.raises(TypeError, match="takes no options"):
        attach_gradient("envelope", contractive_problem.residual_fn, z_star, params, adjoint="direct")
    with pytest.raises(ValueError, match=r"`adjoint` 'cg'"):
        attach_gradient("implicit", contractive_problem.residual_fn, z_star, params, adjoint="cg")
    with pytest.raises(ValueError, match=r"`jacobian` must have shape"):
        attach_gradient("implicit", contractive_problem.residual_fn, z_star, params, jacobian=torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"`z_star`"):
        attach_gradient("implicit", contractive_problem.residual_fn, torch.zeros(3), params)
