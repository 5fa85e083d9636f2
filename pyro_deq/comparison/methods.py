"""Posterior estimates of ``z | y, θ`` by each method, with ``θ`` held fixed.

Every function here takes the same :class:`ConditionalProblem` and returns a
:class:`MethodResult`, so the comparison treats DEQ, SVI and MCMC alike.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import MCMC, NUTS, SVI, Predictive, Trace_ELBO
from pyro.infer.autoguide import AutoDelta, AutoLowRankMultivariateNormal, AutoNormal
from pyro.optim import Adam

from ..guides import AutoDEQ, AutoDEQLaplace
from ..models import ExpFamPCA

__all__ = ["ConditionalProblem", "MethodResult", "METHODS", "run_method"]

logger = logging.getLogger(__name__)


@dataclass
class ConditionalProblem:
    """The rows of the conditional comparison and the fixed parameters.

    :ivar ExpFamPCA model: a model whose parameters are the fixed ``θ``.
    :ivar torch.Tensor y: the rows, shape ``(n, d)``.
    :ivar offset: offset for these rows, or ``None``.
    :ivar int num_draws: posterior draws kept per sampling method.
    :ivar int svi_steps: SVI steps for the SVI guides.
    :ivar int nuts_samples: NUTS draws per chain after warm-up.
    :ivar int nuts_warmup: NUTS warm-up steps per chain.
    :ivar int nuts_chains: NUTS chains, run one after another.
    :ivar int seed: random seed.
    """

    model: ExpFamPCA
    y: torch.Tensor
    offset: torch.Tensor | None
    num_draws: int = 1000
    svi_steps: int = 2000
    nuts_samples: int = 300
    nuts_warmup: int = 300
    nuts_chains: int = 2
    seed: int = 0

    def fixed_model(self):
        """Return a plain Pyro model of ``z | y`` with ``θ`` as constants, not parameters."""
        model = self.model
        weight = model.weight.detach()
        bias = model.bias.detach()
        scale = model.prior_precision ** -0.5
        offset = self.offset

        def conditional_model(y):
            loc = torch.zeros(model.n_components, dtype=y.dtype)
            with pyro.plate("data", y.shape[0], dim=-1):
                z = pyro.sample("z", dist.Normal(loc, scale).to_event(1))
                eta = model.nonlinearity(z @ weight.T + bias)
                if offset is not None:
                    eta = eta + offset
                pyro.sample("y", model.family.distribution(eta).to_event(1), obs=y)

        return conditional_model


@dataclass
class MethodResult:
    """One method's estimate of ``z | y, θ``.

    :ivar str name: method name.
    :ivar np.ndarray point: point estimate (mode or posterior mean), shape ``(n, k)``.
    :ivar draws: draws of shape ``(chain, draw, n, k)``, or ``None`` for a point estimate.
    :ivar float seconds: wall time of the inference.
    :ivar dict extra: method-specific outputs (solver diagnostics, NUTS divergences).
    """

    name: str
    point: np.ndarray
    draws: np.ndarray | None
    seconds: float
    extra: dict = field(default_factory=dict)

    @property
    def point_estimate(self) -> bool:
        return self.draws is None


def _deq(problem: ConditionalProblem) -> MethodResult:
    guide = AutoDEQ(problem.model)
    start = time.perf_counter()
    z = guide.median(problem.y, offset=problem.offset)["z"]
    seconds = time.perf_counter() - start
    result = guide.diagnostics["result"]
    extra = {"residual_history": result.residual_history.numpy(), "n_iter": result.n_iter,
             "converged": result.converged.numpy()}
    return MethodResult("AutoDEQ", z.numpy(), None, seconds, extra)


def _deq_laplace(problem: ConditionalProblem) -> MethodResult:
    guide = AutoDEQLaplace(problem.model)
    start = time.perf_counter()
    posterior = guide.get_posterior(problem.y, offset=problem.offset)
    with torch.random.fork_rng():
        torch.manual_seed(problem.seed)
        draws = posterior.sample((problem.num_draws,))
    seconds = time.perf_counter() - start
    return MethodResult("AutoDEQLaplace", posterior.loc.numpy(), draws.unsqueeze(0).numpy(), seconds)


def _svi(problem: ConditionalProblem, guide_class, name: str) -> MethodResult:
    conditional_model = problem.fixed_model()
    with pyro.get_param_store().scope():
        pyro.set_rng_seed(problem.seed)
        guide = guide_class(conditional_model)
        svi = SVI(conditional_model, guide, Adam({"lr": 0.02}), Trace_ELBO())
        start = time.perf_counter()
        losses = [svi.step(problem.y) for _ in range(problem.svi_steps)]
        if guide_class is AutoDelta:
            point = guide.median(problem.y)["z"].detach()
            draws = None
        else:
            predictive = Predictive(conditional_model, guide=guide, num_samples=problem.num_draws, return_sites=["z"])
            draws = predictive(problem.y)["z"].detach()
            point = draws.mean(0)
            draws = draws.unsqueeze(0)
        seconds = time.perf_counter() - start
    extra = {"losses": np.asarray(losses)}
    return MethodResult(name, point.numpy(), None if draws is None else draws.numpy(), seconds, extra)


def _nuts(problem: ConditionalProblem) -> MethodResult:
    conditional_model = problem.fixed_model()
    chains, divergences = [], []
    start = time.perf_counter()
    for chain in range(problem.nuts_chains):
        pyro.set_rng_seed(problem.seed + chain)
        kernel = NUTS(conditional_model, target_accept_prob=0.8)
        mcmc = MCMC(kernel, num_samples=problem.nuts_samples, warmup_steps=problem.nuts_warmup, disable_progbar=True)
        mcmc.run(problem.y)
        chains.append(mcmc.get_samples()["z"].detach())
        diverging = np.zeros(problem.nuts_samples, dtype=bool)
        diverging[mcmc.diagnostics().get("divergences", {}).get("chain 0", [])] = True
        divergences.append(diverging)
    seconds = time.perf_counter() - start
    draws = torch.stack(chains).numpy()
    diverging = np.stack(divergences)
    extra = {"divergences": int(diverging.sum()), "diverging": diverging}
    return MethodResult("NUTS", draws.mean(axis=(0, 1)), draws, seconds, extra)


METHODS = {
    "AutoDEQ": _deq,
    "AutoDEQLaplace": _deq_laplace,
    "AutoDelta": lambda problem: _svi(problem, AutoDelta, "AutoDelta"),
    "AutoNormal": lambda problem: _svi(problem, AutoNormal, "AutoNormal"),
    "AutoLowRankMultivariateNormal": lambda problem: _svi(
        problem, AutoLowRankMultivariateNormal, "AutoLowRankMultivariateNormal"
    ),
    "NUTS": _nuts,
}


def run_method(name: str, problem: ConditionalProblem) -> MethodResult:
    """Run the method called ``name`` on ``problem``."""
    if name not in METHODS:
        raise ValueError(f"Unknown method {name!r}; valid methods are {sorted(METHODS)}.")
    logger.info("running %s on %d rows", name, problem.y.shape[0])
    return METHODS[name](problem)
