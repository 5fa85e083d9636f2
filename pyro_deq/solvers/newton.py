"""Batched Newton's method on the residual, with a per-row backtracking line search."""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import torch

from pyro_deq.solvers.problem import Evaluation, FixedPointProblem
from pyro_deq.solvers.result import (
    CONVERGED,
    STALLED,
    RowTracker,
    SolverResult,
    evaluation_is_finite,
    spread_rows,
)

__all__ = ["newton_solve", "system_factorization", "MAX_BACKTRACKS", "ROUNDING_ULPS"]

# Halving a step 30 times shrinks it by 2**-30 (about 1e-9): below the float32
# resolution of a unit-scale iterate and near the float64 square-root
# precision, so a row with no acceptable step by then has no decrease left to find.
MAX_BACKTRACKS = 30

# A trial point is accepted when its objective exceeds the current one by at most
# ROUNDING_ULPS * eps * (1 + |objective|). The objective is a sum over features,
# so its rounding error grows with their number. Near the solution a Newton step
# changes it by less than that error, and a strict decrease test would reject
# good steps and stall rows that are about to converge.
ROUNDING_ULPS = 100.0

# A row whose full Newton step is below STEP_ULPS * eps * (1 + ||z||) and whose
# residual fell by less than half in its last iteration is at its root to
# working precision: the residual is rounding noise, which grows with the size
# of the counts and can sit above the tolerance (float64 counts near 1e6, for
# example). While the residual still falls fast, Newton goes on even with a
# tiny step, because the tolerance may ask for a residual below that size.
STEP_ULPS = 64.0

# Strongly convex problems with at least this many latents per row solve their
# Newton systems by Cholesky instead of LU. Batched 5 x 5 systems are faster
# with LU and 10 x 10 ones with Cholesky (torch 2.13 on a 2-core x86_64 CPU).
CHOLESKY_MIN_SIZE = 8

# Strongly convex problems with at least this many rows solve their Newton
# systems by Gauss-Jordan elimination over the whole batch at once (see
# `_eliminate`), which costs a few torch operations per latent instead of one
# LAPACK call per row. Below these batch sizes LAPACK was faster: 640 rows for
# fewer than CHOLESKY_MIN_SIZE latents, and 200 from there on, where batched
# LAPACK slows down several times (torch 2.13 with MKL, 2-core x86_64 CPU,
# one thread). The crossover differs on other machines, and each choice
# solves the same systems, so these values affect speed only.
ELIMINATION_MIN_ROWS = 640
ELIMINATION_MIN_ROWS_LARGE = 200

# A problem with `has_rows` is cut down to its active rows once they are at
# most this fraction of the rows iterated on. Copying the rows costs about one
# evaluation of them, and each later iteration then saves at least half of one.
COMPACTION_FRACTION = 0.5


