"""Synthetic exponential-family PCA data with known latents and loadings."""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from .base import Dataset

__all__ = ["make_synthetic"]

# The three shapes in the first two latent coordinates: two discs of radius 1
# side by side and a square of side 2 above them, so the clusters do not overlap.
_DISC_CENTERS = ((-1.5, -0.75), (1.5, -0.75))
_DISC_RADIUS = 1.0
_SQUARE_CENTER = (0.0, 1.5)
_SQUARE_HALF_SIDE = 1.0


def make_synthetic(
    n_samples: int = 600,
    n_features: int = 20,
    n_components: int = 2,
    family="bernoulli",
    family_params: dict | None = None,
    *,
    extra_scale: float = 0.1,
    weight_scale: float = 0.7,
    bias_scale: float = 0.5,
    seed: int = 0,
) -> Dataset:
    """Sample data from an exponential-family PCA model with clustered latents.

    The latents ``z`` are drawn uniformly inside one of three planar shapes (two
    discs and a square), the same number of rows per shape up to one. For
    ``n_components > 2`` the extra coordinates are ``Normal(0, extra_scale)``.
    The natural parameter is ``eta = z W^T + b`` and ``y`` is drawn from the
    family's distribution at ``eta``.

    Parameters
    ----------
    n_samples : int, default 600
        Number of rows ``N``.
    n_features : int, default 20
        Number of observed features ``d``.
    n_components : int, default 2
        Latent dimension ``k``, at least 2.
    family : str or ExponentialFamily, default "bernoulli"
        Registry name or family object of ``pyro_deq.families``.
    family_params : dict, optional
        Keyword arguments for ``pyro_deq.families.get`` when ``family`` is a name,
        such as ``{"total_count": 16}`` for ``"binomial"``.
    extra_scale : float, default 0.1
        Standard deviation of latent coordinates beyond the first two.
    weight_scale : float, default 0.7
        Standard deviation of the entries of ``W``. With the latents inside
        ``[-2.5, 2.5]`` it keeps most ``|eta|`` below about 4, so Bernoulli
        probabilities are not saturated and Poisson means stay moderate.
    bias_scale : float, default 0.5
        Standard deviation of the entries of ``b``.
    seed : int, default 0
        Seed of every random draw. The global torch random state is left unchanged.

    Returns
    -------
    Dataset
        ``data`` is a ``float32`` tensor ``y`` of shape ``(N, d)``, ``target`` the
        shape label (0 and 1 for the discs, 2 for the square) of shape ``(N,)``,
        and ``truth`` contains ``"latent"`` ``(N, k)``, ``"weight"`` ``(d, k)``,
        ``"bias"`` ``(d,)`` and ``"eta"`` ``(N, d)``.

    Raises
    ------
    ValueError
        If a size is not a positive integer, ``n_components < 2``, a scale is
        negative, or ``family`` is not a registered family.
    """
    _check_count("n_samples", n_samples, minimum=1)
    _check_count("n_features", n_features, minimum=1)
    _check_count("n_components", n_components, minimum=2)
    for name, value in (("extra_scale", extra_scale), ("weight_scale", weight_scale),
                        ("bias_scale", bias_scale)):
        _check_scale(name, value)
    family_obj = _get_family(family, family_params or {})

    generator = torch.Generator().manual_seed(seed)
    labels, latent = _sample_latents(n_samples, n_components, extra_scale, generator)
    weight = weight_scale * torch.randn(n_features, n_components, generator=generator)
    bias = bias_scale * torch.randn(n_features, generator=generator)
    eta = latent @ weight.T + bias

    # torch distributions sample from the global generator, so seed it inside a
    # fork from the same stream and restore the caller's state afterwards.
    sampling_seed = int(torch.randint(2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(sampling_seed)
        y = family_obj.distribution(eta).sample().to(torch.float32)

    family_name = family if isinstance(family, str) else family_obj.name
    return Dataset(
        data=y,
        target=labels.numpy(),
        feature_names=[f"feature_{j}" for j in range(n_features)],
        row_names=None,
        family=family_name,
        family_params=dict(family_params or {}),
        description=(
            f"Synthetic {family_name} PCA data, seed {seed}: {n_samples} rows, "
            f"{n_features} features, {n_components} latent dimensions with latents "
            f"in two discs and a square (labels 0, 1, 2)."
        ),
        truth={"latent": latent, "weight": weight, "bias": bias, "eta": eta},
    )


def _sample_latents(n_samples, n_components, extra_scale, generator):
    """Draw shape labels ``(N,)`` and latents ``(N, k)``, rows in label order."""
    counts = [n_samples // 3 + (i < n_samples % 3) for i in range(3)]
    labels = torch.repeat_interleave(torch.arange(3), torch.tensor(counts))

    # Uniform in a disc: the radius is R sqrt(u), because area grows as r^2.
    planar = torch.empty(n_samples, 2)
    for label, center in enumerate(_DISC_CENTERS):
        rows = labels == label
        radius = _DISC_RADIUS * torch.rand(counts[label], generator=generator).sqrt()
        angle = 2 * math.pi * torch.rand(counts[label], generator=generator)
        planar[rows] = torch.tensor(center) + radius[:, None] * torch.stack(
            [angle.cos(), angle.sin()], dim=-1
        )

    square_offsets = 2 * torch.rand(counts[2], 2, generator=generator) - 1
    planar[labels == 2] = torch.tensor(_SQUARE_CENTER) + _SQUARE_HALF_SIDE * square_offsets

    extra = extra_scale * torch.randn(n_samples, n_components - 2, generator=generator)
    return labels, torch.cat([planar, extra], dim=-1)


def _get_family(family, family_params: dict):
    """Return the family object for a registry name or pass a family object through."""
    from pyro_deq import families

    if not isinstance(family, str):
        return family
    if family not in families.names():
        raise ValueError(
            f"`family` must be a registered family name, but got {family!r}. "
            f"Pass one of: {', '.join(families.names())}."
        )
    return families.get(family, **family_params)


def _check_count(name: str, value, minimum: int) -> None:
    """Raise ``ValueError`` unless ``value`` is an integer of at least ``minimum``."""
    is_int = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not is_int or value < minimum:
        raise ValueError(
            f"`{name}` must be an integer of at least {minimum}, but got {value!r}. "
            f"Pass for example {name}={max(minimum, 2)}."
        )


def _check_scale(name: str, value) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite number of at least 0."""
    if not isinstance(value, numbers.Real) or not np.isfinite(value) or value < 0:
        raise ValueError(
            f"`{name}` must be a finite number of at least 0, but got {value!r}."
        )
