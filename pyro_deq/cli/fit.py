"""``pyro-deq fit``: train exponential-family PCA on a user's data file and write the results."""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
from pathlib import Path

import pandas as pd
import pyro
import torch

import pyro_deq
from pyro_deq import families, nonlinearities
from pyro_deq._text import count_noun
from pyro_deq.errors import NumericalError
from pyro_deq.initialization import degenerate_columns, degenerate_rows, initial_bias, initial_weight
from pyro_deq.training import train

from . import UserInputError, reject_foreign_family_options
from .io import MatrixFile, check_output_dir, output_directory, read_matrix, staged_output

__all__ = ["add_parser", "run"]

logger = logging.getLogger(__name__)

OUTPUT_FILES = ("latents.csv", "loadings.csv", "diagnostics.json", "params.pt")

# The largest seed NumPy's legacy seeding accepts, which pyro.set_rng_seed uses.
MAX_SEED = 2**32 - 1

BINOMIAL_NEEDS_COUNT = "--family binomial needs --total-count N, the number of trials of each entry"

# Degenerate columns named in the warning before the list is shortened.
_MAX_NAMES_SHOWN = 20

# Phrases of the model's validation messages that name Python arguments, and
# their command-line equivalents.
_OPTION_WORDING = (
    (re.compile(r"family='(\w+)'"), r"--family \1"),
    (re.compile(r", or pass one count per entry as a tensor of shape \(\d+, \d+\)"), ""),
    (re.compile(r"`total_count`"), "--total-count"),
    (re.compile(r"Pass `mask` with False at missing entries, or drop the rows that contain them\."),
     "Drop the rows that contain them, or leave missing cells empty and pass --mask-missing."),
    (re.compile(r"(an )?`offset`"), "an offset column (--offset-column)"),
    (re.compile(r"`y`"), "the data"),
)
_POSITION = re.compile(r"\(row (\d+), column (\d+)\)")


def positive_int(text: str) -> int:
    """Parse a positive integer option value."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def seed_value(text: str) -> int:
    """Parse ``--seed``: an integer that NumPy, torch and Python all accept as a seed."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to {MAX_SEED}, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """Parse a finite positive number option value."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite positive number, got {text!r}")
    return value


def add_family_arguments(parser: argparse.ArgumentParser, required: bool) -> None:
    """Add ``--family``, ``--total-count`` and ``--scale``."""
    parser.add_argument(
        "--family", required=required, choices=families.names(), metavar="NAME",
        help="exponential family of every entry: " + ", ".join(families.names())
        + ("" if required else " (default: the data set's own family)"),
    )
    parser.add_argument(
        "--total-count", type=positive_int, metavar="N",
        help="number of trials of each entry, for --family binomial"
        + (" (required)" if required else " (required unless the data set's own family is binomial)"),
    )
    parser.add_argument(
        "--scale", type=positive_float, metavar="S",
        help="standard deviation of each entry, in the data's units, for --family gaussian (default: 1.0)",
    )


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``fit`` subcommand and its options to ``subparsers``."""
    parser = subparsers.add_parser(
        "fit",
        help="fit exponential-family PCA to a data file",
        description=(
            "Fit exponential-family PCA to FILE with the AutoDEQ guide (SVI, envelope gradients), "
            "then write latents.csv (MAP latents and Laplace standard deviations per row), "
            "loadings.csv (weights and bias per feature), diagnostics.json and params.pt "
            "(the model's state_dict) to the output directory. Nothing is written unless the run succeeds: "
            "a non-finite loss, or latents whose fixed-point solve did not converge, exit with status 1 "
            "and leave no output (see --allow-unconverged)."
        ),
    )
    parser.add_argument(
        "file", metavar="FILE", type=Path,
        help="data, one row per observation: .csv/.tsv/.txt (header optional), .npy, .npz or .mtx",
    )
    add_family_arguments(parser, required=True)
    parser.add_argument("--latent-dim", type=positive_int, required=True, metavar="K",
                        help="number of latent components k")
    parser.add_argument("--nonlinearity", choices=nonlinearities.names(), default="identity",
                        help="R in eta = R(W z + b) (default: %(default)s)")
    parser.add_argument("--mask-missing", action="store_true",
                        help="leave missing cells (empty, NA, NaN, N/A, null) out of the likelihood "
                        "instead of rejecting them")
    parser.add_argument("--offset-column", metavar="NAME",
                        help="column added to the canonical parameter of its row and not fitted, for example "
                        "log library size: a header name, or a column number counted from 1")
    parser.add_argument("--prior-precision", type=positive_float, default=1.0, metavar="L",
                        help="precision lambda of the N(0, 1/lambda) prior on each latent (default: %(default)s)")
    parser.add_argument("--steps", type=positive_int, default=500, metavar="N",
                        help="number of SVI steps (default: %(default)s)")
    parser.add_argument("--max-iter", type=positive_int, metavar="N",
                        help="Newton iterations per solve for the latents (default: 50)")
    parser.add_argument("--learning-rate", type=positive_float, default=0.05, metavar="LR",
                        help="Adam step size (default: %(default)s)")
    parser.add_argument("--batch-size", type=positive_int, metavar="B",
                        help="rows per SVI step (default: all rows)")
    parser.add_argument("--seed", type=seed_value, default=0, metavar="S",
                        help="random seed; the same seed gives the same results on the same machine "
                        "(default: %(default)s)")
    parser.add_argument("--drop-degenerate", action="store_true",
                        help="drop the columns whose bias has no finite maximum-likelihood estimate "
                        "(all-zero counts, binary columns all 0 or all 1) instead of only warning about them")
    parser.add_argument("--allow-unconverged", action="store_true",
                        help="write the outputs even when the final solve for the latents did not converge "
                        "for some rows, recording them in diagnostics.json, instead of exiting with status 1")
    parser.add_argument("--out", type=output_directory, metavar="DIR",
                        help="output directory; its parent must exist (default: fit-<FILE name without suffix>)")
    parser.add_argument("--force", action="store_true",
                        help="replace DIR if an earlier pyro-deq run wrote it (never another directory)")
    parser.add_argument("--quiet", action="store_true", help="show no progress bar and no summary, only warnings")
    parser.set_defaults(run=run)
    return parser


def build_family(args: argparse.Namespace):
    """Build the family from ``--family`` and its parameters, rejecting parameters it does not take."""
    reject_foreign_family_options(args.family, args.total_count, args.scale)
    if args.family == "binomial":
        if args.total_count is None:
            raise UserInputError(BINOMIAL_NEEDS_COUNT)
        return families.get("binomial", total_count=args.total_count)
    if args.family == "gaussian" and args.scale is not None:
        return families.get("gaussian", scale=args.scale)
    return families.get(args.family)


def validate_data(model, matrix: MatrixFile, path: Path) -> None:
    """Check the data against the family's support, naming the file position of the first bad entry."""
    try:
        model.prepare(matrix.y, matrix.mask, matrix.offset)
    except ValueError as error:
        raise UserInputError(f"{path}: {command_line_wording(str(error), matrix.locate)}") from None


