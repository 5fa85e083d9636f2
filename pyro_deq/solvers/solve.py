"""The public entry point :func:`solve`: argument checks and dispatch to a method."""

from __future__ import annotations

import inspect
import math
import numbers
from typing import Callable

import torch

from pyro_deq.errors import ConvergenceWarning, warn_at_caller
from pyro_deq.solvers.anderson import anderson_solve
from pyro_deq.solvers.newton import newton_solve
from pyro_deq.solvers.picard import picard_solve
from pyro_deq.solvers.problem import FixedPointProblem, as_problem
from pyro_deq.solvers.result import SolverError, SolverResult, default_tolerance

__all__ = ["solve", "report_failure", "METHODS", "DEFAULT_MAX_ITER"]

METHODS = {"newton": newton_solve, "anderson": anderson_solve, "picard": picard_solve}

# Newton converges quadratically once close and needs a handful of steps, so 50
# leaves room for a long damped approach; Anderson and plain iteration converge
# linearly, at a rate set by the contraction of f, and need far more.
DEFAULT_MAX_ITER = {"newton": 50, "anderson": 500, "picard": 1000}

# Arguments of the method functions that solve() fills in itself.
_COMMON_ARGUMENTS = ("tol", "max_iter")


def solve(
    fn_or_problem: FixedPointProblem | Callable[[torch.Tensor], torch.Tensor],
    z0: torch.Tensor,
    method: str | None = None,
    tol: float | None = None,
    max_iter: int | None = None,
    throw: bool = False,
    warn: bool = True,
    **options,
) -> SolverResult:
    r"""Solve the batch of fixed-point problems ``z_n = f(z_n)``, one per row.

    Example::

        result = pyro_deq.solve(lambda z: 0.5 * torch.tanh(z) + 1.0, torch.zeros(10, 3))
        result.z            # (10, 3)
        result.converged    # (10,) bool

    The solve runs detached, under :func:`torch.no_grad`, whether or not
    gradients are enabled; differentiate through ``result.z`` with
    :func:`pyro_deq.solvers.attach_gradient`.

    :param fn_or_problem: a :class:`FixedPointProblem`, or a callable ``f``
        mapping ``(N, k)`` to ``(N, k)`` with independent rows.
    :param torch.Tensor z0: starting point, shape ``(N, k)``: batch ``N`` rows,
        event ``k`` components. Its dtype and device are those of the solve.
    :param str method: ``"newton"``, ``"anderson"`` or ``"picard"``. ``None``
        picks ``"newton"`` for a problem with both a Jacobian and an objective
        and ``"anderson"`` otherwise (including every plain callable).
    :param float tol: relative residual tolerance per row,
        ``||f(z) - z|| / (1 + ||f(z)||) <= tol``; ``None`` uses
        :func:`~pyro_deq.solvers.result.default_tolerance` of ``z0.dtype``.
    :param int max_iter: maximum number of iterations; ``None`` uses
        :data:`DEFAULT_MAX_ITER`: 50 for Newton, 500 for Anderson, 1000 for Picard.
    :param bool warn: with ``throw=False``, issue the warning for unconverged
        rows; ``False`` leaves the report to the caller (see :func:`report_failure`),
        and the result still carries every diagnostic.
    :param bool throw: raise :class:`~pyro_deq.solvers.result.SolverError`
        instead of issuing a :class:`~pyro_deq.errors.ConvergenceWarning` when
        some rows do not converge.
    :param options: method options, for example ``damping`` (Anderson, Picard),
        ``memory`` and ``regularization`` (Anderson), ``max_backtracks``
        (Newton), ``divergence_factor`` and ``divergence_patience`` (Anderson,
        Picard), ``callback`` (all). See the method functions for details.
    :returns: a :class:`~pyro_deq.solvers.result.SolverResult`.
    :raises ValueError: for an unknown method or an invalid argument value.
    :raises TypeError: for an option the method does not accept, or an argument
        of the wrong type.
    """
    problem = as_problem(fn_or_problem)
    method = _check_method(method, problem)
    _check_z0(z0)
    _check_z0_matches(problem, z0)
    tol = _check_tol(tol, z0.dtype)
    max_iter = _check_max_iter(max_iter, method)
    _check_options(method, options)

    if problem.uses_autograd:
        with torch.no_grad():
            result = METHODS[method](problem, z0.detach(), tol=tol, max_iter=max_iter, **options)
    else:
        # Inference mode skips the autograd bookkeeping of every torch call.
        # Its tensors cannot enter a graph later, so the result gets copies.
        with torch.inference_mode():
            result = METHODS[method](problem, z0.detach(), tol=tol, max_iter=max_iter, **options)
        result = _outside_inference_mode(result)

    if not bool(result.converged.all()) and (throw or warn):
        report_failure(result, throw)
    return result


