"""Time ``AutoDEQ(model).median(y)`` against the bare solve and against AutoDelta SVI.

The parameters are fixed, and the latents ``z`` of Bernoulli PCA are inferred
per row with ``||W||^2 / (4 lambda) = 8``, where plain fixed-point iteration
does not converge. Three figures are measured in the same run, in float32 on
one thread:

- ``AutoDEQ(model).median(y)``, the guide's MAP through the Pyro interface;
- ``pyro_deq.solve(model.problem(y), zeros)``, the same solve without the
  guide (run under ``torch.no_grad``, as ``median`` is);
- AutoDelta fitted by SVI (Adam, ``Trace_ELBO``) on a plain Pyro model with
  the loadings and bias as constants. Each learning rate of a small sweep runs
  until the maximum absolute difference between its ``z`` and the float64 MAP
  is at most ``--svi-atol``, checked every ``--check-every`` steps (default:
  every step), or until the step cap. Only the SVI steps are timed, not the
  checks.

Usage::

    python benchmarks/bench_guides.py [--quick] [--repeats 7] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoDelta
from pyro.optim import Adam

import pyro_deq

FULL_SIZE = {"n_rows": 2000, "n_features": 64, "n_components": 5}
QUICK_SIZE = {"n_rows": 40, "n_features": 12, "n_components": 2}
CONTRACTION_BOUND = 8.0
PRIOR_PRECISION = 1.0
LEARNING_RATES = (0.01, 0.03, 0.1, 0.3, 1.0)
QUICK_LEARNING_RATES = (0.3,)
SVI_ATOL = 1e-3
CHECK_EVERY = 1
MAX_STEPS = 20000
QUICK_MAX_STEPS = 2000
SEED = 0


def make_data(n_rows: int, n_features: int, n_components: int, seed: int = SEED):
    """Draw float32 loadings scaled to the contraction bound, a bias and data from the model.

    :returns: ``(weight, bias, y)`` of shapes ``(d, k)``, ``(d,)`` and ``(N, d)``.
    """
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(n_features, n_components, generator=generator)
    spectral_norm = float(torch.linalg.matrix_norm(weight, ord=2))
    weight *= math.sqrt(4 * CONTRACTION_BOUND * PRIOR_PRECISION) / spectral_norm
    bias = 0.5 * torch.randn(n_features, generator=generator)
    z_true = torch.randn(n_rows, n_components, generator=generator) / math.sqrt(PRIOR_PRECISION)
    y = torch.bernoulli(torch.sigmoid(z_true @ weight.T + bias), generator=generator)
    return weight, bias, y


def make_fixed_model(weight: torch.Tensor, bias: torch.Tensor):
    """Build a plain Pyro model of ``z | y`` with the loadings and bias as constants."""
    scale = PRIOR_PRECISION ** -0.5

    def fixed_model(y):
        loc = torch.zeros(weight.shape[1], dtype=y.dtype)
        with pyro.plate("data", y.shape[0], dim=-1):
            z = pyro.sample("z", dist.Normal(loc, scale).to_event(1))
            logits = z @ weight.T + bias
            pyro.sample("y", dist.Bernoulli(logits=logits).to_event(1), obs=y)

    return fixed_model


def median_seconds(run, repeats: int) -> float:
    """Return the median wall time of ``run()`` over ``repeats`` calls, after one warm-up call."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_autodelta(fixed_model, y: torch.Tensor, z_map: torch.Tensor, lr: float, atol: float,
                  check_every: int, max_steps: int) -> dict:
    """Fit AutoDelta by SVI until its ``z`` is within ``atol`` of ``z_map`` or ``max_steps`` is reached.

    ``z_map`` is the float64 MAP, so AutoDelta is held to the same reference
    as AutoDEQ, whose own distance to it is reported beside.

    :returns: the steps taken, the seconds spent in SVI steps, the final max
        absolute difference from ``z_map``, and whether it was reached.
    """
    with pyro.get_param_store().scope():
        pyro.set_rng_seed(SEED)
        guide = AutoDelta(fixed_model)
        svi = SVI(fixed_model, guide, Adam({"lr": lr}), Trace_ELBO())
        steps, seconds, difference = 0, 0.0, math.inf
        while steps < max_steps:
            start = time.perf_counter()
            for _ in range(check_every):
                svi.step(y)
            seconds += time.perf_counter() - start
            steps += check_every
            with torch.no_grad():
                difference = float((guide.median(y)["z"].double() - z_map).abs().max())
            if difference <= atol:
                break
    return {"lr": lr, "steps": steps, "seconds": seconds, "max_abs_difference": difference,
            "reached": difference <= atol}


