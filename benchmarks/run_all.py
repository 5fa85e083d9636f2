"""Run every benchmark and write its figures as JSON and its table as markdown.

Each script runs in its own Python process, so that thread settings, Pyro's
parameter store and peak memory do not carry over from one benchmark to the
next. For every script ``bench_<name>.py`` the output folder receives
``bench_<name>.json`` (the figures) and ``bench_<name>.md`` (the table the
script printed), and ``summary.md`` lists the wall time of each script.

Usage::

    python benchmarks/run_all.py [--quick] [--out-dir benchmark-results] [--only bench_map bench_flops]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ("bench_newton", "bench_guides", "bench_map", "bench_laplace", "bench_training",
              "bench_amortization", "bench_scaling", "bench_flops")
# These two print "name value" lines, not a markdown table, so their output is fenced.
PLAIN_OUTPUT = {"bench_newton", "bench_guides"}


def run_one(name: str, quick: bool, out_dir: Path) -> dict:
    """Run ``benchmarks/<name>.py`` in a subprocess and write its JSON and markdown into ``out_dir``."""
    command = [sys.executable, str(HERE / f"{name}.py"), "--out", str(out_dir / f"{name}.json")]
    if quick:
        command.append("--quick")
    start = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if completed.returncode != 0:
        raise RuntimeError(f"{name} failed with exit code {completed.returncode}:\n{completed.stderr[-3000:]}")

    table = completed.stdout
    if name in PLAIN_OUTPUT:
        table = f"```\n{table}```\n"
    (out_dir / f"{name}.md").write_text(f"# {name}\n\nCommand: `{' '.join(command[1:])}`\n\n{table}")
    return {"name": name, "seconds": seconds}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="run every benchmark at its tiny smoke-test size")
    parser.add_argument("--out-dir", default="benchmark-results",
                        help="folder for the JSON and markdown files (default benchmark-results)")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, help="run only these benchmarks")
    args = parser.parse_args(argv)

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = []
    for name in args.only or BENCHMARKS:
        runs.append(run_one(name, args.quick, out_dir))
        sys.stdout.write(f"{name:20s} {runs[-1]['seconds']:8.1f} s\n")
        sys.stdout.flush()

    lines = ["# Benchmark run", "", f"Size: {'quick' if args.quick else 'full'}", "",
             "| benchmark | wall time (s) |", "|---|---|"]
    lines += [f"| [{run['name']}]({run['name']}.md) | {run['seconds']:.1f} |" for run in runs]
    (out_dir / "summary.md").write_text("\n".join(lines) + "\n")
    return runs


if __name__ == "__main__":
    main()
