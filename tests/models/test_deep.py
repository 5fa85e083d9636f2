"""DeepExpFamPCA: sites, log joint and the joint fixed point over all layers."""

from __future__ import annotations

import pytest
import torch
from pyro import poutine
from pyro.nn import PyroParam

import pyro_deq

from expfam_helpers import model_scipy_map


def _deep_model_and_data(seed: int = 0):
    """Widths [6, 4, 2], Bernoulli observations, float64 parameters.

    The hidden biases near 2 keep the ReLU pre-activations at the MAP positive
    (at least 0.5 for seed 0); with loadings of scale 1 and biases near 0.5 the
    MAP of some rows sits on a ReLU kink, where no stationary point exists.
    """
    torch.manual_seed(seed)
    model = pyro_deq.DeepExpFamPCA([6, 4, 2], family="bernoulli", hidden_nonlinearity="relu")
    model.double()
    generator = torch.Generator().manual_seed(seed)
    for layer, (rows, cols) in ((1, (6, 4)), (2, (4, 2))):
        weight = 0.5 * torch.randn(rows, cols, generator=generator, dtype=torch.float64)
        setattr(model, f"weight{layer}", PyroParam(weight))
        setattr(model, f"bias{layer}", PyroParam(2.0 + 0.1 * torch.randn(rows, generator=generator, dtype=torch.float64)))
    y = torch.bernoulli(torch.full((5, 6), 0.5, dtype=torch.float64), generator=generator)
    return model, y


def test_trace_has_layer_sites():
    model, y = _deep_model_and_data()
    trace = poutine.trace(model).get_trace(y)
    sample_sites = [name for name, site in trace.nodes.items() if site["type"] == "sample" and name != "data"]
    assert sample_sites == ["z2", "z1", "y"]
    assert trace.nodes["z2"]["value"].shape == (5, 2)
    assert trace.nodes["z1"]["value"].shape == (5, 4)
    assert trace.nodes["y"]["is_observed"]


def test_log_joint_equals_trace_log_prob():
    model, y = _deep_model_and_data()
    trace = poutine.trace(model).get_trace(y)
    trace.compute_log_prob()
    z = torch.cat([trace.nodes["z1"]["value"], trace.nodes["z2"]["value"]], dim=-1)
    per_row = sum(trace.nodes[name]["log_prob"] for name in ("z1", "z2", "y"))
    assert torch.allclose(model.log_joint(y, z), per_row, atol=1e-10)


def test_joint_fixed_point_is_stationary():
    model, y = _deep_model_and_data()
    result = pyro_deq.solve(model.problem(y), torch.zeros(5, 6, dtype=torch.float64))
    assert bool(result.converged.all())

    z = result.z.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(model.log_joint(y, z).sum(), z)
    for layer, piece in zip(("z1", "z2"), model.split_latents(gradient)):
        assert piece.abs().max() < 1e-8, layer

    fixed_point = model.fixed_point_map(y, result.z)
    assert torch.allclose(fixed_point, result.z, atol=1e-9)


def test_joint_fixed_point_matches_scipy():
    model, y = _deep_model_and_data()
    result = pyro_deq.solve(model.problem(y), torch.zeros(5, 6, dtype=torch.float64))
    reference = model_scipy_map(model, y)
    # ReLU hidden layers make the joint objective non-convex; both start at
    # zero and for this seed reach the same local maximum.
    assert (result.z - reference).norm() / reference.norm() < 1e-6


def test_deep_rejects_short_widths():
    with pytest.raises(ValueError, match="at least one latent layer"):
        pyro_deq.DeepExpFamPCA([5])
    with pytest.raises(ValueError, match=r"`widths\[1\]` must be a positive integer"):
        pyro_deq.DeepExpFamPCA([5, 0])
