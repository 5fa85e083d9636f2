"""AutoDEQ on a user-written Pyro model through the generic adapter."""

from __future__ import annotations

import math

import pyro
import pytest
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import SVI, Predictive, Trace_ELBO
from pyro.optim import Adam

import pyro_deq

N_ROWS, N_FEATURES, N_COMPONENTS = 12, 5, 2


def _parameters():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(N_FEATURES, N_COMPONENTS, generator=generator, dtype=torch.float64)
    bias = 0.3 * torch.randn(N_FEATURES, generator=generator, dtype=torch.float64)
    y = torch.bernoulli(torch.full((N_ROWS, N_FEATURES), 0.4, dtype=torch.float64), generator=generator)
    return weight, bias, y


WEIGHT, BIAS, Y = _parameters()


def user_model(y, subsample_size=None):
    weight = pyro.param("W", lambda: WEIGHT.clone())
    bias = pyro.param("b", lambda: BIAS.clone())
    loc = torch.zeros(N_COMPONENTS, dtype=torch.float64)
    with pyro.plate("data", y.shape[0], subsample_size=subsample_size) as rows:
        z = pyro.sample("z", dist.Normal(loc, 1.0).to_event(1))
        logits = z @ weight.T + bias
        return pyro.sample("y", dist.Bernoulli(logits=logits).to_event(1), obs=y[rows])


def _fast_path_map() -> torch.Tensor:
    model = pyro_deq.ExpFamPCA(N_FEATURES, N_COMPONENTS, family="bernoulli", weight=WEIGHT, bias=BIAS)
    return pyro_deq.AutoDEQ(model).median(Y)["z"]


def test_generic_map_matches_fast_path():
    guide = pyro_deq.AutoDEQ(user_model, latent="z", plate="data")
    z = guide.median(Y)["z"]
    assert z.shape == (N_ROWS, N_COMPONENTS)
    assert torch.allclose(z, _fast_path_map(), rtol=0, atol=1e-9)


def test_generic_guide_trace_has_only_its_sites():
    guide = pyro_deq.AutoDEQ(user_model, latent="z", plate="data")
    trace = poutine.trace(guide).get_trace(Y)
    assert set(trace.nodes) == {"_INPUT", "_RETURN", "data", "z"}
    assert trace.nodes["z"]["value"].shape == (N_ROWS, N_COMPONENTS)


def test_generic_svi_step_updates_parameters():
    guide = pyro_deq.AutoDEQ(user_model, latent="z", plate="data")
    svi = SVI(user_model, guide, Adam({"lr": 0.05}), Trace_ELBO())
    losses = [svi.step(Y) for _ in range(5)]
    assert all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < losses[0]
    assert not torch.equal(pyro.param("W").detach(), WEIGHT)


def test_generic_predictive_runs():
    guide = pyro_deq.AutoDEQ(user_model, latent="z", plate="data")
    samples = Predictive(user_model, guide=guide, num_samples=2, return_sites=["z", "y"])(Y)
    assert samples["z"].shape == (2, N_ROWS, N_COMPONENTS)
    assert samples["y"].shape == (2, N_ROWS, N_FEATURES)
    assert torch.allclose(samples["z"][1], _fast_path_map(), atol=1e-9)


def test_generic_subsample_keeps_row_map():
    guide = pyro_deq.AutoDEQ(user_model, latent="z", plate="data")
    full = _fast_path_map()
    pyro.set_rng_seed(3)
    for _ in range(2):
        trace = poutine.trace(guide).get_trace(Y, subsample_size=5)
        rows = trace.nodes["data"]["value"]
        assert rows.shape == (5,)
        assert torch.allclose(trace.nodes["z"]["value"], full[rows], rtol=0, atol=1e-9)

    svi = SVI(user_model, guide, Adam({"lr": 0.05}), Trace_ELBO())
    assert math.isfinite(svi.step(Y, subsample_size=5))


def test_generic_median_of_subsampling_plate_warns():
    guide = pyro_deq.AutoDEQ(user_model, latent="z", plate="data")
    full = _fast_path_map()
    pyro.set_rng_seed(4)
    with pytest.warns(UserWarning, match="subsampled 5 of 12 rows"):
        z = guide.median(Y, subsample_size=5)["z"]

    rows = guide.diagnostics["rows"]
    assert z.shape == (5, N_COMPONENTS)
    assert torch.allclose(z, full[torch.tensor(rows)], rtol=0, atol=1e-9)
