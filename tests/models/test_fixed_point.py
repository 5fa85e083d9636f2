"""ExpFamPCA's closed forms against autograd, and its MAP against scipy and solvers."""

from __future__ import annotations

import math

import pytest
import torch

import pyro_deq
from pyro_deq.solvers import attach_gradient

from expfam_helpers import FAMILY_IDS, make_problem_data, model_scipy_map



def _tolerance(dtype: torch.dtype) -> float:
    # float64 closed forms agree with autograd to rounding; in float32 a few
    # hundred ulps cover the sums over d features.
    return 1e-10 if dtype == torch.float64 else 500 * torch.finfo(torch.float32).eps


def _latents_away_from_kinks(model, n_rows: int, seed: int) -> torch.Tensor:
    """Return latents whose pre-activations ``W z + b`` all lie at least 0.05 from zero."""
    generator = torch.Generator().manual_seed(seed)
    weight, bias = model.weight.detach(), model.bias.detach()
    rows = []
    while len(rows) < n_rows:
        z = torch.randn(1, model.n_components, generator=generator, dtype=weight.dtype)
        if (z @ weight.T + bias).abs().min() > 0.05:
            rows.append(z)
    return torch.cat(rows)


def _autograd_gradient(model, y, z, **kwargs) -> torch.Tensor:
    z = z.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model.log_joint(y, z, **kwargs).sum(), z)
    return grad


def _autograd_hessian(model, y, z) -> torch.Tensor:
    rows = []
    for n in range(z.shape[0]):
        row_y = y[n : n + 1]
        hessian = torch.autograd.functional.hessian(
            lambda zn: model.log_joint(row_y, zn.unsqueeze(0)).sum(), z[n].detach()
        )
        rows.append(hessian)
    return torch.stack(rows)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("nonlinearity", ["identity", "relu"])
@pytest.mark.parametrize("family_id", FAMILY_IDS)
def test_closed_forms_match_autograd(family_id, nonlinearity, dtype):
    model, y = make_problem_data(family_id, n_rows=5, n_features=6, n_components=3, dtype=dtype,
                                 nonlinearity=nonlinearity, seed=3)
    z = _latents_away_from_kinks(model, 5, seed=4)
    tol = _tolerance(dtype)
    lam = model.prior_precision

    grad = _autograd_gradient(model, y, z)
    expected_map = z + grad / lam
    scale = 1.0 + expected_map.abs().max()
    assert torch.allclose(model.fixed_point_map(y, z), expected_map, rtol=0, atol=tol * scale)

    gradient = model.log_joint_gradient(y, z)
    assert gradient.shape == (5, 3)
    assert torch.allclose(gradient, grad, rtol=0, atol=tol * (1.0 + grad.abs().max()))

    hessian = _autograd_hessian(model, y, z)
    closed = model.log_joint_hessian(y, z)
    assert closed.shape == (5, 3, 3)
    assert torch.allclose(closed, hessian, rtol=0, atol=tol * (1.0 + hessian.abs().max()))


def test_fixed_point_map_with_mask_and_offset_matches_autograd():
    model, y = make_problem_data("poisson", n_rows=4, n_features=5, n_components=2, seed=5)
    mask = torch.rand(4, 5, generator=torch.Generator().manual_seed(0)) > 0.3
    offset = torch.linspace(-0.5, 0.5, 4)
    z = 0.3 * torch.randn(4, 2, dtype=torch.float64)
    grad = _autograd_gradient(model, y, z, mask=mask, offset=offset)
    expected = z + grad / model.prior_precision
    assert torch.allclose(model.fixed_point_map(y, z, mask=mask, offset=offset), expected, atol=1e-10)


