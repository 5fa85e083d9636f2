"""ExpFamPCA as a Pyro model: traces, subsampling, mask, offset, weight decay and argument checks."""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from pyro import poutine

import pyro_deq

from expfam_helpers import FAMILY_IDS, make_problem_data


def _trace(model, z, *args, **kwargs):
    conditioned = poutine.condition(model, data={"z": z})
    trace = poutine.trace(conditioned).get_trace(*args, **kwargs)
    trace.compute_log_prob()
    return trace


@pytest.mark.parametrize("family_id", FAMILY_IDS)
def test_log_joint_equals_trace_log_prob(family_id):
    model, y = make_problem_data(family_id, n_rows=6, n_features=5, n_components=2, seed=1)
    z = torch.randn(6, 2, dtype=torch.float64)
    trace = _trace(model, z, y)

    per_row = trace.nodes["z"]["unscaled_log_prob"] + trace.nodes["y"]["unscaled_log_prob"]
    assert per_row.shape == (6,)
    assert torch.allclose(model.log_joint(y, z), per_row, atol=1e-10)
    assert trace.nodes["y"]["is_observed"]
    assert torch.equal(trace.nodes["y"]["value"], y)


def test_prior_predictive_samples_rows():
    model = pyro_deq.ExpFamPCA(4, 2, family="poisson")
    y = model(None, n_rows=7)
    assert y.shape == (7, 4)
    assert bool((y >= 0).all())
    trace = poutine.trace(model).get_trace(None, n_rows=7)
    assert not trace.nodes["y"]["is_observed"]
    assert trace.nodes["z"]["value"].shape == (7, 2)


def test_subsample_scales_log_prob():
    model, y = make_problem_data("bernoulli", n_rows=12, n_features=5, n_components=2, seed=2)
    pyro.set_rng_seed(0)
    trace = poutine.trace(model).get_trace(y, subsample_size=4)
    trace.compute_log_prob()
    rows = trace.nodes["data"]["value"]
    assert rows.shape == (4,)

    for name in ("z", "y"):
        assert trace.nodes[name]["scale"] == pytest.approx(3.0)
    z = trace.nodes["z"]["value"]
    assert torch.equal(trace.nodes["y"]["value"], y[rows])
    expected = 3.0 * model.log_joint(y[rows], z).sum()
    assert trace.log_prob_sum().item() == pytest.approx(expected.item(), rel=1e-12)


def test_explicit_subsample_indices():
    model, y = make_problem_data("poisson", n_rows=10, n_features=4, n_components=2, seed=3)
    rows = torch.tensor([7, 2, 5])
    offset = torch.arange(10, dtype=torch.float64) / 10
    z = torch.randn(3, 2, dtype=torch.float64)
    trace = _trace(model, z, y, offset=offset, subsample=rows)

    assert torch.equal(trace.nodes["data"]["value"], rows)
    assert torch.equal(trace.nodes["y"]["value"], y[rows])
    assert trace.nodes["y"]["scale"] == pytest.approx(10 / 3)
    per_row = trace.nodes["z"]["unscaled_log_prob"] + trace.nodes["y"]["unscaled_log_prob"]
    assert torch.allclose(per_row, model.log_joint(y[rows], z, offset=offset[rows]), atol=1e-10)


def test_mask_drops_entries():
    model, y = make_problem_data("gaussian1", n_rows=5, n_features=4, n_components=2, seed=4)
    mask = torch.ones(5, 4, dtype=torch.bool)
    mask[0, 1] = mask[3, 0] = mask[3, 3] = False
    y_missing = y.clone()
    y_missing[~mask] = float("nan")
    z = torch.randn(5, 2, dtype=torch.float64)

    masked = model.log_joint(y_missing, z, mask=mask)
    assert bool(torch.isfinite(masked).all())
    y_other = torch.where(mask, y, torch.full_like(y, 100.0))
    assert torch.allclose(model.log_joint(y_other, z, mask=mask), masked, atol=1e-12)

    eta = z @ model.weight.detach().T + model.bias.detach()
    entries = torch.distributions.Normal(eta, 1.0).log_prob(y)
    prior = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    assert torch.allclose(masked, (entries * mask).sum(-1) + prior, atol=1e-12)

    trace = _trace(model, z, y_missing, mask=mask)
    per_row = trace.nodes["z"]["unscaled_log_prob"] + trace.nodes["y"]["unscaled_log_prob"]
    assert torch.allclose(per_row, masked, atol=1e-12)

    gradient = model.log_joint_gradient(y_missing, z, mask=mask)
    assert bool(torch.isfinite(gradient).all())


