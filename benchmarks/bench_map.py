"""Time to an accurate MAP of the latents with the parameters fixed, for every solver.

For each family (Bernoulli, Poisson), number of components ``k`` and thread
count, the MAP ``z*`` of N rows of exponential-family PCA is computed by:

- ``AutoDEQ(model, method=m).median(y)`` for ``m`` in newton, anderson, picard;
- scipy's L-BFGS-B on the summed negative log joint over rows, with the
  closed-form gradient ``-model.problem(y).gradient``, in float64 because
  L-BFGS-B works in float64 internally;
- the Anderson solver of the ``torchdeq`` package (when installed) on
  ``model.problem(y).fixed_point_map``, with its default memory 6, damping 1
  and regularization 1e-4;
- a bare batched Newton loop without line search (``bench_newton.bare_newton``
  for Bernoulli and the same loop with ``exp`` for Poisson);
- AutoDelta fitted by SVI (Adam, learning rate 0.1) on a plain Pyro model with
  the loadings as constants.

The error of an estimate is ``max_n ||z_n - z*_n|| / (1 + ||z*_n||)`` against
a float64 Newton solve at tolerance 1e-12. Each fixed-point solver runs a
ladder of its own stopping tolerances, and its time to an error target is the
median time of the loosest tolerance that reaches it, or "not reached".
L-BFGS-B runs once to a tight gradient tolerance and records the optimizer
time (error checks excluded) at which each target is first reached, median
over repeats. SVI is checked after every step up to a step cap, and its time
is the SVI step time of one run until the step that first reaches the target;
the checks are not timed.

The Bernoulli loadings have ``||W||^2 / (4 lambda) = 8``, so plain iteration
does not contract. The Poisson loadings have entries of sd ``0.5 / sqrt(k)``.

Usage::

    python benchmarks/bench_map.py [--quick] [--repeats 3] [--threads 1 2] [--out results.json]
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import statistics
import sys
import time
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoDelta
from pyro.optim import Adam
from scipy.optimize import minimize

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402
from bench_newton import BernoulliPCAProblem, bare_newton  # noqa: E402

import pyro_deq  # noqa: E402
from pyro_deq.solvers import relative_residual  # noqa: E402

try:
    from torchdeq.solver.anderson import anderson_solver as torchdeq_anderson
except ImportError:  # torchdeq is in the `bench` extra only, which CI does not install.
    torchdeq_anderson = None

logger = logging.getLogger("bench_map")

FULL = {"n_rows": 2000, "n_features": 64, "components": (5, 20), "families": ("bernoulli", "poisson"),
        "threads": (1, 2), "svi_max_steps": 2000}
QUICK = {"n_rows": 40, "n_features": 12, "components": (3,), "families": ("bernoulli", "poisson"),
         "threads": (1,), "svi_max_steps": 50}
TARGETS = (1e-4, 1e-6)
SOLVER_TOLERANCES = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7)
LBFGS_GTOL = 1e-10
LBFGS_MAX_ITER = 20000
REFERENCE_TOL = 1e-12
CONTRACTION_BOUND = 8.0
PRIOR_PRECISION = 1.0
SVI_LR = 0.1
CHECK_EVERY = 1
BARE_MAX_ITER = 100
TORCHDEQ_MAX_ITER = 500
SEED = 0


def make_data(family: str, n_rows: int, n_features: int, n_components: int, seed: int = SEED):
    """Draw float32 loadings, bias and data from the model; returns ``(weight, bias, y)``."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(n_features, n_components, generator=generator)
    if family == "bernoulli":
        spectral_norm = float(torch.linalg.matrix_norm(weight, ord=2))
        weight *= math.sqrt(4 * CONTRACTION_BOUND * PRIOR_PRECISION) / spectral_norm
    else:
        weight *= 0.5 / math.sqrt(n_components)
    bias = 0.5 * torch.randn(n_features, generator=generator)
    z_true = torch.randn(n_rows, n_components, generator=generator)
    eta = z_true @ weight.T + bias
    if family == "bernoulli":
        y = torch.bernoulli(torch.sigmoid(eta), generator=generator)
    else:
        y = torch.poisson(eta.exp(), generator=generator)
    return weight, bias, y


def make_model(family: str, weight: torch.Tensor, bias: torch.Tensor, name: str):
    return pyro_deq.ExpFamPCA(weight.shape[0], weight.shape[1], family=family, prior_precision=PRIOR_PRECISION,
                              weight=weight, bias=bias, name=name)