def _outside_inference_mode(result: SolverResult) -> SolverResult:
    """Return ``result`` with every tensor replaced by a copy usable outside inference mode."""
    def copy(value):
        return value.clone() if isinstance(value, torch.Tensor) else value

    fields = {name: copy(getattr(result, name)) for name in result.__dataclass_fields__}
    fields["stats"] = {name: copy(value) for name, value in result.stats.items()}
    return SolverResult(**fields)


def report_failure(result: SolverResult, throw: bool = False) -> None:
    """Raise :class:`SolverError` or warn at the caller's line about unconverged rows."""
    if throw:
        diagnostics = {
            "result": result,
            "status": result.status,
            "n_iter": result.n_iter,
            "failed_rows": torch.nonzero(~result.converged).flatten(),
            "residual": result.residual,
        }
        raise SolverError(result.message, diagnostics)
    warn_at_caller(result.message, ConvergenceWarning)


def _check_method(method: str | None, problem: FixedPointProblem) -> str:
    if method is None:
        return "newton" if problem.has_jacobian and problem.has_objective else "anderson"
    if method not in METHODS:
        raise ValueError(f"Invalid `method` {method!r}; expected one of {sorted(METHODS)}.")
    return method


def _check_z0_matches(problem: FixedPointProblem, z0: torch.Tensor) -> None:
    """Raise when ``z0`` does not have the shape or dtype the problem declares."""
    shape, dtype = problem.latent_shape, problem.dtype
    if shape is not None and tuple(z0.shape) != tuple(shape):
        raise ValueError(
            f"`z0` has shape {tuple(z0.shape)} but the problem has {shape[0]} rows of {shape[1]} latents; "
            f"start from torch.zeros({shape[0]}, {shape[1]}, dtype={dtype})."
        )
    if dtype is not None and z0.dtype != dtype:
        raise TypeError(
            f"`z0` is {z0.dtype} but the problem is {dtype}; convert it with z0.to({dtype}), "
            f"or the problem with problem.to({z0.dtype})."
        )


def _check_z0(z0) -> None:
    if not isinstance(z0, torch.Tensor):
        raise TypeError(f"`z0` must be a torch.Tensor of shape (N, k), got {type(z0).__name__}.")
    if z0.dim() != 2:
        raise ValueError(
            f"`z0` must have shape (N, k) with one row per problem, got shape {tuple(z0.shape)}; "
            "add a batch dimension with z0.unsqueeze(0) or flatten the batch dimensions into one."
        )
    if not z0.is_floating_point():
        raise TypeError(f"`z0` must have a floating-point dtype, got {z0.dtype}; convert it with z0.double().")
    if not bool(torch.isfinite(z0).all()):
        raise ValueError("`z0` contains NaN or infinite entries; start from finite values such as zeros.")


def _check_tol(tol, dtype: torch.dtype) -> float:
    if tol is None:
        return default_tolerance(dtype)
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not (0 < tol < math.inf):
        raise ValueError(f"`tol` must be a positive finite number, got {tol!r}; for example tol=1e-6.")
    return float(tol)


def _check_max_iter(max_iter, method: str) -> int:
    if max_iter is None:
        return DEFAULT_MAX_ITER[method]
    if isinstance(max_iter, bool) or not isinstance(max_iter, numbers.Integral) or max_iter < 0:
        raise ValueError(f"`max_iter` must be a non-negative integer, got {max_iter!r}; for example max_iter=100.")
    return int(max_iter)


def _check_options(method: str, options: dict) -> None:
    """Reject options the method does not take and option values out of range."""
    if not options:
        return
    parameters = inspect.signature(METHODS[method]).parameters
    accepted = [
        name
        for name, parameter in parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY and name not in _COMMON_ARGUMENTS
    ]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(f"method={method!r} got unknown options {unknown}; it accepts {accepted}.")

    for name, value in options.items():
        _OPTION_CHECKS[name](name, value)


def _check_positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (0 < value < math.inf):
        raise ValueError(f"`{name}` must be a positive finite number, got {value!r}.")


def _check_above_one(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 1:
        raise ValueError(f"`{name}` must be a number above 1 (math.inf disables the check), got {value!r}.")


def _check_count(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")


def _check_regularization(name: str, value) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (0 <= value < math.inf):
        raise ValueError(f"`{name}` must be a non-negative finite number or None, got {value!r}.")


def _check_callback(name: str, value) -> None:
    if value is not None and not callable(value):
        raise TypeError(f"`{name}` must be callable as {name}(n_iter, z, residual), got {type(value).__name__}.")


_OPTION_CHECKS = {
    "damping": _check_positive,
    "memory": lambda name, value: _check_count(name, value, 1),
    "regularization": _check_regularization,
    "divergence_factor": _check_above_one,
    "divergence_patience": lambda name, value: _check_count(name, value, 1),
    "max_backtracks": lambda name, value: _check_count(name, value, 0),
    "callback": _check_callback,
}
