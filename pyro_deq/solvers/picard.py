"""Damped fixed-point (Picard) iteration, the plain deep-equilibrium forward pass."""

from __future__ import annotations

from typing import Callable

import torch

from pyro_deq.solvers.problem import FixedPointProblem
from pyro_deq.solvers.result import RowTracker, SolverResult

__all__ = ["picard_solve", "DIVERGENCE_FACTOR", "DIVERGENCE_PATIENCE"]

# A row diverges when its residual norm stays above DIVERGENCE_FACTOR times its
# smallest value so far for DIVERGENCE_PATIENCE consecutive iterations. A
# convergent but non-monotone iteration (Anderson, or a damped step through a
# curved region) can exceed its smallest residual by a small factor for a few
# iterations. Two orders of magnitude sustained over five iterations is not
# such a transient.
DIVERGENCE_FACTOR = 100.0
DIVERGENCE_PATIENCE = 5


def picard_solve(
    problem: FixedPointProblem,
    z0: torch.Tensor,
    *,
    tol: float,
    max_iter: int,
    damping: float = 1.0,
    divergence_factor: float = DIVERGENCE_FACTOR,
    divergence_patience: int = DIVERGENCE_PATIENCE,
    callback: Callable | None = None,
) -> SolverResult:
    r"""Solve ``z = f(z)`` row by row with the damped iteration
    :math:`z \leftarrow (1 - \beta) z + \beta f(z)`.

    With :math:`\beta = 1` this is the plain deep-equilibrium iteration. It
    converges when :math:`z \mapsto (1 - \beta) z + \beta f(z)` is a contraction;
    for ``f`` with a symmetric Jacobian whose eigenvalues lie in ``[-L, L]``
    that is true for :math:`0 < \beta < 2 / (1 + L)`.

    Called through :func:`pyro_deq.solve`, which validates the arguments and
    runs this function under :func:`torch.no_grad`.

    :param FixedPointProblem problem: the batch of problems.
    :param torch.Tensor z0: starting point, shape ``(N, k)``: batch ``N`` rows,
        event ``k`` latent components.
    :param float tol: relative residual tolerance per row.
    :param int max_iter: maximum number of iterations.
    :param float damping: the step fraction :math:`\beta > 0`.
    :param float divergence_factor: a row stops, with status ``diverged``, when
        its residual norm stays above this factor times its smallest value ...
    :param int divergence_patience: ... for this many consecutive iterations.
    :param callback: optional ``callback(n_iter, z, residual)``, see
        :class:`~pyro_deq.solvers.result.RowTracker`.
    :returns: a :class:`SolverResult` whose ``z`` contains each row's
        lowest-residual iterate, shape ``(N, k)``.
    """
    evaluation = problem.evaluate(z0)
    tracker = RowTracker("picard", z0, evaluation, tol, divergence_factor, divergence_patience, callback)

    while tracker.n_iter < max_iter and tracker.any_active():
        active = tracker.active
        step = damping * evaluation.residual
        z = torch.where(active[:, None], tracker.z + step, tracker.z)

        evaluation = problem.evaluate(z)
        tracker.update(z, evaluation, active)

    return tracker.result(problem, stats={"damping": damping})
