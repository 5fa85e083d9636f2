"""Reproducibility: the same seed gives the same latents and parameters on the same machine."""

import pyro
import torch

import pyro_deq
from pyro_deq.training import train


def run(seed):
    generator = torch.Generator().manual_seed(0)
    y = torch.poisson(torch.full((25, 6), 2.0), generator=generator)
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    model = pyro_deq.ExpFamPCA(6, 2, family="poisson")
    guide = pyro_deq.AutoDEQLaplace(model)
    train(model, guide, y, num_steps=8, batch_size=10)
    return model.weight.detach().clone(), model.bias.detach().clone(), guide.median(y)["z"]


def test_same_seed_same_results():
    first, second = run(4), run(4)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_other_seed_other_results():
    assert not torch.equal(run(4)[0], run(5)[0])