def newton_solve(
    problem: FixedPointProblem,
    z0: torch.Tensor,
    *,
    tol: float,
    max_iter: int,
    max_backtracks: int = MAX_BACKTRACKS,
    callback: Callable | None = None,
) -> SolverResult:
    r"""Solve ``r(z) = f(z) - z = 0`` row by row with Newton's method.

    Each iteration takes the direction :math:`\Delta = -J^{-1} r` per row, with
    :math:`J = \partial r / \partial z` of shape ``(N, k, k)``, and a
    backtracking line search that halves the step until the merit function does
    not increase beyond a rounding allowance. The merit function is the
    problem's objective when it has one, and :math:`\tfrac12 \|r\|^2` otherwise.

    A problem with an objective must satisfy :math:`r = -c \nabla \text{objective}`
    for some :math:`c > 0` (for a model, :math:`r = \nabla \ell / \lambda` and the
    objective is :math:`-\ell`). Then :math:`\Delta` is a descent direction when
    :math:`r^\top \Delta > 0`, which is true whenever :math:`-J` is positive
    definite. A row whose solve fails or whose direction is not a descent
    direction takes a residual step :math:`\Delta = r` instead (for the
    :math:`\tfrac12 \|r\|^2` merit, the steepest-descent step
    :math:`\Delta = -J^\top r`); ``stats["n_fallbacks"]`` counts these.

    Every trial point is evaluated with its Jacobian, and the accepted one is
    reused by the next iteration, so an iteration whose first trial is accepted
    costs one gradient-and-Hessian evaluation.

    A problem that declares :attr:`~FixedPointProblem.strong_convexity` (every
    :class:`~pyro_deq.ExpFamPCA` with the identity nonlinearity) costs less.
    Its trial points are evaluated without objective or Jacobian, and a step
    is accepted when strong convexity proves that the objective did not rise
    (see ``_line_search``) or when it meets ``tol``. Only the rows that
    neither test decides are checked against the objective. The Jacobian is
    computed once the accepted point is known not to be the last. Then
    ``objective_history`` is ``None``, and the objective still never rises.
    Its Newton systems are solved by LU, Cholesky or Gauss-Jordan elimination
    over the batch, as :func:`system_factorization` picks by their size and number.

    Rows that meet ``tol`` stop moving. So do rows whose Newton step is below
    ``STEP_ULPS`` rounding units of ``z`` while their residual has stopped
    falling. They count as converged, because rounding, not distance to the
    root, keeps their residual above ``tol``. A row with no acceptable step
    after ``max_backtracks`` halvings is marked ``stalled`` and keeps its last
    accepted point, which is its best in the merit function up to the
    rounding allowance.

    Called through :func:`pyro_deq.solve`, which validates the arguments and
    runs this function under :func:`torch.no_grad`.

    :param FixedPointProblem problem: the batch of problems; must have a Jacobian.
    :param torch.Tensor z0: starting point, shape ``(N, k)``: batch ``N`` rows,
        event ``k`` latent components.
    :param float tol: relative residual tolerance per row.
    :param int max_iter: maximum number of Newton iterations.
    :param int max_backtracks: maximum number of step halvings per iteration.
    :param callback: optional ``callback(n_iter, z, residual)``, see
        :class:`~pyro_deq.solvers.result.RowTracker`.
    :returns: a :class:`SolverResult`; ``stats`` contains the ints ``n_fallbacks``,
        ``n_backtracks`` (row halvings), ``n_evaluations``,
        ``n_step_converged`` (rows ended by the step-size test),
        ``n_certified`` (row steps accepted without the objective) and
        ``n_uncertified`` (row steps that needed it).
    """
    if not problem.has_jacobian:
        raise NotImplementedError(
            f"method='newton' needs a problem with a Jacobian, and {type(problem).__name__} "
            "has none; use method='anderson' or implement evaluate(z, jacobian=True)."
        )

    certify = problem.has_objective and problem.strong_convexity is not None
    shared = problem.evaluate_shared(z0, objective=not certify)
    if shared is None:
        evaluation, shared_jacobian = _evaluate(problem, z0, certify, jacobian=True), None
    else:
        evaluation, shared_jacobian = shared
    _check_evaluation(problem, evaluation, certify, shared_jacobian)
    # Certified steps leave the objective out, so no objective history is kept.
    tracked = dataclasses.replace(evaluation, objective=None) if certify else evaluation
    tracker = RowTracker("newton", z0, tracked, tol, callback=callback, keep_best=False)
    stats = {"n_fallbacks": 0, "n_backtracks": 0, "n_evaluations": 1, "n_step_converged": 0, "n_certified": 0,
             "n_uncertified": 0, "n_compactions": 0}

    # The solver works on `work`, the rows `work_rows` of the problem (all of
    # them while `work_rows` is None); `evaluation` contains those rows only.
    work, work_rows = problem, None
    while tracker.n_iter < max_iter:
        n_active = tracker.n_active()
        if n_active == 0:
            break
        if problem.has_rows:
            work, work_rows, evaluation = _drop_finished_rows(
                problem, tracker, n_active, work, work_rows, evaluation, stats
            )
        active = _take(tracker.active, work_rows)
        z = _take(tracker.z, work_rows)

        if shared_jacobian is not None:
            jacobian, shared_jacobian = shared_jacobian, None
        else:
            if evaluation.jacobian is None:
                # Trial points are evaluated without the Jacobian; it is needed
                # only once a row is known to continue.
                evaluation = work.complete(z, evaluation, objective=False, jacobian=True)
            jacobian = evaluation.jacobian
        direction, fallback = _newton_direction(jacobian, evaluation.residual, problem.has_objective, certify)
        if fallback is not None:
            stats["n_fallbacks"] += int((fallback & active).sum())

        # The step-size test needs norms, so it runs only when some row's
        # residual has stopped halving, which quadratic convergence rarely leaves.
        residual = _take(tracker.residual, work_rows)
        stagnant = active & (residual > 0.5 * _take(tracker.previous_residual, work_rows))
        if fallback is not None:
            stagnant = stagnant & ~fallback
        if bool(stagnant.any()):
            step_floor = STEP_ULPS * torch.finfo(z0.dtype).eps * (1.0 + torch.linalg.vector_norm(z, dim=-1))
            at_precision = stagnant & (torch.linalg.vector_norm(direction, dim=-1) <= step_floor)
            if bool(at_precision.any()):
                tracker.mark(spread_rows(at_precision, work_rows, tracker.active), CONVERGED)
                stats["n_step_converged"] += int(at_precision.sum())
                active = active & ~at_precision
                if not bool(active.any()):
                    break

        z, evaluation, accepted = _line_search(
            work, z, evaluation, direction, active, max_backtracks, stats, tol,
            problem.strong_convexity if certify else None,
        )
        tracker.update(z, evaluation, accepted, finite=accepted, index=work_rows)
        if accepted is not active:
            stalled = active & ~accepted
            if bool(stalled.any()):
                tracker.mark(spread_rows(stalled, work_rows, tracker.active), STALLED)

    return tracker.result(problem, stats=stats)


