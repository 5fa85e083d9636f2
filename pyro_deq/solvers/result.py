"""The result type shared by every solver."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["SolverResult", "relative_residual", "default_tolerance"]

# Status codes, in increasing order of severity. A result's status is the most
# severe one over its rows.
CONVERGED = "converged"
MAX_ITER = "max_iter"
STALLED = "stalled"
DIVERGED = "diverged"
NON_FINITE = "non_finite"

STATUS_MESSAGES = {
    CONVERGED: "every row met the tolerance",
    MAX_ITER: "the iteration limit ran out before every row met the tolerance",
    STALLED: "the line search found no decrease of the objective for some rows",
    DIVERGED: "the residual rose for some rows, so the iteration was stopped there",
    NON_FINITE: "non-finite values appeared for some rows",
}


def relative_residual(residual: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Compute the per-row relative residual ``||f(z) - z|| / (1 + ||f(z)||)``.

    The ``1 +`` keeps the measure absolute for fixed points near zero, where a
    purely relative one would ask for digits that do not exist.

    :param residual: ``f(z) - z``, shape ``(N, k)``.
    :param value: ``f(z)``, shape ``(N, k)``.
    :returns: shape ``(N,)``.
    """
    return residual.norm(dim=-1) / (1.0 + value.norm(dim=-1))


def default_tolerance(dtype: torch.dtype) -> float:
    """Return the default relative residual tolerance for ``dtype``: ``eps ** (2/3)``.

    Newton's method converges quadratically down to the rounding noise of the
    residual, which is a modest multiple of ``eps``; ``eps ** (2/3)`` leaves a
    margin of ``eps ** (-1/3)`` over it (about 200 in float32, 1.6e5 in float64)
    and is about 2.4e-5 in float32 and 3.7e-11 in float64.
    """
    return float(torch.finfo(dtype).eps) ** (2.0 / 3.0)


@dataclass
class SolverResult:
    """Outcome of :func:`pyro_deq.solve`.

    :ivar torch.Tensor z: the fixed point (for unconverged rows, the best
        iterate seen), shape ``(N, k)``.
    :ivar torch.Tensor converged: per-row flag ``residual <= tol``, shape ``(N,)``, bool.
    :ivar int n_iter: iterations taken (the largest over rows).
    :ivar torch.Tensor residual: final per-row relative residual
        ``||f(z) - z|| / (1 + ||f(z)||)``, shape ``(N,)``.
    :ivar torch.Tensor residual_history: relative residual before each
        iteration and after the last, shape ``(n_iter + 1, N)``.
    :ivar objective_history: the per-row objective at the same points, shape
        ``(n_iter + 1, N)``, or ``None`` when the problem has no objective.
    :ivar torch.Tensor row_status: per-row status code index into
        :attr:`STATUSES`, shape ``(N,)``.
    :ivar str status: the most severe status over the rows.
    :ivar str method: the solver used.
    :ivar float tol: the tolerance used.
    :ivar contraction_bound: the problem's bound on the Lipschitz constant of
        ``f``, or ``None``.
    :ivar dict stats: method-specific statistics (for Anderson, the number of
        least-squares fallbacks; for Newton, the number of backtracking steps).
    """

    STATUSES = (CONVERGED, MAX_ITER, STALLED, DIVERGED, NON_FINITE)

    z: torch.Tensor
    converged: torch.Tensor
    n_iter: int
    residual: torch.Tensor
    residual_history: torch.Tensor
    objective_history: torch.Tensor | None
    row_status: torch.Tensor
    method: str
    tol: float
    contraction_bound: float | None = None
    stats: dict = field(default_factory=dict)

    @property
    def status(self) -> str:
        """The most severe per-row status."""
        if self.row_status.numel() == 0:
            return CONVERGED
        return self.STATUSES[int(self.row_status.max())]

    @property
    def message(self) -> str:
        """A readable summary: status, rows affected, residuals and what to try."""
        n_rows = self.converged.numel()
        n_bad = int((~self.converged).sum())
        worst = float(self.residual.max()) if n_rows else 0.0
        text = (
            f"{self.method}: {STATUS_MESSAGES[self.status]}; "
            f"{n_bad} of {n_rows} rows did not converge after {self.n_iter} iterations "
            f"(max relative residual {worst:.3g}, tolerance {self.tol:.3g})."
        )
        if self.status in (DIVERGED, NON_FINITE, MAX_ITER) and self.method != "newton":
            text += " " + contraction_hint(self.contraction_bound)
        return text


def contraction_hint(bound: float | None) -> str:
    """Describe the contraction bound and suggest Newton or damping."""
    if bound is None:
        return (
            "The contraction bound ||W||^2 sup A'' / lambda is unbounded for this "
            "family, so plain iteration need not converge; use method='newton' or a "
            "damping below 1."
        )
    if bound >= 1:
        return (
            f"The contraction bound ||W||^2 sup A'' / lambda is {bound:.3g} >= 1, so "
            "plain iteration need not converge; use method='newton' or a damping "
            f"below {2.0 / (1.0 + bound):.3g}."
        )
    return f"The contraction bound ||W||^2 sup A'' / lambda is {bound:.3g}."
