r"""Gradient strategies for a fixed point :math:`z^*(\theta)`, chosen by name.

The solvers return ``z*`` detached. :func:`attach_gradient` reconnects it to the
parameters :math:`\theta` in one of three ways:

``"envelope"``
    ``z*`` stays detached. When the loss is the objective whose stationary point
    ``z*`` is, :math:`L(\theta) = \ell(z^*(\theta); \theta)` with
    :math:`\nabla_z \ell(z^*) = 0`, the envelope theorem gives
    :math:`dL/d\theta = \partial \ell / \partial \theta` at :math:`z = z^*`, so
    the detached point already yields the exact gradient. Valid only for that
    loss and only at an exact stationary point; the error is proportional to
    the residual.
``"implicit"``
    The implicit function theorem applied to :math:`r(z^*(\theta); \theta) = 0`:
    :math:`dz^*/d\theta = -J^{-1}\, \partial r / \partial \theta` with
    :math:`J = \partial r / \partial z`. Valid for any loss of ``z*`` when
    :math:`J` is invertible at ``z*`` (for the exponential-family models
    :math:`J = -H / \lambda` is negative definite) and ``z*`` solves the
    problem to the accuracy wanted in the gradient.
``"unrolled"``
    Backpropagation through ``max_iter`` damped steps
    :math:`z \leftarrow z + \beta\, r(z; \theta)` taken with autograd on. It
    tends to the implicit gradient as ``max_iter`` grows when the step is a
    contraction, and serves as a reference in tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch.autograd.function import once_differentiable

from pyro_deq.errors import ConvergenceWarning, NumericalError, warn_at_caller
from pyro_deq.solvers.anderson import anderson_solve
from pyro_deq.solvers.problem import CallableProblem
from pyro_deq.solvers.result import default_tolerance

__all__ = ["STRATEGIES", "ADJOINT_METHODS", "attach_gradient", "ImplicitFixedPoint"]

STRATEGIES = ("envelope", "implicit", "unrolled")
ADJOINT_METHODS = ("direct", "iterative")

# The iterative adjoint is a linear fixed-point problem, which Anderson
# acceleration solves in about k + 1 steps for k components when its memory
# covers them; 200 steps leave room for large k and poor conditioning.
DEFAULT_ADJOINT_MAX_ITER = 200

ResidualFn = Callable[..., torch.Tensor]


def attach_gradient(
    strategy: str,
    residual_fn: ResidualFn,
    z_star: torch.Tensor,
    params: tuple[torch.Tensor, ...],
    **options,
) -> torch.Tensor:
    r"""Return the fixed point ``z*`` connected to ``params`` by the named strategy.

    Example::

        result = pyro_deq.solve(problem, z0)
        z = attach_gradient("implicit", residual_fn, result.z, (weight, bias))
        loss_fn(z, weight).backward()   # gradients reach weight and bias

    :param str strategy: ``"envelope"``, ``"implicit"`` or ``"unrolled"``; see
        the module docstring for the formulas and when each is valid.
    :param residual_fn: differentiable ``residual_fn(z, *params)`` returning
        :math:`r(z; \theta)` of shape ``(N, k)``; row ``n`` of the output may
        depend on row ``n`` of ``z`` only.
    :param torch.Tensor z_star: the fixed point, shape ``(N, k)``: batch ``N``
        rows, event ``k`` components. It need not require grad.
    :param tuple params: the tensors :math:`\theta`; those that require grad
        receive gradients.
    :param options: for ``"implicit"``, ``jacobian`` (the closed-form
        :math:`\partial r / \partial z` at ``z*``, shape ``(N, k, k)``),
        ``adjoint`` (``"direct"`` or ``"iterative"``), ``adjoint_tol`` and
        ``adjoint_max_iter``; for ``"unrolled"``, ``max_iter`` (required),
        ``damping`` (default 1) and ``z0`` (start, default ``z_star``).
    :returns: a tensor equal to ``z_star`` in value (for ``"unrolled"``, the
        last unrolled iterate), shape ``(N, k)``.
    :raises ValueError: for an unknown strategy or adjoint method.
    :raises TypeError: for options the strategy does not take.
    """
    _check_z_star(z_star)
    params = tuple(params)
    if strategy == "envelope":
        if options:
            raise TypeError(f"strategy 'envelope' takes no options, got {sorted(options)}.")
        return z_star.detach()
    if strategy == "implicit":
        return _attach_implicit(residual_fn, z_star, params, **options)
    if strategy == "unrolled":
        return _attach_unrolled(residual_fn, z_star, params, **options)
    raise ValueError(f"Invalid gradient `strategy` {strategy!r}; expected one of {list(STRATEGIES)}.")


@dataclass
class _AdjointConfig:
    """Non-tensor inputs of :class:`ImplicitFixedPoint`."""

    residual_fn: ResidualFn
    jacobian: torch.Tensor | None
    adjoint: str
    adjoint_tol: float
    adjoint_max_iter: int


def _attach_implicit(
    residual_fn: ResidualFn,
    z_star: torch.Tensor,
    params: tuple[torch.Tensor, ...],
    *,
    jacobian: torch.Tensor | None = None,
    adjoint: str = "direct",
    adjoint_tol: float | None = None,
    adjoint_max_iter: int = DEFAULT_ADJOINT_MAX_ITER,
) -> torch.Tensor:
    if adjoint not in ADJOINT_METHODS:
        raise ValueError(f"Invalid `adjoint` {adjoint!r}; expected one of {list(ADJOINT_METHODS)}.")
    n_rows, n_components = z_star.shape
    if jacobian is not None and tuple(jacobian.shape) != (n_rows, n_components, n_components):
        raise ValueError(
            f"`jacobian` must have shape (N, k, k) = {(n_rows, n_components, n_components)}, "
            f"got {tuple(jacobian.shape)}."
        )

    if adjoint_tol is None:
        adjoint_tol = default_tolerance(z_star.dtype)
    if jacobian is not None:
        jacobian = jacobian.detach()
    config = _AdjointConfig(residual_fn, jacobian, adjoint, adjoint_tol, adjoint_max_iter)
    return ImplicitFixedPoint.apply(z_star.detach(), config, *params)


def _attach_unrolled(
    residual_fn: ResidualFn,
    z_star: torch.Tensor,
    params: tuple[torch.Tensor, ...],
    *,
    max_iter: int,
    damping: float = 1.0,
    z0: torch.Tensor | None = None,
) -> torch.Tensor:
    z = (z_star if z0 is None else z0).detach()
    with torch.enable_grad():
        for _ in range(max_iter):
            z = z + damping * residual_fn(z, *params)
    return z


def _check_z_star(z_star) -> None:
    if not isinstance(z_star, torch.Tensor) or z_star.dim() != 2 or not z_star.is_floating_point():
        description = tuple(z_star.shape) if isinstance(z_star, torch.Tensor) else type(z_star).__name__
        raise ValueError(f"`z_star` must be a floating-point tensor of shape (N, k), got {description}.")


class ImplicitFixedPoint(torch.autograd.Function):
    r"""Identity on ``z*`` in the forward pass, implicit differentiation in the backward.

    Given the incoming gradient :math:`g = \partial L / \partial z^*` of shape
    ``(N, k)``, the backward pass solves the adjoint system per row,

    .. math:: J^\top w = -g, \qquad J = \partial r / \partial z \text{ at } z^*,

    and returns :math:`w^\top \partial r / \partial \theta` for each parameter,
    a vector-Jacobian product of the residual. With ``adjoint="direct"`` the
    ``(N, k, k)`` Jacobian comes from ``k`` vector-Jacobian products (or from
    the ``jacobian`` option) and the system is solved exactly. With
    ``adjoint="iterative"`` it is solved by Anderson-accelerated iteration of
    :math:`w \leftarrow w + J^\top w + g`, which needs only vector-Jacobian
    products and suits large ``k``.

    The backward pass depends on ``z*`` and the parameters only, not on the
    solver's iterations, so it also works for a warm start that took none. It
    is differentiable once: second derivatives through it raise.

    Use through :func:`attach_gradient`; ``apply(z_star, config, *params)``.
    """

    @staticmethod
    def forward(ctx, z_star: torch.Tensor, config: _AdjointConfig, *params: torch.Tensor) -> torch.Tensor:
        ctx.config = config
        ctx.save_for_backward(z_star, *params)
        return z_star.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_z: torch.Tensor):
        z_star, *params = ctx.saved_tensors
        needs_grad = ctx.needs_input_grad[2:]
        config = ctx.config

        with torch.enable_grad():
            z = z_star.detach().requires_grad_(True)
            leaves = [param.detach().requires_grad_(need) for param, need in zip(params, needs_grad)]
            residual = config.residual_fn(z, *leaves)
            if config.adjoint == "direct":
                adjoint = _direct_adjoint(residual, z, grad_z, config.jacobian)
            else:
                adjoint = _iterative_adjoint(residual, z, grad_z, config)

            targets = [leaf for leaf, need in zip(leaves, needs_grad) if need]
            grads = iter(torch.autograd.grad(residual, targets, grad_outputs=adjoint, allow_unused=True))

        param_grads = [next(grads) if need else None for need in needs_grad]
        return (None, None, *param_grads)


def _residual_jacobian(residual: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Compute ``d residual / d z`` per row, shape ``(N, k, k)``, by ``k`` vector-Jacobian products."""
    rows = []
    for component in range(residual.shape[-1]):
        (row,) = torch.autograd.grad(residual[:, component].sum(), z, retain_graph=True)
        rows.append(row)
    return torch.stack(rows, dim=-2)