def check_latent_dim(latent_dim: int, n_columns: int, source: str) -> None:
    """Raise :class:`UserInputError` when ``--latent-dim`` exceeds the number of columns.

    More components than features cannot be identified: the extra
    directions of the loadings only trade weight against the prior.
    """
    if latent_dim > n_columns:
        raise UserInputError(
            f"--latent-dim {latent_dim} exceeds the {count_noun(n_columns, 'column')} of {source}; "
            f"choose at most {n_columns}"
        )


def command_line_wording(message: str, locate=None) -> str:
    """Rewrite a validation message for the command line: positions counted from 1 and option names.

    :param locate: ``locate(row, column)`` describing a matrix entry counted
        from 0 as a file position, such as :meth:`MatrixFile.locate`; by
        default ``"row R, column C"`` counted from 1.

    NOTE: this relies on the families' messages giving the first bad entry as
    ``(row R, column C)`` counted from 0; without that pattern the message
    keeps its matrix position.
    """
    def position(match):
        row, column = int(match.group(1)), int(match.group(2))
        where = locate(row, column) if locate is not None else f"row {row + 1}, column {column + 1}"
        return f"{where} (counted from 1)"

    message = _POSITION.sub(position, message)
    for pattern, replacement in _OPTION_WORDING:
        message = pattern.sub(replacement, message)
    return " ".join(message.split())


def handle_degenerate(family, matrix: MatrixFile, drop: bool) -> tuple[MatrixFile, dict]:
    """Warn about columns with no finite maximum-likelihood bias, and drop them if asked.

    :returns: the matrix to fit and a report ``{"found": [names], "dropped": [names]}``.
    """
    found = degenerate_columns(family, matrix.y, matrix.mask)
    names = [matrix.column_names[index] for index in found]
    report = {"found": names, "dropped": []}
    if not found:
        return matrix, report

    shown = ", ".join(names[:_MAX_NAMES_SHOWN])
    if len(names) > _MAX_NAMES_SHOWN:
        shown += f", ... ({len(names) - _MAX_NAMES_SHOWN} more)"
    if not drop:
        columns = "1 column has" if len(names) == 1 else f"{len(names)} columns have"
        logger.warning(
            "%s no finite maximum-likelihood bias (every observed entry at one end of the support, or none "
            "observed): %s; their bias starts half an observation inside the support and drifts during "
            "training; pass --drop-degenerate to drop them", columns, shown,
        )
        return matrix, report

    if len(found) == matrix.y.shape[1]:
        raise UserInputError("every column is degenerate (no finite maximum-likelihood bias), "
                             "so --drop-degenerate would leave no data; check --family and the file")
    logger.warning("dropped %s (--drop-degenerate): %s", count_noun(len(names), "degenerate column"), shown)
    report["dropped"] = names
    return _drop_columns(matrix, found), report