def relative_error(z: torch.Tensor, reference: torch.Tensor) -> float:
    """``max_n ||z_n - z*_n|| / (1 + ||z*_n||)``, computed in float64; infinite for a failed (NaN) solve."""
    z = torch.as_tensor(z, dtype=torch.float64)
    error = float(((z - reference).norm(dim=-1) / (1 + reference.norm(dim=-1))).max())
    return error if math.isfinite(error) else math.inf


def reference_map(family: str, weight, bias, y) -> torch.Tensor:
    model = make_model(family, weight.double(), bias.double(), "bench_map_reference")
    with torch.no_grad():
        z0 = torch.zeros(y.shape[0], weight.shape[1], dtype=torch.float64)
        result = pyro_deq.solve(model.problem(y.double()), z0, method="newton", tol=REFERENCE_TOL,
                                max_iter=200, throw=True)
    return result.z


# ------------------------------------------------------------ competitors

def deq_runner(model, y, method: str):
    """Return ``run(tol)``; its ``info`` contains the last solve's converged fraction and iterations."""
    def run(tol: float) -> torch.Tensor:
        guide = pyro_deq.AutoDEQ(model, method=method, tol=tol)
        # Picard does not contract on these problems; its failure is a figure, not an error.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", pyro_deq.ConvergenceWarning)
            z = guide.median(y)["z"]
        run.info = {"fraction_converged": guide.diagnostics["fraction_converged"],
                    "n_iter": guide.diagnostics["n_iter"], "status": guide.diagnostics["status"]}
        return z
    run.info = {}
    return run


def lbfgs_time_to_targets(family: str, weight, bias, y, reference, repeats: int) -> dict:
    """Minimize the summed negative log joint over all rows with L-BFGS-B in float64, tracing time and error.

    One run at a tight gradient tolerance records, after every iteration, the
    elapsed optimizer time (the error check excluded) and the error. The time to a
    target is the median over ``repeats`` runs of the time of the first iterate
    that reaches it.
    """
    model = make_model(family, weight.double(), bias.double(), "bench_map_lbfgs")
    with torch.no_grad():
        problem = model.problem(y.double())
    shape = (y.shape[0], weight.shape[1])

    def objective(flat: np.ndarray):
        z = torch.from_numpy(flat).view(shape)
        with torch.no_grad():
            value = float(problem.objective(z).sum())
            gradient = -problem.gradient(z)
        return value, gradient.numpy().ravel()

    def traced_run() -> dict:
        reached, clock = {}, {"elapsed": 0.0, "start": time.perf_counter()}

        def callback(flat: np.ndarray):
            clock["elapsed"] += time.perf_counter() - clock["start"]
            error = relative_error(torch.from_numpy(flat).view(shape), reference)
            for target in TARGETS:
                if error <= target and target not in reached:
                    reached[target] = clock["elapsed"]
            clock["best_error"] = min(error, clock.get("best_error", math.inf))
            if len(reached) == len(TARGETS):
                raise StopIteration  # minimize() documents that this ends the run and returns the result
            clock["start"] = time.perf_counter()

        result = minimize(objective, np.zeros(shape[0] * shape[1]), jac=True, method="L-BFGS-B", callback=callback,
                          options={"gtol": LBFGS_GTOL, "ftol": 0.0, "maxiter": LBFGS_MAX_ITER})
        return {"reached": reached, "best_error": clock.get("best_error", math.inf), "n_iter": int(result.nit)}

    runs = [traced_run() for _ in range(max(repeats, 1))]
    figures = {"best_error": min(run["best_error"] for run in runs), "n_iter": runs[0]["n_iter"],
               "gtol": LBFGS_GTOL, "max_iter": LBFGS_MAX_ITER}
    for target in TARGETS:
        times = [run["reached"][target] for run in runs if target in run["reached"]]
        figures[f"seconds_{target:g}"] = statistics.median(times) if len(times) == len(runs) else _common.NOT_REACHED
    return figures


def torchdeq_runner(model, y):
    with torch.no_grad():
        problem = model.problem(y)
    z0 = torch.zeros(y.shape[0], model.n_components)

    def run(tol: float) -> torch.Tensor:
        # torchdeq 0.1.0 solves its mixing system with torch.linalg.solve and no
        # fallback, so a singular system for one row aborts the whole solve.
        try:
            with torch.no_grad():
                z, _, _ = torchdeq_anderson(problem.fixed_point_map, z0, max_iter=TORCHDEQ_MAX_ITER, tol=tol,
                                            stop_mode="rel")
        except torch.linalg.LinAlgError as error:
            run.info = {"failure": str(error).splitlines()[0]}
            return torch.full_like(z0, math.nan)
        run.info = {}
        return z
    run.info = {}
    return run


