"""Bernoulli family for binary data."""

from __future__ import annotations

import torch
from pyro.distributions import Bernoulli as PyroBernoulli

from pyro_deq.families._validation import check_data_shape, reject_entries, reject_non_finite
from pyro_deq.families.base import ExponentialFamily

__all__ = ["Bernoulli", "softplus"]


def softplus(eta: torch.Tensor) -> torch.Tensor:
    """Compute ``log(1 + exp(eta))`` without overflow and with exact gradients.

    ``torch.nn.functional.softplus`` returns ``eta`` itself above a threshold of
    20, which is off by ``exp(-20)``. ``logaddexp`` keeps full precision, and its
    gradient is ``sigmoid(eta)`` everywhere, including at 0.
    """
    return torch.logaddexp(torch.zeros_like(eta), eta)


def _logistic_derivatives(eta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return ``(softplus(eta), sigmoid(eta), sigmoid(eta) sigmoid(-eta))`` from two sigmoids.

    ``softplus(eta) = max(eta, 0) - log(max(sigmoid(eta), sigmoid(-eta)))``: the
    logarithm's argument lies in ``[1/2, 1]``, so nothing overflows or loses
    relative precision. The product of the two sigmoids keeps the variance
    accurate in the tails. Element-wise ``maximum`` replaces ``torch.where``,
    which costs about ten sigmoids per entry on a CPU (measured with torch 2.13).
    """
    mean = torch.sigmoid(eta)
    complement = torch.sigmoid(-eta)
    log_partition = eta.clamp_min(0.0) - torch.log(torch.maximum(mean, complement))
    return log_partition, mean, mean * complement


class Bernoulli(ExponentialFamily):
    r"""Bernoulli distribution with logits ``eta``.

    :math:`T(y) = y`, :math:`A(\eta) = \log(1 + e^\eta)`, mean
    :math:`\sigma(\eta)` and variance :math:`\sigma(\eta)\sigma(-\eta) \le 1/4`.
    """

    name = "bernoulli"
    max_variance = 0.25

    def log_partition(self, eta: torch.Tensor) -> torch.Tensor:
        """Compute ``A(eta) = softplus(eta)``; same shape as ``eta``."""
        return softplus(eta)

    def mean(self, eta: torch.Tensor) -> torch.Tensor:
        """Compute ``A'(eta) = sigmoid(eta)``; same shape as ``eta``."""
        return torch.sigmoid(eta)

    def variance(self, eta: torch.Tensor) -> torch.Tensor:
        """Compute ``A''(eta) = sigmoid(eta) sigmoid(-eta)``; same shape as ``eta``.

        The product of the two sigmoids keeps the tails accurate where
        ``1 - sigmoid(eta)`` would round to zero.
        """
        return torch.sigmoid(eta) * torch.sigmoid(-eta)

    def variance_given_mean(self, eta: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        """Compute ``mean (1 - mean)`` in one fused operation.

        The absolute error is a few rounding units, which is all a Newton
        system needs. For large ``eta`` the relative error is large, because
        ``1 - mean`` rounds to zero; :meth:`variance` keeps that tail accurate.
        """
        return torch.addcmul(mean, mean, mean, value=-1.0)

    def log_partition_derivatives(self, eta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Compute softplus, sigmoid and the variance from one ``exp(-|eta|)``."""
        return _logistic_derivatives(eta)

    def sufficient_statistic(self, y: torch.Tensor) -> torch.Tensor:
        """Return ``T(y) = y``."""
        return y

    def log_base_measure(self, y: torch.Tensor) -> torch.Tensor:
        """Return ``log h(y) = 0`` with the shape of ``y``."""
        return torch.zeros_like(y)

    def distribution(self, eta: torch.Tensor) -> PyroBernoulli:
        """Return ``pyro.distributions.Bernoulli(logits=eta)``, batch shape that of ``eta``."""
        return PyroBernoulli(logits=eta)

    def validate(self, y: torch.Tensor, name: str = "y", mask: torch.Tensor | None = None) -> None:
        """Raise ``ValueError`` unless ``y`` is 2-D and every checked entry is 0 or 1.

        :param torch.Tensor y: data of shape ``(N, d)``.
        :param str name: argument name used in error messages.
        :param mask: optional boolean tensor of shape ``(N, d)``; entries
            where it is ``False`` are missing and not checked.
        """
        checked = check_data_shape(self.name, y, name, mask)
        reject_non_finite(self.name, y, name, checked)

        reject_entries(
            self.name, y, name, checked & (y < 0), "negative",
            "Use family='gaussian' for centred data.",
        )

        # Whole numbers above 1 are counts out of a known total.
        whole = y == torch.floor(y) if y.is_floating_point() else torch.ones_like(checked)
        counts = checked & (y > 1) & whole
        largest = int(y[counts].max()) if bool(counts.any()) else 0
        reject_entries(
            self.name, y, name, counts, "integer-valued and above 1",
            f"For counts of successes out of n trials use family='binomial' with "
            f"total_count=n (at least {largest} here).",
        )

        fractions = checked & (y != 0) & (y != 1)
        reject_entries(
            self.name, y, name, fractions, "neither 0 nor 1",
            "Threshold the data, for example (y > 0.5).to(y.dtype), or use "
            "family='continuous_bernoulli' for values in [0, 1].",
        )