def warn_degenerate_rows(family, matrix: MatrixFile) -> list[int]:
    """Warn about rows whose every observed entry sits at one end of the support, such as all-zero rows.

    :returns: the rows, counted from 1 as in the output's ``row`` column.
    """
    rows = [index + 1 for index in degenerate_rows(family, matrix.y, matrix.mask)]
    if rows:
        shown = ", ".join(str(row) for row in rows[:_MAX_NAMES_SHOWN])
        if len(rows) > _MAX_NAMES_SHOWN:
            shown += f", ... ({len(rows) - _MAX_NAMES_SHOWN} more)"
        subject = "1 row (counted from 1) has" if len(rows) == 1 else f"{len(rows)} rows (counted from 1) have"
        logger.warning(
            "%s every observed entry at one end of the support, or none observed, for example all zero: %s; "
            "their latents are set by the prior and the loadings rather than by data, so consider removing "
            "these rows", subject, shown,
        )
    return rows


def check_converged(solver: dict, allow_unconverged: bool, nonlinearity: str = "identity") -> None:
    """Raise :class:`NumericalError` when the final solve left rows unconverged, unless allowed.

    :param dict solver: the guide's diagnostics, with the solver ``result``.
    :param str nonlinearity: the model's nonlinearity, which decides the likely cause named.
    """
    result = solver["result"]
    failed = [int(index) + 1 for index in torch.nonzero(~result.converged).flatten()]
    solver["unconverged_rows"] = failed
    if not failed or allow_unconverged:
        return
    n_rows = result.converged.numel()
    shown = ", ".join(str(row) for row in failed[:_MAX_NAMES_SHOWN])
    if len(failed) > _MAX_NAMES_SHOWN:
        shown += ", ..."
    if nonlinearity == "relu":
        cause = ("With --nonlinearity relu this usually means maxima on a ReLU kink, where the log joint has "
                 "no gradient: try --nonlinearity identity")
    else:
        cause = ("Columns of very large counts usually cause this: pass log library size as --offset-column, "
                 "rescale or drop those columns, or raise --steps or --max-iter")
    raise NumericalError(
        f"the latents of {len(failed)} of {n_rows} rows ({len(failed) / n_rows:.0%}; rows {shown}, "
        f"counted from 1) did not converge: {result.status} after {count_noun(result.n_iter, 'iteration')}, "
        f"max relative residual {float(result.residual.max()):.3g} (tolerance {result.tol:.3g}); nothing was written. "
        f"{cause}; --allow-unconverged writes the outputs anyway",
        {"failed_rows": failed, "result": result},
    )


def _drop_columns(matrix: MatrixFile, columns: list[int]) -> MatrixFile:
    keep = [index for index in range(matrix.y.shape[1]) if index not in set(columns)]
    mask = None if matrix.mask is None else matrix.mask[:, keep]
    names = [matrix.column_names[index] for index in keep]

    def locate(row, column):
        return matrix.locate(row, keep[column])

    return MatrixFile(matrix.y[:, keep], mask, matrix.offset, names, locate)


def _build_model(args, family, matrix: MatrixFile):
    """Build the model with data-based initial loadings and bias."""
    y, mask = matrix.y, matrix.mask
    return pyro_deq.ExpFamPCA(
        y.shape[1], args.latent_dim, family=family, nonlinearity=args.nonlinearity,
        prior_precision=args.prior_precision,
        weight=initial_weight(family, y, args.latent_dim, mask=mask),
        bias=initial_bias(family, y, mask=mask),
    )