def _take(values: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """Return ``values[rows]``, or ``values`` itself when ``rows`` is ``None`` (all rows)."""
    return values if rows is None else values[rows]


def _drop_finished_rows(
    problem: FixedPointProblem,
    tracker: RowTracker,
    n_active: int,
    work: FixedPointProblem,
    work_rows: torch.Tensor | None,
    evaluation: Evaluation,
    stats: dict,
) -> tuple[FixedPointProblem, torch.Tensor | None, Evaluation]:
    """Restrict the work to the active rows once they are at most ``COMPACTION_FRACTION`` of it.

    Every evaluation costs the same per row whether the row is active or
    not, so once most rows are done, iterating on a copy of the problem with
    the active rows only is cheaper than masking.

    :returns: the problem to iterate on, its rows in the batch (``None`` for
        all), and ``evaluation`` restricted to them.
    """
    n_work = tracker.active.shape[0] if work_rows is None else work_rows.shape[0]
    if n_active > COMPACTION_FRACTION * n_work:
        return work, work_rows, evaluation

    rows = tracker.active.nonzero().flatten()
    positions = rows if work_rows is None else torch.searchsorted(work_rows, rows)
    stats["n_compactions"] += 1
    return problem.rows(rows), rows, evaluation.rows(positions)


def _evaluate(problem: FixedPointProblem, z: torch.Tensor, certify: bool, jacobian: bool) -> Evaluation:
    """Evaluate at ``z``, leaving out the objective when steps are certified without it."""
    if certify:
        return problem.evaluate(z, jacobian=jacobian, objective=False)
    return problem.evaluate(z, jacobian=jacobian)


def _check_evaluation(
    problem: FixedPointProblem, evaluation: Evaluation, certify: bool, shared_jacobian: torch.Tensor | None
) -> None:
    """Raise when ``evaluate`` did not return what the problem's flags promise."""
    name = type(problem).__name__
    if shared_jacobian is None and evaluation.jacobian is None:
        raise TypeError(f"{name}.evaluate(z, jacobian=True) returned no Jacobian although has_jacobian is True.")
    if problem.has_objective and not certify and evaluation.objective is None:
        raise TypeError(f"{name}.evaluate(z) returned no objective although has_objective is True.")


def _newton_direction(
    jacobian: torch.Tensor, residual: torch.Tensor, has_objective: bool, convex: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Compute the Newton direction per row, with the fallback step where it fails.

    :param jacobian: per-row Jacobians ``(N, k, k)``, or one ``(k, k)`` Jacobian
        shared by every row, which needs one factorization instead of ``N``.
    :param residual: shape ``(N, k)``.
    :param convex: whether the problem declares strong convexity. Its
        ``-J`` is then positive definite, so a finite solution of a
        successful solve is a descent direction and only those two are checked.
    :returns: the direction, shape ``(N, k)``, and the fallback flags, shape
        ``(N,)``, or ``None`` when no row falls back.
    """
    if jacobian.dim() == 2:
        newton, info = torch.linalg.solve_ex(jacobian, -residual.T)
        newton = newton.T
        fallback_step = residual if has_objective else -(residual @ jacobian)
    else:
        newton, info = _solve_rows(jacobian, residual, convex)
        if has_objective:
            fallback_step = residual
        else:
            fallback_step = -(jacobian.transpose(-1, -2) @ residual.unsqueeze(-1)).squeeze(-1)
    # LAPACK and the elimination return the batch of solutions column-major;
    # row-wise norms and sums on that layout cost several times more than a copy.
    newton = newton.contiguous()

    if convex:
        # A failed factorization leaves infinite or NaN entries, so one
        # finiteness check over the batch covers both.
        if math.isfinite(float(newton.sum())):
            return newton, None
        usable = torch.isfinite(newton.sum(-1))
        if info is not None:
            usable = usable & (info == 0)
    else:
        # The merit's directional derivative along the Newton direction is
        # -descent times a positive factor. A NaN or infinite entry of the
        # direction makes it NaN or infinite, so this test also rejects those.
        descent = (fallback_step * newton).sum(-1)
        usable = (info == 0) & (descent > 0) & (descent < math.inf)
    if bool(usable.all()):
        return newton, None
    return torch.where(usable[:, None], newton, fallback_step), ~usable


def _solve_rows(
    jacobian: torch.Tensor, residual: torch.Tensor, convex: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Solve ``J_n x_n = -r_n`` for every row, shapes ``(N, k, k)`` and ``(N, k)``.

    A strongly convex problem's Jacobian is a symmetric Hessian, and its
    transpose is already in the column-major layout LAPACK works in, so
    solving with it skips a copy of the batch. From ``CHOLESKY_MIN_SIZE`` on,
    ``-J`` is factored by Cholesky, which does half the work of LU. Large
    batches of these systems are solved by :func:`_eliminate` instead.

    :returns: the solutions ``(N, k)`` and LAPACK's per-row info codes
        ``(N,)``, or ``None`` after elimination, whose failures show only as
        non-finite solutions.
    """
    factorization = system_factorization(*residual.shape, convex)
    if factorization == "elimination":
        return _eliminate(jacobian, residual), None
    if factorization == "cholesky":
        factor, info = torch.linalg.cholesky_ex(-jacobian.mT)
        if not bool(info.any()):
            half = torch.linalg.solve_triangular(factor, residual.unsqueeze(-1), upper=False)
            return torch.linalg.solve_triangular(factor.mT, half, upper=True).squeeze(-1), info
    return torch.linalg.solve_ex(jacobian.mT if convex else jacobian, -residual)


def system_factorization(n_rows: int, size: int, convex: bool) -> str:
    """Name how Newton solves ``n_rows`` systems of ``size × size``: ``"elimination"``, ``"cholesky"`` or ``"lu"``.

    :param bool convex: whether the problem declares strong convexity, which
        the first two need.
    """
    if not convex:
        return "lu"
    if n_rows >= (ELIMINATION_MIN_ROWS if size < CHOLESKY_MIN_SIZE else ELIMINATION_MIN_ROWS_LARGE):
        return "elimination"
    return "cholesky" if size >= CHOLESKY_MIN_SIZE else "lu"


def _eliminate(jacobian: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """Solve ``J_n x_n = -r_n`` for every row by Gauss-Jordan elimination without pivoting.

    The batch is laid out last, as the augmented systems ``[J | r]`` of
    shape ``(k, k + 1, N)``, so each step of the elimination is one
    operation on contiguous runs of ``N`` rows. Step ``j`` divides row ``j``
    by its pivot and subtracts multiples of it from every other row.

    Only for Jacobians whose symmetric part is negative definite (the
    strongly convex problems): their pivots are the diagonals of Schur
    complements, which are negative, so no pivoting is needed, as for
    Cholesky. A singular or non-finite system yields non-finite entries.

    :returns: the solutions, shape ``(N, k)``.
    """
    size = residual.shape[-1]
    system = torch.cat([jacobian.permute(1, 2, 0), residual.T.unsqueeze(1)], dim=1)

    for column in range(size):
        pivot_row = system[column, column + 1:]
        pivot_row.div_(system[column, column])
        if column > 0:
            system[:column, column + 1:].addcmul_(system[:column, column:column + 1], pivot_row, value=-1.0)
        if column + 1 < size:
            system[column + 1:, column + 1:].addcmul_(system[column + 1:, column:column + 1], pivot_row, value=-1.0)

    # The last column now contains J^-1 r, one latent per row of the layout.
    return system[:, size].T.neg()


def _merit(evaluation: Evaluation, has_objective: bool) -> torch.Tensor:
    """Return the per-row merit function, shape ``(N,)``."""
    if has_objective:
        return evaluation.objective
    return 0.5 * evaluation.residual.square().sum(-1)


def _line_search(
    problem: FixedPointProblem,
    z: torch.Tensor,
    evaluation: Evaluation,
    direction: torch.Tensor,
    active: torch.Tensor,
    max_backtracks: int,
    stats: dict,
    tol: float,
    strong_convexity: float | None,
) -> tuple[torch.Tensor, Evaluation, torch.Tensor]:
    """Backtrack per row from the full step until the merit function is acceptable.

    When ``strong_convexity`` is a number ``mu``
    (:attr:`~FixedPointProblem.strong_convexity` of the problem solved), a
    step ``s`` to a point with residual ``r'`` cannot raise the objective when
    ``r' . s >= -mu ||s||^2 / 2``: strong convexity bounds the objective's
    change by ``-(r' . s + mu ||s||^2 / 2) / c``. A point whose relative
    residual meets ``tol`` is accepted too, since strong convexity puts it
    within ``||r'|| / mu`` of the solution. Rows that pass either test are
    accepted without the objective, which is computed only for the others.

    :returns: the new iterate ``(N, k)``, its evaluation, and the rows that
        found an acceptable step, shape ``(N,)``, bool; that is ``active``
        itself when every active row took its full step. Only the accepted
        rows of the iterate and the evaluation are meaningful. The evaluation
        has a Jacobian unless ``strong_convexity`` is given.
    """
    certify = strong_convexity is not None
    eps = torch.finfo(z.dtype).eps
    ceiling = None
    if not certify:
        ceiling = _merit_ceiling(_merit(evaluation, problem.has_objective), eps)

    all_active = bool(active.all())
    pending = active
    step = None
    for attempt in range(max_backtracks + 1):
        if step is None and (attempt > 0 or not all_active):
            step = active.to(z.dtype)
        if attempt > 0:
            step = torch.where(pending, 0.5 * step, torch.zeros_like(step))
            stats["n_backtracks"] += int(pending.sum())

        # On the first attempt with every row active, no row needs masking.
        everyone = attempt == 0 and all_active
        if everyone:
            move = direction
        else:
            move = step[:, None] * direction
        trial_z = z + move
        trial = _evaluate(problem, trial_z, certify, jacobian=not certify)
        stats["n_evaluations"] += 1

        if certify:
            relative = trial.relative_residual()
            margin = torch.linalg.vecdot(torch.add(trial.residual, move, alpha=0.5 * strong_convexity), move)
            # A row passes when its margin is non-negative or its relative
            # residual meets tol, that is when the larger of the margin and
            # tol - relative is non-negative. The iterate is finite, so a
            # value that is not makes the residual infinite or NaN too, and
            # the relative residual NaN (inf / inf). `maximum` passes NaN on,
            # so such a row fails this one comparison.
            good = torch.maximum(margin, torch.rsub(relative, tol)) >= 0
            if not everyone:
                good = good & pending
            n_good = int(good.sum())
            stats["n_certified"] += n_good
            n_pending = pending.shape[0] if everyone else int(pending.sum())
            undecided = None
            if n_good < n_pending:
                # The trial has no objective or Jacobian yet, so a finite
                # relative residual means a finite point.
                undecided = pending & (relative < math.inf) & ~good
            if undecided is not None and bool(undecided.any()):
                stats["n_uncertified"] += int(undecided.sum())
                if ceiling is None:
                    evaluation = problem.complete(z, evaluation, objective=True, jacobian=False)
                    ceiling = _merit_ceiling(evaluation.objective, eps)
                trial = problem.complete(trial_z, trial, objective=True, jacobian=False)
                good = good | (undecided & (trial.objective <= ceiling))
                n_good = int(good.sum())
        else:
            candidates = pending & evaluation_is_finite(trial)
            good = candidates & (_merit(trial, problem.has_objective) <= ceiling)
            n_good = None

        if attempt == 0:
            new_z, new_evaluation = trial_z, trial
            if everyone and n_good == good.shape[0]:
                # Every full step was accepted: the common case, with nothing to merge.
                return new_z, new_evaluation, active
            accepted = good
        else:
            new_z = torch.where(good[:, None], trial_z, new_z)
            new_evaluation = _select_rows(good, trial, new_evaluation)
            accepted = accepted | good
        pending = pending & ~good
        if not pending.any():
            break

    return new_z, new_evaluation, accepted


def _merit_ceiling(merit: torch.Tensor, eps: float) -> torch.Tensor:
    """Return the largest merit per row that a step may reach: ``merit`` plus ``ROUNDING_ULPS`` rounding units."""
    return merit + ROUNDING_ULPS * eps * (1.0 + merit.abs())


def _select_rows(rows: torch.Tensor, chosen: Evaluation, other: Evaluation) -> Evaluation:
    """Merge two evaluations, taking the rows flagged in ``rows`` from ``chosen``.

    The objective and the Jacobian are kept only when both have them.
    """
    objective = jacobian = None
    if chosen.objective is not None and other.objective is not None:
        objective = torch.where(rows, chosen.objective, other.objective)
    if chosen.jacobian is not None and other.jacobian is not None:
        jacobian = torch.where(rows[:, None, None], chosen.jacobian, other.jacobian)
    return Evaluation(
        value=torch.where(rows[:, None], chosen.value, other.value),
        residual=torch.where(rows[:, None], chosen.residual, other.residual),
        objective=objective,
        jacobian=jacobian,
    )
