"""AutoDEQ and AutoDEQLaplace as drop-in Pyro autoguides for ExpFamPCA."""

from __future__ import annotations

import math
import pickle

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Predictive, Trace_ELBO
from pyro.infer.autoguide import AutoDelta, AutoLowRankMultivariateNormal, AutoNormal
from pyro.optim import Adam, ClippedAdam

import pyro_deq

from expfam_helpers import FAMILY_IDS, make_problem_data, model_scipy_map

GUIDE_CLASSES = [AutoDelta, AutoNormal, AutoLowRankMultivariateNormal, pyro_deq.AutoDEQ, pyro_deq.AutoDEQLaplace]


def _fit(model, guide, y, n_steps: int, lr: float = 0.05, **model_kwargs) -> list[float]:
    svi = SVI(model, guide, Adam({"lr": lr}), Trace_ELBO())
    return [svi.step(y, **model_kwargs) for _ in range(n_steps)]


@pytest.mark.parametrize("guide_class", GUIDE_CLASSES, ids=lambda cls: cls.__name__)
def test_guide_swap_trains(guide_class):
    pyro.set_rng_seed(0)
    model, y = make_problem_data("bernoulli", n_rows=30, n_features=6, n_components=2, dtype=torch.float32)
    losses = _fit(model, guide_class(model), y, n_steps=60)

    assert all(math.isfinite(loss) for loss in losses)
    assert sum(losses[-10:]) < sum(losses[:10])


# ------------------------------------------------ MAP at fixed parameters


def _expansive_bernoulli():
    """Bernoulli with ``||W||² / (4 λ) = 8``: plain fixed-point iteration diverges."""
    model, y = make_problem_data("bernoulli", n_rows=10, n_features=8, n_components=2, seed=11)
    weight = model.weight.detach()
    weight = weight * math.sqrt(32.0) / torch.linalg.matrix_norm(weight, ord=2)
    return pyro_deq.ExpFamPCA(8, 2, family="bernoulli", weight=weight, bias=model.bias.detach()), y


def _fixed_parameter_cases():
    cases = {family_id: (lambda f=family_id: make_problem_data(f, n_rows=10, n_features=6, n_components=2, seed=21))
             for family_id in FAMILY_IDS}
    cases["bernoulli-expansive"] = _expansive_bernoulli
    cases["poisson-expansive"] = lambda: make_problem_data(
        "poisson", n_rows=10, n_features=8, n_components=2, weight_scale=1.2, seed=12
    )
    return cases


FIXED_CASES = _fixed_parameter_cases()


def _autodelta_map(model, y, n_steps: int = 800) -> torch.Tensor:
    """Fit AutoDelta on the latents only: the model's parameters are hidden from SVI."""
    blocked = poutine.block(model, hide=["weight", "bias"])
    guide = AutoDelta(blocked)
    # The learning rate decays from 0.1 to 0.1 * 0.993**800 ≈ 4e-4, so the
    # iterates settle instead of oscillating at the scale of a fixed rate.
    svi = SVI(blocked, guide, ClippedAdam({"lr": 0.1, "lrd": 0.993}), Trace_ELBO())
    weight_before = model.weight.detach().clone()
    for _ in range(n_steps):
        svi.step(y)
    assert torch.equal(model.weight.detach(), weight_before)
    return guide.median(y)["z"].detach()


@pytest.mark.parametrize("case", list(FIXED_CASES))
def test_autodeq_matches_autodelta_and_scipy(case):
    pyro.set_rng_seed(0)
    model, y = FIXED_CASES[case]()
    z_deq = pyro_deq.AutoDEQ(model).median(y)["z"]
    assert z_deq.shape == (10, 2)

    reference = model_scipy_map(model, y)
    assert (z_deq - reference).norm() / reference.norm() < 1e-6

    z_delta = _autodelta_map(model, y)
    assert (z_deq - z_delta).abs().max() < 1e-3