def bare_newton_poisson(y, weight, bias, z0, tol: float) -> torch.Tensor:
    """Run the loop of ``bench_newton.bare_newton`` with the Poisson mean and variance ``exp(u)``."""
    eye = torch.eye(z0.shape[-1], dtype=z0.dtype)
    z = z0.clone()
    for _ in range(BARE_MAX_ITER):
        rate = torch.exp(z @ weight.T + bias)
        value = (y - rate) @ weight / PRIOR_PRECISION
        if float(relative_residual(value - z, value).max()) <= tol:
            return z
        hessian = PRIOR_PRECISION * eye + torch.einsum("nd,dk,dl->nkl", rate, weight, weight)
        z = z + torch.linalg.solve(hessian, PRIOR_PRECISION * (value - z))
    return z


def bare_runner(family: str, weight, bias, y):
    z0 = torch.zeros(y.shape[0], weight.shape[1])
    if family == "bernoulli":
        problem = BernoulliPCAProblem(y, weight, bias, PRIOR_PRECISION)
        return lambda tol: bare_newton(problem, z0, tol)[0]
    return lambda tol: bare_newton_poisson(y, weight, bias, z0, tol)


# ---------------------------------------------------------------- timing

def time_to_targets(run, tolerances, reference, repeats: int) -> dict:
    """Run ``run(tol)`` down the tolerance ladder and time the loosest one that reaches each target.

    The ladder stops at the first tolerance that reaches the tightest target, or
    once two tighter tolerances in a row fail to halve the error (a stalled or
    diverging solver). One failure is not enough, because a Newton step can
    overshoot two rungs of the ladder at once.
    """
    ladder = []
    for tol in tolerances:
        start = time.perf_counter()
        z = run(tol)
        step = {"tol": tol, "error": relative_error(z, reference), "seconds": time.perf_counter() - start}
        ladder.append({**step, **getattr(run, "info", {})})
        if step["error"] <= min(TARGETS):
            break
        if len(ladder) > 2 and all(ladder[i]["error"] > 0.5 * ladder[i - 1]["error"] for i in (-1, -2)):
            break

    figures = {"ladder": ladder, "best_error": min(step["error"] for step in ladder),
               "fraction_converged": ladder[-1].get("fraction_converged")}
    for target in TARGETS:
        reached = [step for step in ladder if step["error"] <= target]
        if reached:
            tol = reached[0]["tol"]
            figures[f"seconds_{target:g}"] = _common.median_seconds(lambda: run(tol), repeats)
            figures[f"tol_{target:g}"] = tol
        else:
            figures[f"seconds_{target:g}"] = _common.NOT_REACHED
    return figures


def svi_time_to_targets(family: str, weight, bias, y, reference, max_steps: int) -> dict:
    """Fit AutoDelta by SVI and record the step time at which each error target is first reached."""
    def fixed_model(data):
        loc = torch.zeros(weight.shape[1], dtype=data.dtype)
        with pyro.plate("data", data.shape[0], dim=-1):
            z = pyro.sample("z", dist.Normal(loc, PRIOR_PRECISION ** -0.5).to_event(1))
            eta = z @ weight.T + bias
            likelihood = dist.Bernoulli(logits=eta) if family == "bernoulli" else dist.Poisson(eta.exp())
            pyro.sample("y", likelihood.to_event(1), obs=data)

    figures = {f"seconds_{target:g}": _common.NOT_REACHED for target in TARGETS}
    with pyro.get_param_store().scope():
        pyro.set_rng_seed(SEED)
        guide = AutoDelta(fixed_model)
        svi = SVI(fixed_model, guide, Adam({"lr": SVI_LR}), Trace_ELBO())
        svi.step(y)  # Pyro's one-off set-up, not charged to the timed steps.
        steps, seconds, error = 1, 0.0, math.inf
        while steps < max_steps:
            start = time.perf_counter()
            for _ in range(CHECK_EVERY):
                svi.step(y)
            seconds += time.perf_counter() - start
            steps += CHECK_EVERY
            with torch.no_grad():
                error = relative_error(guide.median(y)["z"], reference)
            for target in TARGETS:
                if error <= target and figures[f"seconds_{target:g}"] == _common.NOT_REACHED:
                    figures[f"seconds_{target:g}"] = seconds
                    figures[f"steps_{target:g}"] = steps
            if error <= min(TARGETS):
                break
    figures.update({"steps": steps, "best_error": error, "lr": SVI_LR})
    return figures


