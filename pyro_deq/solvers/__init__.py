"""Fixed-point solvers for batches of independent rows, and gradients through them.

:func:`solve` is the entry point; it dispatches to :func:`newton_solve`,
:func:`anderson_solve` or :func:`picard_solve`, all of which return a
:class:`SolverResult`. :func:`attach_gradient` differentiates through a solution.
"""

from pyro_deq.solvers.anderson import anderson_solve
from pyro_deq.solvers.gradients import ImplicitFixedPoint, attach_gradient
from pyro_deq.solvers.newton import newton_solve
from pyro_deq.solvers.picard import picard_solve
from pyro_deq.solvers.problem import CallableProblem, Evaluation, FixedPointProblem, as_problem
from pyro_deq.solvers.result import SolverError, SolverResult, default_tolerance, relative_residual
from pyro_deq.solvers.solve import DEFAULT_MAX_ITER, METHODS, report_failure, solve

__all__ = [
    "CallableProblem",
    "DEFAULT_MAX_ITER",
    "Evaluation",
    "FixedPointProblem",
    "ImplicitFixedPoint",
    "METHODS",
    "SolverError",
    "SolverResult",
    "anderson_solve",
    "as_problem",
    "attach_gradient",
    "default_tolerance",
    "newton_solve",
    "picard_solve",
    "relative_residual",
    "report_failure",
    "solve",
]