def test_picard_guide_fails_where_default_converges():
    model, y = _expansive_bernoulli()
    guide = pyro_deq.AutoDEQ(model, method="picard", max_iter=100)
    with pytest.warns(pyro_deq.ConvergenceWarning):
        z = guide.median(y)["z"]
    assert bool(torch.isfinite(z).all())
    assert guide.diagnostics["fraction_converged"] < 1.0


# ------------------------------------------------------------- Laplace


def test_laplace_is_exact_gaussian_posterior():
    model, y = make_problem_data("gaussian2", n_rows=7, n_features=5, n_components=3, seed=4)
    weight, bias = model.weight.detach(), model.bias.detach()
    precision = torch.eye(3, dtype=torch.float64) + weight.T @ weight / 4.0
    covariance = torch.linalg.inv(precision)
    mean = (y - bias) @ weight @ covariance.T / 4.0

    guide = pyro_deq.AutoDEQLaplace(model)
    posterior = guide.get_posterior(y)
    assert posterior.batch_shape == (7,)
    assert posterior.event_shape == (3,)
    assert torch.allclose(posterior.mean, mean, rtol=0, atol=1e-6)
    assert torch.allclose(posterior.covariance_matrix, covariance.expand(7, 3, 3), rtol=0, atol=1e-6)

    levels = [0.1, 0.5, 0.9]
    quantiles = guide.quantiles(levels, y)["z"]
    assert quantiles.shape == (3, 7, 3)
    sd = covariance.diagonal().sqrt()
    for i, level in enumerate(levels):
        expected = mean + sd * math.sqrt(2.0) * torch.erfinv(torch.tensor(2 * level - 1, dtype=torch.float64))
        assert torch.allclose(quantiles[i], expected, rtol=0, atol=1e-6)
    assert torch.allclose(guide.standard_deviation(y)["z"], sd.expand(7, 3), atol=1e-6)


def test_laplace_log_marginal_exact_for_gaussian():
    model, y = make_problem_data("gaussian2", n_rows=7, n_features=5, n_components=3, seed=4)
    weight, bias = model.weight.detach(), model.bias.detach()

    # Integrating z out gives y ~ Normal(b, s² I + W Wᵀ) with s = 2.
    covariance = 4.0 * torch.eye(5, dtype=torch.float64) + weight @ weight.T
    exact = torch.distributions.MultivariateNormal(bias, covariance).log_prob(y)

    log_marginal = pyro_deq.AutoDEQLaplace(model).log_marginal(y)
    assert log_marginal.shape == (7,)
    assert torch.allclose(log_marginal, exact, rtol=0, atol=1e-8)


def test_laplace_objective_gradient_matches_finite_differences():
    model, y = make_problem_data("poisson", n_rows=6, n_features=4, n_components=2, seed=5)
    guide = pyro_deq.AutoDEQLaplace(model, objective="laplace")
    elbo = Trace_ELBO()

    loss = elbo.differentiable_loss(model, guide, y)
    weight = pyro.param("weight").unconstrained()
    (gradient,) = torch.autograd.grad(loss, weight)

    step = 1e-6
    expected = torch.zeros_like(weight)
    for i in range(weight.numel()):
        values = []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                weight.view(-1)[i] += sign * step
            values.append(elbo.differentiable_loss(model, guide, y).item())
            with torch.no_grad():
                weight.view(-1)[i] -= sign * step
        expected.view(-1)[i] = (values[0] - values[1]) / (2 * step)
    assert torch.allclose(gradient, expected, rtol=1e-5, atol=1e-5)

    # The log-determinant term changes the gradient: the MAP objective's differs.
    map_guide = pyro_deq.AutoDEQ(model)
    (map_gradient,) = torch.autograd.grad(elbo.differentiable_loss(model, map_guide, y), weight)
    assert (map_gradient - gradient).abs().max() > 1e-3


# ------------------------------------------------- subsampling and Predictive


def _trace_guide(guide, *args, **kwargs):
    return poutine.trace(guide).get_trace(*args, **kwargs)


