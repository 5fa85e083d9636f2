"""Held-out Laplace log-likelihood against wall time while training on the digits.

The model is Binomial PCA (total count 16, k = 5) of scikit-learn's 8x8 digits,
shuffled with a fixed seed and split into training and held-out rows. Four
guides train the same model from the same initial parameters with SVI (Adam,
learning rate 0.05, ``Trace_ELBO``, full batch, float32, one thread):

- ``AutoDEQ``: a Delta at the exact MAP, envelope gradients;
- ``AutoDEQLaplace(objective="laplace")``: the Laplace approximation of the
  marginal likelihood, implicit gradients;
- ``AutoDelta`` and ``AutoNormal``: one free parameter set per training row.

Every ``--eval-every`` steps the clock stops and the held-out score is taken:
the mean over held-out rows of the Laplace approximation of ``log p(y_n | θ)``,
``AutoDEQLaplace(model).log_marginal(y_heldout).mean()`` with the trained
parameters. The common target is the lowest of the four best scores, so every
guide reaches it, and each guide's time to the target is its training time at
the first evaluation at or above it.

Usage::

    python benchmarks/bench_training.py [--quick] [--out results.json]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoDelta, AutoNormal
from pyro.optim import Adam

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

import pyro_deq  # noqa: E402

FULL = {"n_train": 1500, "n_components": 5, "steps": 600, "eval_every": 20}
QUICK = {"n_train": 150, "n_components": 2, "steps": 6, "eval_every": 3, "n_heldout": 40}
LEARNING_RATE = 0.05
SEED = 0
GUIDES = {
    "AutoDEQ": lambda model: pyro_deq.AutoDEQ(model),
    "AutoDEQLaplace (laplace objective)": lambda model: pyro_deq.AutoDEQLaplace(model, objective="laplace"),
    "AutoDelta": lambda model: AutoDelta(model),
    "AutoNormal": lambda model: AutoNormal(model),
}


def split_digits(n_train: int, n_heldout: int | None = None):
    """Return float32 ``(y_train, y_heldout)`` from a seeded shuffle of the 1797 digits."""
    data = pyro_deq.datasets.load_digits().data
    order = torch.randperm(data.shape[0], generator=torch.Generator().manual_seed(SEED))
    train, heldout = data[order[:n_train]], data[order[n_train:]]
    if n_heldout is not None:
        heldout = heldout[:n_heldout]
    return train, heldout


def heldout_score(model, y_heldout: torch.Tensor) -> float:
    """Mean Laplace log-marginal of the held-out rows under the model's current parameters."""
    return float(pyro_deq.AutoDEQLaplace(model).log_marginal(y_heldout).mean())


def train_guide(name: str, y_train, y_heldout, n_components: int, steps: int, eval_every: int) -> dict:
    """Train one guide from the seeded initial parameters and trace the held-out score against time."""
    pyro.clear_param_store()
    pyro.set_rng_seed(SEED)
    family = pyro_deq.families.get("binomial", total_count=16)
    model = pyro_deq.ExpFamPCA(y_train.shape[1], n_components, family=family, name="bench_training")
    guide = GUIDES[name](model)
    svi = SVI(model, guide, Adam({"lr": LEARNING_RATE}), Trace_ELBO())

    trace = [{"step": 0, "seconds": 0.0, "heldout": heldout_score(model, y_heldout)}]
    seconds = 0.0
    for step in range(1, steps + 1):
        start = time.perf_counter()
        loss = svi.step(y_train)
        seconds += time.perf_counter() - start
        if step % eval_every == 0 or step == steps:
            trace.append({"step": step, "seconds": seconds, "heldout": heldout_score(model, y_heldout),
                          "loss": loss / y_train.shape[0]})
    return {"trace": trace, "train_seconds": seconds, "seconds_per_step": seconds / steps,
            "best_heldout": max(point["heldout"] for point in trace), "final_heldout": trace[-1]["heldout"]}


def time_to_target(trace: list, target: float):
    for point in trace:
        if point["heldout"] >= target:
            return point["seconds"]
    return _common.NOT_REACHED


def run_benchmark(size: dict) -> dict:
    torch.set_num_threads(1)
    y_train, y_heldout = split_digits(size["n_train"], size.get("n_heldout"))
    # Pyro's first SVI step in a process costs about a second of one-off set-up.
    train_guide("AutoDelta", y_train[:10], y_heldout[:5], size["n_components"], 1, 1)
    guides = {name: train_guide(name, y_train, y_heldout, size["n_components"], size["steps"], size["eval_every"])
              for name in GUIDES}

    target = min(guide["best_heldout"] for guide in guides.values())
    times = {}
    for name, guide in guides.items():
        guide["seconds_to_target"] = time_to_target(guide["trace"], target)
        times[name] = guide["seconds_to_target"] if isinstance(guide["seconds_to_target"], float) else None
    for name, ratio in _common.ratios_to_fastest(times).items():
        guides[name]["ratio_to_fastest"] = ratio
    return {
        **_common.machine_info(),
        "benchmark": "training",
        "dataset": "digits (scikit-learn), Binomial total_count=16",
        "n_train": int(y_train.shape[0]),
        "n_heldout": int(y_heldout.shape[0]),
        "n_features": int(y_train.shape[1]),
        "n_components": size["n_components"],
        "steps": size["steps"],
        "eval_every": size["eval_every"],
        "learning_rate": LEARNING_RATE,
        "dtype": "float32",
        "threads": torch.get_num_threads(),
        "target_heldout": target,
        "guides": guides,
    }


def format_table(figures: dict) -> str:
    rows = []
    for name, guide in figures["guides"].items():
        to_target = guide["seconds_to_target"]
        rows.append([name, guide["seconds_per_step"] * 1e3, guide["final_heldout"], guide["best_heldout"],
                     to_target if isinstance(to_target, str) else to_target, guide["ratio_to_fastest"]])
    columns = ["guide", "ms per step", "final held-out", "best held-out", "s to target", "ratio to fastest"]
    notes = ["dataset", "n_train", "n_heldout", "n_components", "steps", "eval_every", "learning_rate", "dtype",
             "threads", "target_heldout", "torch", "pyro", "machine", "cpu_count"]
    return _common.markdown_table(columns, rows) + "\n" + _common.settings_lines(figures, notes)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _common.add_common_arguments(parser, default_repeats=None)
    parser.add_argument("--steps", type=int, help="SVI steps per guide (default 600, 6 with --quick)")
    args = parser.parse_args(argv)

    size = dict(QUICK if args.quick else FULL)
    if args.steps:
        size["steps"] = args.steps
    figures = run_benchmark(size)
    _common.emit(format_table(figures))
    _common.write_json(figures, args.out)
    return figures


if __name__ == "__main__":
    main()
