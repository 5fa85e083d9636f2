"""The training loop: one summary warning for unconverged solves, other warnings unchanged."""

import warnings

import pytest
import torch

import pyro_deq
from pyro_deq.training import train


def binary_data():
    generator = torch.Generator().manual_seed(0)
    return torch.bernoulli(torch.full((20, 6), 0.4), generator=generator)


def test_unconverged_steps_warn_once():
    y = binary_data()
    weight = 3.0 * torch.randn(6, 2, generator=torch.Generator().manual_seed(1))
    model = pyro_deq.ExpFamPCA(6, 2, family="bernoulli", weight=weight, name="once")
    guide = pyro_deq.AutoDEQ(model, max_iter=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(model, guide, y, num_steps=5)

    messages = [str(w.message) for w in caught if issubclass(w.category, pyro_deq.ConvergenceWarning)]
    assert len(messages) == 1
    assert messages[0].startswith("In 5 of 5 training steps the fixed-point solve left rows unconverged")
    assert "did not converge after 1 iteration " in messages[0]
    assert result.n_unconverged_steps == 5


def test_converged_training_does_not_warn():
    y = binary_data()
    model = pyro_deq.ExpFamPCA(6, 2, family="bernoulli", name="quiet")
    result = train(model, pyro_deq.AutoDEQ(model), y, num_steps=3)
    assert result.n_unconverged_steps == 0


def test_other_warnings_pass_through(monkeypatch):
    y = binary_data()
    model = pyro_deq.ExpFamPCA(6, 2, family="bernoulli", name="through")
    guide = pyro_deq.AutoDEQ(model)
    original = guide.forward

    def forward_with_warning(*args, **kwargs):
        warnings.warn("a user warning from inside the step", UserWarning)
        return original(*args, **kwargs)

    monkeypatch.setattr(guide, "forward", forward_with_warning)
    with pytest.warns(UserWarning, match="a user warning from inside the step"):
        train(model, guide, y, num_steps=2)
