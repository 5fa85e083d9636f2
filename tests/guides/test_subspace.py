"""Training AutoDEQ recovers the loading subspace of synthetic Bernoulli data."""

from __future__ import annotations

import math

import numpy as np
import pyro
import pytest
import scipy.linalg
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

import pyro_deq

# Seed 0, N = 150 rows, d = 8 features, k = 2 components, true loadings of
# scale 2, 120 Adam steps at lr 0.1. Measured largest principal angles on a
# CPU with torch 2.13: 12.3 degrees for the joint MAP and 22.5 degrees for the
# Laplace objective (about 5 s each); the thresholds leave a margin for
# rounding differences across platforms.
MAX_ANGLE_DEGREES = {"map": 16.0, "laplace": 27.0}


def _synthetic_data():
    generator = torch.Generator().manual_seed(0)
    true_weight = 2.0 * torch.randn(8, 2, generator=generator, dtype=torch.float64)
    z = torch.randn(150, 2, generator=generator, dtype=torch.float64)
    y = torch.bernoulli(torch.sigmoid(z @ true_weight.T), generator=generator)
    return true_weight, y


def _largest_angle(weight: torch.Tensor, true_weight: torch.Tensor) -> float:
    angles = scipy.linalg.subspace_angles(weight.detach().numpy(), true_weight.numpy())
    return float(np.degrees(angles.max()))


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["map", "laplace"])
def test_training_recovers_loading_subspace(objective):
    true_weight, y = _synthetic_data()
    pyro.set_rng_seed(0)
    model = pyro_deq.ExpFamPCA(8, 2, family="bernoulli").double()
    if objective == "map":
        guide = pyro_deq.AutoDEQ(model)
    else:
        guide = pyro_deq.AutoDEQLaplace(model, objective="laplace")
    initial_angle = _largest_angle(model.weight, true_weight)

    svi = SVI(model, guide, Adam({"lr": 0.1}), Trace_ELBO())
    losses = [svi.step(y) for _ in range(120)]

    assert all(math.isfinite(loss) for loss in losses)
    final_angle = _largest_angle(model.weight, true_weight)
    assert final_angle < MAX_ANGLE_DEGREES[objective]
    assert final_angle < initial_angle
