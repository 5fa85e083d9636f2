"""Toy exponential-family PCA problems for the solver tests, in plain torch.

Each row solves the MAP of ``z`` in

    l(z) = sum_j [y_j u_j - A(u_j)] - (lambda / 2) ||z||^2,   u = W z + b,

as the fixed point of ``f(z) = z + r(z)`` with ``r(z) = grad l(z) / lambda``, the
objective ``-l(z)`` and the Jacobian ``-H / lambda`` with
``H = lambda I + W^T diag(A''(u)) W``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pyro_deq.solvers.problem import Evaluation, FixedPointProblem

# sup A'' per family; Poisson's exp(eta) has no bound.
_MAX_VARIANCE = {"bernoulli": 0.25, "gaussian": 1.0, "poisson": None}


class ToyExpFamProblem(FixedPointProblem):
    """MAP problem of exponential-family PCA with closed-form residual, objective and Jacobian.

    :param y: observations, shape ``(N, d)``.
    :param weight: loadings ``W``, shape ``(d, k)``.
    :param bias: ``b``, shape ``(d,)``.
    :param float prior_precision: ``lambda``.
    :param str family: ``"bernoulli"``, ``"gaussian"`` or ``"poisson"``.
    """

    has_objective = True
    has_jacobian = True

    def __init__(self, y, weight, bias, prior_precision=1.0, family="bernoulli"):
        self.y = y
        self.weight = weight
        self.bias = bias
        self.prior_precision = prior_precision
        self.family = family
        max_variance = _MAX_VARIANCE[family]
        if max_variance is not None:
            spectral_norm = float(torch.linalg.matrix_norm(weight.detach(), ord=2))
            self.contraction_bound = spectral_norm**2 * max_variance / prior_precision

    def log_partition(self, eta):
        if self.family == "bernoulli":
            return F.softplus(eta)
        if self.family == "gaussian":
            return 0.5 * eta.square()
        return eta.exp()

    def mean(self, eta):
        if self.family == "bernoulli":
            return torch.sigmoid(eta)
        if self.family == "gaussian":
            return eta
        return eta.exp()

    def variance(self, eta):
        if self.family == "bernoulli":
            probs = torch.sigmoid(eta)
            return probs * (1 - probs)
        if self.family == "gaussian":
            return torch.ones_like(eta)
        return eta.exp()

    def log_joint(self, z, weight=None, bias=None):
        """Compute ``l(z)`` per row, shape ``(N,)``, differentiable in ``z``, ``weight`` and ``bias``."""
        weight = self.weight if weight is None else weight
        bias = self.bias if bias is None else bias
        u = z @ weight.T + bias
        likelihood = (self.y * u - self.log_partition(u)).sum(-1)
        return likelihood - 0.5 * self.prior_precision * z.square().sum(-1)

    def residual_fn(self, z, weight, bias):
        """Compute ``r(z; W, b) = grad l(z) / lambda``, shape ``(N, k)``, differentiable in all inputs."""
        u = z @ weight.T + bias
        return (self.y - self.mean(u)) @ weight / self.prior_precision - z

    def fixed_point_map(self, z):
        return z + self.residual_fn(z, self.weight, self.bias)

    def evaluate(self, z, jacobian=False):
        u = z @ self.weight.T + self.bias
        residual = (self.y - self.mean(u)) @ self.weight / self.prior_precision - z
        objective = -self.log_joint(z)
        jac = None
        if jacobian:
            hessian = self.weight.T @ (self.variance(u)[:, :, None] * self.weight)
            eye = torch.eye(z.shape[-1], dtype=z.dtype, device=z.device)
            jac = -hessian / self.prior_precision - eye
        return Evaluation(value=z + residual, residual=residual, objective=objective, jacobian=jac)


def _make_problem(
    family="bernoulli",
    n_rows=20,
    n_features=12,
    n_components=3,
    bound=None,
    loading_scale=1.0,
    prior_precision=1.0,
    dtype=torch.float64,
    seed=0,
):
    """Draw a toy problem with data from the model; ``bound`` rescales ``W`` to that contraction bound."""
    generator = torch.Generator().manual_seed(seed)
    weight = loading_scale * torch.randn(n_features, n_components, generator=generator, dtype=dtype)
    if bound is not None:
        spectral_norm = float(torch.linalg.matrix_norm(weight, ord=2))
        weight = weight * math.sqrt(bound * prior_precision / _MAX_VARIANCE[family]) / spectral_norm
    bias = 0.5 * torch.randn(n_features, generator=generator, dtype=dtype)

    z_true = torch.randn(n_rows, n_components, generator=generator, dtype=dtype)
    u = z_true @ weight.T + bias
    if family == "bernoulli":
        y = torch.bernoulli(torch.sigmoid(u), generator=generator)
    elif family == "gaussian":
        y = u + torch.randn(u.shape, generator=generator, dtype=dtype)
    else:
        y = torch.poisson(u.clamp(max=5.0).exp(), generator=generator)
    return ToyExpFamProblem(y, weight, bias, prior_precision, family)


@pytest.fixture
def make_problem():
    """Factory ``make_problem(family, n_rows, n_features, n_components, bound, ...)`` of toy problems."""
    return _make_problem


@pytest.fixture
def toy_problem_class():
    """The :class:`ToyExpFamProblem` class, for tests that subclass it."""
    return ToyExpFamProblem


@pytest.fixture
def contractive_problem():
    """Bernoulli problem whose fixed-point map contracts (bound 0.5)."""
    return _make_problem(bound=0.5)


@pytest.fixture
def expanding_problem():
    """Bernoulli problem with ||W||^2 / (4 lambda) = 8, where plain iteration fails."""
    return _make_problem(bound=8.0, n_features=32, n_components=4)


def zero_latents(problem, dtype=torch.float64):
    """Starting point ``z0 = 0`` of shape ``(N, k)`` for ``problem``."""
    return torch.zeros(problem.y.shape[0], problem.weight.shape[1], dtype=dtype)


@pytest.fixture
def zeros():
    """The :func:`zero_latents` helper."""
    return zero_latents
