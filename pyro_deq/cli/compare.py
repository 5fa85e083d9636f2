"""``pyro-deq compare``: DEQ estimates beside SVI and MCMC on a bundled data set."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
from pathlib import Path

import pyro

import pyro_deq
from pyro_deq import datasets, families

from . import UserInputError, reject_foreign_family_options
from .fit import (
    BINOMIAL_NEEDS_COUNT,
    add_family_arguments,
    check_latent_dim,
    command_line_wording,
    positive_int,
    seed_value,
)


def subset_size(text: str) -> int:
    """Parse ``--subset``: an integer of at least 2, since NUTS sd needs two rows' worth of entries."""
    value = positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"expected an integer of at least 2, got {text!r}")
    return value
from .io import check_output_dir, output_directory, staged_output

__all__ = ["QUICK_ENVIRONMENT_VARIABLE", "add_parser", "quick_requested", "run"]

logger = logging.getLogger(__name__)

QUICK_ENVIRONMENT_VARIABLE = "PYRO_DEQ_QUICK"
_TRUE_WORDS = ("1", "true", "yes", "on")

DATASETS = ("digits", "reuters", "breast_cancer", "synthetic")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``compare`` subcommand and its options to ``subparsers``."""
    parser = subparsers.add_parser(
        "compare",
        help="compare DEQ estimates with SVI and MCMC on a bundled data set",
        description=(
            "Train exponential-family PCA with AutoDEQ on a bundled data set, compare its latents "
            "with AutoDelta, AutoNormal, AutoLowRankMultivariateNormal and NUTS, print the tables "
            "and write report.md, the tables as CSV, ArviZ data and PNG figures to the output "
            f"directory. Set {QUICK_ENVIRONMENT_VARIABLE}=1 for the same effect as --quick."
        ),
    )
    parser.add_argument("--dataset", choices=DATASETS, default="digits",
                        help="bundled data set (default: %(default)s)")
    add_family_arguments(parser, required=False)
    parser.add_argument("--latent-dim", type=positive_int, default=2, metavar="K",
                        help="number of latent components k (default: %(default)s)")
    parser.add_argument("--subset", type=subset_size, metavar="N",
                        help="rows used in the conditional comparison with NUTS, at least 2 "
                             "(default: 40, or 12 with --quick)")
    parser.add_argument("--seed", type=seed_value, default=0, metavar="S",
                        help="random seed; the same seed gives the same report on the same machine "
                        "(default: %(default)s)")
    parser.add_argument("--out", type=output_directory, metavar="DIR",
                        help="output directory; its parent must exist (default: compare-<dataset>)")
    parser.add_argument("--force", action="store_true",
                        help="replace DIR if an earlier pyro-deq run wrote it (never another directory)")
    parser.add_argument("--quick", action="store_true",
                        help="run a reduced comparison (fewer steps, rows and draws) for smoke tests")
    parser.add_argument("--quiet", action="store_true", help="show no progress bars")
    parser.set_defaults(run=run)
    return parser


def quick_requested(flag: bool) -> bool:
    """Return true when ``--quick`` is given or ``PYRO_DEQ_QUICK`` is 1, true, yes or on."""
    value = os.environ.get(QUICK_ENVIRONMENT_VARIABLE, "").strip().lower()
    return flag or value in _TRUE_WORDS


def load_dataset(name: str, family: str | None):
    """Load a bundled data set; Bernoulli digits are thresholded at 8 of 16."""
    if name == "digits":
        return datasets.load_digits(binarize=family == "bernoulli")
    if name == "reuters":
        return datasets.load_reuters()
    if name == "breast_cancer":
        return datasets.load_breast_cancer()
    synthetic_family = family or "bernoulli"
    params = {"total_count": 16} if synthetic_family == "binomial" else None
    return datasets.make_synthetic(family=synthetic_family, family_params=params)


def _dataset_label(args: argparse.Namespace) -> str:
    """Name the data set in the report, saying when the digits were binarized for a Bernoulli family."""
    if args.dataset == "digits" and args.family == "bernoulli":
        return "digits, binarized: 1 where the count exceeds 8 of 16"
    return args.dataset


def build_family(args: argparse.Namespace, dataset):
    """Build the data set's family, or ``--family`` with ``--total-count`` and ``--scale``."""
    if args.family is None or args.family == dataset.family:
        params = dict(dataset.family_params)
        name = dataset.family
    else:
        params, name = {}, args.family
    source = "--family" if args.family is not None else f"data set {args.dataset}'s family"
    reject_foreign_family_options(name, args.total_count, args.scale, source)
    if args.total_count is not None:
        params["total_count"] = args.total_count
    if args.scale is not None:
        params["scale"] = args.scale
    if name == "binomial" and "total_count" not in params:
        raise UserInputError(BINOMIAL_NEEDS_COUNT)
    try:
        return families.get(name, **params)
    except (TypeError, ValueError) as error:
        raise UserInputError(f"--family {name}: {str(error).rstrip('.')}") from None


def _compare_function():
    """Return ``pyro_deq.comparison.compare``, raising a clear error when this build lacks it."""
    comparison = importlib.import_module("pyro_deq.comparison")
    compare = getattr(comparison, "compare", None)
    if compare is None:
        raise RuntimeError("this installation of pyro_deq has no pyro_deq.comparison.compare; "
                           "reinstall the package from a complete source tree")
    return compare


def _figures(report) -> dict:
    """Draw the report's figures without a display."""
    import matplotlib

    matplotlib.use("Agg")
    plotting = importlib.import_module("pyro_deq.plotting")
    return plotting.report_figures(report)


def run(args: argparse.Namespace) -> int:
    """Run ``pyro-deq compare`` and return the exit status."""
    out = check_output_dir(args.out if args.out is not None else Path(f"compare-{args.dataset}"), args.force)
    quick = quick_requested(args.quick)
    compare = _compare_function()
    dataset = load_dataset(args.dataset, args.family)
    family = build_family(args, dataset)
    y = dataset.to_dense()
    check_latent_dim(args.latent_dim, y.shape[1], f"data set {args.dataset}")

    pyro.set_rng_seed(args.seed)
    pyro.clear_param_store()
    model = pyro_deq.ExpFamPCA(y.shape[1], args.latent_dim, family=family)
    try:
        model.prepare(y)
    except ValueError as error:
        raise UserInputError(
            f"data set {args.dataset} does not fit --family {family.name}: {command_line_wording(str(error))}"
        ) from None

    logger.info("comparing on %s (%d x %d, %r)%s", args.dataset, *y.shape, family, ", quick" if quick else "")
    try:
        report = compare(
            model, y, labels=dataset.target, subset=args.subset, seed=args.seed, quick=quick,
            progress=not args.quiet, feature_names=dataset.feature_names, dataset_name=_dataset_label(args),
        )
    except importlib.import_module("pyro_deq.comparison").SettingsError as error:
        raise UserInputError(f"--subset {args.subset}: {error}") from None
    figures = _figures(report)
    try:
        with staged_output(out, args.force) as staging:
            report.save(staging, figures=figures, overwrite=True)
    finally:
        _close(figures)

    print(report.to_markdown())
    return 0


def _close(figures: dict) -> None:
    import matplotlib.pyplot as plt

    for figure in figures.values():
        plt.close(figure)
