"""Anderson acceleration of the fixed-point iteration, one mixing problem per row."""

from __future__ import annotations

from typing import Callable

import torch

from pyro_deq.solvers.picard import DIVERGENCE_FACTOR, DIVERGENCE_PATIENCE
from pyro_deq.solvers.problem import FixedPointProblem
from pyro_deq.solvers.result import RowTracker, SolverResult

__all__ = ["anderson_solve", "DEFAULT_MEMORY"]

# Five past iterates are the usual Anderson memory in deep-equilibrium work: a
# longer history rarely speeds convergence and makes the Gram matrix worse
# conditioned.
DEFAULT_MEMORY = 5


def anderson_solve(
    problem: FixedPointProblem,
    z0: torch.Tensor,
    *,
    tol: float,
    max_iter: int,
    memory: int = DEFAULT_MEMORY,
    damping: float = 1.0,
    regularization: float | None = None,
    divergence_factor: float = DIVERGENCE_FACTOR,
    divergence_patience: int = DIVERGENCE_PATIENCE,
    callback: Callable | None = None,
) -> SolverResult:
    r"""Solve ``z = f(z)`` row by row with Anderson acceleration.

    Each row keeps its last ``m`` iterates :math:`x_i`, their images
    :math:`g_i = f(x_i)` and residuals :math:`F_i = g_i - x_i`. The mixing
    weights minimise :math:`\|\sum_i \alpha_i F_i\|^2` subject to
    :math:`\sum_i \alpha_i = 1`; with the Gram matrix :math:`G = F F^\top` they are
    :math:`\alpha = w / 1^\top w` where :math:`(G + \mu I) w = 1`. The next iterate is

    .. math:: x_{new} = \beta \sum_i \alpha_i g_i + (1 - \beta) \sum_i \alpha_i x_i.

    The Tikhonov term :math:`\mu` is ``regularization`` times the mean diagonal
    of :math:`G`, so it scales with the residuals. A row whose regularised
    system is singular or gives non-finite weights takes the damped plain step
    :math:`x + \beta F` instead; ``stats["n_fallbacks"]`` counts these row
    steps. Nothing in the loop raises.

    Called through :func:`pyro_deq.solve`, which validates the arguments and
    runs this function under :func:`torch.no_grad`.

    :param FixedPointProblem problem: the batch of problems.
    :param torch.Tensor z0: starting point, shape ``(N, k)``: batch ``N`` rows,
        event ``k`` latent components.
    :param float tol: relative residual tolerance per row.
    :param int max_iter: maximum number of iterations.
    :param int memory: the history length ``m``.
    :param float damping: the mixing fraction :math:`\beta > 0`.
    :param float regularization: relative Tikhonov weight. ``None`` uses
        ``sqrt(eps)`` of the dtype. That caps the condition number of the
        regularised system near ``1 / sqrt(eps)``, so its solve keeps about half
        the working digits.
    :param float divergence_factor: a row stops, with status ``diverged``, when
        its residual norm stays above this factor times its smallest value ...
    :param int divergence_patience: ... for this many consecutive iterations.
    :param callback: optional ``callback(n_iter, z, residual)``, see
        :class:`~pyro_deq.solvers.result.RowTracker`.
    :returns: a :class:`SolverResult` whose ``z`` contains each row's
        lowest-residual iterate, shape ``(N, k)``; ``stats["n_fallbacks"]`` is an int.
    """
    if regularization is None:
        regularization = float(torch.finfo(z0.dtype).eps) ** 0.5

    evaluation = problem.evaluate(z0)
    tracker = RowTracker("anderson", z0, evaluation, tol, divergence_factor, divergence_patience, callback)
    history = _History(z0, memory)
    history.push(z0, evaluation.value)
    n_fallbacks = 0

    while tracker.n_iter < max_iter and tracker.any_active():
        active = tracker.active
        mixed, failed = _mix(history, damping, regularization)
        plain = tracker.z + damping * evaluation.residual
        z = torch.where(failed[:, None], plain, mixed)
        z = torch.where(active[:, None], z, tracker.z)
        n_fallbacks += int((failed & active).sum())

        evaluation = problem.evaluate(z)
        tracker.update(z, evaluation, active)
        history.push(tracker.z, _finite_or(evaluation.value, tracker.z))

    stats = {"n_fallbacks": n_fallbacks, "memory": memory, "damping": damping}
    return tracker.result(problem, stats=stats)


class _History:
    """Ring buffers of the last ``memory`` iterates and images, shape ``(N, m, k)``."""

    def __init__(self, z0: torch.Tensor, memory: int):
        n_rows, n_components = z0.shape
        self.iterates = z0.new_zeros(n_rows, memory, n_components)
        self.images = z0.new_zeros(n_rows, memory, n_components)
        self.memory = memory
        self.count = 0

    def push(self, iterate: torch.Tensor, image: torch.Tensor) -> None:
        slot = self.count % self.memory
        self.iterates[:, slot] = iterate
        self.images[:, slot] = image
        self.count += 1

    def filled(self) -> tuple[torch.Tensor, torch.Tensor]:
        size = min(self.count, self.memory)
        return self.iterates[:, :size], self.images[:, :size]


def _mix(history: _History, damping: float, regularization: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Compute the Anderson iterate per row and flag the rows whose weights failed.

    :returns: the mixed iterate, shape ``(N, k)``, and the failure flags, shape ``(N,)``.
    """
    iterates, images = history.filled()
    residuals = images - iterates
    gram = residuals @ residuals.transpose(-1, -2)

    size = gram.shape[-1]
    eye = torch.eye(size, dtype=gram.dtype, device=gram.device)
    scale = gram.diagonal(dim1=-2, dim2=-1).mean(-1)
    system = gram + (regularization * scale)[:, None, None] * eye
    ones = torch.ones(gram.shape[:-1] + (1,), dtype=gram.dtype, device=gram.device)
    weights, info = torch.linalg.solve_ex(system, ones)

    weights = weights.squeeze(-1)
    alpha = weights / weights.sum(-1, keepdim=True)
    failed = (info != 0) | ~torch.isfinite(alpha).all(-1)
    alpha = torch.where(failed[:, None], torch.zeros_like(alpha), alpha)

    mixed_images = (alpha[:, :, None] * images).sum(-2)
    mixed_iterates = (alpha[:, :, None] * iterates).sum(-2)
    return damping * mixed_images + (1.0 - damping) * mixed_iterates, failed


def _finite_or(values: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """Keep the finite rows of ``values`` and take the others from ``fallback``."""
    finite = torch.isfinite(values).all(-1, keepdim=True)
    return torch.where(finite, values, fallback)
