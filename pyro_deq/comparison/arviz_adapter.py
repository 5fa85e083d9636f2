"""Turn the draws of every inference method into ArviZ data.

With ArviZ 0.x the result is an ``arviz.InferenceData``. ArviZ 1.0 and later
(which need Python 3.12 or later) no longer have ``InferenceData``, so there the
result is an ``xarray.DataTree`` built by ``arviz_base.from_dict``. Both have the groups
``posterior`` and, when given, ``sample_stats``, ``log_likelihood`` and
``observed_data``.

A point estimate (the DEQ MAP, AutoDelta) is stored as one chain of one draw
and labelled by the posterior attribute ``point_estimate = 1``. Its standard
deviation, interval, R-hat, ESS and LOO are not reported, because a single
point has no spread.

This module depends on NumPy, pandas, xarray and ArviZ only: it imports no
torch and nothing else of ``pyro_deq``, so it loads in an environment without
torch.
"""

from __future__ import annotations

import importlib.metadata
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import xarray as xr

__all__ = [
    "ARVIZ_VERSION",
    "forest_data",
    "is_point_estimate",
    "load_netcdf",
    "loo",
    "save_netcdf",
    "summarize",
    "to_arviz",
]

ARVIZ_VERSION = importlib.metadata.version("arviz")
_NEW_ARVIZ = int(ARVIZ_VERSION.split(".")[0]) >= 1

if _NEW_ARVIZ:
    import arviz_base
    import arviz_stats
else:
    # ArviZ 0.23 announces its 1.0 refactor with a FutureWarning at import time.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"\s*ArviZ is undergoing", category=FutureWarning)
        import arviz as _az

SAMPLE_DIMS = ("chain", "draw")

# Dimension names used when the caller gives none: latents and data are
# (row, ...) so the rows line up across groups and methods.
_DEFAULT_DIMS = {"z": ("row", "component"), "y": ("row", "feature")}

_POINT_ESTIMATE_NOTE = (
    "{method} is a point estimate (one chain of one draw), so sd, interval, "
    "R-hat and ESS are not defined and are left NaN."
)
_ONE_CHAIN_NOTE = "R-hat and ESS need at least 2 chains but {method} has 1, so they are left NaN."


def to_arviz(
    draws: Mapping[str, np.ndarray],
    *,
    method: str,
    point_estimate: bool = False,
    sample_stats: Mapping[str, np.ndarray] | None = None,
    coords: Mapping[str, Sequence] | None = None,
    dims: Mapping[str, Sequence[str]] | None = None,
    observed: Mapping[str, np.ndarray] | None = None,
    log_likelihood: Mapping[str, np.ndarray] | None = None,
):
    """Convert one method's draws into ArviZ data.

    Parameters
    ----------
    draws : dict of str to array
        Variable name to draws of shape ``(chain, draw, *event)``. A point
        estimate may be given as ``(*event)`` or ``(1, 1, *event)``.
    method : str
        Name of the method, stored as the posterior attribute ``method``.
    point_estimate : bool, default False
        Whether ``draws`` is a single point (MAP, AutoDelta). It is stored as
        the posterior attribute ``point_estimate``, 1 or 0, because netCDF
        attributes cannot be booleans.
    sample_stats : dict of str to array, optional
        Per-draw statistics of shape ``(chain, draw, *event)``, or ``(*event)``
        for a point estimate (per-row convergence flags, iteration counts).
    coords : dict of str to sequence, optional
        Coordinate values of each dimension.
    dims : dict of str to sequence of str, optional
        Event dimension names of each variable. ``"z"`` of shape ``(N, k)``
        defaults to ``("row", "component")`` and ``"y"`` of shape ``(N, d)`` to
        ``("row", "feature")``.
    observed : dict of str to array, optional
        Observed data without sample dimensions, such as ``y`` of shape ``(N, d)``.
    log_likelihood : dict of str to array, optional
        Pointwise log-likelihood of shape ``(chain, draw, *event)``, for :func:`loo`.

    Returns
    -------
    arviz.InferenceData or xarray.DataTree
        ``InferenceData`` with ArviZ 0.x, ``DataTree`` with ArviZ 1.0 or later.

    Warns
    -----
    UserWarning
        When sampled draws have one axis fewer than ``(chain, draw, *event)``
        for their known event dimensions, and are read as a single chain.
    """
    dims = _default_dims(draws, observed, dims)
    groups = {"posterior": _add_sample_axes(draws, dims, point_estimate)}
    if sample_stats:
        groups["sample_stats"] = _add_sample_axes(sample_stats, dims, point_estimate)
    if log_likelihood:
        # Pointwise log-likelihoods may sum over features, so the event dims of
        # the observed variable of the same name do not apply to them.
        groups["log_likelihood"] = _add_sample_axes(log_likelihood, {}, point_estimate)
    if observed:
        groups["observed_data"] = {name: np.asarray(value) for name, value in observed.items()}

    data = _from_dict(groups, coords=coords, dims=dims)

    posterior_attrs = data["posterior"].attrs
    posterior_attrs["method"] = str(method)
    posterior_attrs["point_estimate"] = int(bool(point_estimate))
    return data


