"""``compare``: DEQ estimates beside SVI and MCMC posteriors on one data set."""

from __future__ import annotations

import copy
import logging
import os
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyro
import torch
from pyro.infer.autoguide import AutoNormal
from tqdm.auto import tqdm

from ..guides import AutoDEQ, AutoDEQLaplace
from ..models import ExpFamPCA
from ..training import train
from . import arviz_adapter
from .methods import METHODS, ConditionalProblem, MethodResult, run_method
from .metrics import interval_coverage, principal_angles, sd_ratio, standardized_errors
from .report import ComparisonReport

__all__ = ["compare", "DEFAULT_METHODS", "Settings", "SettingsError"]

logger = logging.getLogger(__name__)

DEFAULT_METHODS = tuple(METHODS)


class SettingsError(ValueError):
    """An argument of :func:`compare` that cannot work with the data, found before any training."""


@dataclass
class Settings:
    """Sizes of one comparison run; :meth:`quick` shrinks them for tests and CI."""

    subset: int = 40
    train_steps: int = 300
    svi_steps: int = 1500
    nuts_samples: int = 300
    nuts_warmup: int = 300
    nuts_chains: int = 2
    num_draws: int = 1000
    heldout_fraction: float = 0.2
    max_rows: int | None = None

    @classmethod
    def quick(cls) -> "Settings":
        return cls(subset=12, train_steps=60, svi_steps=400, nuts_samples=100, nuts_warmup=100,
                   num_draws=300, max_rows=400)


def _split(n_rows: int, heldout_fraction: float, seed: int):
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n_rows, generator=generator)
    n_heldout = max(1, int(round(heldout_fraction * n_rows)))
    return order[n_heldout:], order[:n_heldout]