def test_subsample_rows_match_full_solve():
    model, y = make_problem_data("binomial5", n_rows=12, n_features=5, n_components=2, seed=6)
    guide = pyro_deq.AutoDEQ(model)
    full = guide.median(y)["z"]

    for rows in (torch.tensor([3, 7, 0]), torch.tensor([7, 11, 3, 5])):
        trace = _trace_guide(guide, y, subsample=rows)
        assert torch.equal(trace.nodes["data"]["value"], rows)
        assert torch.allclose(trace.nodes["z"]["value"], full[rows], atol=1e-10)

    pyro.set_rng_seed(1)
    trace = _trace_guide(guide, y, subsample_size=5)
    rows = trace.nodes["data"]["value"]
    assert rows.shape == (5,)
    assert torch.allclose(trace.nodes["z"]["value"], full[rows], atol=1e-10)

    losses = _fit(model, guide, y, n_steps=3, subsample_size=5)
    assert all(math.isfinite(loss) for loss in losses)


def test_subsample_with_per_entry_total_count():
    torch.manual_seed(0)
    total_count = torch.randint(1, 10, (12, 4)).double()
    y = torch.distributions.Binomial(total_count, probs=torch.full((12, 4), 0.3, dtype=torch.float64)).sample()
    family = pyro_deq.families.get("binomial", total_count=total_count)
    model = pyro_deq.ExpFamPCA(4, 2, family=family, weight=0.5 * torch.randn(4, 2, dtype=torch.float64),
                               bias=torch.zeros(4, dtype=torch.float64))
    guide = pyro_deq.AutoDEQ(model)
    full = guide.median(y)["z"]

    rows = torch.tensor([3, 7, 11])
    assert torch.allclose(guide.median(y, subsample=rows)["z"], full[rows], atol=1e-10)
    trace = _trace_guide(guide, y, subsample=rows)
    assert torch.allclose(trace.nodes["z"]["value"], full[rows], atol=1e-10)
    losses = _fit(model, guide, y, n_steps=2, subsample_size=5)
    assert all(math.isfinite(loss) for loss in losses)


def test_predictive_on_new_data():
    model, y = make_problem_data("poisson", n_rows=10, n_features=5, n_components=2, seed=7)
    guide = pyro_deq.AutoDEQ(model)
    _fit(model, guide, y, n_steps=5)

    _, y_new = make_problem_data("poisson", n_rows=4, n_features=5, n_components=2, seed=8)
    samples = Predictive(model, guide=guide, num_samples=3, return_sites=["z", "y"])(y_new)
    assert samples["z"].shape == (3, 4, 2)
    assert samples["y"].shape == (3, 4, 5)
    assert torch.allclose(samples["z"][0], guide.median(y_new)["z"], atol=1e-10)


def _guide_list_with_weight_prior(global_guide_class):
    model, y = make_problem_data("bernoulli", n_rows=8, n_features=5, n_components=2, seed=9, weight_decay=4.0)
    guide = pyro_deq.AutoDEQGuideList(model)
    guide.append(global_guide_class(poutine.block(model, expose=["weight"])))
    guide.append(pyro_deq.AutoDEQ(model))
    return model, y, guide


def test_parallel_predictive_solves_each_global_draw():
    pyro.set_rng_seed(2)
    model, y, guide = _guide_list_with_weight_prior(AutoNormal)
    losses = _fit(model, guide, y, n_steps=5)
    assert all(math.isfinite(loss) for loss in losses)

    samples = Predictive(model, guide=guide, num_samples=4, parallel=True, return_sites=["weight", "z"])(y)
    weights, z = samples["weight"], samples["z"]
    assert z.shape == (4, 8, 2)
    assert (z[0] - z[1]).abs().max() > 1e-3
    for draw in range(4):
        weight = weights[draw].reshape(5, 2)
        problem = model.problem(y, weight=weight)
        expected = pyro_deq.solve(problem, torch.zeros(8, 2, dtype=torch.float64)).z
        assert torch.allclose(z[draw], expected, atol=1e-8)


