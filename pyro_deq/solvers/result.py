"""The result type shared by every solver."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from pyro_deq._text import count_noun
from pyro_deq.errors import NumericalError
from pyro_deq.solvers.problem import relative_residual

__all__ = [
    "SolverResult",
    "SolverError",
    "RowTracker",
    "evaluation_is_finite",
    "relative_residual",
    "default_tolerance",
]

logger = logging.getLogger(__name__)

# Status codes, in increasing order of severity. A result's status is the most
# severe one over its rows.
CONVERGED = "converged"
MAX_ITER = "max_iter"
STALLED = "stalled"
DIVERGED = "diverged"
NON_FINITE = "non_finite"

# Anderson and Picard stop a row, as diverged, whose residual norm has not
# halved within this many iterations. A linear rate slower than 2 ** (-1/100),
# about 0.993 per iteration, gains less than three digits in 1000 iterations, so
# such a row is better served by Newton or a smaller damping.
STAGNATION_PATIENCE = 100
STAGNATION_DECREASE = 0.5

STATUS_MESSAGES = {
    CONVERGED: "every row met the tolerance",
    MAX_ITER: "the iteration limit ran out before every row met the tolerance",
    STALLED: "the line search found no decrease of the objective for some rows",
    DIVERGED: (
        "the residual norm ||f(z) - z|| grew far above its smallest value, or stopped "
        "decreasing, for some rows, so the iteration was stopped there"
    ),
    NON_FINITE: "non-finite values appeared for some rows",
}
STATUSES = (CONVERGED, MAX_ITER, STALLED, DIVERGED, NON_FINITE)
STATUS_INDEX = {status: index for index, status in enumerate(STATUSES)}


class SolverError(NumericalError):
    """Raised by :func:`pyro_deq.solve` with ``throw=True`` when some rows did not converge.

    :ivar dict diagnostics: contains ``result`` (the :class:`SolverResult`),
        ``status``, ``n_iter``, ``failed_rows`` (indices of the rows that did not
        converge) and ``residual``.
    """


def default_tolerance(dtype: torch.dtype) -> float:
    """Return the default relative residual tolerance for ``dtype``.

    Newton's method converges quadratically down to the rounding noise of the
    residual. In float64 that noise is far below ``eps ** (2/3)`` (about
    3.7e-11), which is the default. In float32 the noise of a sum over a few
    dozen features with loadings of norm 10 already reaches about 3e-5, above
    ``eps ** (2/3)``, so the default there is ``sqrt(eps)`` (about 3.5e-4).
    """
    eps = float(torch.finfo(dtype).eps)
    if eps > 1e-10:
        return eps**0.5
    return eps ** (2.0 / 3.0)


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
        ``f``, used to explain failures; ``None`` when every row converged or
        the problem has no bound.
    :ivar dict stats: method-specific statistics (for Anderson, the number of
        least-squares fallbacks; for Newton, the number of backtracking steps).
    """

    STATUSES = STATUSES

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
            f"{n_bad} of {n_rows} rows did not converge after {count_noun(self.n_iter, 'iteration')} "
            f"(max relative residual {worst:.3g}, tolerance {self.tol:.3g})."
        )
        if self.status in (DIVERGED, NON_FINITE, MAX_ITER) and self.method != "newton":
            text += " " + contraction_hint(self.contraction_bound)
        return text


def contraction_hint(bound: float | None) -> str:
    """Describe the contraction bound and suggest Newton or damping."""
    if bound is None:
        return (
            "The contraction bound ||W||^2 sup A'' / lambda is unknown for this problem "
            "or unbounded for its family, so plain iteration need not converge; use "
            "method='newton' or a damping below 1."
        )
    if bound >= 1:
        return (
            f"The contraction bound ||W||^2 sup A'' / lambda is {bound:.3g} >= 1, so "
            "plain iteration need not converge; use method='newton' or a damping "
            f"below {2.0 / (1.0 + bound):.3g}."
        )
    return f"The contraction bound ||W||^2 sup A'' / lambda is {bound:.3g}."