def is_point_estimate(data) -> bool:
    """Return whether ``data`` contains a point estimate rather than draws.

    The posterior attribute ``point_estimate`` decides. Data without it (made
    elsewhere) counts as a point estimate when it has one chain of one draw.
    """
    posterior = _posterior(data)
    flag = posterior.attrs.get("point_estimate")
    if flag is None:
        return posterior.sizes["chain"] * posterior.sizes["draw"] == 1
    if isinstance(flag, str):
        return flag.strip().lower() in ("1", "true")
    return bool(int(flag))


def summarize(data, var_names: Sequence[str] | None = None, hdi_prob: float = 0.9) -> pd.DataFrame:
    """Tabulate mean, sd, highest-density interval, R-hat and ESS per scalar entry.

    Parameters
    ----------
    data : arviz.InferenceData or xarray.DataTree
        Output of :func:`to_arviz`.
    var_names : sequence of str, optional
        Posterior variables to include, all by default.
    hdi_prob : float, default 0.9
        Probability mass of the highest-density interval, in (0, 1).

    Returns
    -------
    pandas.DataFrame
        One row per scalar entry, labelled ``"z[0, 1]"`` by coordinate values,
        with columns ``mean``, ``sd``, ``hdi_<lower>%``, ``hdi_<upper>%``,
        ``ess_bulk``, ``ess_tail`` and ``r_hat``. Columns that are undefined for
        the data are NaN, and ``DataFrame.attrs["note"]`` gives the reason: sd and
        interval for point estimates, R-hat and ESS for fewer than 2 chains.
        ``DataFrame.attrs`` also contains ``method`` and ``point_estimate``.

    Raises
    ------
    ValueError
        If ``hdi_prob`` is not in (0, 1).
    """
    if not 0 < hdi_prob < 1:
        raise ValueError(f"`hdi_prob` must lie strictly between 0 and 1, but got {hdi_prob!r}.")

    posterior = _posterior(data)
    if var_names is not None:
        posterior = posterior[list(var_names)]
    point = is_point_estimate(data)
    method = posterior.attrs.get("method", "")

    table = _stats_table(posterior, hdi_prob, point)
    note = ""
    if point:
        note = _POINT_ESTIMATE_NOTE.format(method=method or "this method")
    elif posterior.sizes["chain"] < 2:
        note = _ONE_CHAIN_NOTE.format(method=method or "this method")
    diagnostics = _diagnostics_table(posterior) if not note else None

    for column in ("ess_bulk", "ess_tail", "r_hat"):
        table[column] = np.nan if diagnostics is None else diagnostics[column]
    table.attrs.update(method=method, point_estimate=point, note=note)
    return table


def forest_data(
    datas: Mapping[str, object],
    rows: Sequence,
    var_name: str = "z",
    row_dim: str = "row",
    hdi_prob: float = 0.9,
) -> pd.DataFrame:
    """Collect the same rows of one variable from several methods, for a forest plot.

    Parameters
    ----------
    datas : dict of str to ArviZ data
        Method name to output of :func:`to_arviz`.
    rows : sequence
        Coordinate values along ``row_dim`` to keep.
    var_name : str, default "z"
        The posterior variable to compare.
    row_dim : str, default "row"
        The dimension that ``rows`` selects on.
    hdi_prob : float, default 0.9
        Probability mass of the intervals.

    Returns
    -------
    pandas.DataFrame
        The :func:`summarize` columns for the selected entries of every method,
        plus ``method``, ``entry`` (the row label, such as ``"z[3, 0]"``) and
        ``point_estimate``, in the order of ``datas``.
    """
    tables = []
    for method, data in datas.items():
        subset = _posterior(data)[[var_name]].sel({row_dim: list(rows)})
        table = _stats_table(subset, hdi_prob, is_point_estimate(data))
        table.insert(0, "entry", table.index)
        table.insert(0, "method", method)
        table["point_estimate"] = is_point_estimate(data)
        tables.append(table)
    return pd.concat(tables, ignore_index=True)


