"""Gradients when the solve takes zero iterations: the guide's implicit gradient still exists and is correct.

Warm starts of the solver itself are tested in tests/solvers/test_gradients.py
and tests/models/test_fixed_point.py. With zero loadings the guide's starting
point z = 0 already is the fixed point, so the guide's own solve takes no step.
"""

import torch

import pyro_deq


def loss_of_map(model, guide, y):
    z = guide._map((y,), {})[0]
    return (z * torch.arange(1.0, 3.0, dtype=z.dtype)).sum()


def test_implicit_gradient_after_zero_iterations():
    generator = torch.Generator().manual_seed(0)
    y = torch.bernoulli(torch.full((4, 5), 0.5), generator=generator).double()
    bias = torch.linspace(-1.0, 1.0, 5, dtype=torch.float64)
    model = pyro_deq.ExpFamPCA(5, 2, family="bernoulli", weight=torch.zeros(5, 2, dtype=torch.float64), bias=bias)
    guide = pyro_deq.AutoDEQ(model, gradient="implicit")

    loss = loss_of_map(model, guide, y)
    assert guide.diagnostics["n_iter"] == 0
    (gradient,) = torch.autograd.grad(loss, model.weight)
    assert float(gradient.abs().max()) > 0

    # dz*/dW at W = 0 is (T(y) - A'(b)) / lambda summed over rows, by the
    # implicit function theorem; the loss weights component i by i + 1.
    signal = (y - torch.sigmoid(bias)).sum(0)
    expected = torch.outer(signal, torch.tensor([1.0, 2.0], dtype=torch.float64))
    assert torch.allclose(gradient, expected, rtol=0, atol=1e-12)

    step = 1e-6
    for feature, component in [(0, 0), (3, 1)]:
        values = []
        for sign in (1.0, -1.0):
            shifted = torch.zeros(5, 2, dtype=torch.float64)
            shifted[feature, component] = sign * step
            other = pyro_deq.ExpFamPCA(5, 2, family="bernoulli", weight=shifted, bias=bias)
            with torch.no_grad():
                values.append(loss_of_map(other, pyro_deq.AutoDEQ(other, tol=1e-14), y))
        finite_difference = (values[0] - values[1]) / (2 * step)
        assert abs(float(gradient[feature, component] - finite_difference)) < 1e-6
