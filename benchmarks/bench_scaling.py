"""Time and peak memory of AutoDEQ inference as the number of rows N grows.

Bernoulli PCA with d = 784 features and k = 10 components, random loadings
with entries of sd 0.3 and zero bias, no training. Rows are streamed: each
minibatch of ``--batch`` rows is drawn from the model with its own seed,
``AutoDEQ(model).median(batch)`` computes its MAP, and only the
``median`` calls are timed. So the full N × d data never exists at once.

Each N runs in a fresh Python process, because ``tracemalloc`` does not see
torch's allocations. The peak resident set size is read there with
``resource.getrusage`` (Linux reports it in KiB), after the imports and set-up
(the baseline) and at the end (the peak). The growth of time with N is
summarized by the least-squares slope of log time against log N, which is 1
for linear growth.

Usage::

    python benchmarks/bench_scaling.py [--quick] [--max-rows 300000] [--threads 2] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

N_FEATURES = 784
N_COMPONENTS = 10
WEIGHT_SD = 0.3
FULL_SIZES = (1_000, 10_000, 100_000, 300_000, 1_000_000)
# The default full run stops at 3e5 rows so that run_all.py finishes in about
# 15 minutes on 2 cores; --max-rows 1000000 adds the largest size.
DEFAULT_MAX_ROWS = 300_000
QUICK_SIZES = (100, 1_000)
FULL_BATCH = 10_000
QUICK_BATCH = 500
SEED = 0


def peak_rss_bytes() -> int:
    """Peak resident set size of this process; ``ru_maxrss`` is in KiB on Linux."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_child(n_rows: int, batch: int, threads: int) -> dict:
    """Stream ``n_rows`` rows through ``AutoDEQ.median`` in this process and measure it."""
    import pyro_deq

    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(SEED)
    weight = WEIGHT_SD * torch.randn(N_FEATURES, N_COMPONENTS, generator=generator)
    bias = torch.zeros(N_FEATURES)
    model = pyro_deq.ExpFamPCA(N_FEATURES, N_COMPONENTS, family="bernoulli", weight=weight, bias=bias,
                               name="bench_scaling")
    guide = pyro_deq.AutoDEQ(model)
    # The first call traces the model once to set the guide up; keep it out of the timing.
    guide.median(torch.zeros(2, N_FEATURES))
    baseline = peak_rss_bytes()

    solve_seconds = generate_seconds = 0.0
    iterations, worst_residual, converged = [], 0.0, 0
    for start in range(0, n_rows, batch):
        rows = min(batch, n_rows - start)
        begin = time.perf_counter()
        batch_generator = torch.Generator().manual_seed(SEED + 1 + start)
        z_true = torch.randn(rows, N_COMPONENTS, generator=batch_generator)
        y = torch.bernoulli(torch.sigmoid(z_true @ weight.T + bias), generator=batch_generator)
        generate_seconds += time.perf_counter() - begin

        begin = time.perf_counter()
        guide.median(y)
        solve_seconds += time.perf_counter() - begin
        iterations.append(guide.diagnostics["n_iter"])
        worst_residual = max(worst_residual, guide.diagnostics["max_residual"])
        converged += round(guide.diagnostics["fraction_converged"] * rows)

    return {"n_rows": n_rows, "batch": batch, "threads": torch.get_num_threads(), "seconds": solve_seconds,
            "generate_seconds": generate_seconds, "baseline_rss_bytes": baseline, "peak_rss_bytes": peak_rss_bytes(),
            "max_iterations": max(iterations), "max_residual": worst_residual, "converged_rows": converged}


def measure_in_subprocess(n_rows: int, batch: int, threads: int) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--child", str(n_rows), "--batch", str(batch),
               "--threads", str(threads)]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"The scaling run for N = {n_rows} failed with exit code {completed.returncode}:\n"
                           f"{completed.stderr[-2000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def log_log_slope(sizes, seconds) -> float:
    """Least-squares slope of log(seconds) against log(N)."""
    return float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0])


def run_benchmark(sizes, batch: int, threads: int) -> dict:
    runs = [measure_in_subprocess(n, batch, threads) for n in sizes]
    for run in runs:
        run["microseconds_per_row"] = run["seconds"] / run["n_rows"] * 1e6
        run["peak_rss_gib"] = run["peak_rss_bytes"] / 2**30
        run["rss_increase_gib"] = (run["peak_rss_bytes"] - run["baseline_rss_bytes"]) / 2**30
    return {
        **_common.machine_info(),
        "benchmark": "scaling",
        "family": "bernoulli",
        "n_features": N_FEATURES,
        "n_components": N_COMPONENTS,
        "weight_sd": WEIGHT_SD,
        "batch": batch,
        "threads": threads,
        "dtype": "float32",
        "sizes": list(sizes),
        "runs": runs,
        "log_log_slope": log_log_slope([r["n_rows"] for r in runs], [r["seconds"] for r in runs]),
        # Batches smaller than --batch pay fixed per-call costs, so the slope is
        # also given over the sizes that fill at least one whole batch.
        "log_log_slope_full_batches": (
            log_log_slope([r["n_rows"] for r in runs if r["n_rows"] >= batch],
                          [r["seconds"] for r in runs if r["n_rows"] >= batch])
            if sum(r["n_rows"] >= batch for r in runs) >= 2 else None
        ),
    }


def format_table(figures: dict) -> str:
    rows = [[run["n_rows"], run["seconds"], run["microseconds_per_row"], run["generate_seconds"], run["max_iterations"],
             run["converged_rows"], run["peak_rss_gib"], run["rss_increase_gib"]] for run in figures["runs"]]
    columns = ["N", "inference (s)", "µs per row", "data generation (s)", "max Newton iterations",
               "rows converged", "peak RSS (GiB)", "RSS increase (GiB)"]
    notes = ["family", "n_features", "n_components", "weight_sd", "batch", "threads", "dtype", "log_log_slope",
             "log_log_slope_full_batches", "torch", "pyro", "machine", "cpu_count"]
    return _common.markdown_table(columns, rows) + "\n" + _common.settings_lines(figures, notes)


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _common.add_common_arguments(parser, default_repeats=None)
    parser.add_argument("--max-rows", type=int, help=f"largest N of the full run (default {DEFAULT_MAX_ROWS})")
    parser.add_argument("--batch", type=int, help=f"rows per minibatch (default {FULL_BATCH}, {QUICK_BATCH} with --quick)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in each measured process (default 2)")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    batch = args.batch or (QUICK_BATCH if args.quick else FULL_BATCH)
    if args.child is not None:
        sys.stdout.write(json.dumps(run_child(args.child, batch, args.threads)) + "\n")
        return None

    sizes = QUICK_SIZES if args.quick else tuple(n for n in FULL_SIZES if n <= (args.max_rows or DEFAULT_MAX_ROWS))
    figures = run_benchmark(sizes, batch, args.threads)
    _common.emit(format_table(figures))
    _common.write_json(figures, args.out)
    return figures


if __name__ == "__main__":
    main()
