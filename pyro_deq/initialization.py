"""Data-based starting values for the loadings and bias of exponential-family PCA.

The bias starts at the canonical parameter of each column's mean, and the
loadings at the leading principal directions of the data mapped through the
canonical link. Both are finite for every valid data set, including columns
that are all zero or all at the upper end of the support. Those columns have
no finite maximum-likelihood bias, so their mean is first moved into the
interior of the support by half an observation (see :func:`initial_bias`).

Example::

    family = pyro_deq.families.get("poisson")
    model = pyro_deq.ExpFamPCA(
        y.shape[1], 2, family=family,
        weight=initial_weight(family, y, 2), bias=initial_bias(family, y),
    )
"""

from __future__ import annotations

import math

import torch

from .families import ExponentialFamily

__all__ = ["degenerate_columns", "degenerate_rows", "initial_bias", "initial_weight"]

# Range of the scaled variable t = y / unit of each supported family, where the
# unit is the Binomial's total count and 1 otherwise. A finite end is where the
# column mean of a degenerate column sits.
_SUPPORT_BOUNDS = {
    "gaussian": (-math.inf, math.inf),
    "bernoulli": (0.0, 1.0),
    "binomial": (0.0, 1.0),
    "continuous_bernoulli": (0.0, 1.0),
    "poisson": (0.0, math.inf),
}

# The clipped column mean lies at least this many observations' worth inside
# each finite end of the support: half a count among the column's observed
# units. It is below the smallest mean a single nonzero count gives (1 / units),
# so it only moves columns whose mean sits on the boundary, and it keeps the
# Poisson log and the logits finite.
HALF_OBSERVATION = 0.5

# Steps of the bisection that inverts the continuous Bernoulli mean. Each halves
# the bracket, whose width is at most about 4 / floor + 2 with floor the clipped
# distance from the boundary, so 200 steps reach float64 resolution for any
# number of rows up to far beyond 1e12.
_BISECTION_STEPS = 200

# Components that the data do not span (rank below n_components) start as
# random directions this fraction of the leading loading's norm. Exactly zero
# loadings are a stationary point of the ELBO that gradient steps cannot leave.
_FILL_RATIO = 0.1


def _check_family(family: ExponentialFamily) -> str:
    """Return the family's registry name, raising for families without a known link."""
    name = getattr(family, "name", None)
    if name not in _SUPPORT_BOUNDS:
        raise NotImplementedError(
            f"data-based initialization supports the families {sorted(_SUPPORT_BOUNDS)}, "
            f"not {family!r}; pass `weight` and `bias` to the model yourself."
        )
    return name


def _units(family: ExponentialFamily, y: torch.Tensor) -> torch.Tensor:
    """Return the unit of each entry, shape ``(N, d)``: the Binomial total count, else 1."""
    if family.name == "binomial":
        count = torch.as_tensor(family.total_count, dtype=y.dtype, device=y.device)
        return count.expand(y.shape)
    return torch.ones_like(y)