def _direct_adjoint(
    residual: torch.Tensor, z: torch.Tensor, grad_z: torch.Tensor, jacobian: torch.Tensor | None
) -> torch.Tensor:
    """Solve ``J^T w = -g`` per row with a batched ``k x k`` solve; returns ``w``, shape ``(N, k)``."""
    if jacobian is None:
        jacobian = _residual_jacobian(residual, z)
    adjoint, info = torch.linalg.solve_ex(jacobian.transpose(-1, -2), -grad_z.unsqueeze(-1))
    adjoint = adjoint.squeeze(-1)

    bad_rows = torch.nonzero((info != 0) | ~torch.isfinite(adjoint).all(-1)).flatten()
    if bad_rows.numel():
        raise NumericalError(
            f"implicit gradient: the Jacobian of the residual is singular at the fixed point for "
            f"{bad_rows.numel()} rows (first {bad_rows[:10].tolist()}), so z* does not depend "
            "smoothly on the parameters there; check that the solve converged, or use strategy='unrolled'.",
            {"rows": bad_rows},
        )
    return adjoint


def _iterative_adjoint(residual: torch.Tensor, z: torch.Tensor, grad_z: torch.Tensor, config: _AdjointConfig) -> torch.Tensor:
    """Solve ``J^T w = -g`` as the fixed point of ``w -> w + J^T w + g`` with Anderson acceleration."""

    def adjoint_map(w: torch.Tensor) -> torch.Tensor:
        (vjp,) = torch.autograd.grad(residual, z, grad_outputs=w, retain_graph=True)
        return w + vjp + grad_z

    with torch.no_grad():
        result = anderson_solve(
            CallableProblem(adjoint_map),
            torch.zeros_like(grad_z),
            tol=config.adjoint_tol,
            max_iter=config.adjoint_max_iter,
        )
    if not bool(result.converged.all()):
        worst = float(result.residual.max())
        warn_at_caller(
            f"implicit gradient: the iterative adjoint solve stopped after {result.n_iter} iterations "
            f"with max relative residual {worst:.3g} above the tolerance {config.adjoint_tol:.3g} "
            f"(status {result.status}), so the gradient is approximate; use adjoint='direct' "
            "or raise adjoint_max_iter.",
            ConvergenceWarning,
        )
    return result.z