@pytest.mark.parametrize("family_id", FAMILY_IDS)
def test_solve_matches_scipy_map(family_id):
    model, y = make_problem_data(family_id, n_rows=10, n_features=6, n_components=2, seed=1)
    reference = model_scipy_map(model, y)
    result = pyro_deq.solve(model.problem(y), torch.zeros(10, 2, dtype=torch.float64))

    assert bool(result.converged.all())
    relative = (result.z - reference).norm() / reference.norm()
    assert relative < 1e-6


@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_gaussian_map_is_posterior_mean(scale):
    model, y = make_problem_data(f"gaussian{int(scale)}", n_rows=8, n_features=5, n_components=3, seed=2)
    weight, bias = model.weight.detach(), model.bias.detach()
    lam = model.prior_precision
    covariance = torch.linalg.inv(lam * torch.eye(3, dtype=torch.float64) + weight.T @ weight / scale**2)
    mean = (y - bias) @ weight @ covariance.T / scale**2

    result = pyro_deq.solve(model.problem(y), torch.zeros(8, 3, dtype=torch.float64))
    assert torch.allclose(result.z, mean, rtol=0, atol=1e-10)


def _contractive_bernoulli():
    return make_problem_data("bernoulli", n_rows=8, n_features=6, n_components=2, weight_scale=0.3, seed=7)


def test_solvers_agree_on_contractive_problem():
    model, y = _contractive_bernoulli()
    problem = model.problem(y)
    assert problem.contraction_bound < 0.5
    z0 = torch.zeros(8, 2, dtype=torch.float64)
    solutions = {method: pyro_deq.solve(problem, z0, method=method) for method in ("newton", "anderson", "picard")}
    for method, result in solutions.items():
        assert bool(result.converged.all()), method
    assert torch.allclose(solutions["anderson"].z, solutions["newton"].z, atol=1e-9)
    assert torch.allclose(solutions["picard"].z, solutions["newton"].z, atol=1e-9)


def _expansive_bernoulli():
    """Bernoulli problem with ``||W||² / (4 λ)`` of 8, far from a contraction."""
    model, y = make_problem_data("bernoulli", n_rows=10, n_features=8, n_components=2, seed=11)
    weight = model.weight.detach()
    weight = weight * math.sqrt(32.0) / torch.linalg.matrix_norm(weight, ord=2)
    model = pyro_deq.ExpFamPCA(8, 2, family="bernoulli", weight=weight, bias=model.bias.detach())
    return model, y


def _expansive_poisson():
    return make_problem_data("poisson", n_rows=10, n_features=8, n_components=2, weight_scale=1.2, seed=12)


@pytest.mark.parametrize("build", [_expansive_bernoulli, _expansive_poisson], ids=["bernoulli", "poisson"])
def test_default_solver_converges_where_picard_fails(build):
    model, y = build()
    problem = model.problem(y)
    if problem.contraction_bound is not None:
        assert problem.contraction_bound == pytest.approx(8.0, rel=1e-6)
    z0 = torch.zeros(10, 2, dtype=torch.float64)

    result = pyro_deq.solve(problem, z0)
    assert bool(result.converged.all())
    reference = model_scipy_map(model, y)
    assert (result.z - reference).norm() / reference.norm() < 1e-6

    with pytest.warns(pyro_deq.ConvergenceWarning):
        picard = pyro_deq.solve(problem, z0, method="picard", max_iter=200)
    assert not bool(picard.converged.all())
    assert picard.status != "converged"
    assert bool(torch.isfinite(picard.z).all())
    assert bool(torch.isfinite(picard.residual).all())


# ------------------------------------------------------------ implicit gradients


def _downstream_loss(z: torch.Tensor) -> torch.Tensor:
    target = torch.linspace(-1.0, 1.0, z.numel(), dtype=z.dtype).reshape(z.shape)
    return ((z - target) ** 2).sum() + z[:, 0].sum()


def _solve_map(model, y, weight, bias, z0=None):
    problem = model.problem(y, weight=weight, bias=bias)
    start = torch.zeros(y.shape[0], model.n_components, dtype=y.dtype) if z0 is None else z0
    return pyro_deq.solve(problem, start, tol=1e-14)


