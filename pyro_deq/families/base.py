"""The base class of exponential families ``h(y) exp(T(y) eta - A(eta))``."""

from __future__ import annotations

import torch
from torch.distributions import Distribution

__all__ = ["ExponentialFamily"]


class ExponentialFamily:
    """One-parameter exponential family acting elementwise on a canonical parameter.

    Subclasses implement the hooks below. Every hook takes and returns tensors
    that broadcast elementwise: ``eta`` and ``y`` have any shape, typically
    ``(N, d)``, and results have the broadcast shape.

    :cvar str name: registry name.
    :cvar float max_variance: ``sup A''(eta)``, or ``math.inf`` when unbounded;
        it enters the contraction bound ``||W||^2 sup A'' / lambda``.
    """

    name: str = ""
    max_variance: float = float("inf")

    def log_partition(self, eta: torch.Tensor) -> torch.Tensor:
        """Compute the log-partition ``A(eta)``."""
        raise NotImplementedError

    def mean(self, eta: torch.Tensor) -> torch.Tensor:
        """Compute ``A'(eta)``, the mean of the sufficient statistic ``T(y)``."""
        raise NotImplementedError

    def variance(self, eta: torch.Tensor) -> torch.Tensor:
        """Compute ``A''(eta)``, the variance of the sufficient statistic ``T(y)``."""
        raise NotImplementedError

    def variance_given_mean(self, eta: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        """Compute ``A''(eta)`` when ``mean = A'(eta)`` is already known.

        Newton's method computes the Jacobian at points where it already has
        the mean. Families whose variance shares a term with the mean override
        this, so that term is not computed twice. The result needs only a
        small absolute error, because it enters Newton systems beside the prior
        precision. Bernoulli and Binomial trade the relative accuracy of their
        far tail for speed here, and :meth:`variance` keeps it.
        """
        return self.variance(eta)

    def log_partition_derivatives(self, eta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Compute ``(A(eta), A'(eta), A''(eta))`` together.

        The solvers need all three at every point; families whose hooks share
        an expensive term (an exponential) override this to compute it once.
        """
        return self.log_partition(eta), self.mean(eta), self.variance(eta)

    def sufficient_statistic(self, y: torch.Tensor) -> torch.Tensor:
        """Compute the sufficient statistic ``T(y)``."""
        raise NotImplementedError

    def log_base_measure(self, y: torch.Tensor) -> torch.Tensor:
        """Compute ``log h(y)``."""
        raise NotImplementedError

    def expected_value(self, eta: torch.Tensor) -> torch.Tensor:
        """Compute ``E[y]``, which equals :meth:`mean` unless ``T(y)`` rescales ``y``."""
        return self.mean(eta)

    def distribution(self, eta: torch.Tensor) -> Distribution:
        """Return the torch distribution with canonical parameter ``eta``."""
        raise NotImplementedError

    def validate(self, y: torch.Tensor, name: str = "y") -> None:
        """Raise ``ValueError`` unless every entry of ``y`` lies in the support."""
        raise NotImplementedError

    def index_rows(self, rows: torch.Tensor, n_rows: int) -> "ExponentialFamily":
        """Return the family restricted to ``rows`` of an ``n_rows``-row data set.

        Families with per-entry parameters of shape ``(n_rows, d)`` (a Binomial
        ``total_count`` per entry) override this; the others return ``self``.
        """
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