def test_guide_list_with_named_model():
    torch.manual_seed(3)
    y = torch.bernoulli(torch.full((6, 4), 0.4, dtype=torch.float64))
    model = pyro_deq.ExpFamPCA(4, 2, family="bernoulli", weight_decay=4.0, name="named",
                               weight=0.5 * torch.randn(4, 2, dtype=torch.float64),
                               bias=torch.zeros(4, dtype=torch.float64))
    assert model.weight_site == "named.weight"
    guide = pyro_deq.AutoDEQGuideList(model)
    guide.append(AutoDelta(poutine.block(model, expose=["named.weight"])))
    guide.append(pyro_deq.AutoDEQ(model))
    _fit(model, guide, y, n_steps=3)

    medians = guide.median(y)
    problem = model.problem(y, weight=medians["named.weight"])
    expected = pyro_deq.solve(problem, torch.zeros(6, 2, dtype=torch.float64)).z
    assert torch.allclose(medians["z"], expected, atol=1e-8)


def test_guide_list_quantiles_with_autodelta_part():
    model, y, guide = _guide_list_with_weight_prior(AutoDelta)
    _fit(model, guide, y, n_steps=3)
    quantiles = guide.quantiles([0.25, 0.75], y)
    assert quantiles["weight"].shape == (2, 5, 2)
    assert quantiles["z"].shape == (2, 8, 2)
    medians = guide.median(y)
    assert torch.allclose(quantiles["z"][1], medians["z"])
    expected = model.problem(y, weight=medians["weight"])
    expected = pyro_deq.solve(expected, torch.zeros(8, 2, dtype=torch.float64)).z
    assert torch.allclose(medians["z"], expected, atol=1e-8)


# ------------------------------------------------------ state and diagnostics


def test_save_and_load_give_identical_map(tmp_path):
    model, y = make_problem_data("bernoulli", n_rows=10, n_features=5, n_components=2, seed=10)
    guide = pyro_deq.AutoDEQ(model)
    _fit(model, guide, y, n_steps=10)
    z = guide.median(y)["z"]
    pyro.get_param_store().save(tmp_path / "params.pt")
    torch.save(model.state_dict(), tmp_path / "model.pt")

    pyro.clear_param_store()
    fresh = pyro_deq.ExpFamPCA(5, 2, family="bernoulli").double()
    fresh.load_state_dict(torch.load(tmp_path / "model.pt"))
    pyro.get_param_store().load(tmp_path / "params.pt")
    assert torch.equal(pyro_deq.AutoDEQ(fresh).median(y)["z"], z)


def test_pickled_guide_gives_identical_map():
    model, y = make_problem_data("poisson", n_rows=6, n_features=4, n_components=2, seed=13)
    guide = pyro_deq.AutoDEQLaplace(model)
    _fit(model, guide, y, n_steps=3)
    z = guide.median(y)["z"]

    restored = pickle.loads(pickle.dumps(guide))
    assert torch.equal(restored.median(y)["z"], z)
    assert guide.model is model
    assert torch.equal(guide.median(y)["z"], z)


def test_diagnostics_after_call():
    model, y = make_problem_data("bernoulli", n_rows=6, n_features=4, n_components=2, seed=14)
    guide = pyro_deq.AutoDEQ(model)
    guide(y)
    diagnostics = guide.diagnostics
    assert diagnostics["status"] == "converged"
    assert diagnostics["fraction_converged"] == 1.0
    assert 0 < diagnostics["n_iter"] <= 10
    assert diagnostics["max_residual"] < 1e-10
    assert diagnostics["result"].z.shape == (6, 2)


def test_small_max_iter_warns_with_row_count():
    model, y = make_problem_data("poisson", n_rows=6, n_features=4, n_components=2, seed=15)
    guide = pyro_deq.AutoDEQ(model, max_iter=1)
    with pytest.warns(pyro_deq.ConvergenceWarning, match=r"6 of 6 rows did not converge"):
        guide.median(y)
    assert guide.diagnostics["fraction_converged"] == 0.0