def test_offset_adds_to_canonical_parameter():
    model, y = make_problem_data("poisson", n_rows=5, n_features=4, n_components=2, seed=5)
    offset = torch.log(torch.arange(1, 6, dtype=torch.float64))
    z = torch.randn(5, 2, dtype=torch.float64)

    eta = z @ model.weight.detach().T + model.bias.detach() + offset.unsqueeze(-1)
    expected = torch.distributions.Poisson(eta.exp()).log_prob(y).sum(-1)
    expected = expected + torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    assert torch.allclose(model.log_joint(y, z, offset=offset), expected, atol=1e-10)

    trace = _trace(model, z, y, offset=offset)
    assert torch.allclose(trace.nodes["y"]["fn"].base_dist.rate, eta.exp(), atol=1e-12)


def test_weight_decay_makes_weight_latent():
    model, y = make_problem_data("bernoulli", n_rows=5, n_features=4, n_components=2, seed=6, weight_decay=4.0)
    trace = poutine.trace(model).get_trace(y)
    trace.compute_log_prob()
    site = trace.nodes["weight"]
    assert site["type"] == "sample"
    assert not site["is_observed"]
    assert site["value"].shape == (4, 2)
    scale = torch.tensor(0.5, dtype=torch.float64)
    expected = torch.distributions.Normal(0.0, scale).log_prob(site["value"]).sum()
    assert site["log_prob_sum"].item() == pytest.approx(expected.item(), rel=1e-12)
    assert "weight" not in dict(model.named_parameters())

    with pytest.raises(ValueError, match="weight_decay is set"):
        model.problem(y)
    weight = torch.zeros(4, 2, dtype=torch.float64)
    assert model.problem(y, weight=weight).weight is weight


# ------------------------------------------------------------- data checks


def _bernoulli_model():
    return pyro_deq.ExpFamPCA(3, 2, family="bernoulli")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"y": [["a", "b", "c"]]}, "`y` must be a numeric array or tensor"),
        ({"y": torch.zeros(3)}, "2-D matrix of shape"),
        ({"y": torch.zeros(2, 4)}, "4 columns but the model has n_features=3"),
        ({"y": torch.zeros(0, 3)}, "`y` has no rows"),
        ({"y": torch.tensor([[0.0, float("nan"), 1.0]])}, r"1 missing values \(NaN\), the first at \(row, column\) \(0, 1\)"),
        (
            {"y": torch.tensor([[0.0, float("nan"), 1.0]]), "mask": torch.tensor([[True, True, False]])},
            r"NaN at \(row, column\) \(0, 1\) where `mask` is True",
        ),
        ({"y": torch.zeros(1, 3), "mask": torch.ones(1, 3)}, "`mask` must be a bool tensor"),
        ({"y": torch.zeros(1, 3), "mask": torch.ones(1, 2, dtype=torch.bool)}, r"`mask` must have the shape of `y` \(1, 3\)"),
        ({"y": torch.zeros(2, 3), "offset": torch.zeros(2, 2)}, r"`offset` must broadcast to the shape of `y` \(2, 3\)"),
        ({"y": torch.zeros(2, 3), "offset": torch.tensor([0.0, float("inf")])}, "`offset` must be finite"),
        ({"y": torch.zeros(2, 3), "offset": "abc"}, "`offset` must be a numeric array or tensor"),
        ({"y": torch.full((1, 3), 2.0)}, "y"),
    ],
    ids=[
        "non-numeric", "1-d", "columns", "no-rows", "nan-without-mask", "nan-under-mask",
        "mask-dtype", "mask-shape", "offset-shape", "offset-non-finite", "offset-non-numeric", "support",
    ],
)
def test_invalid_data_raises(kwargs, message):
    model = _bernoulli_model()
    with pytest.raises(ValueError, match=message):
        model.prepare(kwargs.pop("y"), **kwargs)


def test_valid_offset_shapes_accepted():
    model = _bernoulli_model()
    y = torch.zeros(2, 3)
    for offset in (torch.zeros(2), torch.zeros(2, 1), torch.zeros(3), torch.zeros(2, 3), 0.5):
        data = model.prepare(y, offset=offset)
        assert (data.offset + data.y).shape == (2, 3)


def test_square_data_rejects_ambiguous_offset():
    model = pyro_deq.ExpFamPCA(3, 2, family="bernoulli")
    y = torch.zeros(3, 3)
    with pytest.raises(ValueError, match=r"ambiguous.*reshape\(3, 1\).*reshape\(1, 3\)"):
        model.prepare(y, offset=torch.zeros(3))
    for offset in (torch.zeros(3, 1), torch.zeros(1, 3)):
        assert model.prepare(y, offset=offset).offset.shape == offset.shape


