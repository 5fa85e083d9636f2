"""The problem contract shared by every solver.

A fixed-point problem ``z = f(z)`` over a batch of independent rows is solved as
a root-find on its residual ``r(z) = f(z) - z``. The residual is defined here
once, and every method (Newton, Anderson, Picard) works on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

__all__ = ["Evaluation", "FixedPointProblem", "CallableProblem", "as_problem"]


@dataclass
class Evaluation:
    """Quantities of a problem at one point ``z`` of shape ``(N, k)``.

    :ivar torch.Tensor value: ``f(z)``, shape ``(N, k)``.
    :ivar torch.Tensor residual: ``f(z) - z``, shape ``(N, k)``.
    :ivar objective: per-row quantity that ``z*`` minimises (the negative log
        joint for a model), shape ``(N,)``; ``None`` when the problem has none.
    :ivar jacobian: ``d residual / d z`` per row, shape ``(N, k, k)``; ``None``
        when not requested or not available.
    """

    value: torch.Tensor
    residual: torch.Tensor
    objective: torch.Tensor | None = None
    jacobian: torch.Tensor | None = None


class FixedPointProblem:
    """A batch of independent fixed-point problems ``z_n = f(z_n)``, one per row.

    Subclasses implement :meth:`fixed_point_map`; those that can also supply a
    per-row objective and the per-row Jacobian of the residual override
    :meth:`evaluate` and set :attr:`has_objective` / :attr:`has_jacobian`, which
    makes Newton's method with a line search available.

    :ivar float contraction_bound: an upper bound on the Lipschitz constant of
        ``f`` (plain iteration contracts when it is below 1), or ``None`` when
        unknown or unbounded. Used only in messages.
    """

    has_objective: bool = False
    has_jacobian: bool = False
    contraction_bound: float | None = None

    def fixed_point_map(self, z: torch.Tensor) -> torch.Tensor:
        """Compute ``f(z)``; ``z`` and the result have shape ``(N, k)``."""
        raise NotImplementedError

    def residual(self, z: torch.Tensor) -> torch.Tensor:
        """Compute the residual ``f(z) - z``, shape ``(N, k)``."""
        return self.fixed_point_map(z) - z

    def evaluate(self, z: torch.Tensor, jacobian: bool = False) -> Evaluation:
        """Evaluate ``f``, the residual and, where available, objective and Jacobian."""
        value = self.fixed_point_map(z)
        return Evaluation(value=value, residual=value - z)


class CallableProblem(FixedPointProblem):
    """Wrap a plain callable ``f`` as a :class:`FixedPointProblem`.

    The Jacobian, when a solver requests it, comes from autograd and assumes the
    rows of ``z`` are independent (row ``n`` of ``f(z)`` depends on row ``n`` of
    ``z`` only), which is what every problem of this package satisfies.
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        self.fn = fn
        self.has_jacobian = True

    def fixed_point_map(self, z: torch.Tensor) -> torch.Tensor:
        return self.fn(z)

    def evaluate(self, z: torch.Tensor, jacobian: bool = False) -> Evaluation:
        if not jacobian:
            return super().evaluate(z)

        with torch.enable_grad():
            z_leaf = z.detach().requires_grad_(True)
            value = self.fn(z_leaf)
            rows = []
            for i in range(value.shape[-1]):
                (grad,) = torch.autograd.grad(value[..., i].sum(), z_leaf, retain_graph=True)
                rows.append(grad)
        jac_f = torch.stack(rows, dim=-2)
        eye = torch.eye(z.shape[-1], dtype=z.dtype, device=z.device)
        value = value.detach()
        return Evaluation(value=value, residual=value - z, jacobian=jac_f - eye)


def as_problem(fn_or_problem) -> FixedPointProblem:
    """Return ``fn_or_problem`` as a :class:`FixedPointProblem`."""
    if isinstance(fn_or_problem, FixedPointProblem):
        return fn_or_problem
    if callable(fn_or_problem):
        return CallableProblem(fn_or_problem)
    raise TypeError(
        "`fn_or_problem` must be a callable f(z) or a FixedPointProblem, "
        f"got {type(fn_or_problem).__name__}."
    )
