"""AutoDEQLaplace: per-row Normal(z*, H⁻¹) around the fixed-point MAP."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch

from ..errors import NumericalError
from ..models import ExpFamPCAProblem
from .deq import AutoDEQ

__all__ = ["AutoDEQLaplace", "OBJECTIVES"]

OBJECTIVES = ("map", "laplace")


class AutoDEQLaplace(AutoDEQ):
    r"""Amortized Laplace approximation ``q(z_n | y_n) = N(z*_n, H_n⁻¹)``.

    ``z*`` is the per-row MAP from a fixed-point solve, as in :class:`AutoDEQ`,
    and ``H = -∇²ℓ(z*)`` the posterior precision, computed in float64 and
    factorised per row (one ``k × k`` block each). For Gaussian observations
    with the identity nonlinearity this is the exact posterior.

    Training objectives:

    - ``objective="map"``: SVI samples ``z`` from the Normal; the parameters
      see the expected log joint under the (detached) Laplace posterior.
    - ``objective="laplace"``: while gradients are recorded, the guide is a
      Delta at ``z*`` whose log-density is ``½ log det H - (k/2) log 2π``, so
      ``Trace_ELBO`` equals the Laplace approximation of the marginal likelihood

      .. math:: \log p(y \mid \theta) \approx \ell(z^*) + \tfrac{k}{2}\log 2\pi - \tfrac12 \log\det H(z^*),

      differentiated with implicit gradients through ``z*(θ)``. Joint MAP over
      ``z`` and ``θ`` inflates the loadings; this objective does not. Under
      :func:`torch.no_grad` (as in :class:`~pyro.infer.Predictive`) the guide
      draws from the Normal.

    :param callable model: as for :class:`AutoDEQ`.
    :param str objective: ``"map"`` or ``"laplace"``.
    :param kwargs: as for :class:`AutoDEQ`.
    """

    def __init__(self, model, *, objective: str = "map", **kwargs):
        if objective not in OBJECTIVES:
            raise ValueError(f"`objective` must be one of {OBJECTIVES}, got {objective!r}.")
        if objective == "laplace":
            kwargs.setdefault("gradient", "implicit")
            if kwargs["gradient"] != "implicit":
                raise ValueError("objective='laplace' needs gradient='implicit'.")
        super().__init__(model, **kwargs)
        self.objective = objective

    def _precision(self, problem, z: torch.Tensor) -> torch.Tensor:
        """Posterior precision in float64, shape ``(B, K, K)``; differentiable in ``θ`` and ``z``."""
        if isinstance(problem, ExpFamPCAProblem):
            return problem.to(torch.float64).precision(z.double())
        return self.adapter.precision(problem, z).double()

    def _log_normalizer(self, precision: torch.Tensor) -> torch.Tensor:
        """``½ log det H − (K/2) log 2π`` per row, shape ``(B,)``: minus the Normal entropy's variable part."""
        factor = self._cholesky(precision)
        log_det = 2.0 * torch.log(torch.diagonal(factor, dim1=-2, dim2=-1)).sum(-1)
        return 0.5 * log_det - 0.5 * precision.shape[-1] * math.log(2 * math.pi)

    def _cholesky(self, precision: torch.Tensor) -> torch.Tensor:
        factor, info = torch.linalg.cholesky_ex(precision)
        bad = (info != 0).nonzero().flatten()
        if bad.numel():
            raise NumericalError(
                f"The posterior precision is not positive definite for {bad.numel()} rows "
                f"(first rows {bad[:10].tolist()}); the Laplace approximation needs a local "
                "maximum. Check the solver diagnostics, or use the identity nonlinearity.",
                {"rows": bad.tolist(), "diagnostics": self.diagnostics},
            )
        return factor

    def _scale_tril(self, precision: torch.Tensor, dtype) -> torch.Tensor:
        """``L`` with ``L Lᵀ = H⁻¹``, shape ``(B, K, K)``."""
        factor = self._cholesky(precision)
        eye = torch.eye(precision.shape[-1], dtype=precision.dtype, device=precision.device)
        inverse_factor = torch.linalg.solve_triangular(factor, eye.expand_as(factor), upper=False)
        covariance = inverse_factor.transpose(-1, -2) @ inverse_factor
        return torch.linalg.cholesky(covariance).to(dtype)

    def forward(self, *args, **kwargs):
        """Sample the latents of the rows of this call; see the class notes for the objective."""
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        z, batch, _, problem = self._map(args, kwargs, self.global_values)
        if isinstance(problem, list):
            return self._sample_draws(z, batch, problem)

        if self.objective == "laplace" and torch.is_grad_enabled():
            log_density = self._log_normalizer(self._precision(problem, z)).to(z.dtype)
            return self._sample_latents(z, batch, log_density=log_density)

        scale_tril = self._scale_tril(self._precision(problem, z.detach()).detach(), z.dtype)
        return self._sample_normal(z, scale_tril, batch)

    def _sample_normal(self, loc, scale_tril, batch):
        names = self.adapter.latent_names
        with pyro.plate(self.adapter.plate, batch.n_total, dim=self.adapter.plate_dim, subsample=batch.rows):
            posterior = dist.MultivariateNormal(loc, scale_tril=scale_tril)
            if len(names) == 1:
                return {names[0]: pyro.sample(names[0], posterior)}
            joint = pyro.sample("_" + "_".join(names) + "_laplace", posterior, infer={"is_auxiliary": True})
            values = {}
            for name, piece in self._split(joint).items():
                values[name] = pyro.sample(name, dist.Delta(piece).to_event(1))
            return values

    def _sample_draws(self, z, batch, problems):
        """Sample under Predictive(parallel=True): one Laplace posterior per global draw."""
        flat_z = z.reshape(-1, *z.shape[-2:])
        tril = torch.stack([
            self._scale_tril(self._precision(p, flat_z[i]).detach(), z.dtype) for i, p in enumerate(problems)
        ]).reshape(*z.shape, z.shape[-1])
        return self._sample_normal(z.detach(), tril, batch)

    @torch.no_grad()
    def get_posterior(self, *args, **kwargs) -> dist.MultivariateNormal:
        """Return the Laplace posterior of the rows: batch shape ``(N,)``, event shape ``(K,)``.

        For :class:`~pyro_deq.DeepExpFamPCA` the event is the concatenation
        ``[z_1, …, z_L]`` of shape ``(k_1 + … + k_L,)``.
        """
        z, _, _, problem = self._summary_map(args, kwargs)
        if isinstance(problem, list):
            raise NotImplementedError("get_posterior with draws of global latents is not supported.")
        return dist.MultivariateNormal(z, scale_tril=self._scale_tril(self._precision(problem, z), z.dtype))

    @torch.no_grad()
    def log_marginal(self, *args, **kwargs) -> torch.Tensor:
        r"""Compute the Laplace approximation of ``log p(y_n | θ)`` per row, shape ``(N,)``, in float64.

        .. math:: \log p(y_n \mid \theta) \approx \ell(z^*_n) + \tfrac{k}{2}\log 2\pi
                  - \tfrac12 \log\det H_n.

        It is exact for Gaussian observations with the identity nonlinearity.
        """
        z, _, _, problem = self._summary_map(args, kwargs)
        if isinstance(problem, list):
            raise NotImplementedError("log_marginal with draws of global latents is not supported.")
        if isinstance(problem, ExpFamPCAProblem):
            log_joint = self.model.log_joint(problem.data, z, weight=problem.weight, bias=problem.bias)
        else:
            log_joint = problem.log_joint(z)
        return log_joint.double() - self._log_normalizer(self._precision(problem, z))

    @torch.no_grad()
    def quantiles(self, quantiles, *args, **kwargs) -> dict:
        """Return marginal quantiles of each latent, shape ``(len(quantiles), N, k)``."""
        posterior = self.get_posterior(*args, **kwargs)
        loc = posterior.loc
        scale = posterior.scale_tril.pow(2).sum(-1).sqrt()
        levels = torch.as_tensor(quantiles, dtype=loc.dtype, device=loc.device).reshape(-1, 1, 1)
        values = dist.Normal(loc, scale).icdf(levels)
        return self._split(values)

    def standard_deviation(self, *args, **kwargs) -> dict:
        """Return the Laplace posterior standard deviations, each of shape ``(N, k)``."""
        posterior = self.get_posterior(*args, **kwargs)
        return self._split(posterior.scale_tril.pow(2).sum(-1).sqrt())