@pytest.mark.parametrize("n_rows", [3, 5])
def test_expected_value_offset_matches_model(n_rows):
    model, y = make_problem_data("poisson", n_rows=n_rows, n_features=4, n_components=2, seed=5)
    z = torch.randn(n_rows, 2, dtype=torch.float64)
    eta = z @ model.weight.detach().T + model.bias.detach()
    per_feature = torch.linspace(-1.0, 1.0, 4, dtype=torch.float64)
    per_row = torch.linspace(0.0, 2.0, n_rows, dtype=torch.float64)

    with torch.no_grad():
        torch.testing.assert_close(model.expected_value(z, offset=per_feature), (eta + per_feature).exp())
        torch.testing.assert_close(model.expected_value(z, offset=per_row), (eta + per_row[:, None]).exp())


def test_masked_entries_filled_with_zero():
    model = _bernoulli_model()
    y = torch.tensor([[1.0, float("nan"), 0.0]])
    data = model.prepare(y, mask=~torch.isnan(y))
    assert torch.equal(data.y, torch.tensor([[1.0, 0.0, 0.0]]))


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"n_features": 0}, ValueError, "`n_features` must be a positive integer, got 0"),
        ({"n_features": 2.0}, ValueError, "`n_features` must be a positive integer, got 2.0"),
        ({"n_components": True}, ValueError, "`n_components` must be a positive integer, got True"),
        ({"prior_precision": 0.0}, ValueError, "`prior_precision` must be a finite positive number, got 0.0"),
        ({"prior_precision": math.nan}, ValueError, "`prior_precision` must be a finite positive number"),
        ({"weight_decay": -1.0}, ValueError, "`weight_decay` must be a finite positive number, got -1.0"),
        ({"weight": torch.zeros(2, 3)}, ValueError, r"`weight` must have shape \(n_features, n_components\) = \(3, 2\)"),
        ({"weight": torch.full((3, 2), math.inf)}, ValueError, "`weight` contains non-finite values"),
        ({"bias": torch.zeros(2)}, ValueError, r"`bias` must have shape \(n_features,\) = \(3,\)"),
        ({"bias": torch.full((3,), math.nan)}, ValueError, "`bias` contains non-finite values"),
        ({"family": "gamma"}, ValueError, "unknown family 'gamma'"),
        ({"nonlinearity": "tanh"}, ValueError, "tanh"),
    ],
)
def test_constructor_rejects_invalid_arguments(kwargs, error, message):
    arguments = {"n_features": 3, "n_components": 2}
    arguments.update(kwargs)
    with pytest.raises(error, match=message):
        pyro_deq.ExpFamPCA(**arguments)


def test_constructor_keeps_initial_values():
    weight = torch.arange(6, dtype=torch.float64).reshape(3, 2)
    model = pyro_deq.ExpFamPCA(3, 2, weight=weight, bias=[1.0, 2.0, 3.0])
    assert model.dtype == torch.float64
    assert torch.equal(model.weight.detach(), weight)
    assert torch.equal(model.bias.detach(), torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    weight.add_(1.0)
    assert model.weight.detach()[0, 0] == 0.0


def test_prior_predictive_needs_n_rows():
    with pytest.raises(ValueError, match="`n_rows` is required"):
        _bernoulli_model()(None)


def test_relu_default_bias_opens_mask():
    model = pyro_deq.ExpFamPCA(4, 2, family="bernoulli", nonlinearity="relu", name="relu_bias")
    assert torch.equal(model.bias.detach(), torch.full((4,), 0.5))

    # With the mask open at z = 0, the bias and the latents receive gradients.
    y = torch.tensor([[1.0, 0.0, 1.0, 1.0]])
    bias = model.bias.detach().clone().requires_grad_(True)
    log_joint = model.log_joint(y, torch.zeros(1, 2), bias=bias).sum()
    (gradient,) = torch.autograd.grad(log_joint, bias)
    assert float(gradient.abs().sum()) > 0
    assert float(model.log_joint_gradient(y, torch.zeros(1, 2)).detach().abs().sum()) > 0


def test_deep_relu_layers_start_with_open_mask():
    model = pyro_deq.DeepExpFamPCA([5, 3, 2], family="bernoulli")
    assert torch.equal(model.bias1.detach(), torch.zeros(5))
    assert torch.equal(model.bias2.detach(), torch.full((3,), 0.5))