def compare(
    model: ExpFamPCA,
    y,
    *,
    labels=None,
    offset=None,
    methods=DEFAULT_METHODS,
    subset: int | None = None,
    seed: int = 0,
    quick: bool | None = None,
    settings: Settings | None = None,
    joint: bool = True,
    progress: bool = False,
    dataset_name: str | None = None,
    feature_names=None,
) -> ComparisonReport:
    """Compare AutoDEQ with SVI guides and NUTS on ``y``.

    1. Train ``model`` with :class:`~pyro_deq.AutoDEQ` on a training split.
    2. Conditional on those parameters ``θ``, infer ``z | y, θ`` for ``subset``
       training rows with every method in ``methods``. Their targets coincide,
       so they are compared row by row against NUTS.
    3. Jointly, train with AutoDEQ, AutoDEQLaplace (Laplace objective) and
       AutoNormal, and compare only rotation-invariant quantities: principal
       angles between loading subspaces, reconstruction error and the held-out
       Laplace log-likelihood.

    :param ExpFamPCA model: the model; its current parameters are the starting point.
    :param y: data, shape ``(N, d)``.
    :param labels: optional labels per row for the latent plot, shape ``(N,)``.
    :param offset: optional offset, as for the model.
    :param methods: names from ``DEFAULT_METHODS``; ``"NUTS"`` is the reference
        for the mean errors, sd ratios and coverage.
    :param int subset: rows of the conditional comparison.
    :param int seed: seed of the split, the subset and every sampler.
    :param bool quick: reduced sizes (also set by the environment variable
        ``PYRO_DEQ_QUICK=1``).
    :param Settings settings: explicit sizes, overriding ``quick``.
    :param bool joint: run the joint comparison.
    :param bool progress: show progress bars.
    :returns: a :class:`~pyro_deq.comparison.ComparisonReport`.
    :raises SettingsError: before any training, for unknown methods or a
        subset that is too small or larger than the training rows.
    """
    if quick is None:
        quick = os.environ.get("PYRO_DEQ_QUICK", "") not in ("", "0")
    settings = copy.copy(settings or (Settings.quick() if quick else Settings()))
    if subset is not None:
        settings.subset = int(subset)
    methods = list(methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SettingsError(f"`methods` contains unknown names {unknown}; valid names are {list(METHODS)}.")
    if settings.subset < 2:
        raise SettingsError(f"`subset` must be at least 2 rows, got {settings.subset}.")

    data = model.prepare(y, None, offset)
    y_all = data.y
    labels = None if labels is None else np.asarray(labels)
    if settings.max_rows is not None and y_all.shape[0] > settings.max_rows:
        keep = torch.randperm(y_all.shape[0], generator=torch.Generator().manual_seed(seed))[: settings.max_rows]
        keep = keep.sort().values
        y_all = y_all[keep]
        labels = None if labels is None else labels[keep.numpy()]
        data = model.prepare(y_all, None, None if data.offset is None else _rows(data.offset, keep))
    train_rows, heldout_rows = _split(y_all.shape[0], settings.heldout_fraction, seed)
    if settings.subset > train_rows.numel():
        raise SettingsError(
            f"`subset` is {settings.subset} but only {train_rows.numel()} training rows exist; "
            "pass a smaller subset."
        )
    offset_all = data.offset
    started = time.perf_counter()

    # Every model of this run lives in a private param store, so the run
    # neither reads nor changes the parameters of the caller's session.
    with pyro.get_param_store().scope():
        return _compare(model, y_all, labels, offset_all, train_rows, heldout_rows, methods, settings,
                        seed, quick, joint, progress, dataset_name, started)


def _compare(model, y_all, labels, offset_all, train_rows, heldout_rows, methods, settings, seed, quick,
             joint, progress, dataset_name, started) -> ComparisonReport:
    stages = tqdm(total=len(methods) + (3 if joint else 1), desc="compare", disable=not progress)
    trained = {"AutoDEQ": _train_joint(model, AutoDEQ, y_all, train_rows, offset_all, settings, seed,
                                       "AutoDEQ", progress)}
    fixed = trained["AutoDEQ"][0]
    stages.update()

    subset_rows = train_rows[: settings.subset].sort().values
    problem = ConditionalProblem(
        model=fixed, y=y_all[subset_rows], offset=_rows(offset_all, subset_rows),
        num_draws=settings.num_draws, svi_steps=settings.svi_steps, nuts_samples=settings.nuts_samples,
        nuts_warmup=settings.nuts_warmup, nuts_chains=settings.nuts_chains, seed=seed,
    )
    results = {}
    for name in methods:
        stages.set_postfix(method=name)
        results[name] = run_method(name, problem)
        stages.update()

    conditional = _conditional_table(results, problem)
    arviz_data = {name: _to_arviz(result, subset_rows) for name, result in results.items()}
    nuts_diagnostics = _nuts_diagnostics(arviz_data.get("NUTS"), results.get("NUTS"))

    joint_table = None
    if joint:
        for name, guide_factory in (
            ("AutoDEQLaplace (Laplace objective)", lambda m: AutoDEQLaplace(m, objective="laplace")),
            ("AutoNormal", AutoNormal),
        ):
            stages.set_postfix(method=f"joint {name}")
            trained[name] = _train_joint(model, guide_factory, y_all, train_rows, offset_all, settings,
                                         seed, name, progress)
            stages.update()
        joint_table = _joint_table(trained, y_all, heldout_rows, offset_all)
    stages.close()

    all_latents = AutoDEQ(fixed).median(y_all, offset=offset_all)["z"].numpy()
    return ComparisonReport(
        conditional=conditional,
        joint=joint_table,
        arviz=arviz_data,
        nuts_diagnostics=nuts_diagnostics,
        results=results,
        training_curves={name: result.losses for name, (_, result) in trained.items()},
        latents=all_latents,
        labels=labels,
        subset_rows=subset_rows.numpy(),
        parameters={"weight": fixed.weight.detach().numpy(), "bias": fixed.bias.detach().numpy()},
        metadata={
            "dataset": dataset_name or "user data",
            "family": model.family.name,
            "n_rows": int(y_all.shape[0]),
            "n_features": int(y_all.shape[1]),
            "n_components": model.n_components,
            "nonlinearity": model.nonlinearity.name,
            "subset": settings.subset,
            "seed": seed,
            "quick": bool(quick),
            "settings": settings.__dict__.copy(),
            "seconds": time.perf_counter() - started,
            "torch_threads": torch.get_num_threads(),
        },
    )


def _rows(offset, rows):
    if offset is None:
        return None
    if offset.dim() == 2 and offset.shape[0] > 1:
        return offset[rows]
    return offset


def _model_like(model: ExpFamPCA, name: str, weight=None, bias=None) -> ExpFamPCA:
    """Build a model of the same structure as ``model`` with its own parameter names."""
    return ExpFamPCA(
        model.n_features, model.n_components, family=model.family, nonlinearity=model.nonlinearity,
        prior_precision=model.prior_precision, name=name,
        weight=model.initial_weight if weight is None else weight,
        bias=model.bias.detach() if bias is None else bias,
    )


def _train_joint(model, guide_factory, y_all, train_rows, offset_all, settings, seed, name, progress):
    """Train a fresh copy of ``model`` with ``guide_factory``; return it frozen and the training record."""
    pyro.set_rng_seed(seed)
    slug = "".join(c if c.isalnum() else "_" for c in name)
    joint_model = _model_like(model, f"compare_{slug}")
    result = train(joint_model, guide_factory(joint_model), y_all[train_rows],
                   offset=_rows(offset_all, train_rows), num_steps=settings.train_steps,
                   progress=progress, description=f"{name} training")
    frozen = _model_like(model, f"compare_{slug}_fixed", joint_model.weight.detach(), joint_model.bias.detach())
    return frozen, result


def _heldout_log_likelihood(model: ExpFamPCA, y, offset) -> tuple[float, float]:
    """Compute the mean per-row Laplace log-likelihood and the reconstruction RMSE of ``y`` under ``model``."""
    guide = AutoDEQLaplace(model)
    log_marginal = guide.log_marginal(y, offset=offset)
    z = guide.median(y, offset=offset)["z"]
    mean = model.expected_value(z, offset=offset)
    rmse = torch.sqrt(((mean - y) ** 2).mean())
    return float(log_marginal.mean()), float(rmse)


def _joint_table(trained: dict, y_all, heldout_rows, offset_all) -> pd.DataFrame:
    reference = trained["AutoDEQ"][0].weight.detach().numpy()
    rows = []
    y_heldout = y_all[heldout_rows]
    offset_heldout = _rows(offset_all, heldout_rows)
    with torch.no_grad():
        for name, (fitted, training) in trained.items():
            angles = principal_angles(reference, fitted.weight.detach().numpy())
            log_lik, rmse = _heldout_log_likelihood(fitted, y_heldout, offset_heldout)
            rows.append({
                "training": name,
                "max principal angle to AutoDEQ (deg)": float(angles.max()),
                "held-out Laplace log-lik per row": log_lik,
                "held-out reconstruction RMSE": rmse,
                "Frobenius norm of W Wᵀ": float(np.linalg.norm(fitted.weight.detach().numpy() @ fitted.weight.detach().numpy().T)),
                "training time (s)": training.seconds,
            })
    return pd.DataFrame(rows).set_index("training")


def _conditional_table(results: dict[str, MethodResult], problem: ConditionalProblem) -> pd.DataFrame:
    model = problem.model
    reference = results.get("NUTS")
    deq = results.get("AutoDEQ")
    rows = []
    with torch.no_grad():
        for name, result in results.items():
            point = torch.as_tensor(result.point, dtype=problem.y.dtype)
            log_joint = float(model.log_joint(problem.y, point, offset=problem.offset).sum())
            row = {
                "method": name,
                "kind": "point estimate" if result.point_estimate else "posterior draws",
                "time (s)": result.seconds,
                "log joint at estimate": log_joint,
                "RMS distance to DEQ MAP": float(np.sqrt(((result.point - deq.point) ** 2).mean())) if deq else np.nan,
            }
            if reference is not None and name != "NUTS":
                errors = standardized_errors(result.point, reference.draws)
                row["mean error (NUTS sd)"] = float(errors.mean())
                row["sd ratio to NUTS"] = (
                    np.nan if result.point_estimate else float(np.median(sd_ratio(result.draws, reference.draws)))
                )
                row["90% interval coverage of NUTS draws"] = interval_coverage(result.draws, reference.draws)
            rows.append(row)
    return pd.DataFrame(rows).set_index("method")


def _to_arviz(result: MethodResult, rows):
    coords = {"row": rows.numpy().tolist()}
    if result.point_estimate:
        return arviz_adapter.to_arviz({"z": result.point}, method=result.name, point_estimate=True, coords=coords)
    sample_stats = None
    if "diverging" in result.extra:
        sample_stats = {"diverging": result.extra["diverging"]}
    return arviz_adapter.to_arviz({"z": result.draws}, method=result.name, coords=coords, sample_stats=sample_stats)


def _nuts_diagnostics(data, result: MethodResult | None) -> dict:
    if data is None or result is None:
        return {}
    summary = arviz_adapter.summarize(data)
    return {
        "max R-hat": float(summary["r_hat"].max()),
        "min bulk ESS": float(summary["ess_bulk"].min()),
        "min tail ESS": float(summary["ess_tail"].min()),
        "divergences": result.extra.get("divergences", 0),
        "chains": int(result.draws.shape[0]),
        "draws per chain": int(result.draws.shape[1]),
    }