def _column_statistics(family, y: torch.Tensor, mask) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Compute the scaled entries, the column means and the observed units per column.

    :returns: ``t`` of shape ``(N, d)`` (``y / unit``, 0 where missing), the raw
        column means of ``t`` of shape ``(d,)`` (0 for a column with no observed
        entry) and the observed units per column, shape ``(d,)``.
    """
    y = y.double()
    observed = torch.ones_like(y, dtype=torch.bool) if mask is None else mask.to(torch.bool)
    units = _units(family, y)

    t = torch.where(observed, y / units, torch.zeros_like(y))
    observed_units = torch.where(observed, units, torch.zeros_like(units)).sum(0)
    totals = torch.where(observed, y, torch.zeros_like(y)).sum(0)
    means = totals / observed_units.clamp(min=1.0)
    return t, means, observed_units


def _clip_to_interior(name: str, means: torch.Tensor, observed_units: torch.Tensor) -> torch.Tensor:
    """Move column means on or past a finite end of the support inside it by half an observation."""
    low, high = _SUPPORT_BOUNDS[name]
    floor = HALF_OBSERVATION / observed_units.clamp(min=1.0)
    if math.isfinite(low):
        means = torch.maximum(means, low + floor)
    if math.isfinite(high):
        means = torch.minimum(means, high - floor)
    return means


def _link(name: str, family, t: torch.Tensor) -> torch.Tensor:
    """Map scaled means ``t`` inside the support to canonical parameters (float64)."""
    if name == "gaussian":
        return t
    if name == "poisson":
        return torch.log(t)
    if name in ("bernoulli", "binomial"):
        return torch.logit(t)
    return _invert_mean(family, t)


def _invert_mean(family, t: torch.Tensor) -> torch.Tensor:
    """Solve ``A'(eta) = t`` by bisection; ``A'`` increases because ``A`` is convex.

    For the continuous Bernoulli, ``A'(eta)`` behaves like ``-1/eta`` as
    ``eta -> -inf`` and like ``1 + 1/eta`` as ``eta -> inf``, so for ``t`` in
    ``(f, 1 - f)`` the root lies in ``[-2/f - 1, 2/f + 1]``.
    """
    distance = torch.minimum(t, 1 - t)
    low = -2.0 / distance - 1.0
    high = 2.0 / distance + 1.0
    for _ in range(_BISECTION_STEPS):
        middle = 0.5 * (low + high)
        below = family.mean(middle) < t
        low = torch.where(below, middle, low)
        high = torch.where(below, high, middle)
    return 0.5 * (low + high)


def initial_bias(family: ExponentialFamily, y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    r"""Compute the bias at the canonical link of each column's mean.

    For a column with mean :math:`\bar y_j` the bias is the :math:`\eta` with
    :math:`\mathbb{E}[y \mid \eta] = \bar y_j`, which is the maximum-likelihood
    bias when the loadings are zero. A column whose mean sits on a finite end of
    the support (all-zero counts, a Bernoulli column of all zeros or all ones, a
    Binomial column all at ``total_count``) has no finite maximum. Its mean is
    moved into the interior by half an observation, ``0.5 / N_j`` for ``N_j``
    observed entries (``0.5 / (N_j n)`` in proportion for a Binomial of ``n``
    trials), before the link is applied.

    :param family: one of the registered families ``"gaussian"``, ``"bernoulli"``,
        ``"binomial"``, ``"continuous_bernoulli"`` or ``"poisson"``.
    :param torch.Tensor y: data already in the family's support, shape ``(N, d)``,
        for example as validated by :meth:`~pyro_deq.ExpFamPCA.prepare`.
    :param mask: bool, shape ``(N, d)``; ``False`` leaves an entry out of the means.
    :returns: finite bias of shape ``(d,)`` in the dtype of ``y``.
    :raises NotImplementedError: for a family outside the list above.
    """
    name = _check_family(family)
    _, means, observed_units = _column_statistics(family, y, mask)
    means = _clip_to_interior(name, means, observed_units)
    return _link(name, family, means).to(y.dtype)


def degenerate_columns(family: ExponentialFamily, y: torch.Tensor, mask: torch.Tensor | None = None) -> list[int]:
    """Find the columns whose bias has no finite maximum-likelihood estimate.

    These are the columns whose every observed entry sits at one finite end of
    the support: all-zero counts (Poisson, Binomial), Bernoulli columns of all
    zeros or all ones, Binomial columns all at ``total_count``, continuous
    Bernoulli columns of all zeros or all ones; and columns with no observed
    entry, where the likelihood does not depend on the bias at all.

    :param family: a family supported by :func:`initial_bias`.
    :param torch.Tensor y: data in the family's support, shape ``(N, d)``.
    :param mask: bool, shape ``(N, d)``; ``False`` marks a missing entry.
    :returns: the column indices, counted from 0, in increasing order.
    :raises NotImplementedError: for a family that :func:`initial_bias` does not support.
    """
    name = _check_family(family)
    _, means, observed_units = _column_statistics(family, y, mask)
    low, high = _SUPPORT_BOUNDS[name]
    degenerate = (observed_units == 0) | (means <= low) | (means >= high)
    return degenerate.nonzero().flatten().tolist()


def degenerate_rows(family: ExponentialFamily, y: torch.Tensor, mask: torch.Tensor | None = None) -> list[int]:
    """Find the rows whose every observed entry sits at one finite end of the support.

    Examples are an all-zero row of counts, or a binary row of all zeros or all
    ones. Rows with no observed entry count too. Such a row pulls its latents
    towards the direction that sends every canonical parameter to one end,
    held back only by the prior, so its MAP mostly reflects the prior and the
    loadings, not the data. The fit stays finite, but these rows are usually
    empty samples worth removing.

    :param family: a family supported by :func:`initial_bias`.
    :param torch.Tensor y: data in the family's support, shape ``(N, d)``.
    :param mask: bool, shape ``(N, d)``; ``False`` marks a missing entry.
    :returns: the row indices, counted from 0, in increasing order.
    :raises NotImplementedError: for a family that :func:`initial_bias` does not support.
    """
    name = _check_family(family)
    low, high = _SUPPORT_BOUNDS[name]
    t = y.double() / _units(family, y.double())
    observed = torch.ones_like(t, dtype=torch.bool) if mask is None else mask.to(torch.bool)
    at_low = torch.where(observed, t <= low, torch.ones_like(observed)).all(1)
    at_high = torch.where(observed, t >= high, torch.ones_like(observed)).all(1)
    return (at_low | at_high).nonzero().flatten().tolist()


def _linked_data(name: str, family, y: torch.Tensor, mask) -> torch.Tensor:
    """Map the data through the link after shrinking each entry halfway to its column mean.

    The clipped column mean lies in the open interior of the support and each
    entry in the closed support, so their average lies in the open interior
    and its link is finite. Missing entries get the column mean.

    :returns: float64 tensor of shape ``(N, d)``.
    """
    t, means, observed_units = _column_statistics(family, y, mask)
    means = _clip_to_interior(name, means, observed_units)
    shrunk = 0.5 * (t + means)
    if mask is not None:
        shrunk = torch.where(mask.to(torch.bool), shrunk, means.expand_as(shrunk))
    return _link(name, family, shrunk)


def _principal_directions(centred: torch.Tensor, n_components: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the leading right singular vectors ``(d, r)`` and singular values ``(r,)``, ``r <= k``."""
    _, singular_values, right = torch.linalg.svd(centred, full_matrices=False)
    rank = min(n_components, singular_values.numel())
    return right[:rank].T, singular_values[:rank]


