"""The problem contract shared by every solver.

A fixed-point problem ``z = f(z)`` over a batch of independent rows is solved as
a root-find on its residual ``r(z) = f(z) - z``. The residual is defined here
once, and every method (Newton, Anderson, Picard) works on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

__all__ = ["Evaluation", "FixedPointProblem", "CallableProblem", "as_problem", "relative_residual"]


def relative_residual(residual: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Compute the per-row relative residual ``||f(z) - z|| / (1 + ||f(z)||)``.

    The ``1 +`` keeps the measure absolute for fixed points near zero, where a
    purely relative one would ask for digits that do not exist.

    :param residual: ``f(z) - z``, shape ``(N, k)``.
    :param value: ``f(z)``, shape ``(N, k)``.
    :returns: shape ``(N,)``.
    """
    return torch.linalg.vector_norm(residual, dim=-1) / (1.0 + torch.linalg.vector_norm(value, dim=-1))


@dataclass
class Evaluation:
    """Quantities of a problem at one point ``z`` of shape ``(N, k)``.

    :ivar torch.Tensor value: ``f(z)``, shape ``(N, k)``.
    :ivar torch.Tensor residual: ``f(z) - z``, shape ``(N, k)``.
    :ivar objective: per-row quantity that ``z*`` minimises (the negative log
        joint for a model), shape ``(N,)``; ``None`` when the problem has none.
    :ivar jacobian: ``d residual / d z`` per row, shape ``(N, k, k)``; ``None``
        when not requested or not available.
    :ivar intermediates: tensors the problem computed on the way, each with
        the rows first, which its :meth:`FixedPointProblem.complete` may reuse;
        ``None`` when there are none.
    """

    value: torch.Tensor
    residual: torch.Tensor
    objective: torch.Tensor | None = None
    jacobian: torch.Tensor | None = None
    intermediates: dict | None = field(default=None, repr=False)
    _relative_residual: torch.Tensor | None = field(default=None, init=False, repr=False, compare=False)

    def relative_residual(self) -> torch.Tensor:
        """Return :func:`relative_residual` of this evaluation, shape ``(N,)``, computed once."""
        if self._relative_residual is None:
            self._relative_residual = relative_residual(self.residual, self.value)
        return self._relative_residual

    def rows(self, index: torch.Tensor) -> "Evaluation":
        """Return the evaluation of the rows in ``index``, shape ``(B,)``."""
        intermediates = None
        if self.intermediates is not None:
            # Intermediates may be the same tensor under two names (the
            # canonical parameter is u itself for the identity); select it once.
            selected_by_id = {}
            intermediates = {}
            for name, tensor in self.intermediates.items():
                if id(tensor) not in selected_by_id:
                    selected_by_id[id(tensor)] = tensor[index]
                intermediates[name] = selected_by_id[id(tensor)]
        selected = Evaluation(
            value=self.value[index],
            residual=self.residual[index],
            objective=None if self.objective is None else self.objective[index],
            jacobian=None if self.jacobian is None else self.jacobian[index],
            intermediates=intermediates,
        )
        if self._relative_residual is not None:
            selected._relative_residual = self._relative_residual[index]
        return selected


class FixedPointProblem:
    """A batch of independent fixed-point problems ``z_n = f(z_n)``, one per row.

    Subclasses implement :meth:`fixed_point_map`; those that can also supply a
    per-row objective and the per-row Jacobian of the residual override
    :meth:`evaluate` and set :attr:`has_objective` / :attr:`has_jacobian`, which
    makes Newton's method with a line search available.

    :ivar float contraction_bound: an upper bound on the Lipschitz constant of
        ``f`` (plain iteration contracts when it is below 1), or ``None`` when
        unknown or unbounded. Used only in messages.
    :ivar bool uses_autograd: whether the problem's methods need autograd, as
        an autograd Jacobian does. Problems that set it to ``False`` are solved
        in :func:`torch.inference_mode`, which makes each torch call cheaper;
        the callback then receives inference tensors, which cannot be saved
        for a later backward pass.
    :ivar latent_shape: ``(N, k)``, the shape that ``z`` must have, or ``None``
        when the problem does not know it; :func:`pyro_deq.solve` checks ``z0``
        against it and against :attr:`dtype` before any computation.
    :ivar dtype: the dtype that ``z`` must have, or ``None``.
    :ivar bool has_rows: whether :meth:`rows` can restrict the problem to a
        subset of its rows; Newton's method then iterates on the unconverged
        rows only, once they are few.
    :ivar strong_convexity: a constant ``mu > 0`` with
        ``(r(z) - r(z')) . (z' - z) >= mu ||z' - z||^2`` for all ``z, z'`` in a
        row, or ``None`` when no such constant is known. It holds when
        ``r = -c grad(objective)`` and ``c * objective`` is ``mu``-strongly
        convex. A problem that sets it must accept ``evaluate(z, jacobian,
        objective=False)``; Newton's method then accepts most steps without
        the objective (see :func:`~pyro_deq.solvers.newton.newton_solve`).
    """

    has_objective: bool = False
    has_jacobian: bool = False
    has_rows: bool = False
    uses_autograd: bool = True
    latent_shape: tuple[int, int] | None = None
    dtype: torch.dtype | None = None
    contraction_bound: float | None = None
    strong_convexity: float | None = None

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

    def rows(self, index: torch.Tensor) -> "FixedPointProblem":
        """Return the problem restricted to the rows in ``index``, shape ``(B,)``.

        Problems that implement this set :attr:`has_rows`.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot be restricted to rows; has_rows is False.")

    def evaluate_shared(self, z: torch.Tensor, objective: bool = True) -> tuple[Evaluation, torch.Tensor] | None:
        """Evaluate at ``z`` and return the Jacobian ``(k, k)`` that every row has there, or ``None``.

        Newton's method calls this at its starting point, where rows often
        start equal (at zero), before it falls back to :meth:`evaluate`. With
        a shared Jacobian its first step needs one ``k × k`` factorization
        instead of ``N``. The evaluation needs no Jacobian of its own and must
        have the objective when :attr:`has_objective` is set and ``objective``
        is true. The default, ``None``, means the rows' Jacobians differ or
        are not known to agree.
        """
        return None

    def complete(
        self, z: torch.Tensor, evaluation: Evaluation, objective: bool = True, jacobian: bool = True
    ) -> Evaluation:
        """Return ``evaluation`` (made at ``z``) with the objective and the Jacobian added.

        The default evaluates again, with the Jacobian when requested and
        available. Problems that store :attr:`Evaluation.intermediates`
        override this to reuse them and to compute only what is missing.
        """
        return self.evaluate(z, jacobian=jacobian and self.has_jacobian)


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
