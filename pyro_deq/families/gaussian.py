"""Gaussian family with a known scale."""

from __future__ import annotations

import math

import torch
from pyro.distributions import Normal

from pyro_deq.families._validation import check_data_shape, reject_non_finite
from pyro_deq.families.base import ExponentialFamily

__all__ = ["Gaussian"]


class Gaussian(ExponentialFamily):
    r"""Normal distribution with mean ``eta`` and a fixed scale ``s``.

    With :math:`T(y) = y / s^2` and :math:`A(\eta) = \eta^2 / (2 s^2)` the mean
    of ``y`` is ``eta`` itself and :math:`A''(\eta) = 1/s^2`.

    :param float scale: standard deviation ``s > 0`` of every entry.
    :raises ValueError: if ``scale`` is not finite and positive.
    """

    name = "gaussian"

    def __init__(self, scale: float = 1.0):
        scale = float(scale)
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(
                f"Gaussian `scale` must be a finite positive number, but got {scale!r}."
            )
        self.scale = scale
        self.max_variance = 1.0 / scale**2

    def log_partition(self, eta: torch.Tensor) -> torch.Tensor:
        """Compute ``A(eta) = eta**2 / (2 s**2)``; same shape as ``eta``."""
        return eta**2 / (2 * self.scale**2)

    def mean(self, eta: torch.Tensor) -> torch.Tensor:
        """Compute ``A'(eta) = eta / s**2``; same shape as ``eta``."""
        return eta / self.scale**2

    def variance(self, eta: torch.Tensor) -> torch.Tensor:
        """Compute ``A''(eta) = 1 / s**2`` as a tensor of the shape of ``eta``."""
        return torch.full_like(eta, 1.0 / self.scale**2)

    def sufficient_statistic(self, y: torch.Tensor) -> torch.Tensor:
        """Compute ``T(y) = y / s**2``; same shape as ``y``."""
        return y / self.scale**2

    def log_base_measure(self, y: torch.Tensor) -> torch.Tensor:
        """Compute ``log h(y) = -y**2 / (2 s**2) - log(s sqrt(2 pi))``; same shape as ``y``."""
        return -(y**2) / (2 * self.scale**2) - math.log(self.scale * math.sqrt(2 * math.pi))

    def expected_value(self, eta: torch.Tensor) -> torch.Tensor:
        """Return ``E[y] = eta``, unlike :meth:`mean`, which is ``E[T(y)] = eta / s**2``."""
        return eta

    def distribution(self, eta: torch.Tensor) -> Normal:
        """Return ``Normal(eta, s)``, batch shape that of ``eta``."""
        return Normal(eta, torch.as_tensor(self.scale, dtype=eta.dtype, device=eta.device))

    def validate(self, y: torch.Tensor, name: str = "y", mask: torch.Tensor | None = None) -> None:
        """Raise ``ValueError`` unless ``y`` is 2-D and every checked entry is finite.

        :param torch.Tensor y: data of shape ``(N, d)``.
        :param str name: argument name used in error messages.
        :param mask: optional boolean tensor of shape ``(N, d)``; entries
            where it is ``False`` are missing and not checked.
        """
        checked = check_data_shape(self.name, y, name, mask)
        reject_non_finite(self.name, y, name, checked)

    def __repr__(self) -> str:
        return f"Gaussian(scale={self.scale!r})"