def initial_weight(
    family: ExponentialFamily,
    y: torch.Tensor,
    n_components: int,
    mask: torch.Tensor | None = None,
    scale: float = 0.1,
) -> torch.Tensor:
    r"""Compute loadings from a truncated SVD of the centred, linked data.

    Each entry is shrunk halfway towards its column's clipped mean (see
    :func:`initial_bias`) and mapped through the canonical link, so the matrix
    is finite by construction. After centring each column, column ``i`` of the
    result is :math:`\text{scale} \cdot (s_i / s_1) v_i`, with :math:`v_i` the
    ``i``-th right singular vector and :math:`s_i` its singular value: the
    loadings point along the principal directions, ordered by importance, and
    their spectral norm is ``scale``. Starting small keeps the canonical
    parameter near the bias, where the Poisson rate cannot overflow. Components
    beyond the rank of the data start as random directions of norm
    ``0.1 * scale``, drawn from torch's global generator (seed it with
    :func:`pyro.set_rng_seed`).

    The SVD is exact and costs :math:`O(N d \min(N, d))`.

    :param family: a family supported by :func:`initial_bias`.
    :param torch.Tensor y: data in the family's support, shape ``(N, d)``.
    :param int n_components: ``k``, the number of columns of the result.
    :param mask: bool, shape ``(N, d)``; missing entries count as their column mean.
    :param float scale: spectral norm of the result, a positive number.
    :returns: finite loadings of shape ``(d, k)`` in the dtype of ``y``.
    :raises ValueError: if ``n_components`` or ``scale`` is not positive.
    :raises NotImplementedError: for a family that :func:`initial_bias` does not support.
    """
    if isinstance(n_components, bool) or not isinstance(n_components, int) or n_components < 1:
        raise ValueError(f"`n_components` must be a positive integer, got {n_components!r}.")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"`scale` must be a finite positive number, got {scale!r}.")
    name = _check_family(family)

    linked = _linked_data(name, family, y, mask)
    centred = linked - linked.mean(0)
    directions, singular_values = _principal_directions(centred, n_components)

    # Singular values at rounding level belong to directions the data do not span.
    tolerance = torch.finfo(torch.float64).eps * max(centred.shape) * singular_values[:1].sum()
    spanned = int((singular_values > tolerance).sum()) if float(singular_values[:1].sum()) > 0 else 0
    weight = torch.empty(y.shape[1], n_components, dtype=torch.float64)
    weight[:, :spanned] = scale * directions[:, :spanned] * (singular_values[:spanned] / singular_values[0])

    filler = torch.randn(y.shape[1], n_components - spanned, dtype=torch.float64)
    weight[:, spanned:] = _FILL_RATIO * scale * filler / filler.norm(dim=0)
    return weight.to(y.dtype)
