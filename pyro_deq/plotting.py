"""Figures of a comparison report (matplotlib, PNG-ready).

Only the command line imports this module; library code stays free of
matplotlib state.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from .comparison import arviz_adapter

__all__ = ["report_figures", "plot_latents", "plot_map_against_nuts", "plot_forest",
           "plot_residual_traces", "plot_training_curves"]


def plot_latents(report):
    """Scatter the first two coordinates of the DEQ MAP of every row, coloured by label."""
    figure, axis = plt.subplots(figsize=(5.5, 4.5))
    z = report.latents
    second = z[:, 1] if z.shape[1] > 1 else np.zeros(len(z))
    if report.labels is not None:
        scatter = axis.scatter(z[:, 0], second, c=report.labels, cmap="tab10", s=8, alpha=0.8)
        figure.colorbar(scatter, ax=axis, label="label")
    else:
        axis.scatter(z[:, 0], second, s=8, alpha=0.8)
    axis.set_xlabel("z[0] (DEQ MAP)")
    axis.set_ylabel("z[1] (DEQ MAP)" if z.shape[1] > 1 else "0")
    axis.set_title("Latents of every row under the AutoDEQ-trained model")
    return figure


def plot_map_against_nuts(report):
    """DEQ MAP against the NUTS posterior mean per coordinate, with NUTS sd bars."""
    deq = report.results["AutoDEQ"].point.ravel()
    nuts = report.results["NUTS"].draws
    flat = nuts.reshape(-1, *nuts.shape[2:])
    mean, sd = flat.mean(0).ravel(), flat.std(0, ddof=1).ravel()

    figure, axis = plt.subplots(figsize=(5, 5))
    axis.errorbar(mean, deq, xerr=sd, fmt="o", markersize=3, alpha=0.7, label="coordinate ± NUTS sd")
    low, high = min(mean.min(), deq.min()), max(mean.max(), deq.max())
    axis.plot([low, high], [low, high], color="grey", linewidth=1, label="y = x")
    axis.set_xlabel("NUTS posterior mean of z")
    axis.set_ylabel("DEQ MAP of z")
    axis.set_title("DEQ MAP against NUTS, z | y, θ")
    axis.legend(loc="upper left")
    return figure


def plot_forest(report, n_rows: int = 3):
    """Forest plot of the first ``n_rows`` rows of the subset, every method side by side."""
    rows = list(report.subset_rows[:n_rows])
    table = arviz_adapter.forest_data(report.arviz, rows=rows)
    methods = list(report.arviz)
    entries = list(dict.fromkeys(table["entry"]))
    lower_column, upper_column = [c for c in table.columns if c.startswith("hdi_")][:2]

    figure, axis = plt.subplots(figsize=(7, 0.15 * len(entries) * len(methods) + 1.5))
    colors = plt.get_cmap("tab10")
    for m, method in enumerate(methods):
        part = table[table["method"] == method].set_index("entry").loc[entries]
        positions = np.arange(len(entries)) * (len(methods) + 1) + m
        axis.plot(part["mean"], positions, "o", color=colors(m), label=method, markersize=4)
        if not part["point_estimate"].iloc[0]:
            axis.hlines(positions, part[lower_column], part[upper_column], color=colors(m))
    axis.set_yticks(np.arange(len(entries)) * (len(methods) + 1) + (len(methods) - 1) / 2)
    axis.set_yticklabels(entries)
    axis.invert_yaxis()
    axis.set_xlabel("z (posterior mean or point estimate, 90% HDI)")
    axis.set_title("Forest plot across methods, z | y, θ")
    axis.legend(fontsize="small", loc="best")
    return figure


def plot_residual_traces(report):
    """Relative residual per Newton iteration for every row of the subset (log scale)."""
    history = report.results["AutoDEQ"].extra["residual_history"]
    figure, axis = plt.subplots(figsize=(5.5, 4))
    floor = np.finfo(history.dtype).tiny
    axis.semilogy(np.arange(history.shape[0]), np.maximum(history, floor), color="C0", alpha=0.4)
    axis.set_xlabel("solver iteration")
    axis.set_ylabel("relative residual ||f(z) − z|| / (1 + ||f(z)||)")
    axis.set_title("AutoDEQ fixed-point solve, one line per row")
    return figure


def plot_training_curves(report):
    """Loss per step (negative ELBO per row) of each training run."""
    figure, axis = plt.subplots(figsize=(6, 4))
    for name, losses in report.training_curves.items():
        axis.plot(np.arange(1, len(losses) + 1), losses, label=name)
    axis.set_xlabel("SVI step")
    axis.set_ylabel("loss (negative ELBO per row, nats)")
    axis.set_title("Training curves")
    axis.legend(fontsize="small")
    return figure


def report_figures(report) -> dict:
    """Return every figure the report has data for: name to matplotlib figure."""
    figures = {"latents": plot_latents(report), "training_curves": plot_training_curves(report)}
    if "AutoDEQ" in report.results:
        figures["residual_traces"] = plot_residual_traces(report)
    if "AutoDEQ" in report.results and "NUTS" in report.results:
        figures["map_against_nuts"] = plot_map_against_nuts(report)
    if report.arviz:
        figures["forest"] = plot_forest(report)
    return figures
