"""The MAP of one row's latents as a fixed-point problem for exponential-family PCA."""

from __future__ import annotations

import math

import torch

from ..solvers.problem import Evaluation, FixedPointProblem
from .data import ModelData

__all__ = ["ExpFamPCAProblem"]

# Cached products that involve only the loadings, so a problem cut down to
# some rows can keep them.
_ROW_FREE = ("weight_outer", "scaled_outer", "weight_over_precision", "negative_eye")


class ExpFamPCAProblem(FixedPointProblem):
    r"""Stationarity of the per-row log joint of exponential-family PCA.

    For each row the log joint, as a function of the latents ``z``, is

    .. math::

        \ell(z) = \sum_j m_j \left[T(y_j)\,\eta_j - A(\eta_j)\right]
                  - \tfrac{\lambda}{2}\|z\|^2 + \text{const},
        \qquad \eta = R(Wz + b) + \text{offset},

    and ``z* = argmax ℓ`` is the fixed point of

    .. math:: f(z) = \lambda^{-1} W^\top\left[m \odot R'(u) \odot (T(y) - A'(\eta))\right],

    so the residual ``f(z) - z`` equals ``∇ℓ(z) / λ``. The objective handed to the
    solvers is ``-ℓ(z)`` per row and the Jacobian of the residual is ``-H / λ`` with
    the posterior precision
    ``H = λ I + Wᵀ diag(m (R'(u)² A''(η) - R''(u) (T(y) - A'(η)))) W``.

    Tensors may require grad: every method is differentiable with respect to
    ``weight`` and ``bias``, which the implicit gradients and the Laplace
    objective rely on.

    :param family: an :class:`~pyro_deq.families.ExponentialFamily`.
    :param nonlinearity: the canonical nonlinearity ``R``.
    :param ModelData data: validated observations, shape ``(N, d)``.
    :param torch.Tensor weight: loadings ``W``, shape ``(d, k)``.
    :param torch.Tensor bias: bias ``b``, shape ``(d,)``.
    :param float prior_precision: ``λ``.
    """

    has_objective = True
    has_jacobian = True
    has_rows = True
    uses_autograd = False

    def __init__(self, family, nonlinearity, data: ModelData, weight, bias, prior_precision: float):
        self.family = family
        self.nonlinearity = nonlinearity
        self.data = data
        self.weight = weight
        self.bias = bias
        self.prior_precision = float(prior_precision)
        self.statistic = family.sufficient_statistic(data.y)
        if data.mask is not None:
            self.statistic = self.statistic * data.mask
        # Products of the loadings and data reused across evaluations; see _cached.
        self._cache: dict = {}

    def to(self, dtype: torch.dtype) -> "ExpFamPCAProblem":
        """Return the same problem with data and parameters cast to ``dtype``, still differentiable."""
        return ExpFamPCAProblem(
            self.family, self.nonlinearity, self.data.to(dtype),
            self.weight.to(dtype), self.bias.to(dtype), self.prior_precision,
        )

    def rows(self, index: torch.Tensor) -> "ExpFamPCAProblem":
        """Return the problem restricted to the rows in ``index``, shape ``(B,)``."""
        family = self.family.index_rows(index, self.data.n_rows)
        problem = ExpFamPCAProblem(
            family, self.nonlinearity, self.data.rows(index), self.weight, self.bias, self.prior_precision
        )
        # The products of the loadings alone do not depend on the rows.
        problem._cache = {key: value for key, value in self._cache.items() if key[0] in _ROW_FREE}
        return problem

    @property
    def contraction_bound(self) -> float | None:
        """``||W||₂² sup A'' / λ``; ``None`` when ``sup A''`` is unbounded (Poisson)."""
        if math.isinf(self.family.max_variance):
            return None
        spectral = torch.linalg.matrix_norm(self.weight.detach(), ord=2)
        return float(spectral**2 * self.family.max_variance / self.prior_precision)

    def canonical_parameter(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(u, eta)`` with ``u = W z + b`` and ``eta = R(u) + offset``, each ``(N, d)``."""
        weight_t = self.weight.transpose(-1, -2)
        if z.dim() == 2 and weight_t.dim() == 2:
            u = torch.addmm(self.bias, z, weight_t)
        else:
            u = z @ weight_t + self.bias
        eta = self.nonlinearity(u)
        if self.data.offset is not None:
            eta = eta + self.data.offset
        return u, eta

    def _masked(self, value: torch.Tensor) -> torch.Tensor:
        return value if self.data.mask is None else value * self.data.mask

    def log_likelihood_terms(self, eta: torch.Tensor) -> torch.Tensor:
        """Sum over features of ``m (T(y) η − A(η))`` per row, shape ``(N,)``; no base measure."""
        log_partition = self._masked(self.family.log_partition(eta))
        return (self.statistic * eta).sum(-1) - log_partition.sum(-1)

    def objective(self, z: torch.Tensor) -> torch.Tensor:
        """Compute ``-ℓ(z)`` per row up to a constant in ``z``, shape ``(N,)``."""
        _, eta = self.canonical_parameter(z)
        prior = 0.5 * self.prior_precision * (z * z).sum(-1)
        return prior - self.log_likelihood_terms(eta)

    def _error_signal(self, u: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        """``m R'(u) (T(y) − A'(η))`` from ``mean = A'(η)``, shape ``(N, d)``."""
        signal = self.statistic - mean
        if not self.nonlinearity.is_identity:
            signal = self.nonlinearity.derivative(u) * signal
        return self._masked(signal)

    def gradient(self, z: torch.Tensor) -> torch.Tensor:
        """Compute ``∇ℓ(z)``, shape ``(N, k)``."""
        u, eta = self.canonical_parameter(z)
        return self._error_signal(u, self.family.mean(eta)) @ self.weight - self.prior_precision * z

    def fixed_point_map(self, z: torch.Tensor) -> torch.Tensor:
        u, eta = self.canonical_parameter(z)
        return self._error_signal(u, self.family.mean(eta)) @ self.weight / self.prior_precision

    def precision(self, z: torch.Tensor) -> torch.Tensor:
        """Compute the posterior precision ``H = -∇²ℓ(z)``, shape ``(N, k, k)``."""
        u, eta = self.canonical_parameter(z)
        return self._precision(u, self.family.mean(eta), self.family.variance(eta))

    def _curvature(self, u: torch.Tensor, mean: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
        """Compute each feature's weight in ``H``, ``m (R'(u)² A''(η) − R''(u) (T(y) − A'(η)))``, shape ``(N, d)``."""
        curvature = variance
        if not self.nonlinearity.is_identity:
            slope = self.nonlinearity.derivative(u)
            curvature = slope * slope * curvature - self.nonlinearity.second_derivative(u) * (
                self.statistic - mean
            )
        return self._masked(curvature)

    def _weight_outer_products(self) -> torch.Tensor:
        """Return the per-feature outer products ``w_j w_jᵀ`` flattened to ``(d, k²)``, computed once.

        With them, ``Wᵀ diag(c_n) W`` for every row ``n`` is one matrix product.
        """
        k = self.weight.shape[-1]
        return self._cached(
            "weight_outer", lambda: (self.weight.unsqueeze(-1) * self.weight.unsqueeze(-2)).reshape(-1, k * k)
        )

    def _precision(self, u: torch.Tensor, mean: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
        k = self.weight.shape[-1]
        precision = (self._curvature(u, mean, variance) @ self._weight_outer_products()).reshape(-1, k, k)
        eye = torch.eye(k, dtype=precision.dtype, device=precision.device)
        return precision + self.prior_precision * eye

    def _jacobian(self, u: torch.Tensor, mean: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
        """Compute the Jacobian of the residual, ``-H / λ``, shape ``(N, k, k)``.

        Scaling the ``d × k²`` outer products instead of the ``N × k × k``
        result saves two passes over the batch.
        """
        k = self.weight.shape[-1]
        scaled_outer = self._cached("scaled_outer", lambda: self._weight_outer_products() / -self.prior_precision)
        negative_eye = self._cached(
            "negative_eye", lambda: -torch.eye(k, dtype=scaled_outer.dtype, device=scaled_outer.device).reshape(k * k)
        )
        curvature = self._curvature(u, mean, variance)
        if curvature.dim() == 2 and scaled_outer.dim() == 2:
            return torch.addmm(negative_eye, curvature, scaled_outer).reshape(-1, k, k)
        return (curvature @ scaled_outer + negative_eye).reshape(-1, k, k)

    def _scaled_weight(self) -> torch.Tensor:
        """Return ``W / λ``, computed once, so that the value needs no division of its own."""
        return self._cached("weight_over_precision", lambda: self.weight / self.prior_precision)

    def _data_term(self, z: torch.Tensor, eta: torch.Tensor) -> torch.Tensor:
        """``Σ_j T(y_j) η_j`` per row, shape ``(N,)``.

        For the identity nonlinearity ``η`` is affine in ``z``, so the sum is
        ``(T W) · z`` plus a constant, both computed once per problem, which
        saves a pass over the ``N × d`` entries at every evaluation.
        """
        if not self.nonlinearity.is_identity:
            return (self.statistic * eta).sum(-1)
        return (self._data_slope() * z).sum(-1) + self._data_constant()

    def _data_slope(self) -> torch.Tensor:
        """Return ``T W``, shape ``(N, k)``, computed once."""
        return self._cached("data_slope", lambda: self.statistic @ self.weight)

    def _data_constant(self) -> torch.Tensor:
        """Return ``T · (b + offset)``, shape ``(N,)``, computed once."""
        def compute():
            constant = self.statistic @ self.bias
            if self.data.offset is not None:
                constant = constant + (self.statistic * self.data.offset).sum(-1)
            return constant

        return self._cached("data_constant", compute)

    def _cached(self, name: str, compute):
        """Return ``compute()``, kept for later calls unless it must carry gradients.

        A value computed without gradients (inside a solve, say) would cut
        the graph to the loadings if reused where they need one, so while
        gradients are on and the loadings or bias require them nothing is
        kept or reused.
        """
        if torch.is_grad_enabled() and (self.weight.requires_grad or self.bias.requires_grad):
            return compute()
        # Values made in inference mode cannot be saved for backward outside it.
        key = (name, torch.is_inference_mode_enabled())
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    @property
    def latent_shape(self) -> tuple[int, int]:
        """``(N, k)``: one row of latents per data row."""
        return (self.data.n_rows, self.weight.shape[-1])

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the loadings, which the latents must share."""
        return self.weight.dtype

    @property
    def strong_convexity(self) -> float | None:
        """``1`` for the identity nonlinearity, ``None`` otherwise.

        With ``R`` the identity, ``-ℓ`` is ``λ``-strongly convex: its Hessian is
        ``λ I`` plus ``Wᵀ diag(m A''(η)) W``, which is positive semi-definite
        because every log-partition is convex. The residual is ``∇ℓ / λ``, so
        ``-r`` is ``1``-strongly monotone. A ReLU makes ``ℓ`` non-concave.
        """
        return 1.0 if self.nonlinearity.is_identity else None

    def evaluate(self, z: torch.Tensor, jacobian: bool = False, objective: bool = True) -> Evaluation:
        """Evaluate ``f``, the residual, and optionally the objective and the Jacobian.

        Without the objective the log-partition is not computed, which
        saves about half of an evaluation. The mean and ``u`` stay in
        :attr:`~pyro_deq.solvers.Evaluation.intermediates` for :meth:`complete`.
        """
        u, eta = self.canonical_parameter(z)
        if objective:
            log_partition, mean, variance = self.family.log_partition_derivatives(eta)
        else:
            mean, variance = self.family.mean(eta), None
        value = self._error_signal(u, mean) @ self._scaled_weight()
        evaluation = Evaluation(value=value, residual=value - z, intermediates={"u": u, "eta": eta, "mean": mean})

        if objective:
            evaluation.objective = self._objective(z, eta, log_partition)
        if jacobian:
            if variance is None:
                variance = self.family.variance_given_mean(eta, mean)
            evaluation.jacobian = self._jacobian(u, mean, variance)
        return evaluation

    def evaluate_shared(self, z: torch.Tensor, objective: bool = True) -> tuple[Evaluation, torch.Tensor] | None:
        """Evaluate at ``z`` with the one Jacobian ``(k, k)`` of every row, or return ``None`` when rows differ.

        ``H`` depends on the row only through ``z``, the mask, the offset, the
        family's per-row parameters and, for a nonlinear ``R``, the data. So
        rows at the same ``z`` share it when ``R`` is the identity and there
        is no mask, no per-row offset and no per-row family parameter. Then
        they also share ``η``: the value is ``(T W − A'(η) W) / λ`` with ``T W``
        computed once, and no ``N × d`` pass is needed.
        """
        if not self.nonlinearity.is_identity or self.data.mask is not None or z.shape[0] == 0:
            return None
        offset = self.data.offset
        if offset is not None and offset.dim() == 2 and offset.shape[0] > 1:
            return None
        first_row = torch.zeros(1, dtype=torch.long, device=z.device)
        if self.family.index_rows(first_row, self.data.n_rows) is not self.family:
            return None
        if not bool((z == z[:1]).all()):
            return None

        u, eta = self.canonical_parameter(z[:1])
        log_partition, mean, variance = self.family.log_partition_derivatives(eta)
        value = (self._data_slope() - mean @ self.weight) / self.prior_precision
        evaluation = Evaluation(value=value, residual=value - z)
        if objective:
            evaluation.objective = self._objective(z, eta, log_partition)
        return evaluation, self._jacobian(u, mean, variance)[0]

    def complete(
        self, z: torch.Tensor, evaluation: Evaluation, objective: bool = True, jacobian: bool = True
    ) -> Evaluation:
        """Add the objective and the Jacobian where missing, reusing ``u``, ``η`` and the mean."""
        if evaluation.intermediates is None:
            return self.evaluate(z, jacobian=jacobian, objective=objective)

        u, eta, mean = (evaluation.intermediates[name] for name in ("u", "eta", "mean"))
        completed = Evaluation(
            value=evaluation.value, residual=evaluation.residual, objective=evaluation.objective,
            jacobian=evaluation.jacobian, intermediates=evaluation.intermediates,
        )
        if objective and completed.objective is None:
            completed.objective = self._objective(z, eta, self.family.log_partition(eta))
        if jacobian and completed.jacobian is None:
            completed.jacobian = self._jacobian(u, mean, self.family.variance_given_mean(eta, mean))
        return completed

    def _objective(self, z: torch.Tensor, eta: torch.Tensor, log_partition: torch.Tensor) -> torch.Tensor:
        prior = 0.5 * self.prior_precision * (z * z).sum(-1)
        return prior + self._masked(log_partition).sum(-1) - self._data_term(z, eta)

    def non_finite_rows(self, z: torch.Tensor) -> torch.Tensor:
        """Indices of rows whose canonical parameter or log-partition is not finite."""
        _, eta = self.canonical_parameter(z)
        bad = ~torch.isfinite(eta).all(-1) | ~torch.isfinite(self.family.log_partition(eta)).all(-1)
        return bad.nonzero().flatten()