def loo(data, **kwargs):
    """Compute PSIS-LOO with ArviZ, rejecting point estimates.

    ArviZ reports ``p_loo = 0`` without a warning for identical draws, so a
    point estimate would look like a perfect fit. ``kwargs`` go to
    ``arviz.loo`` (0.x) or ``arviz_stats.loo`` (1.0 or later), and the result
    is theirs: ``ELPDData`` with ``elpd_loo`` and ``p_loo`` entries in 0.x,
    ``ELPDDataLOO`` with ``elpd`` and ``p`` fields in 1.0 or later.

    Raises
    ------
    ValueError
        If ``data`` is a point estimate or has no ``log_likelihood`` group.
    """
    if is_point_estimate(data):
        method = _posterior(data).attrs.get("method", "this method")
        raise ValueError(
            f"LOO is not defined for the point estimate of {method}: it needs draws "
            f"from a posterior. Compare point estimates by held-out log-likelihood instead."
        )
    if "log_likelihood" not in _group_names(data):
        raise ValueError(
            "LOO needs a `log_likelihood` group; pass log_likelihood= to to_arviz."
        )
    if _NEW_ARVIZ:
        return arviz_stats.loo(data, **kwargs)
    return _az.loo(data, **kwargs)


def save_netcdf(data, path: str | os.PathLike) -> str:
    """Write ``data`` to a netCDF file, replacing ``path`` only once the file is complete.

    The data is first written to a temporary file in the same folder, which is
    then renamed to ``path``, so an interrupted write leaves no partial file.

    Returns
    -------
    str
        The path written.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(suffix=".nc.tmp", dir=folder)
    os.close(handle)

    try:
        # mkstemp creates the file readable by its owner only. Like the rest of
        # the report, it gets the permissions of a new file under the umask.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        data.to_netcdf(temporary)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    return path


def load_netcdf(path: str | os.PathLike):
    """Read a file written by :func:`save_netcdf` as ``InferenceData`` or ``DataTree``."""
    if _NEW_ARVIZ:
        return xr.load_datatree(os.fspath(path))
    return _az.from_netcdf(os.fspath(path))


def _from_dict(groups: dict, coords, dims):
    """Build ``InferenceData`` (ArviZ 0.x) or ``DataTree`` (ArviZ 1.0 or later)."""
    if _NEW_ARVIZ:
        return arviz_base.from_dict(groups, coords=coords, dims=dims)
    return _az.from_dict(**groups, coords=coords, dims=dims)


def _default_dims(draws, observed, dims) -> dict:
    """Add the default dimension names of ``z`` and ``y`` to the caller's ``dims``."""
    # Lists, because ArviZ 0.x concatenates them with lists of its own.
    merged = {name: list(value) for name, value in (dims or {}).items()}
    arrays = {**(observed or {}), **draws}
    for name, default in _DEFAULT_DIMS.items():
        if name in arrays and name not in merged:
            merged[name] = list(default)
    return merged


def _add_sample_axes(arrays: Mapping, dims: dict, point_estimate: bool) -> dict:
    """Return the arrays with shape ``(chain, draw, *event)``."""
    return {
        name: _with_sample_axes(name, np.asarray(value), dims.get(name), point_estimate)
        for name, value in arrays.items()
    }


def _with_sample_axes(name: str, array: np.ndarray, event_dims, point_estimate: bool) -> np.ndarray:
    """Give one array its ``(chain, draw)`` axes, checking its shape."""
    event_ndim = None if event_dims is None else len(event_dims)

    if point_estimate:
        has_sample_axes = array.ndim >= 2 and array.shape[:2] == (1, 1)
        if event_ndim is not None:
            has_sample_axes = has_sample_axes and array.ndim == event_ndim + 2
            if not has_sample_axes and array.ndim != event_ndim:
                raise ValueError(
                    f"Point estimate `{name}` must have shape (*event) or (1, 1, *event) "
                    f"with {event_ndim} event dimensions {tuple(event_dims)}, but got shape "
                    f"{array.shape}. Pass matching `dims` or reshape the array."
                )
        return array if has_sample_axes else array[None, None]

    if event_ndim is not None and array.ndim == event_ndim + 1:
        warnings.warn(
            f"Draws `{name}` have shape {array.shape}, one axis fewer than (chain, draw) "
            f"plus the event dimensions {tuple(event_dims)}; reading them as 1 chain of "
            f"{array.shape[0]} draws.",
            UserWarning,
            stacklevel=4,
        )
        return array[None]
    if array.ndim < 2 or (event_ndim is not None and array.ndim != event_ndim + 2):
        raise ValueError(
            f"Draws `{name}` must have shape (chain, draw, *event), but got shape "
            f"{array.shape}. Add a chain axis with array[None], or pass "
            f"point_estimate=True for a single point."
        )
    return array