def _implicit_z(model, y, weight, bias, z0=None):
    result = _solve_map(model, y, weight.detach(), bias.detach(), z0)

    def residual_fn(z, w, b):
        return model.problem(y, weight=w, bias=b).residual(z)

    return attach_gradient("implicit", residual_fn, result.z, (weight, bias)), result


def _finite_difference(model, y, tensor_name: str, weight, bias, step=1e-6) -> torch.Tensor:
    base = {"weight": weight.detach(), "bias": bias.detach()}
    grad = torch.zeros_like(base[tensor_name])
    flat = grad.view(-1)
    for i in range(flat.numel()):
        values = []
        for sign in (1.0, -1.0):
            shifted = dict(base)
            shifted[tensor_name] = base[tensor_name].clone()
            shifted[tensor_name].view(-1)[i] += sign * step
            values.append(_downstream_loss(_solve_map(model, y, shifted["weight"], shifted["bias"]).z))
        flat[i] = (values[0] - values[1]) / (2 * step)
    return grad


def test_implicit_gradient_matches_finite_differences_and_unrolled():
    model, y = make_problem_data("bernoulli", n_rows=4, n_features=5, n_components=2, weight_scale=0.4, seed=8)
    weight = model.weight.detach().clone().requires_grad_(True)
    bias = model.bias.detach().clone().requires_grad_(True)

    z, _ = _implicit_z(model, y, weight, bias)
    implicit = torch.autograd.grad(_downstream_loss(z), (weight, bias))

    expected = (_finite_difference(model, y, "weight", weight, bias), _finite_difference(model, y, "bias", weight, bias))
    for got, want in zip(implicit, expected):
        assert torch.allclose(got, want, rtol=0, atol=1e-5)

    def residual_fn(z, w, b):
        return model.problem(y, weight=w, bias=b).residual(z)

    start = torch.zeros(4, 2, dtype=torch.float64)
    unrolled_z = attach_gradient("unrolled", residual_fn, z.detach(), (weight, bias), max_iter=200, z0=start)
    unrolled = torch.autograd.grad(_downstream_loss(unrolled_z), (weight, bias))
    for got, want in zip(implicit, unrolled):
        assert torch.allclose(got, want, rtol=0, atol=1e-8)


def test_implicit_gradient_from_warm_start():
    model, y = make_problem_data("poisson", n_rows=4, n_features=5, n_components=2, seed=9)
    weight = model.weight.detach().clone().requires_grad_(True)
    bias = model.bias.detach().clone().requires_grad_(True)
    z_cold, _ = _implicit_z(model, y, weight, bias)
    cold = torch.autograd.grad(_downstream_loss(z_cold), (weight, bias))

    z_warm, result = _implicit_z(model, y, weight, bias, z0=z_cold.detach())
    assert result.n_iter == 0
    warm = torch.autograd.grad(_downstream_loss(z_warm), (weight, bias))
    for got, want in zip(warm, cold):
        assert torch.allclose(got, want, rtol=0, atol=1e-10)
    assert warm[0].abs().max() > 0


def test_envelope_equals_implicit_for_log_joint():
    model, y = make_problem_data("binomial5", n_rows=5, n_features=6, n_components=2, seed=10)
    weight = model.weight.detach().clone().requires_grad_(True)
    bias = model.bias.detach().clone().requires_grad_(True)
    z_implicit, result = _implicit_z(model, y, weight, bias)

    implicit = torch.autograd.grad(model.log_joint(y, z_implicit, weight=weight, bias=bias).sum(), (weight, bias))
    envelope = torch.autograd.grad(model.log_joint(y, result.z, weight=weight, bias=bias).sum(), (weight, bias))
    for got, want in zip(envelope, implicit):
        assert torch.allclose(got, want, rtol=0, atol=1e-8)