class RowTracker:
    """Per-row bookkeeping shared by the solvers: iterates, status and histories.

    A row is active while its status is ``max_iter``. Every other status is
    final, so a row stops moving once it converges, stalls, diverges or turns
    non-finite. Non-finite iterates are never stored, so :attr:`z`,
    :attr:`best_z` and the histories stay finite whenever the starting point is.

    :param str method: solver name, used in log records and in the result.
    :param torch.Tensor z: starting point, shape ``(N, k)``.
    :param evaluation: the problem evaluated at ``z``
        (a :class:`~pyro_deq.solvers.problem.Evaluation`).
    :param float tol: relative residual tolerance.
    :param float divergence_factor: a row diverges when its residual norm
        ``||f(z) - z||`` stays above ``divergence_factor`` times its smallest
        value so far for ``divergence_patience`` consecutive iterations.
        ``math.inf`` disables the check. The check uses the absolute norm
        because the relative residual levels off below 1 while an iterate runs off.
    :param int divergence_patience: see ``divergence_factor``.
    :param callback: optional ``callback(n_iter, z, residual)`` called after
        each iteration with the current iterate ``(N, k)`` and relative
        residual ``(N,)``.
    :param bool keep_best: return each row's lowest-residual iterate (Anderson,
        Picard) instead of its last one (Newton, whose line search makes the
        last point the best in objective).
    """

    def __init__(
        self,
        method: str,
        z: torch.Tensor,
        evaluation,
        tol: float,
        divergence_factor: float = math.inf,
        divergence_patience: int = 1,
        callback: Callable | None = None,
        keep_best: bool = True,
    ):
        self.method = method
        self.keep_best = keep_best
        self.tol = tol
        self.divergence_factor = divergence_factor
        self.divergence_patience = divergence_patience
        self.callback = callback
        self.n_iter = 0

        n_rows = z.shape[0]
        relative = evaluation.relative_residual()
        # Checking every entry at once is cheaper than row by row, and it
        # leaves nothing to mask in the usual case of a finite start.
        finite = None if _all_finite(evaluation, z, relative) else evaluation_is_finite(evaluation, z)
        self.status = torch.full((n_rows,), STATUS_INDEX[MAX_ITER], dtype=torch.long, device=z.device)
        self._active = torch.ones(n_rows, dtype=torch.bool, device=z.device)
        self.row_iterations = torch.zeros(n_rows, dtype=torch.long, device=z.device)

        self.z = z.clone()
        self.residual = _finite_or_inf(relative, finite)
        self.objective = None
        if evaluation.objective is not None:
            self.objective = _finite_or_inf(evaluation.objective, finite)
        if keep_best:
            self.best_z = self.z.clone()
            self.best_residual = self.residual.clone()
        if divergence_factor < math.inf:
            self.rising_streak = torch.zeros(n_rows, dtype=torch.long, device=z.device)
            self.stagnant_streak = torch.zeros(n_rows, dtype=torch.long, device=z.device)
            self.min_residual_norm = _finite_or_inf(torch.linalg.vector_norm(evaluation.residual, dim=-1), finite)
            self.reference_norm = self.min_residual_norm.clone()

        if finite is not None:
            self._set_status(~finite, NON_FINITE)
        self._set_status(self.residual <= tol, CONVERGED)
        self.residual_history = [self.residual]
        self.objective_history = None if self.objective is None else [self.objective]

    @property
    def previous_residual(self) -> torch.Tensor:
        """Relative residual per row one iteration back, shape ``(N,)``; ``inf`` before the first."""
        if len(self.residual_history) < 2:
            return torch.full_like(self.residual, math.inf)
        return self.residual_history[-2]

    @property
    def active(self) -> torch.Tensor:
        """Rows still iterating, shape ``(N,)``, bool."""
        return self._active

    def any_active(self) -> bool:
        """Return whether any row is still iterating."""
        return bool(self._active.any())

    def n_active(self) -> int:
        """Return the number of rows still iterating."""
        return int(self._active.sum())

    def update(
        self,
        z: torch.Tensor,
        evaluation,
        rows: torch.Tensor,
        finite: torch.Tensor | None = None,
        index: torch.Tensor | None = None,
    ) -> None:
        """Record one iteration in which the rows flagged in ``rows`` moved to ``z``.

        :param torch.Tensor z: new iterate, shape ``(N, k)``; rows outside
            ``rows`` are ignored.
        :param evaluation: the problem evaluated at ``z``.
        :param torch.Tensor rows: rows that took a step, shape ``(N,)``, bool.
        :param torch.Tensor finite: rows the caller already found finite,
            shape ``(N,)``, bool; ``None`` checks here.
        :param torch.Tensor index: when given, ``z``, ``evaluation``, ``rows``
            and ``finite`` hold only these rows of the batch, shape ``(B,)``,
            and every other row keeps its state.
        """
        self.n_iter += 1
        # Newton passes its accepted rows as both, which are finite by construction.
        moved_are_finite = finite is rows
        check_finite = finite is None
        if check_finite:
            finite = evaluation_is_finite(evaluation, z)
        residual = evaluation.relative_residual()
        objective = evaluation.objective if self.objective is not None else None
        residual_norm = None
        if self.divergence_factor < math.inf:
            residual_norm = torch.linalg.vector_norm(evaluation.residual, dim=-1)
        if index is not None:
            z = self.z.index_put((index,), z)
            rows = spread_rows(rows, index, self._active)
            if not moved_are_finite:
                finite = spread_rows(finite, index, self._active)
            residual = self.residual.index_put((index,), residual)
            if objective is not None:
                objective = self.objective.index_put((index,), objective)
            if residual_norm is not None:
                residual_norm = self.min_residual_norm.index_put((index,), residual_norm)

        if rows is not self._active:
            rows = rows & self._active
        self.row_iterations += rows
        if check_finite:
            self._set_status(rows & ~finite, NON_FINITE)
        moved = rows if moved_are_finite else rows & finite

        if bool(moved.all()):
            # Every row moved: the common case, and cheaper without masking.
            self.z, self.residual = z, residual
            self.objective = objective if objective is not None else self.objective
        else:
            self.z = torch.where(moved[:, None], z, self.z)
            self.residual = torch.where(moved, residual, self.residual)
            if objective is not None:
                self.objective = torch.where(moved, objective, self.objective)

        if self.keep_best:
            self._track_best(moved)
        self._set_status(moved & (self.residual <= self.tol), CONVERGED, active_only=True)
        if residual_norm is not None:
            self._check_divergence(moved, residual_norm)
        self._record()

    def mark(self, rows: torch.Tensor, status: str) -> None:
        """Give the active rows flagged in ``rows`` (shape ``(N,)``) a final ``status``."""
        self._set_status(rows, status)

    def result(self, problem, stats: dict) -> SolverResult:
        """Build the :class:`SolverResult`, with ``row_iterations`` added to ``stats``.

        The problem's contraction bound, which may cost a singular value
        decomposition, is looked up only when a row did not converge.
        """
        converged = self.status == STATUS_INDEX[CONVERGED]
        contraction_bound = None if bool(converged.all()) else problem.contraction_bound
        z = self.best_z if self.keep_best else self.z
        residual = self.best_residual if self.keep_best else self.residual
        stats = dict(stats, row_iterations=self.row_iterations)
        objective_history = None
        if self.objective_history is not None:
            objective_history = torch.stack(self.objective_history)
        return SolverResult(
            z=z,
            converged=converged,
            n_iter=self.n_iter,
            residual=residual,
            residual_history=torch.stack(self.residual_history),
            objective_history=objective_history,
            row_status=self.status,
            method=self.method,
            tol=self.tol,
            contraction_bound=contraction_bound,
            stats=stats,
        )

    def _set_status(self, rows: torch.Tensor, status: str, active_only: bool = False) -> None:
        """Give ``status`` to the active rows among ``rows``; set ``active_only`` when all of them are active."""
        if not active_only:
            rows = rows & self._active
        self.status = self.status.masked_fill(rows, STATUS_INDEX[status])
        self._active = self._active.masked_fill(rows, False)

    def _track_best(self, moved: torch.Tensor) -> None:
        improved = moved & (self.residual < self.best_residual)
        self.best_z = torch.where(improved[:, None], self.z, self.best_z)
        self.best_residual = torch.where(improved, self.residual, self.best_residual)

    def _check_divergence(self, moved: torch.Tensor, residual_norm: torch.Tensor) -> None:
        rising = moved & (residual_norm > self.divergence_factor * self.min_residual_norm)
        self.min_residual_norm = torch.where(
            moved, torch.minimum(self.min_residual_norm, residual_norm), self.min_residual_norm
        )
        self.rising_streak = torch.where(rising, self.rising_streak + 1, torch.where(moved, 0, self.rising_streak))
        self._set_status(self.rising_streak >= self.divergence_patience, DIVERGED)

        # A non-contractive map can also cycle with a bounded residual, which
        # never trips the factor above; such a row has made no real progress.
        halved = moved & (residual_norm <= STAGNATION_DECREASE * self.reference_norm)
        self.reference_norm = torch.where(halved, residual_norm, self.reference_norm)
        self.stagnant_streak = torch.where(halved, 0, torch.where(moved, self.stagnant_streak + 1, self.stagnant_streak))
        self._set_status(self.stagnant_streak >= STAGNATION_PATIENCE, DIVERGED)

    def _record(self) -> None:
        self.residual_history.append(self.residual)
        if self.objective_history is not None:
            self.objective_history.append(self.objective)

        if logger.isEnabledFor(logging.DEBUG) and self.residual.numel():
            logger.debug(
                "%s iteration %d: %d of %d rows active, max relative residual %.3g",
                self.method,
                self.n_iter,
                int(self.active.sum()),
                self.residual.numel(),
                float(self.residual.max()),
            )
        if self.callback is not None:
            self.callback(self.n_iter, self.z, self.residual)


