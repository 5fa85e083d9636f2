"""Time ``solve(problem, z0, method="newton")`` against a bare batched Newton loop.

The problem is the MAP of Bernoulli PCA latents with ``||W||^2 / (4 lambda) = 8``,
where plain iteration does not converge. The bare loop computes the gradient and
Hessian and calls ``torch.linalg.solve``. It has no line search, no per-row
bookkeeping and no history, and runs until it reaches the same relative residual
as the library solve. Both run in float32 on one thread.

The headline ``ratio`` is the library's solve of ``ExpFamPCA.problem(y)``, the
problem every guide solves, over the bare loop. ``custom_ratio`` times the
same solve of a problem written here by hand that supplies only ``evaluate``,
as a user's own problem would: without ``strong_convexity``, every trial point
needs the objective and the Jacobian.

Usage::

    python benchmarks/bench_newton.py [--quick] [--repeats 7] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from pyro_deq.solvers import Evaluation, FixedPointProblem, relative_residual, solve

FULL_SIZE = {"n_rows": 2000, "n_features": 64, "n_components": 5}
QUICK_SIZE = {"n_rows": 50, "n_features": 16, "n_components": 3}
CONTRACTION_BOUND = 8.0
PRIOR_PRECISION = 1.0
TOL = 1e-6
# The bare loop has no line search, so it may never reach the tolerance. It
# stops after this many steps, and the output then shows 100 bare iterations.
BARE_MAX_ITER = 100


class BernoulliPCAProblem(FixedPointProblem):
    """MAP of ``z`` per row under Bernoulli PCA, with closed-form residual, objective and Jacobian."""

    has_objective = True
    has_jacobian = True

    def __init__(self, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, prior_precision: float):
        self.y, self.weight, self.bias = y, weight, bias
        self.prior_precision = prior_precision
        self.contraction_bound = float(torch.linalg.matrix_norm(weight, ord=2)) ** 2 / (4 * prior_precision)
        # y^T u = (y W) . z + y . b, so the objective needs no pass over the features for it.
        self.y_weight = y @ weight
        self.y_bias = y @ bias

    def fixed_point_map(self, z: torch.Tensor) -> torch.Tensor:
        return self.evaluate(z).value

    def evaluate(self, z: torch.Tensor, jacobian: bool = False) -> Evaluation:
        u = z @ self.weight.T + self.bias
        probs = torch.sigmoid(u)
        value = (self.y - probs) @ self.weight / self.prior_precision
        data_term = (self.y_weight * z).sum(-1) + self.y_bias
        objective = F.softplus(u).sum(-1) - data_term + 0.5 * self.prior_precision * z.square().sum(-1)

        jac = None
        if jacobian:
            hessian = torch.einsum("nd,dk,dl->nkl", probs * (1 - probs), self.weight, self.weight)
            eye = torch.eye(z.shape[-1], dtype=z.dtype)
            jac = -hessian / self.prior_precision - eye
        return Evaluation(value=value, residual=value - z, objective=objective, jacobian=jac)


def make_problem(n_rows: int, n_features: int, n_components: int, seed: int = 0) -> BernoulliPCAProblem:
    """Draw loadings scaled to the contraction bound and data from the model, in float32."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(n_features, n_components, generator=generator)
    spectral_norm = float(torch.linalg.matrix_norm(weight, ord=2))
    weight *= math.sqrt(4 * CONTRACTION_BOUND * PRIOR_PRECISION) / spectral_norm
    bias = 0.5 * torch.randn(n_features, generator=generator)
    z_true = torch.randn(n_rows, n_components, generator=generator)
    y = torch.bernoulli(torch.sigmoid(z_true @ weight.T + bias), generator=generator)
    return BernoulliPCAProblem(y, weight, bias, PRIOR_PRECISION)


def model_problem_like(problem: BernoulliPCAProblem):
    """Build the same MAP problem with the library's own ``ExpFamPCA`` model."""
    from pyro_deq import ExpFamPCA

    model = ExpFamPCA(problem.weight.shape[0], problem.weight.shape[1], family="bernoulli",
                      prior_precision=problem.prior_precision, weight=problem.weight, bias=problem.bias,
                      name="benchmark")
    with torch.no_grad():
        return model.problem(problem.y)