def run_case(family: str, n_rows: int, n_features: int, n_components: int, threads: int,
             repeats: int, svi_max_steps: int) -> dict:
    """Measure every competitor on one family, size and thread count."""
    torch.set_num_threads(threads)
    weight, bias, y = make_data(family, n_rows, n_features, n_components)
    reference = reference_map(family, weight, bias, y)
    model = make_model(family, weight, bias, f"bench_map_{family}_{n_components}")

    runners = {
        "AutoDEQ newton": (deq_runner(model, y, "newton"), SOLVER_TOLERANCES),
        "AutoDEQ anderson": (deq_runner(model, y, "anderson"), SOLVER_TOLERANCES),
        "AutoDEQ picard": (deq_runner(model, y, "picard"), SOLVER_TOLERANCES),
        "bare Newton loop": (bare_runner(family, weight, bias, y), SOLVER_TOLERANCES),
    }
    if torchdeq_anderson is not None:
        runners["torchdeq anderson"] = (torchdeq_runner(model, y), SOLVER_TOLERANCES)

    methods = {}
    for name, (run, tolerances) in runners.items():
        start = time.perf_counter()
        methods[name] = time_to_targets(run, tolerances, reference, repeats)
        logger.info("%s k=%d threads=%d: %s took %.1f s", family, n_components, threads, name,
                    time.perf_counter() - start)
    methods["scipy L-BFGS-B (float64)"] = lbfgs_time_to_targets(family, weight, bias, y, reference, repeats)
    methods["AutoDelta SVI"] = svi_time_to_targets(family, weight, bias, y, reference, svi_max_steps)
    for target in TARGETS:
        key = f"seconds_{target:g}"
        seconds = {name: (m[key] if isinstance(m[key], float) else None) for name, m in methods.items()}
        for name, ratio in _common.ratios_to_fastest(seconds).items():
            methods[name][f"ratio_{target:g}"] = ratio
    return {"family": family, "n_rows": n_rows, "n_features": n_features, "n_components": n_components,
            "threads": threads, "dtype": "float32", "methods": methods}


def run_benchmark(size: dict, repeats: int) -> dict:
    cases = [
        run_case(family, size["n_rows"], size["n_features"], k, threads, repeats, size["svi_max_steps"])
        for family in size["families"] for k in size["components"] for threads in size["threads"]
    ]
    return {
        **_common.machine_info(),
        "benchmark": "map",
        "dtype": "float32",
        "repeats": repeats,
        "targets": list(TARGETS),
        "error": "max_n ||z_n - z*_n|| / (1 + ||z*_n||) against a float64 Newton solve at tol 1e-12",
        "torchdeq": "installed" if torchdeq_anderson is not None else "not installed: competitor skipped",
        "svi_lr": SVI_LR,
        "svi_check_every": CHECK_EVERY,
        "svi_max_steps": size["svi_max_steps"],
        "cases": cases,
    }


def format_table(figures: dict) -> str:
    rows = []
    for case in figures["cases"]:
        label = f"{case['family']} k={case['n_components']} t={case['threads']}"
        for name, method in case["methods"].items():
            row = [label, name]
            for target in TARGETS:
                seconds = method[f"seconds_{target:g}"]
                row.append(seconds * 1e3 if isinstance(seconds, float) else seconds)
                row.append(method.get(f"ratio_{target:g}"))
            row += [method["best_error"], method.get("fraction_converged")]
            rows.append(row)
    columns = ["case", "method", "ms to 1e-4", "ratio", "ms to 1e-6", "ratio", "best error",
               "rows converged (last solve)"]
    text = _common.markdown_table(columns, rows)
    notes = ["torch", "pyro", "machine", "cpu_count", "dtype", "repeats", "error", "torchdeq", "svi_lr",
             "svi_max_steps"]
    return text + "\n" + _common.settings_lines(figures, notes)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _common.add_common_arguments(parser, default_repeats=3)
    parser.add_argument("--threads", type=int, nargs="+",
                        help="torch thread counts to measure (default 1 2, only 1 with --quick)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)

    size = dict(QUICK if args.quick else FULL)
    if args.threads:
        size["threads"] = tuple(args.threads)
    figures = run_benchmark(size, args.repeats)
    _common.emit(format_table(figures))
    _common.write_json(figures, args.out)
    return figures


if __name__ == "__main__":
    main()