def spread_rows(flags: torch.Tensor, rows: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """Return batch-wide flags, shape of ``like``, that are ``flags`` on ``rows`` and ``False`` elsewhere.

    ``rows`` of ``None`` means every row, and ``flags`` is returned as it is.
    """
    if rows is None:
        return flags
    return torch.zeros_like(like).index_put((rows,), flags)


def evaluation_is_finite(evaluation, z: torch.Tensor | None = None) -> torch.Tensor:
    """Flag the rows whose iterate, value, residual, objective and Jacobian are finite.

    Summing each row first is several times faster than testing every entry,
    and a NaN or infinite entry makes its row's sum NaN or infinite. A row of
    finite entries whose sum overflows counts as non-finite, which only affects
    points near the floating-point range that no solver should accept.

    :param evaluation: an :class:`~pyro_deq.solvers.problem.Evaluation`; its
        objective and Jacobian enter when present.
    :param z: the iterate, shape ``(N, k)``, or ``None`` to skip it.
    :returns: shape ``(N,)``, bool.
    """
    total = evaluation.value.sum(-1) + evaluation.residual.sum(-1)
    if z is not None:
        total = total + z.sum(-1)
    if evaluation.objective is not None:
        total = total + evaluation.objective
    if evaluation.jacobian is not None:
        total = total + evaluation.jacobian.sum((-2, -1))
    return torch.isfinite(total)


def _all_finite(evaluation, z: torch.Tensor, relative: torch.Tensor) -> bool:
    """Return whether every entry of the evaluation, ``z`` and the relative residual is finite.

    The sum of all entries is finite only then. A sum that overflows reads
    as not finite, and :func:`evaluation_is_finite` then checks row by row.
    """
    tensors = [evaluation.value, evaluation.residual, z, relative, evaluation.objective, evaluation.jacobian]
    return math.isfinite(sum(float(tensor.sum()) for tensor in tensors if tensor is not None))


def _finite_or_inf(values: torch.Tensor, finite: torch.Tensor | None) -> torch.Tensor:
    """Replace the entries of non-finite rows by ``+inf``, so no NaN reaches a result. ``None`` means all are finite."""
    if finite is None:
        return values
    return torch.where(finite, values, torch.full_like(values, math.inf))
