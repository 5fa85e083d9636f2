"""Poisson family for counts."""

from __future__ import annotations

import torch
from pyro.distributions import Poisson as PyroPoisson

from pyro_deq.families._validation import (
    check_data_shape,
    check_finite_canonical,
    reject_entries,
    reject_non_finite,
)
from pyro_deq.families.base import ExponentialFamily

__all__ = ["Poisson"]


class Poisson(ExponentialFamily):
    r"""Poisson distribution with log-rate ``eta``.

    :math:`T(y) = y`, :math:`A(\eta) = A'(\eta) = A''(\eta) = e^\eta`, and
    :math:`\log h(y) = -\log y!`. The variance is unbounded, so
    ``max_variance`` is ``inf``.

    .. warning::
        ``exp(eta)`` overflows to ``inf`` once ``eta`` exceeds
        ``log(torch.finfo(dtype).max)``: about 88.7 in float32 and 709.8 in
        float64. :meth:`log_partition`, :meth:`mean` and :meth:`variance` then
        return ``+inf``, and sums built on them may turn into NaN. Call
        :meth:`check_canonical` (or
        :func:`~pyro_deq.families.check_finite_canonical`) to raise
        :class:`~pyro_deq.errors.NumericalError` naming the rows instead.
    """

    name = "poisson"
    max_variance = float("inf")

    def log_partition(self, eta: torch.Tensor) -> torch.Tensor:
        """Compute ``A(eta) = exp(eta)``, ``+inf`` where it overflows; same shape as ``eta``."""
        return torch.exp(eta)

    def mean(self, eta: torch.Tensor) -> torch.Tensor:
        """Compute ``A'(eta) = exp(eta)``, ``+inf`` where it overflows; same shape as ``eta``."""
        return torch.exp(eta)

    def variance(self, eta: torch.Tensor) -> torch.Tensor:
        """Compute ``A''(eta) = exp(eta)``, ``+inf`` where it overflows; same shape as ``eta``."""
        return torch.exp(eta)

    def variance_given_mean(self, eta: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        """Return ``mean``, which equals ``exp(eta)``."""
        return mean

    def log_partition_derivatives(self, eta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``exp(eta)`` three times, computed once."""
        rate = torch.exp(eta)
        return rate, rate, rate

    def sufficient_statistic(self, y: torch.Tensor) -> torch.Tensor:
        """Return ``T(y) = y``."""
        return y

    def log_base_measure(self, y: torch.Tensor) -> torch.Tensor:
        """Compute ``log h(y) = -log(y!)`` with ``lgamma``; same shape as ``y``."""
        return -torch.lgamma(y + 1)

    def distribution(self, eta: torch.Tensor) -> PyroPoisson:
        """Return ``pyro.distributions.Poisson(rate=exp(eta))``, batch shape that of ``eta``."""
        return PyroPoisson(rate=torch.exp(eta))

    def check_canonical(self, eta: torch.Tensor) -> None:
        """Raise :class:`~pyro_deq.errors.NumericalError` where ``eta`` or ``exp(eta)`` is not finite.

        :param torch.Tensor eta: log-rates of shape ``(N, d)``.
        """
        check_finite_canonical(eta, self)

    def validate(self, y: torch.Tensor, name: str = "y", mask: torch.Tensor | None = None) -> None:
        """Raise ``ValueError`` unless every checked entry of ``y`` is a non-negative whole number.

        :param torch.Tensor y: counts of shape ``(N, d)``.
        :param str name: argument name used in error messages.
        :param mask: optional boolean tensor of shape ``(N, d)``; entries
            where it is ``False`` are missing and not checked.
        """
        checked = check_data_shape(self.name, y, name, mask)
        reject_non_finite(self.name, y, name, checked)

        reject_entries(
            self.name, y, name, checked & (y < 0), "negative",
            "Counts cannot be negative. Use family='gaussian' for centred data.",
        )
        if y.is_floating_point():
            reject_entries(
                self.name, y, name, checked & (y != torch.floor(y)), "not integer-valued",
                "For counts divided by library size pass the raw counts and an "
                "`offset` of log library size instead.",
            )