def _posterior(data) -> xr.Dataset:
    """Return the posterior group of ``InferenceData`` or ``DataTree`` as a Dataset."""
    group = data["posterior"]
    if isinstance(group, xr.Dataset):
        return group
    return group.to_dataset()


def _group_names(data) -> list[str]:
    """Return the group names of ``InferenceData`` or ``DataTree``."""
    if hasattr(data, "children"):
        return list(data.children)
    return list(data.groups())


def _entry_labels(name: str, array: xr.DataArray) -> list[str]:
    """Label each scalar entry of ``array`` as ``name[c1, c2]`` by coordinate values."""
    event_dims = [dim for dim in array.dims if dim not in SAMPLE_DIMS]
    if not event_dims:
        return [name]
    values = [array[dim].values for dim in event_dims]
    grid = np.meshgrid(*values, indexing="ij")
    flat = zip(*(axis.ravel() for axis in grid))
    return [f"{name}[{', '.join(str(value) for value in entry)}]" for entry in flat]


def _flatten_draws(array: xr.DataArray) -> np.ndarray:
    """Reshape a variable to ``(chain * draw, n_entries)``, events in C order."""
    event_dims = [dim for dim in array.dims if dim not in SAMPLE_DIMS]
    ordered = array.transpose(*SAMPLE_DIMS, *event_dims).values
    return ordered.reshape(ordered.shape[0] * ordered.shape[1], -1)


def _hdi(samples: np.ndarray, prob: float) -> tuple[np.ndarray, np.ndarray]:
    """Return the narrowest interval containing ``prob`` of the samples, per column.

    ``samples`` has shape ``(n_samples, n_entries)``, and both bounds have
    shape ``(n_entries,)``.
    """
    ordered = np.sort(samples, axis=0)
    n_samples = ordered.shape[0]
    span = min(int(np.floor(prob * n_samples)), n_samples - 1)

    widths = ordered[span:] - ordered[: n_samples - span]
    start = np.argmin(widths, axis=0)
    columns = np.arange(ordered.shape[1])
    return ordered[start, columns], ordered[start + span, columns]


def _interval_columns(prob: float) -> tuple[str, str]:
    """Name the interval bounds as ArviZ 0.x does, such as ``hdi_5%`` and ``hdi_95%``."""
    tail = 100 * (1 - prob) / 2
    return f"hdi_{tail:g}%", f"hdi_{100 - tail:g}%"


def _stats_table(posterior: xr.Dataset, prob: float, point: bool) -> pd.DataFrame:
    """Tabulate mean, sd and interval per scalar entry of every variable."""
    lower_name, upper_name = _interval_columns(prob)
    parts = []
    for name, array in posterior.data_vars.items():
        samples = _flatten_draws(array)
        part = pd.DataFrame(index=_entry_labels(name, array))
        part["mean"] = samples.mean(axis=0)

        if point or samples.shape[0] < 2:
            part["sd"] = part[lower_name] = part[upper_name] = np.nan
        else:
            lower, upper = _hdi(samples, prob)
            part["sd"] = samples.std(axis=0, ddof=1)
            part[lower_name], part[upper_name] = lower, upper
        parts.append(part)
    return pd.concat(parts)


def _diagnostics_table(posterior: xr.Dataset) -> pd.DataFrame:
    """Tabulate bulk ESS, tail ESS and rank-normalized R-hat per scalar entry."""
    if _NEW_ARVIZ:
        ess_bulk = arviz_stats.ess(posterior, method="bulk")
        ess_tail = arviz_stats.ess(posterior, method="tail")
        r_hat = arviz_stats.rhat(posterior)
    else:
        ess_bulk = _az.ess(posterior, method="bulk")
        ess_tail = _az.ess(posterior, method="tail")
        r_hat = _az.rhat(posterior)

    columns = {"ess_bulk": ess_bulk, "ess_tail": ess_tail, "r_hat": r_hat}
    table = {}
    for column, result in columns.items():
        table[column] = np.concatenate(
            [np.ravel(result[name].transpose(*_event_dims(posterior[name])).values)
             for name in posterior.data_vars]
        )
    labels = [label for name, array in posterior.data_vars.items()
              for label in _entry_labels(name, array)]
    return pd.DataFrame(table, index=labels)


def _event_dims(array: xr.DataArray) -> list[str]:
    """Return the dimensions of ``array`` other than ``chain`` and ``draw``."""
    return [dim for dim in array.dims if dim not in SAMPLE_DIMS]
