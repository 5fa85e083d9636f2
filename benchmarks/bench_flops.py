"""Achieved floating-point rate of the Newton solve against torch's matmul rate on the same shapes.

For Bernoulli PCA with N rows, d features and k components, ``pyro_deq.solve``
with ``method="newton"`` runs on ``model.problem(y)`` from zeros at the
float32 default tolerance. Its floating-point operations are counted
analytically from the solver's own statistics:

- each evaluation (``stats["n_evaluations"]``, line-search trials included,
  all with the Jacobian) costs ``2Ndk`` for ``u = Wz + b``, ``2Ndk`` for
  ``Wᵀ(T(y) − A'(η))`` and ``2Ndk²`` for the N Hessians, which are one
  ``(N, d) × (d, k²)`` product;
- each Newton iteration solves N k×k systems, about ``2k³/3 + 2k²`` flops each.

Elementwise work (sigmoid, softplus, the objective's sums) is not counted, so
the achieved rate is a lower bound. The reference runs exactly the same
matmuls and batched solves, the same number of times, with nothing else: its
time is the floor for this flop count, and ``solver time / floor time`` is the
overhead. One cProfile of the first shape lists the functions where the solve
spends its time.

Usage::

    python benchmarks/bench_flops.py [--quick] [--repeats 7] [--threads 1] [--out results.json]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import math
import os
import pstats
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

import pyro_deq  # noqa: E402

FULL_SHAPES = ((2000, 64, 5), (2000, 64, 20), (10000, 784, 10))
QUICK_SHAPES = ((50, 16, 3),)
WEIGHT_NORM_BOUND = 8.0  # ||W||^2 / (4 lambda), as in the other Bernoulli benchmarks
PROFILE_ENTRIES = 12
SEED = 0


def make_problem(n_rows: int, n_features: int, n_components: int):
    generator = torch.Generator().manual_seed(SEED)
    weight = torch.randn(n_features, n_components, generator=generator)
    weight *= math.sqrt(4 * WEIGHT_NORM_BOUND) / float(torch.linalg.matrix_norm(weight, ord=2))
    bias = 0.5 * torch.randn(n_features, generator=generator)
    z_true = torch.randn(n_rows, n_components, generator=generator)
    y = torch.bernoulli(torch.sigmoid(z_true @ weight.T + bias), generator=generator)
    model = pyro_deq.ExpFamPCA(n_features, n_components, family="bernoulli", weight=weight, bias=bias,
                               name="bench_flops")
    with torch.no_grad():
        return model.problem(y)


def counted_flops(n: int, d: int, k: int, n_evaluations: int, n_iter: int) -> dict:
    evaluation = 2 * n * d * k + 2 * n * d * k + 2 * n * d * k * k
    solve = n * (2 * k**3 // 3 + 2 * k * k)
    return {"per_evaluation": evaluation, "per_solve": solve,
            "total": n_evaluations * evaluation + n_iter * solve}


def matmul_floor(n: int, d: int, k: int, n_evaluations: int, n_iter: int):
    """Return a callable that runs only the solve's matmuls and k×k solves, with the same shapes and counts."""
    generator = torch.Generator().manual_seed(SEED)
    z = torch.randn(n, k, generator=generator)
    weight = torch.randn(d, k, generator=generator)
    signal = torch.randn(n, d, generator=generator)
    weight_outer = torch.randn(d, k * k, generator=generator)
    hessian = torch.eye(k) * d + torch.zeros(n, k, k)
    rhs = torch.randn(n, k, generator=generator)

    def run():
        for _ in range(n_evaluations):
            z @ weight.T
            signal @ weight
            signal @ weight_outer
        for _ in range(n_iter):
            torch.linalg.solve_ex(hessian, rhs)
    return run


def profile_solve(problem, z0) -> list[dict]:
    """cProfile one solve and return the top entries by own time."""
    profiler = cProfile.Profile()
    profiler.enable()
    pyro_deq.solve(problem, z0, method="newton")
    profiler.disable()
    stats = pstats.Stats(profiler, stream=io.StringIO()).sort_stats("tottime")
    entries = []
    for (filename, line, function), (_, calls, own, cumulative, _) in stats.stats.items():
        entries.append({"function": f"{os.path.basename(filename)}:{line}({function})", "calls": calls,
                        "own_seconds": own, "cumulative_seconds": cumulative})
    entries.sort(key=lambda entry: entry["own_seconds"], reverse=True)
    return entries[:PROFILE_ENTRIES]


def measure_shape(n: int, d: int, k: int, repeats: int) -> dict:
    problem = make_problem(n, d, k)
    z0 = torch.zeros(n, k)
    result = pyro_deq.solve(problem, z0, method="newton")
    n_evaluations, n_iter = result.stats["n_evaluations"], result.n_iter
    flops = counted_flops(n, d, k, n_evaluations, n_iter)

    solve_seconds = _common.median_seconds(lambda: pyro_deq.solve(problem, z0, method="newton"), repeats)
    floor_seconds = _common.median_seconds(matmul_floor(n, d, k, n_evaluations, n_iter), repeats)
    return {"n_rows": n, "n_features": d, "n_components": k, "n_iter": n_iter, "n_evaluations": n_evaluations,
            "max_residual": float(result.residual.max()), "flops": flops["total"],
            "flops_per_evaluation": flops["per_evaluation"], "solve_seconds": solve_seconds,
            "floor_seconds": floor_seconds, "solver_gflops": flops["total"] / solve_seconds / 1e9,
            "matmul_gflops": flops["total"] / floor_seconds / 1e9,
            "fraction_of_matmul_rate": floor_seconds / solve_seconds}


def run_benchmark(shapes, repeats: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    results = [measure_shape(n, d, k, repeats) for n, d, k in shapes]
    n, d, k = shapes[0]
    return {
        **_common.machine_info(),
        "benchmark": "flops",
        "family": "bernoulli",
        "dtype": "float32",
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "shapes": results,
        "profile_shape": [n, d, k],
        "profile": profile_solve(make_problem(n, d, k), torch.zeros(n, k)),
    }


def format_table(figures: dict) -> str:
    rows = [[f"{s['n_rows']}×{s['n_features']}, k={s['n_components']}", s["n_iter"], s["n_evaluations"],
             s["flops"] / 1e6, s["solve_seconds"] * 1e3, s["solver_gflops"], s["floor_seconds"] * 1e3,
             s["matmul_gflops"], s["fraction_of_matmul_rate"]] for s in figures["shapes"]]
    columns = ["N×d, k", "iterations", "evaluations", "counted Mflop", "solve (ms)", "solve GFLOP/s",
               "matmuls alone (ms)", "matmul GFLOP/s", "fraction of matmul rate"]
    text = _common.markdown_table(columns, rows)
    profile_rows = [[entry["function"], entry["calls"], entry["own_seconds"] * 1e3, entry["cumulative_seconds"] * 1e3]
                    for entry in figures["profile"]]
    text += f"\ncProfile of one solve at N×d, k = {figures['profile_shape']} (top entries by own time):\n\n"
    text += _common.markdown_table(["function", "calls", "own (ms)", "cumulative (ms)"], profile_rows)
    notes = ["family", "dtype", "threads", "repeats", "torch", "pyro", "machine", "cpu_count"]
    return text + "\n" + _common.settings_lines(figures, notes)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _common.add_common_arguments(parser, default_repeats=7)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)

    figures = run_benchmark(QUICK_SHAPES if args.quick else FULL_SHAPES, args.repeats, args.threads)
    _common.emit(format_table(figures))
    _common.write_json(figures, args.out)
    return figures


if __name__ == "__main__":
    main()
