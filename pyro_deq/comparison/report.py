"""The comparison report: tables, ArviZ data and the files written by :meth:`ComparisonReport.save`."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .._directories import apply_umask
from . import arviz_adapter

__all__ = ["ComparisonReport"]


def _markdown_table(frame: pd.DataFrame) -> str:
    """Render ``frame`` as a GitHub markdown table without optional dependencies."""
    frame = frame.reset_index()
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    lines = [header, rule]
    for _, row in frame.iterrows():
        cells = []
        for value in row:
            if isinstance(value, float):
                cells.append("–" if np.isnan(value) else f"{value:.4g}")
            else:
                cells.append(str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dataclass
class ComparisonReport:
    """Result of :func:`pyro_deq.compare`.

    :ivar pandas.DataFrame conditional: one row per method, ``z | y, θ`` with ``θ`` fixed.
    :ivar joint: rotation-invariant comparison of jointly trained models, or ``None``.
    :ivar dict arviz: method name to ArviZ data (InferenceData or DataTree).
    :ivar dict nuts_diagnostics: R-hat, ESS and divergences of the NUTS reference.
    :ivar dict results: method name to :class:`~pyro_deq.comparison.methods.MethodResult`.
    :ivar dict training_curves: training name to its loss per step.
    :ivar np.ndarray latents: DEQ MAP of every row under the trained model, shape ``(N, k)``.
    :ivar labels: row labels, shape ``(N,)``, or ``None``.
    :ivar np.ndarray subset_rows: rows of the conditional comparison, shape ``(n,)``.
    :ivar dict parameters: the fixed ``θ`` of the conditional comparison,
        ``"weight"`` ``(d, k)`` and ``"bias"`` ``(d,)``.
    :ivar dict metadata: data set, sizes, seed and timing.
    """

    conditional: pd.DataFrame
    joint: pd.DataFrame | None
    arviz: dict
    nuts_diagnostics: dict
    results: dict
    training_curves: dict
    latents: np.ndarray
    labels: np.ndarray | None
    subset_rows: np.ndarray
    parameters: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)

    def to_markdown(self) -> str:
        """Return the tables as markdown, each headed by what it compares."""
        meta = self.metadata
        parts = [
            f"# pyro-deq comparison: {meta.get('dataset')}",
            "",
            f"{meta.get('n_rows')} rows × {meta.get('n_features')} features, family {meta.get('family')}, "
            f"k = {meta.get('n_components')}, nonlinearity {meta.get('nonlinearity')}, seed {meta.get('seed')}"
            f"{' (quick sizes)' if meta.get('quick') else ''}; total time {meta.get('seconds', 0):.1f} s "
            f"on {meta.get('torch_threads')} torch threads.",
            "",
            f"## Conditional on θ (AutoDEQ-trained parameters), z | y, θ on {meta.get('subset')} rows",
            "",
            "All methods target the same unimodal posterior, so they are compared row by row. "
            "Errors are in units of the NUTS posterior sd; coverage is the fraction of NUTS draws "
            "inside the method's central 90% interval (0.9 is calibrated). Point estimates have "
            "no sd or interval (–).",
            "",
            _markdown_table(self.conditional),
        ]
        if self.nuts_diagnostics:
            diag = self.nuts_diagnostics
            parts += [
                "",
                f"NUTS reference: {diag['chains']} chains × {diag['draws per chain']} draws, "
                f"max R-hat {diag['max R-hat']:.3f}, min bulk ESS {diag['min bulk ESS']:.0f}, "
                f"min tail ESS {diag['min tail ESS']:.0f}, {diag['divergences']} divergences.",
            ]
        if self.joint is not None:
            parts += [
                "",
                "## Jointly trained, rotation-invariant quantities only",
                "",
                "Latents are identified only up to rotation, so the models are compared through the "
                "principal angles between loading subspaces, W Wᵀ, and held-out fit (Laplace "
                "log-likelihood per row and reconstruction error of E[y | z*]). Training with AutoDEQ "
                "is joint MAP over z and θ, which is known to inflate the loadings: the norm of W Wᵀ "
                "shows it, and the Laplace objective, which penalises log det H, counters it.",
                "",
                _markdown_table(self.joint),
            ]
        return "\n".join(parts) + "\n"

    def __str__(self) -> str:
        return self.to_markdown()

    def save(self, directory: str | os.PathLike, figures: dict | None = None, overwrite: bool = False) -> str:
        """Write ``report.md``, ``conditional.csv``, ``joint.csv``, ``metadata.json``,
        ``arviz/<method>.nc`` and each figure as PNG into ``directory``.

        Files are written into a temporary directory beside ``directory`` and
        moved into place at the end, so a failure leaves nothing behind.

        :param figures: name to matplotlib figure, for example from
            :func:`pyro_deq.plotting.report_figures`.
        :param bool overwrite: replace an existing ``directory``.
        :returns: the directory path.
        :raises FileExistsError: when ``directory`` exists and ``overwrite`` is false.
        """
        directory = os.path.abspath(os.fspath(directory))
        if os.path.exists(directory) and not overwrite:
            raise FileExistsError(f"{directory} exists; pass overwrite=True or choose another directory.")
        parent = os.path.dirname(directory)
        os.makedirs(parent, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=".pyro-deq-", dir=parent)
        try:
            apply_umask(staging)
            self._write(staging, figures or {})
            if os.path.exists(directory):
                shutil.rmtree(directory)
            os.replace(staging, directory)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return directory

    def _write(self, directory: str, figures: dict) -> None:
        self.conditional.to_csv(os.path.join(directory, "conditional.csv"))
        if self.joint is not None:
            self.joint.to_csv(os.path.join(directory, "joint.csv"))
        os.makedirs(os.path.join(directory, "arviz"))
        for name, data in self.arviz.items():
            arviz_adapter.save_netcdf(data, os.path.join(directory, "arviz", f"{name}.nc"))
        with open(os.path.join(directory, "metadata.json"), "w") as handle:
            json.dump({**self.metadata, "nuts": self.nuts_diagnostics}, handle, indent=2, default=str)

        images = []
        for name, figure in figures.items():
            filename = f"{name}.png"
            figure.savefig(os.path.join(directory, filename), dpi=110, bbox_inches="tight")
            images.append(f"![{name.replace('_', ' ')}]({filename})")
        markdown = self.to_markdown()
        if images:
            markdown += "\n## Figures\n\n" + "\n\n".join(images) + "\n"
        with open(os.path.join(directory, "report.md"), "w") as handle:
            handle.write(markdown)
