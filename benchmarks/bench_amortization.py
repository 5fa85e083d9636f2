"""Amortization gap on held-out rows: AutoDEQ's exact MAP against an MLP encoder guide.

The parameters ``θ`` of Binomial PCA (total count 16, k = 5) are first trained
on the digits with AutoDEQ and then held fixed. An amortized Delta guide
``z = MLP(y)`` (two hidden layers of tanh units) is trained with SVI (Adam,
``Trace_ELBO``) on the training rows of the same fixed-θ model. On held-out rows
both are compared with the exact MAP ``z*`` (a float64 Newton solve at
tolerance 1e-12):

- the distance ``||z_n − z*_n||`` (mean and max over rows);
- the log joint lost, ``ℓ(z*_n) − ℓ(z_n)`` (mean and max over rows), which is
  never negative because ``z*`` maximizes ``ℓ``;
- the inference time for all held-out rows (median over repeats), and an
  analytic count of the floating-point operations per row.

With 64 hidden units, one encoder pass costs flops per row of the same order
as the DEQ solve it replaces. Both analytic counts are in the output.

Usage::

    python benchmarks/bench_amortization.py [--quick] [--repeats 5] [--out results.json]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.nn import PyroModule
from pyro.optim import Adam
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402
from bench_training import split_digits  # noqa: E402

import pyro_deq  # noqa: E402

FULL = {"n_train": 1500, "n_components": 5, "theta_steps": 300, "encoder_steps": 3000, "hidden": 64}
QUICK = {"n_train": 150, "n_components": 2, "theta_steps": 5, "encoder_steps": 20, "hidden": 16, "n_heldout": 40}
THETA_LR = 0.05
ENCODER_LR = 3e-3
SEED = 0


class EncoderGuide(PyroModule):
    """Amortized Delta guide ``z_n = MLP(y_n)`` for the latent site ``"z"`` in the plate ``"data"``.

    :param int n_features: ``d``, the width of a data row.
    :param int n_components: ``k``, the width of a latent row.
    :param int hidden: width of each of the two hidden layers.
    """

    def __init__(self, n_features: int, n_components: int, hidden: int):
        super().__init__()
        self.net = PyroModule[nn.Sequential](
            nn.Linear(n_features, hidden), nn.Tanh(),
            nn.Linear(hidden, hidden), nn.Tanh(),
            nn.Linear(hidden, n_components),
        )

    def encode(self, y: torch.Tensor) -> torch.Tensor:
        """Map rows ``(N, d)`` to latents ``(N, k)``; the inputs are scaled to [0, 1] first."""
        return self.net(y / 16.0)

    def forward(self, y: torch.Tensor):
        with pyro.plate("data", y.shape[0], dim=-1):
            return pyro.sample("z", dist.Delta(self.encode(y)).to_event(1))


def encoder_flops_per_row(n_features: int, n_components: int, hidden: int) -> int:
    """Two flops per multiply-add of the three linear layers; activations are not counted."""
    return 2 * (n_features * hidden + hidden * hidden + hidden * n_components)


def deq_flops_per_row(n_features: int, n_components: int, n_iter: int) -> int:
    """Count the flops per row of ``n_iter`` Newton steps and the final evaluation.

    Each step costs ``Wz`` and ``Wᵀr`` (2dk each), the Hessian (2dk²) and the
    k×k LU solve (2k³/3 + 2k²). Line-search trials are not counted.
    """
    d, k = n_features, n_components
    per_step = 2 * d * k + 2 * d * k + 2 * d * k * k + 2 * k**3 // 3 + 2 * k * k
    return (n_iter + 1) * per_step


def train_theta(y_train: torch.Tensor, n_components: int, steps: int):
    """Train Binomial PCA on ``y_train`` with AutoDEQ and return the model with its parameters."""
    pyro.clear_param_store()
    pyro.set_rng_seed(SEED)
    family = pyro_deq.families.get("binomial", total_count=16)
    model = pyro_deq.ExpFamPCA(y_train.shape[1], n_components, family=family, name="bench_amortization")
    svi = SVI(model, pyro_deq.AutoDEQ(model), Adam({"lr": THETA_LR}), Trace_ELBO())
    for _ in range(steps):
        svi.step(y_train)
    return model


def fixed_theta_model(model):
    """Build a plain Pyro model of ``z | y`` with the trained loadings and bias as constants."""
    weight, bias = model.weight.detach(), model.bias.detach()
    scale = model.prior_precision ** -0.5

    def conditional_model(y):
        loc = torch.zeros(weight.shape[1], dtype=y.dtype)
        with pyro.plate("data", y.shape[0], dim=-1):
            z = pyro.sample("z", dist.Normal(loc, scale).to_event(1))
            pyro.sample("y", model.family.distribution(z @ weight.T + bias).to_event(1), obs=y)

    return conditional_model


def train_encoder(model, y_train: torch.Tensor, hidden: int, steps: int) -> tuple[EncoderGuide, float]:
    """Fit the encoder guide by SVI on the fixed-θ model; returns the guide and the training seconds."""
    conditional_model = fixed_theta_model(model)
    pyro.set_rng_seed(SEED)
    encoder = EncoderGuide(y_train.shape[1], model.n_components, hidden)
    svi = SVI(conditional_model, encoder, Adam({"lr": ENCODER_LR}), Trace_ELBO())
    start = time.perf_counter()
    for _ in range(steps):
        svi.step(y_train)
    return encoder, time.perf_counter() - start


def exact_map(model, y: torch.Tensor):
    """Return the float64 MAP ``(N, k)`` at tolerance 1e-12 and the float64 copy of the model."""
    double = pyro_deq.ExpFamPCA(model.n_features, model.n_components, family=model.family,
                                prior_precision=model.prior_precision, weight=model.weight.detach().double(),
                                bias=model.bias.detach().double(), name="bench_amortization_float64")
    with torch.no_grad():
        z0 = torch.zeros(y.shape[0], model.n_components, dtype=torch.float64)
        return pyro_deq.solve(double.problem(y.double()), z0, method="newton", tol=1e-12, max_iter=200,
                              throw=True).z, double


def gap_figures(z: torch.Tensor, z_star: torch.Tensor, double_model, y: torch.Tensor) -> dict:
    """Distance to the exact MAP and log joint lost per row, summarized over rows."""
    with torch.no_grad():
        distance = (z.double() - z_star).norm(dim=-1)
        lost = double_model.log_joint(y.double(), z_star) - double_model.log_joint(y.double(), z.double())
    return {"distance_mean": float(distance.mean()), "distance_max": float(distance.max()),
            "log_joint_lost_mean": float(lost.mean()), "log_joint_lost_max": float(lost.max())}


def run_benchmark(size: dict, repeats: int) -> dict:
    torch.set_num_threads(1)
    y_train, y_heldout = split_digits(size["n_train"], size.get("n_heldout"))
    model = train_theta(y_train, size["n_components"], size["theta_steps"])
    encoder, encoder_train_seconds = train_encoder(model, y_train, size["hidden"], size["encoder_steps"])
    guide = pyro_deq.AutoDEQ(model)

    with torch.no_grad():
        z_deq = guide.median(y_heldout)["z"]
        n_iter = guide.diagnostics["n_iter"]
        z_encoder = encoder.encode(y_heldout)
        deq_seconds = _common.median_seconds(lambda: guide.median(y_heldout), repeats)
        encoder_seconds = _common.median_seconds(lambda: encoder.encode(y_heldout), repeats)
    z_star, double_model = exact_map(model, y_heldout)
    z_star_train, _ = exact_map(model, y_train)
    d, k = y_train.shape[1], size["n_components"]

    return {
        **_common.machine_info(),
        "benchmark": "amortization",
        "dataset": "digits (scikit-learn), Binomial total_count=16",
        "n_train": int(y_train.shape[0]),
        "n_heldout": int(y_heldout.shape[0]),
        "n_features": d,
        "n_components": k,
        "theta_steps": size["theta_steps"],
        "encoder_steps": size["encoder_steps"],
        "encoder_hidden": size["hidden"],
        "encoder_lr": ENCODER_LR,
        "dtype": "float32",
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "deq_iterations": n_iter,
        "deq_flops_per_row": deq_flops_per_row(d, k, n_iter),
        "encoder_flops_per_row": encoder_flops_per_row(d, k, size["hidden"]),
        "encoder_train_seconds": encoder_train_seconds,
        "deq_seconds": deq_seconds,
        "encoder_seconds": encoder_seconds,
        "deq": gap_figures(z_deq, z_star, double_model, y_heldout),
        "encoder": gap_figures(z_encoder, z_star, double_model, y_heldout),
        "encoder_on_training_rows": gap_figures(encoder.encode(y_train).detach(), z_star_train, double_model, y_train),
    }


def format_table(figures: dict) -> str:
    seconds = _common.ratios_to_fastest({"deq": figures["deq_seconds"], "encoder": figures["encoder_seconds"]})
    rows = []
    for key, name, flops in [("deq", "AutoDEQ median (held-out)", figures["deq_flops_per_row"]),
                             ("encoder", "MLP encoder (held-out)", figures["encoder_flops_per_row"]),
                             ("encoder_on_training_rows", "MLP encoder (training rows)", None)]:
        gap = figures[key]
        time_ms = figures[f"{key}_seconds"] * 1e3 if key in seconds else None
        rows.append([name, gap["distance_mean"], gap["distance_max"], gap["log_joint_lost_mean"],
                     gap["log_joint_lost_max"], time_ms, seconds.get(key), flops])
    columns = ["method", "distance to MAP (mean)", "(max)", "log joint lost (mean)", "(max)", "time (ms)",
               "ratio to fastest", "flops per row"]
    notes = ["dataset", "n_train", "n_heldout", "n_components", "theta_steps", "encoder_steps", "encoder_hidden",
             "encoder_lr", "encoder_train_seconds", "deq_iterations", "dtype", "threads", "repeats", "torch", "pyro",
             "machine", "cpu_count"]
    return _common.markdown_table(columns, rows) + "\n" + _common.settings_lines(figures, notes)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _common.add_common_arguments(parser)
    args = parser.parse_args(argv)

    figures = run_benchmark(QUICK if args.quick else FULL, args.repeats)
    _common.emit(format_table(figures))
    _common.write_json(figures, args.out)
    return figures


if __name__ == "__main__":
    main()