def float64_map(weight: torch.Tensor, bias: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Return the MAP from a float64 Newton solve at tolerance 1e-12, shape ``(N, k)``."""
    model = pyro_deq.ExpFamPCA(weight.shape[0], weight.shape[1], family="bernoulli",
                               prior_precision=PRIOR_PRECISION, weight=weight.double(), bias=bias.double(),
                               name="bench_float64")
    with torch.no_grad():
        z0 = torch.zeros(y.shape[0], weight.shape[1], dtype=torch.float64)
        result = pyro_deq.solve(model.problem(y.double()), z0, method="newton", tol=1e-12)
    return result.z


def run_benchmark(size: dict, repeats: int, learning_rates, atol: float, check_every: int, max_steps: int) -> dict:
    """Time the guide, the bare solve and the AutoDelta sweep on one problem and collect the figures."""
    weight, bias, y = make_data(**size)
    model = pyro_deq.ExpFamPCA(size["n_features"], size["n_components"], family="bernoulli",
                               prior_precision=PRIOR_PRECISION, weight=weight, bias=bias, name="bench")
    guide = pyro_deq.AutoDEQ(model)
    z0 = torch.zeros(size["n_rows"], size["n_components"])

    def bare_solve():
        with torch.no_grad():
            return pyro_deq.solve(model.problem(y), z0)

    z_map = guide.median(y)["z"]
    reference = float64_map(weight, bias, y)
    diagnostics = dict(guide.diagnostics)
    bare_result = bare_solve()
    guide_seconds = median_seconds(lambda: guide.median(y), repeats)
    bare_seconds = median_seconds(bare_solve, repeats)

    fixed_model = make_fixed_model(weight, bias)
    # Pyro's first SVI step in a process costs about a second of one-off set-up,
    # which would otherwise be charged to the first learning rate of the sweep.
    run_autodelta(fixed_model, y, reference, learning_rates[0], atol, check_every, max_steps=1)
    sweep = [run_autodelta(fixed_model, y, reference, lr, atol, check_every, max_steps) for lr in learning_rates]
    reached = [run for run in sweep if run["reached"]]
    best = min(reached, key=lambda run: run["seconds"]) if reached else None
    return {
        **size,
        "family": "bernoulli",
        "dtype": "float32",
        "threads": torch.get_num_threads(),
        "contraction_bound": float(torch.linalg.matrix_norm(weight, ord=2)) ** 2 / (4 * PRIOR_PRECISION),
        "repeats": repeats,
        "processor": platform.processor(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "deq_iterations": diagnostics["n_iter"],
        "deq_max_residual": diagnostics["max_residual"],
        "deq_fraction_converged": diagnostics["fraction_converged"],
        "deq_max_abs_error_vs_float64": float((z_map.double() - reference).abs().max()),
        "guide_vs_bare_max_abs_difference": float((z_map - bare_result.z).abs().max()),
        "guide_seconds": guide_seconds,
        "bare_solve_seconds": bare_seconds,
        "guide_to_bare_ratio": guide_seconds / bare_seconds,
        "svi_atol": atol,
        "svi_check_every": check_every,
        "svi_max_steps": max_steps,
        "svi_sweep": sweep,
        "svi_cap_hit": [run["lr"] for run in sweep if not run["reached"]],
        "svi_best_lr": best["lr"] if best else None,
        "svi_best_steps": best["steps"] if best else None,
        "svi_best_seconds": best["seconds"] if best else None,
        "svi_to_guide_ratio": best["seconds"] / guide_seconds if best else None,
    }


def format_table(figures: dict) -> str:
    """Lay out the timings as a plain-text table, followed by the settings."""
    rows = [
        ("AutoDEQ(model).median(y)", f"{figures['deq_iterations']} Newton", figures["guide_seconds"]),
        ("solve(model.problem(y), zeros)", f"{figures['deq_iterations']} Newton", figures["bare_solve_seconds"]),
    ]
    for run in figures["svi_sweep"]:
        note = "" if run["reached"] else " (cap hit)"
        rows.append((f"AutoDelta SVI, Adam lr={run['lr']}", f"{run['steps']} steps{note}", run["seconds"]))
    lines = [f"{'method':36s} {'work':22s} {'seconds':>10s}"]
    lines += [f"{name:36s} {work:22s} {seconds:10.4f}" for name, work, seconds in rows]
    lines.append("")
    lines.append(f"guide / bare solve     {figures['guide_to_bare_ratio']:.2f}")
    ratio = figures["svi_to_guide_ratio"]
    if ratio is None:
        lines.append("best SVI / guide       n/a (no run reached the tolerance)")
    else:
        lines.append(f"best SVI / guide       {ratio:.0f}")
    lines.append("")
    skip = {"svi_sweep"}
    lines += [f"{name:32s} {value}" for name, value in figures.items() if name not in skip]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="run a tiny problem with a short sweep (a smoke test)")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats of each solve (default 7)")
    parser.add_argument("--svi-atol", type=float, default=SVI_ATOL,
                        help=f"max absolute difference from the DEQ MAP that stops SVI (default {SVI_ATOL})")
    parser.add_argument("--check-every", type=int, default=CHECK_EVERY,
                        help=f"SVI steps between checks of the difference (default {CHECK_EVERY})")
    parser.add_argument("--max-steps", type=int, help=f"SVI step cap per learning rate (default {MAX_STEPS}, "
                        f"{QUICK_MAX_STEPS} with --quick)")
    parser.add_argument("--out", help="write the figures as JSON to this path")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    size = QUICK_SIZE if args.quick else FULL_SIZE
    learning_rates = QUICK_LEARNING_RATES if args.quick else LEARNING_RATES
    max_steps = args.max_steps or (QUICK_MAX_STEPS if args.quick else MAX_STEPS)
    figures = run_benchmark(size, args.repeats, learning_rates, args.svi_atol, args.check_every, max_steps)
    sys.stdout.write(format_table(figures))
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(figures, handle, indent=2)
    return figures


if __name__ == "__main__":
    main()