def bare_newton(problem: BernoulliPCAProblem, z0: torch.Tensor, tol: float) -> tuple[torch.Tensor, int]:
    """Run plain batched Newton until the max relative residual is at most ``tol``.

    :returns: the iterate ``(N, k)`` and the number of Newton steps taken.
    """
    weight, bias, precision = problem.weight, problem.bias, problem.prior_precision
    eye = torch.eye(z0.shape[-1], dtype=z0.dtype)
    z = z0.clone()
    for n_iter in range(BARE_MAX_ITER + 1):
        probs = torch.sigmoid(z @ weight.T + bias)
        value = (problem.y - probs) @ weight / precision
        if float(relative_residual(value - z, value).max()) <= tol:
            return z, n_iter

        gradient = precision * (value - z)
        hessian = precision * eye + torch.einsum("nd,dk,dl->nkl", probs * (1 - probs), weight, weight)
        z = z + torch.linalg.solve(hessian, gradient)
    return z, BARE_MAX_ITER


def evaluation_floor(problem: BernoulliPCAProblem, z0: torch.Tensor, n_iter: int) -> None:
    """Repeat the custom problem's work: ``n_iter + 1`` evaluations with Jacobian and ``n_iter`` solves.

    Timing this separates the cost of that problem (objective included) from
    the solver's own bookkeeping.
    """
    evaluation = problem.evaluate(z0, jacobian=True)
    for _ in range(n_iter):
        torch.linalg.solve_ex(evaluation.jacobian, -evaluation.residual)
        evaluation = problem.evaluate(z0, jacobian=True)


def median_seconds(run, repeats: int) -> float:
    """Return the median wall time of ``run()`` over ``repeats`` calls, after one warm-up call."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_benchmark(size: dict, repeats: int) -> dict:
    """Time the library and the bare loop on one problem and collect the figures."""
    problem = make_problem(**size)
    z0 = torch.zeros(size["n_rows"], size["n_components"])

    result = solve(problem, z0, method="newton", tol=TOL)
    bare_z, bare_iter = bare_newton(problem, z0, TOL)
    bare_value = problem.evaluate(bare_z).value
    bare_residual = float(relative_residual(bare_value - bare_z, bare_value).max())

    library_time = median_seconds(lambda: solve(problem, z0, method="newton", tol=TOL), repeats)
    model_problem = model_problem_like(problem)
    model_result = solve(model_problem, z0, method="newton", tol=TOL)
    model_time = median_seconds(lambda: solve(model_problem, z0, method="newton", tol=TOL), repeats)
    bare_time = median_seconds(lambda: bare_newton(problem, z0, TOL), repeats)
    floor_time = median_seconds(lambda: evaluation_floor(problem, z0, result.n_iter), repeats)
    return {
        **size,
        "dtype": "float32",
        "threads": torch.get_num_threads(),
        "contraction_bound": problem.contraction_bound,
        "tol": TOL,
        "repeats": repeats,
        "library_iterations": model_result.n_iter,
        "library_converged_rows": int(model_result.converged.sum()),
        "library_max_residual": float(model_result.residual.max()),
        "library_evaluations": model_result.stats["n_evaluations"],
        "library_certified_steps": model_result.stats["n_certified"],
        "bare_iterations": bare_iter,
        "bare_max_residual": bare_residual,
        "max_abs_difference": float((model_result.z - bare_z).abs().max()),
        "library_seconds": model_time,
        "bare_seconds": bare_time,
        "ratio": model_time / bare_time,
        "custom_iterations": result.n_iter,
        "custom_max_residual": float(result.residual.max()),
        "custom_seconds": library_time,
        "custom_ratio": library_time / bare_time,
        "floor_seconds": floor_time,
        "floor_ratio": floor_time / bare_time,
        "torch": torch.__version__,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="run a tiny problem (a smoke test)")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats per solver (default 7)")
    parser.add_argument("--out", help="write the figures as JSON to this path")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    figures = run_benchmark(QUICK_SIZE if args.quick else FULL_SIZE, args.repeats)
    for name, value in figures.items():
        sys.stdout.write(f"{name:24s} {value}\n")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(figures, handle, indent=2)


if __name__ == "__main__":
    main()
