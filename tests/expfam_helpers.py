"""Small synthetic data per family and a scipy reference MAP, for the model and guide tests.

The reference MAP is computed independently of the package's solvers: scipy's
L-BFGS-B maximises the summed autograd log joint ``model.log_joint`` in float64.
"""

from __future__ import annotations

import numpy as np
import scipy.optimize
import torch

import pyro_deq
from pyro_deq import families

# Family cases: id -> (registry name, constructor arguments).
FAMILY_CASES = {
    "gaussian1": ("gaussian", {"scale": 1.0}),
    "gaussian2": ("gaussian", {"scale": 2.0}),
    "bernoulli": ("bernoulli", {}),
    "binomial5": ("binomial", {"total_count": 5}),
    "poisson": ("poisson", {}),
    "continuous_bernoulli": ("continuous_bernoulli", {}),
}
FAMILY_IDS = list(FAMILY_CASES)


def make_family(family_id: str):
    name, params = FAMILY_CASES[family_id]
    return families.get(name, **params)


def sample_observations(family, eta: torch.Tensor, generator_seed: int) -> torch.Tensor:
    """Draw ``y`` from ``family`` at ``eta`` with a fixed seed, shape of ``eta``."""
    torch.manual_seed(generator_seed)
    with torch.no_grad():
        return family.distribution(eta).sample()


def make_problem_data(
    family_id: str,
    n_rows: int = 12,
    n_features: int = 6,
    n_components: int = 2,
    dtype: torch.dtype = torch.float64,
    nonlinearity: str = "identity",
    weight_scale: float = 0.6,
    seed: int = 0,
    **model_kwargs,
):
    """Build an ExpFamPCA with fixed random loadings and data sampled from it.

    :returns: ``(model, y)`` with ``y`` of shape ``(n_rows, n_features)`` in ``dtype``.
    """
    generator = torch.Generator().manual_seed(seed)
    weight = weight_scale * torch.randn(n_features, n_components, generator=generator, dtype=torch.float64)
    bias = 0.2 * torch.randn(n_features, generator=generator, dtype=torch.float64)
    if family_id == "poisson":
        # Keep the rates moderate so the counts stay small.
        weight = weight * 0.5
    z = torch.randn(n_rows, n_components, generator=generator, dtype=torch.float64)
    family = make_family(family_id)
    eta = pyro_deq.nonlinearities.get(nonlinearity)(z @ weight.T + bias)
    y = sample_observations(family, eta, seed + 1)
    model = pyro_deq.ExpFamPCA(
        n_features,
        n_components,
        family=family,
        nonlinearity=nonlinearity,
        weight=weight.to(dtype),
        bias=bias.to(dtype),
        **model_kwargs,
    )
    return model, y.to(dtype)


def scipy_map(log_joint, n_rows: int, n_components: int, z0: np.ndarray | None = None) -> torch.Tensor:
    """Maximise ``sum_n log_joint(z)_n`` over ``z`` of shape ``(n_rows, n_components)`` with L-BFGS-B.

    ``log_joint`` maps a float64 tensor ``(N, k)`` to ``(N,)``. The tolerances
    are at the float64 floor, so the result is accurate to about 1e-8.
    """

    def value_and_grad(flat):
        z = torch.tensor(flat.reshape(n_rows, n_components), dtype=torch.float64, requires_grad=True)
        value = -log_joint(z).sum()
        (grad,) = torch.autograd.grad(value, z)
        return float(value.detach()), grad.numpy().ravel()

    start = np.zeros(n_rows * n_components) if z0 is None else np.asarray(z0, dtype=np.float64).ravel()
    result = scipy.optimize.minimize(
        value_and_grad,
        start,
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 10_000, "maxcor": 50, "ftol": 1e-15, "gtol": 1e-11},
    )
    return torch.tensor(result.x.reshape(n_rows, n_components), dtype=torch.float64)


def model_scipy_map(model, y, **data_kwargs) -> torch.Tensor:
    """Return the float64 reference MAP of ``model``'s latents given ``y``, shape ``(N, k)``."""
    if isinstance(model, pyro_deq.DeepExpFamPCA):
        n_components = sum(model.latent_sizes)
        dtype = model.bias1.dtype
    else:
        n_components = model.n_components
        dtype = model.dtype
    if dtype != torch.float64:
        raise ValueError(f"the reference MAP needs a float64 model, got {dtype}.")
    y = torch.as_tensor(y, dtype=torch.float64)
    return scipy_map(lambda z: model.log_joint(y, z, **data_kwargs), y.shape[0], n_components)


