"""Achieved floating-point rate of the Newton solve against torch's matmul rate on the same shapes.

For Bernoulli PCA with N rows, d features and k components, ``pyro_deq.solve``
with ``method="newton"`` runs on ``model.problem(y)`` from zeros at the
float32 default tolerance. The solver skips work where it can (no Jacobian at
trial points, one shared Jacobian at the start, only the unconverged rows
near the end), so its floating-point operations are counted from the work it
actually did. One recording solve tallies, per call and with its number of
rows n:

- ``2ndk`` for each canonical parameter ``u = Wz + b``;
- ``2ndk`` for each product ``(T(y) − A'(η)) W`` (or ``T(y) W``);
- ``2ndk²`` for each batch of n Hessians, one ``(n, d) × (d, k²)`` product;
- for each batch of n k×k Newton systems, per system, with the method the
  solver picks for that batch (``newton.system_factorization``):
  ``2k³/3 + 2k²`` with LU, ``k³/3 + 2k²`` with Cholesky and
  ``(2k − 1) k (k + 1) / 2`` with Gauss-Jordan elimination.

Elementwise work (sigmoid, the certificate's sums) is not counted, so the
achieved rate is a lower bound. The reference replays exactly the recorded
matmuls and batched solves, with the same shapes and the solver's own
factorization, and nothing else: its time is the floor for this flop count,
and ``solver time / floor time`` is the overhead. One cProfile of the first
shape lists the functions where the solve spends its time.

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


def record_work(problem, z0) -> list[tuple[str, int]]:
    """Solve once and return the matmuls and batched solves it ran, as ``(kind, rows)`` in order.

    The problem's own methods are wrapped for this one solve, and restored after.
    """
    from pyro_deq.models.problem import ExpFamPCAProblem
    from pyro_deq.solvers import newton

    work: list[tuple[str, int]] = []
    originals = {
        "canonical_parameter": ExpFamPCAProblem.canonical_parameter,
        "_error_signal": ExpFamPCAProblem._error_signal,
        "_curvature": ExpFamPCAProblem._curvature,
        "_data_slope": ExpFamPCAProblem._data_slope,
    }
    solve_rows = newton._solve_rows

    def canonical_parameter(self, z):
        work.append(("u", z.shape[0]))
        return originals["canonical_parameter"](self, z)

    def error_signal(self, u, mean):
        work.append(("value", u.shape[0]))
        return originals["_error_signal"](self, u, mean)

    def curvature(self, u, mean, variance):
        work.append(("hessian", variance.shape[0]))
        return originals["_curvature"](self, u, mean, variance)

    def data_slope(self):
        if ("data_slope", torch.is_inference_mode_enabled()) not in self._cache:
            work.append(("value", self.data.n_rows))
        return originals["_data_slope"](self)

    def recording_solve_rows(jacobian, residual, convex):
        work.append(("solve", jacobian.shape[0]))
        return solve_rows(jacobian, residual, convex)

    replacements = {"canonical_parameter": canonical_parameter, "_error_signal": error_signal,
                    "_curvature": curvature, "_data_slope": data_slope}
    try:
        for name, function in replacements.items():
            setattr(ExpFamPCAProblem, name, function)
        newton._solve_rows = recording_solve_rows
        pyro_deq.solve(problem, z0, method="newton")
    finally:
        for name, function in originals.items():
            setattr(ExpFamPCAProblem, name, function)
        newton._solve_rows = solve_rows
    return work


def solve_flops(k: int, rows: int) -> int:
    """Flops of one k×k Newton system with the method the solver uses for a batch of ``rows``."""
    from pyro_deq.solvers.newton import system_factorization

    factorization = system_factorization(rows, k, convex=True)
    if factorization == "elimination":
        return (2 * k - 1) * k * (k + 1) // 2
    if factorization == "cholesky":
        return k**3 // 3 + 2 * k * k
    return 2 * k**3 // 3 + 2 * k * k


def counted_flops(d: int, k: int, work: list[tuple[str, int]]) -> int:
    per_row = {"u": 2 * d * k, "value": 2 * d * k, "hessian": 2 * d * k * k}
    return sum((solve_flops(k, rows) if kind == "solve" else per_row[kind]) * rows for kind, rows in work)


def matmul_floor(d: int, k: int, work: list[tuple[str, int]]):
    """Return a callable that replays only the recorded matmuls and k×k solves, with the same shapes."""
    from pyro_deq.solvers.newton import _solve_rows

    n = max(rows for _, rows in work)
    generator = torch.Generator().manual_seed(SEED)
    z = torch.randn(n, k, generator=generator)
    weight = torch.randn(d, k, generator=generator)
    signal = torch.randn(n, d, generator=generator)
    weight_outer = torch.randn(d, k * k, generator=generator)
    jacobian = -(torch.eye(k) * d + torch.zeros(n, k, k))
    rhs = torch.randn(n, k, generator=generator)
    operations = {
        "u": lambda rows: z[:rows] @ weight.T,
        "value": lambda rows: signal[:rows] @ weight,
        "hessian": lambda rows: signal[:rows] @ weight_outer,
        "solve": lambda rows: _solve_rows(jacobian[:rows], rhs[:rows], True),
    }

    def run():
        for kind, rows in work:
            operations[kind](rows)
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
    work = record_work(make_problem(n, d, k), z0)
    flops = counted_flops(d, k, work)

    solve_seconds = _common.median_seconds(lambda: pyro_deq.solve(problem, z0, method="newton"), repeats)
    floor_seconds = _common.median_seconds(matmul_floor(d, k, work), repeats)
    return {"n_rows": n, "n_features": d, "n_components": k, "n_iter": result.n_iter,
            "n_evaluations": result.stats["n_evaluations"], "max_residual": float(result.residual.max()),
            "flops": flops, "work": [{"kind": kind, "rows": rows} for kind, rows in work],
            "solve_seconds": solve_seconds, "floor_seconds": floor_seconds,
            "solver_gflops": flops / solve_seconds / 1e9, "matmul_gflops": flops / floor_seconds / 1e9,
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
