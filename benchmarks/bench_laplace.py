"""AutoDEQLaplace against NUTS on ``z | y, θ``: time and posterior errors in NUTS-sd units.

The parameters are fixed: Bernoulli PCA with d = 64 features, k = 5
components, ``||W||^2 / (4 lambda) = 8`` and data drawn from the model. Both
methods infer the latents of the same rows (100, or 5 with ``--quick``):

- ``AutoDEQLaplace(model).get_posterior(y)``, the Normal ``N(z*, H⁻¹)`` per
  row, timed as the median over repeats;
- NUTS on a plain Pyro model of ``z | y`` with ``θ`` as constants
  (``pyro_deq.comparison.methods``), timed once, warm-up included.

Errors are per entry ``(row, component)``: the mean error is
``|Laplace mean − NUTS mean| / NUTS sd`` and the sd error is
``|Laplace sd / NUTS sd − 1|``. The Laplace mean is the posterior mode, so a
skewed posterior gives a true nonzero mean error. The NUTS mean itself has a
Monte Carlo error of about ``1 / sqrt(ESS)`` NUTS sds, reported beside it.

Usage::

    python benchmarks/bench_laplace.py [--quick] [--repeats 5] [--out results.json]
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import arviz
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

import pyro_deq  # noqa: E402
from pyro_deq.comparison.methods import ConditionalProblem, run_method  # noqa: E402
from pyro_deq.comparison.metrics import standardized_errors  # noqa: E402

FULL = {"n_rows": 100, "n_features": 64, "n_components": 5, "nuts_warmup": 300, "nuts_samples": 300,
        "nuts_chains": 2}
QUICK = {"n_rows": 5, "n_features": 12, "n_components": 2, "nuts_warmup": 30, "nuts_samples": 30,
         "nuts_chains": 1}
CONTRACTION_BOUND = 8.0
PRIOR_PRECISION = 1.0
SEED = 0


def make_model_and_data(n_rows: int, n_features: int, n_components: int):
    """Return a fixed-parameter Bernoulli ``ExpFamPCA`` and ``n_rows`` rows drawn from it, in float32."""
    generator = torch.Generator().manual_seed(SEED)
    weight = torch.randn(n_features, n_components, generator=generator)
    weight *= math.sqrt(4 * CONTRACTION_BOUND * PRIOR_PRECISION) / float(torch.linalg.matrix_norm(weight, ord=2))
    bias = 0.5 * torch.randn(n_features, generator=generator)
    z_true = torch.randn(n_rows, n_components, generator=generator)
    y = torch.bernoulli(torch.sigmoid(z_true @ weight.T + bias), generator=generator)
    model = pyro_deq.ExpFamPCA(n_features, n_components, family="bernoulli", prior_precision=PRIOR_PRECISION,
                               weight=weight, bias=bias, name="bench_laplace")
    return model, y


def nuts_effective_sample_size(draws: np.ndarray) -> np.ndarray:
    """Bulk ESS per entry of NUTS draws of shape ``(chain, draw, n, k)``."""
    data = arviz.convert_to_dataset({"z": draws})
    return np.asarray(arviz.ess(data)["z"].values)


def run_benchmark(size: dict, repeats: int) -> dict:
    torch.set_num_threads(1)
    model, y = make_model_and_data(size["n_rows"], size["n_features"], size["n_components"])
    guide = pyro_deq.AutoDEQLaplace(model)

    laplace_seconds = _common.median_seconds(lambda: guide.get_posterior(y), repeats)
    posterior = guide.get_posterior(y)
    laplace_mean = posterior.loc.double().numpy()
    laplace_sd = posterior.covariance_matrix.diagonal(dim1=-2, dim2=-1).sqrt().double().numpy()

    problem = ConditionalProblem(model, y, None, nuts_samples=size["nuts_samples"],
                                 nuts_warmup=size["nuts_warmup"], nuts_chains=size["nuts_chains"], seed=SEED)
    nuts = run_method("NUTS", problem)
    draws = nuts.draws.astype(np.float64)
    nuts_sd = draws.reshape(-1, *draws.shape[2:]).std(0, ddof=1)
    mean_error = standardized_errors(laplace_mean, draws)
    sd_error = np.abs(laplace_sd / nuts_sd - 1)
    ess = nuts_effective_sample_size(draws)

    return {
        **_common.machine_info(),
        "benchmark": "laplace",
        **size,
        "family": "bernoulli",
        "dtype": "float32 (Laplace precision in float64)",
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "laplace_seconds": laplace_seconds,
        "nuts_seconds": nuts.seconds,
        "nuts_to_laplace_ratio": nuts.seconds / laplace_seconds,
        "nuts_divergences": nuts.extra["divergences"],
        "nuts_min_ess": float(ess.min()),
        "nuts_mean_mc_error_sd_units": float(1 / math.sqrt(np.median(ess))),
        "mean_error_median": float(np.median(mean_error)),
        "mean_error_max": float(mean_error.max()),
        "mean_error_fraction_below_0.1": float((mean_error < 0.1).mean()),
        "sd_error_median": float(np.median(sd_error)),
        "sd_error_max": float(sd_error.max()),
    }


def format_table(figures: dict) -> str:
    rows = [
        ["AutoDEQLaplace get_posterior", figures["laplace_seconds"] * 1e3, 1.0, 0.0, 0.0, 0.0, 0.0],
        ["NUTS", figures["nuts_seconds"] * 1e3, figures["nuts_to_laplace_ratio"], None, None, None, None],
    ]
    rows[0][3:] = [figures["mean_error_median"], figures["mean_error_max"], figures["sd_error_median"],
                   figures["sd_error_max"]]
    columns = ["method", "time (ms)", "ratio to fastest", "mean error (median)", "mean error (max)",
               "sd error (median)", "sd error (max)"]
    notes = ["n_rows", "n_features", "n_components", "family", "dtype", "threads", "repeats", "nuts_warmup",
             "nuts_samples", "nuts_chains", "nuts_divergences", "nuts_min_ess", "nuts_mean_mc_error_sd_units",
             "mean_error_fraction_below_0.1", "torch", "pyro", "machine", "cpu_count"]
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
