"""Tests of the canonical nonlinearities and their registry."""

import pickle

import pytest
import torch

from pyro_deq import nonlinearities

U = torch.tensor([[-3.0, -1e-8, 0.0, 1e-8, 2.5]], dtype=torch.float64)


def test_identity_values():
    identity = nonlinearities.get("identity")

    assert torch.equal(identity(U), U)
    assert torch.equal(identity.derivative(U), torch.ones_like(U))
    assert torch.equal(identity.second_derivative(U), torch.zeros_like(U))
    assert identity.is_identity
    assert identity.name == "identity"


def test_relu_values():
    relu = nonlinearities.get("relu")

    assert torch.equal(relu(U), U.clamp(min=0))
    assert torch.equal(relu.derivative(U), torch.tensor([[0.0, 0.0, 0.0, 1.0, 1.0]], dtype=U.dtype))
    assert torch.equal(relu.second_derivative(U), torch.zeros_like(U))
    assert not relu.is_identity
    assert relu.name == "relu"


def test_relu_derivative_zero_at_zero():
    assert nonlinearities.ReLU().derivative(torch.zeros(3)).tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("name", ["identity", "relu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_derivative_matches_autograd(name, dtype):
    nonlinearity = nonlinearities.get(name)
    u = torch.tensor([-2.0, -0.5, 0.25, 3.0], dtype=dtype, requires_grad=True)

    (gradient,) = torch.autograd.grad(nonlinearity(u).sum(), u)

    assert torch.equal(gradient, nonlinearity.derivative(u.detach()))
    assert nonlinearity.derivative(u).dtype == dtype


def test_registry_names():
    assert nonlinearities.names() == ["identity", "relu"]


def test_registry_passes_object_through():
    relu = nonlinearities.ReLU()

    assert nonlinearities.get(relu) is relu


def test_registry_unknown_name_lists_names():
    with pytest.raises(ValueError, match="unknown nonlinearity 'tanh'. Valid names: identity, relu"):
        nonlinearities.get("tanh")


def test_registry_rejects_non_name():
    with pytest.raises(TypeError, match="registry name"):
        nonlinearities.get(torch.relu)


@pytest.mark.parametrize("name", ["identity", "relu"])
def test_pickle_round_trip(name):
    restored = pickle.loads(pickle.dumps(nonlinearities.get(name)))

    assert restored.name == name
    assert torch.equal(restored(U), nonlinearities.get(name)(U))