def _laplace(model, matrix: MatrixFile, max_iter: int | None) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Compute the MAP latents, their Laplace standard deviations and the solver diagnostics.

    A precision that is not positive definite (possible with ``relu``) is
    reported as a warning and gives NaN standard deviations, recorded in the
    diagnostics, so the trained model is still written.
    """
    guide = pyro_deq.AutoDEQLaplace(model, max_iter=max_iter)
    data = {"mask": matrix.mask, "offset": matrix.offset}
    z = guide.median(matrix.y, **data)["z"]
    solver = dict(guide.diagnostics)
    try:
        sd = guide.standard_deviation(matrix.y, **data)["z"]
    except NumericalError as error:
        logger.warning("Laplace standard deviations are unavailable and written as NaN: %s", error)
        sd = torch.full_like(z, math.nan)
        solver["laplace_error"] = str(error)
    return z, sd, solver


def run(args: argparse.Namespace) -> int:
    """Run ``pyro-deq fit`` and return the exit status."""
    out = check_output_dir(args.out if args.out is not None else Path(f"fit-{args.file.stem}"), args.force,
                           inputs=(args.file,))
    family = build_family(args)
    matrix = read_matrix(args.file, mask_missing=args.mask_missing, offset_column=args.offset_column)
    check_latent_dim(args.latent_dim, matrix.y.shape[1], args.file)
    validate_data(pyro_deq.ExpFamPCA(matrix.y.shape[1], args.latent_dim, family=family), matrix, args.file)
    matrix, degenerate = handle_degenerate(family, matrix, args.drop_degenerate)
    if degenerate["dropped"]:
        check_latent_dim(args.latent_dim, matrix.y.shape[1], f"{args.file} after --drop-degenerate")
    empty_rows = warn_degenerate_rows(family, matrix)

    pyro.set_rng_seed(args.seed)
    pyro.clear_param_store()
    model = _build_model(args, family, matrix)
    guide = pyro_deq.AutoDEQ(model, max_iter=args.max_iter)
    training = train(
        model, guide, matrix.y, mask=matrix.mask, offset=matrix.offset, num_steps=args.steps,
        learning_rate=args.learning_rate, batch_size=args.batch_size, progress=not args.quiet,
        description="pyro-deq fit",
    )
    z, sd, solver = _laplace(model, matrix, args.max_iter)
    check_converged(solver, args.allow_unconverged, args.nonlinearity)

    diagnostics = _diagnostics(args, family, matrix, training, solver, degenerate)
    diagnostics["degenerate_rows"] = empty_rows
    with staged_output(out, args.force) as staging:
        _write_outputs(staging, model, matrix, z, sd, diagnostics)

    if not args.quiet:
        print(f"wrote {out}/ ({', '.join(OUTPUT_FILES)}): {matrix.y.shape[0]} rows, "
              f"{matrix.y.shape[1]} features, {args.latent_dim} components, final loss "
              f"{training.losses[-1]:.6g} after {training.n_steps} steps in {training.seconds:.1f} s")
    return 0


def _diagnostics(args, family, matrix, training, solver, degenerate) -> dict:
    arguments = {key: str(value) if isinstance(value, Path) else value
                 for key, value in vars(args).items() if key not in ("run", "command")}
    return {
        "solver": {
            **{key: value for key, value in solver.items() if key != "result"},
            # Rows whose Newton step fell below rounding count as converged with a
            # residual above the tolerance, and this counts them.
            "n_step_converged": int(solver["result"].stats.get("n_step_converged", 0)),
        },
        "final_loss": training.losses[-1],
        "losses": training.losses,
        "seconds": training.seconds,
        "seed": args.seed,
        "arguments": arguments,
        "degenerate_columns": degenerate,
        "data": {
            "file": str(args.file),
            "n_rows": matrix.y.shape[0],
            "n_features": matrix.y.shape[1],
            "n_missing": 0 if matrix.mask is None else int((~matrix.mask).sum()),
        },
        "model": {"family": repr(family), "nonlinearity": args.nonlinearity,
                  "n_components": args.latent_dim, "prior_precision": args.prior_precision},
        "versions": {"pyro_deq": pyro_deq.__version__, "pyro": pyro.__version__, "torch": torch.__version__},
    }


def _json_ready(value):
    """Replace non-finite floats, which JSON cannot represent, by ``None``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(item) for item in value]
    return value


def _write_outputs(directory: Path, model, matrix: MatrixFile, z, sd, diagnostics: dict) -> None:
    k = z.shape[1]
    latents = pd.DataFrame(z.numpy(), columns=[f"z_{i + 1}" for i in range(k)])
    latents = latents.join(pd.DataFrame(sd.numpy(), columns=[f"sd_{i + 1}" for i in range(k)]))
    latents.insert(0, "row", range(1, z.shape[0] + 1))
    latents.to_csv(directory / "latents.csv", index=False)

    weight = model.weight.detach().numpy()
    loadings = pd.DataFrame(weight, columns=[f"weight_{i + 1}" for i in range(k)])
    loadings.insert(0, "feature", matrix.column_names)
    loadings["bias"] = model.bias.detach().numpy()
    loadings.to_csv(directory / "loadings.csv", index=False)

    with open(directory / "diagnostics.json", "w") as handle:
        json.dump(_json_ready(diagnostics), handle, indent=2, allow_nan=False)
    torch.save(model.state_dict(), directory / "params.pt")
