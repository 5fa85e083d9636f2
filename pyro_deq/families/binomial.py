"""Binomial family with a known number of trials."""

from __future__ import annotations

import numbers

import torch
from pyro.distributions import Binomial as PyroBinomial

from pyro_deq.families._validation import check_data_shape, reject_entries, reject_non_finite
from pyro_deq.families.base import ExponentialFamily
from pyro_deq.families.bernoulli import _logistic_derivatives, softplus

__all__ = ["Binomial"]


class Binomial(ExponentialFamily):
    r"""Binomial distribution with ``n`` trials and logits ``eta``.

    :math:`T(y) = y`, :math:`A(\eta) = n \log(1 + e^\eta)`, mean
    :math:`n \sigma(\eta)` and variance :math:`n \sigma(\eta)\sigma(-\eta) \le n/4`.

    :param total_count: number of trials ``n``: a positive int, or a tensor of
        positive whole numbers that broadcasts against the data, for example of
        shape ``(d,)`` (one count per feature) or ``(N, d)`` (one per entry).
    :raises TypeError: if ``total_count`` is neither an int nor a tensor.
    :raises ValueError: if some count is not a positive whole number.
    """

    name = "binomial"

    def __init__(self, total_count: int | torch.Tensor):
        self.total_count = _checked_total_count(total_count)
        self.max_variance = float(torch.as_tensor(self.total_count).max()) / 4

    def _count_like(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``total_count`` as a tensor with the dtype and device of ``x``."""
        return torch.as_tensor(self.total_count, dtype=x.dtype, device=x.device)

    def log_partition(self, eta: torch.Tensor) -> torch.Tensor:
        """Compute ``A(eta) = n softplus(eta)``; broadcast shape of ``eta`` and ``n``."""
        return self._count_like(eta) * softplus(eta)

    def mean(self, eta: torch.Tensor) -> torch.Tensor:
        """Compute ``A'(eta) = n sigmoid(eta)``; broadcast shape of ``eta`` and ``n``."""
        return self._count_like(eta) * torch.sigmoid(eta)

    def variance(self, eta: torch.Tensor) -> torch.Tensor:
        """Compute ``A''(eta) = n sigmoid(eta) sigmoid(-eta)``; broadcast shape."""
        return self._count_like(eta) * torch.sigmoid(eta) * torch.sigmoid(-eta)

    def variance_given_mean(self, eta: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        """Compute ``mean (1 - mean / n)``, with an absolute error of a few rounding units of ``n``.

        :meth:`variance` keeps the relative accuracy in the tail of large ``eta``.
        """
        return torch.addcmul(mean, mean, mean / self._count_like(eta), value=-1.0)

    def log_partition_derivatives(self, eta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Compute ``n`` times the Bernoulli softplus, sigmoid and variance from one exponential."""
        count = self._count_like(eta)
        log_partition, mean, variance = _logistic_derivatives(eta)
        return count * log_partition, count * mean, count * variance

    def sufficient_statistic(self, y: torch.Tensor) -> torch.Tensor:
        """Return ``T(y) = y``."""
        return y

    def log_base_measure(self, y: torch.Tensor) -> torch.Tensor:
        """Compute ``log h(y) = log C(n, y)`` with ``lgamma``; broadcast shape of ``y`` and ``n``."""
        n = self._count_like(y)
        return torch.lgamma(n + 1) - torch.lgamma(y + 1) - torch.lgamma(n - y + 1)

    def distribution(self, eta: torch.Tensor) -> PyroBinomial:
        """Return ``pyro.distributions.Binomial(n, logits=eta)``; broadcast batch shape."""
        return PyroBinomial(total_count=self._count_like(eta), logits=eta)

    def validate(self, y: torch.Tensor, name: str = "y", mask: torch.Tensor | None = None) -> None:
        """Raise ``ValueError`` unless every checked entry of ``y`` is a whole number in ``[0, n]``.

        :param torch.Tensor y: data of shape ``(N, d)``; ``total_count`` must
            broadcast against it.
        :param str name: argument name used in error messages.
        :param mask: optional boolean tensor of shape ``(N, d)``; entries
            where it is ``False`` are missing and not checked.
        """
        checked = check_data_shape(self.name, y, name, mask)
        n = self._count_like(y)
        _check_broadcast(n, y, name)
        reject_non_finite(self.name, y, name, checked)

        reject_entries(
            self.name, y, name, checked & (y < 0), "negative",
            "Use family='gaussian' for centred data.",
        )
        if y.is_floating_point():
            reject_entries(
                self.name, y, name, checked & (y != torch.floor(y)), "not integer-valued",
                "Pass the number of successes, not proportions. For proportions without "
                "a known number of trials use family='continuous_bernoulli'.",
            )

        above = checked & (y > n)
        largest = y[above].max().item() if bool(above.any()) else 0
        reject_entries(
            self.name, y, name, above, "above `total_count`",
            f"Raise `total_count` to at least {int(largest)} there, or pass one count "
            f"per entry as a tensor of shape {tuple(y.shape)}.",
        )

    def index_rows(self, rows: torch.Tensor, n_rows: int) -> "Binomial":
        """Return the family for ``rows`` of an ``n_rows``-row data set.

        :param torch.Tensor rows: integer indices of shape ``(B,)``.
        :param int n_rows: number of rows ``N`` in the full data set.
        :returns: a Binomial with ``total_count[rows]`` when ``total_count`` has
            shape ``(N, d)``, else ``self``.
        :raises ValueError: if ``total_count`` is 2-D with a first dimension
            other than 1 or ``n_rows``.
        """
        count = self.total_count
        if not isinstance(count, torch.Tensor) or count.dim() < 2 or count.shape[0] == 1:
            return self
        if count.shape[0] != n_rows:
            raise ValueError(
                f"Binomial `total_count` has shape {tuple(count.shape)}, so it cannot be "
                f"indexed by rows of a data set with {n_rows} rows. Pass one row of "
                f"counts per data row, shape ({n_rows}, d)."
            )
        return Binomial(count[rows.to(count.device)])

    def __repr__(self) -> str:
        count = self.total_count
        if isinstance(count, torch.Tensor):
            return f"Binomial(total_count=<tensor of shape {tuple(count.shape)}>)"
        return f"Binomial(total_count={count!r})"


def _checked_total_count(total_count) -> int | torch.Tensor:
    """Return ``total_count`` after checking that it contains positive whole numbers."""
    if isinstance(total_count, bool) or not isinstance(
        total_count, (numbers.Integral, torch.Tensor)
    ):
        raise TypeError(
            f"Binomial `total_count` must be a positive int or a tensor of positive "
            f"whole numbers, but got {type(total_count).__name__}."
        )
    if isinstance(total_count, numbers.Integral):
        if total_count < 1:
            raise ValueError(
                f"Binomial `total_count` must be a positive int, but got {total_count!r}."
            )
        return int(total_count)

    count = total_count.detach()
    if count.numel() == 0:
        raise ValueError("Binomial `total_count` must not be an empty tensor.")

    as_double = count.double()
    invalid = ~torch.isfinite(as_double) | (as_double < 1) | (as_double != torch.floor(as_double))
    if bool(invalid.any()):
        first = count[invalid][0].item()
        raise ValueError(
            f"Binomial `total_count` must contain positive whole numbers, but "
            f"{int(invalid.sum())} of its {count.numel()} entries do not "
            f"(the first is {first!r})."
        )
    return count


def _check_broadcast(count: torch.Tensor, y: torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` if ``total_count`` does not broadcast against ``y``."""
    try:
        shape = torch.broadcast_shapes(count.shape, y.shape)
    except RuntimeError:
        shape = None
    if shape != y.shape:
        raise ValueError(
            f"Binomial `total_count` of shape {tuple(count.shape)} does not broadcast "
            f"against `{name}` of shape {tuple(y.shape)}. Pass an int, a tensor of "
            f"shape ({y.shape[1]},) or one of shape {tuple(y.shape)}."
        )
