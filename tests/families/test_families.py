"""Tests of every exponential family, driven by one list of registered cases."""

import math
import pickle

import mpmath
import pytest
import torch

from pyro_deq import families
from pyro_deq.errors import NumericalError
from pyro_deq.families import registry
from pyro_deq.families.continuous_bernoulli import series_threshold

DTYPES = [torch.float32, torch.float64]

# Digits for the mpmath references, enough for eta as small as 1e-30.
mpmath.mp.dps = 60

# Switch points of the continuous Bernoulli series in eta = 2 u, for both dtypes.
_SWITCHES = [2 * series_threshold(dtype) for dtype in DTYPES]
ETA_GRID = sorted(
    [-50.0, -10.0, -1.0, -0.3, -5e-4, -1e-6, 0.0, 1e-6, 5e-4, 0.3, 1.0, 10.0, 50.0]
    + [sign * switch for switch in _SWITCHES for sign in (-1, 1)]
)
N_COLUMNS = 4

# One count per entry of the (len(ETA_GRID), N_COLUMNS) grid, between 5 and 11.
PER_ENTRY_COUNT = torch.arange(len(ETA_GRID) * N_COLUMNS).reshape(-1, N_COLUMNS) % 7 + 5

FAMILY_CASES = [
    ("gaussian", {"scale": 1.0}),
    ("gaussian", {"scale": 2.5}),
    ("bernoulli", {}),
    ("binomial", {"total_count": 10}),
    ("binomial", {"total_count": PER_ENTRY_COUNT}),
    ("poisson", {}),
    ("continuous_bernoulli", {}),
]

# One valid data value per column, for each family.
Y_VALUES = {
    "gaussian": [-3.0, 0.0, 1.5, 60.0],
    "bernoulli": [0.0, 1.0, 1.0, 0.0],
    "binomial": [0.0, 1.0, 3.0, 5.0],
    "poisson": [0.0, 1.0, 5.0, 30.0],
    "continuous_bernoulli": [0.0, 0.3, 0.5, 1.0],
}


def _case_id(case):
    name, params = case
    if "total_count" in params:
        return f"{name}-{'per_entry' if torch.is_tensor(params['total_count']) else 'scalar'}"
    return "-".join([name] + [f"{key}={value}" for key, value in params.items()])


@pytest.fixture(params=FAMILY_CASES, ids=[_case_id(case) for case in FAMILY_CASES])
def family(request):
    name, params = request.param
    return families.get(name, **params)


@pytest.fixture(params=DTYPES, ids=["float32", "float64"])
def dtype(request):
    return request.param


def _eta_grid(dtype, requires_grad=False):
    eta = torch.tensor(ETA_GRID, dtype=dtype)[:, None].expand(-1, N_COLUMNS).clone()
    return eta.requires_grad_(requires_grad)


def _y_grid(family, dtype):
    row = torch.tensor(Y_VALUES[family.name], dtype=dtype)
    return row.expand(len(ETA_GRID), N_COLUMNS).clone()


def _tolerance(dtype, *terms):
    """Return an absolute tolerance of a few hundred eps times the size of the terms."""
    scale = 1 + sum(term.abs() for term in terms)
    return 200 * torch.finfo(dtype).eps * scale


def _mpmath_log_partition(eta):
    eta = mpmath.mpf(eta)
    return mpmath.mpf(0) if eta == 0 else mpmath.log(mpmath.expm1(eta) / eta)


# Derivatives of the log-partition


def test_mean_is_gradient_of_log_partition(family, dtype):
    eta = _eta_grid(dtype, requires_grad=True)
    (gradient,) = torch.autograd.grad(family.log_partition(eta).sum(), eta)

    mean = family.mean(eta).detach()
    assert torch.all(torch.isfinite(gradient))
    assert torch.all((gradient - mean).abs() <= _tolerance(dtype, mean))


def test_variance_is_second_derivative(family, dtype):
    eta = _eta_grid(dtype, requires_grad=True)
    (gradient,) = torch.autograd.grad(family.log_partition(eta).sum(), eta, create_graph=True)
    (second,) = torch.autograd.grad(gradient.sum(), eta)

    variance = family.variance(eta).detach()
    assert torch.all(torch.isfinite(second))
    assert torch.all((second - variance).abs() <= _tolerance(dtype, variance))


def test_variance_is_gradient_of_mean(family, dtype):
    eta = _eta_grid(dtype, requires_grad=True)
    (gradient,) = torch.autograd.grad(family.mean(eta).sum(), eta)

    variance = family.variance(eta).detach()
    assert torch.all((gradient - variance).abs() <= _tolerance(dtype, variance))


def test_log_partition_derivatives_match_hooks(family, dtype):
    eta = _eta_grid(dtype)
    log_partition, mean, variance = family.log_partition_derivatives(eta)

    for together, alone in ((log_partition, family.log_partition(eta)), (mean, family.mean(eta)),
                            (variance, family.variance(eta))):
        finite = torch.isfinite(alone)
        assert torch.equal(torch.isfinite(together), finite)
        assert torch.all((together - alone)[finite].abs() <= _tolerance(dtype, alone[finite]))


def test_variance_given_mean_matches_variance(family, dtype):
    eta = _eta_grid(dtype)
    variance = family.variance(eta)

    given_mean = family.variance_given_mean(eta, family.mean(eta))
    finite = torch.isfinite(variance)
    assert torch.equal(torch.isfinite(given_mean), finite)
    assert torch.all((given_mean - variance)[finite].abs() <= _tolerance(dtype, variance[finite]))


def test_variance_within_max_variance(family, dtype):
    variance = family.variance(_eta_grid(dtype))

    assert torch.all(variance >= 0)
    assert torch.all(variance <= family.max_variance * (1 + torch.finfo(dtype).eps))


# Log-probabilities


def test_log_prob_matches_torch(family, dtype):
    eta = _eta_grid(dtype)
    y = _y_grid(family, dtype)

    base = family.log_base_measure(y)
    linear = family.sufficient_statistic(y) * eta
    log_partition = family.log_partition(eta)
    ours = base + linear - log_partition
    reference = family.distribution(eta).log_prob(y)

    # torch's continuous Bernoulli clamps its probabilities to [eps, 1 - eps], so its
    # normaliser is wrong beyond |eta| ~ log(1/eps); the mpmath test covers that range.
    checked = torch.ones_like(eta, dtype=torch.bool)
    if family.name == "continuous_bernoulli":
        checked = eta.abs() < math.log(1 / torch.finfo(dtype).eps) - 2

    tolerance = _tolerance(dtype, base, linear, log_partition)
    assert ours.shape == reference.shape
    assert torch.all(((ours - reference).abs() <= tolerance)[checked])


def test_continuous_bernoulli_log_prob_matches_mpmath(dtype):
    family = families.get("continuous_bernoulli")
    eta = _eta_grid(dtype)
    y = _y_grid(family, dtype)

    linear = y * eta
    log_partition = family.log_partition(eta)
    ours = family.log_base_measure(y) + linear - log_partition

    expected = torch.tensor(
        [
            float(mpmath.mpf(y_value) * mpmath.mpf(eta_value) - _mpmath_log_partition(eta_value))
            for y_value, eta_value in zip(y.flatten().tolist(), eta.flatten().tolist())
        ],
        dtype=torch.float64,
    ).reshape(eta.shape)

    # y * eta - A(eta) cancels near eta = 0, so the error is relative to the terms.
    tolerance = _tolerance(dtype, linear, log_partition).double()
    assert torch.all((ours.double() - expected).abs() <= tolerance)


# Continuous Bernoulli near its removable singularity


@pytest.mark.parametrize("eta_value", ETA_GRID + [1e-30, -1e-30, 1e4, -1e4])
def test_continuous_bernoulli_moments_match_mpmath(eta_value, dtype):
    family = families.get("continuous_bernoulli")
    eta = torch.tensor(eta_value, dtype=dtype)
    exact = mpmath.mpf(float(eta))

    expected_mean = mpmath.diff(_mpmath_log_partition, exact) if exact != 0 else 0.5
    expected_variance = (
        mpmath.diff(_mpmath_log_partition, exact, 2) if exact != 0 else mpmath.mpf(1) / 12
    )
    rel = 500 * torch.finfo(dtype).eps

    assert family.log_partition(eta).item() == pytest.approx(
        float(_mpmath_log_partition(exact)), rel=rel, abs=1e-300
    )
    assert family.mean(eta).item() == pytest.approx(float(expected_mean), rel=rel)
    assert family.variance(eta).item() == pytest.approx(float(expected_variance), rel=rel)


def test_continuous_bernoulli_exact_at_zero(dtype):
    family = families.get("continuous_bernoulli")
    zero = torch.zeros((), dtype=dtype)

    assert family.log_partition(zero).item() == 0.0
    assert family.mean(zero).item() == 0.5
    assert family.variance(zero).item() == pytest.approx(1 / 12, rel=torch.finfo(dtype).eps)
    assert family.log_partition(-zero).item() == 0.0


@pytest.mark.parametrize("method", ["log_partition", "mean", "variance"])
def test_continuous_bernoulli_gradients_finite(method, dtype):
    family = families.get("continuous_bernoulli")
    switch = 2 * series_threshold(dtype)
    points = [0.0, -0.0, switch, -switch, switch * (1 - 1e-6), switch * (1 + 1e-6), 1e4, -1e30]
    eta = torch.tensor(points, dtype=dtype, requires_grad=True)

    (gradient,) = torch.autograd.grad(getattr(family, method)(eta).sum(), eta, create_graph=True)
    (second,) = torch.autograd.grad(gradient.sum(), eta)

    assert torch.all(torch.isfinite(gradient))
    assert torch.all(torch.isfinite(second))


@pytest.mark.parametrize("method", ["log_partition", "mean", "variance"])
def test_continuous_bernoulli_continuous_at_switch(method, dtype):
    family = families.get("continuous_bernoulli")
    switch = 2 * series_threshold(dtype)
    step = 4 * torch.finfo(dtype).eps * switch
    eta = torch.tensor([switch - step, switch + step], dtype=dtype)

    below, above = getattr(family, method)(eta).tolist()

    assert below == pytest.approx(above, rel=500 * torch.finfo(dtype).eps)


# Poisson overflow


def test_poisson_log_partition_overflows_to_inf():
    family = families.get("poisson")

    assert family.log_partition(torch.tensor([100.0])).item() == math.inf


def test_poisson_check_canonical_names_rows():
    family = families.get("poisson")
    eta = torch.tensor([[1.0, 100.0], [2.0, 3.0], [math.nan, 0.0], [4.0, 5.0]])

    with pytest.raises(NumericalError, match=r"2 row\(s\): \[0, 2\]") as info:
        family.check_canonical(eta)

    assert info.value.diagnostics["rows"] == [0, 2]
    assert info.value.diagnostics["n_bad_entries"] == 2
    assert info.value.diagnostics["family"] == "poisson"
    assert info.value.diagnostics["max_eta"] == 100.0


def test_check_finite_canonical_accepts_finite(family):
    families.check_finite_canonical(_eta_grid(torch.float64), family)


def test_check_finite_canonical_one_dimensional():
    with pytest.raises(NumericalError) as info:
        families.check_finite_canonical(torch.tensor([0.0, 1e3]), families.get("poisson"))

    assert info.value.diagnostics["rows"] == [1]


# Validation


def test_validate_accepts_valid_data(family, dtype):
    family.validate(_y_grid(family, dtype))


@pytest.mark.parametrize("shape", [(4,), (2, 2, 2), ()])
def test_validate_rejects_non_matrix(family, shape):
    with pytest.raises(ValueError, match=r"shape \(N, d\)") as info:
        family.validate(torch.zeros(shape))

    assert str(tuple(shape)) in str(info.value)


def test_validate_rejects_non_tensor(family):
    with pytest.raises(TypeError, match="torch.Tensor"):
        family.validate([[0.0, 1.0]])


REJECTIONS = [
    ("gaussian", {}, [[0.0, math.nan]], "NaN or infinite", "`mask`"),
    ("gaussian", {}, [[0.0, -math.inf]], "NaN or infinite", "`mask`"),
    ("poisson", {}, [[1.0, -2.0]], "negative", "family='gaussian' for centred data"),
    ("poisson", {}, [[1.0, 0.5]], "not integer-valued", "`offset` of log library size"),
    ("bernoulli", {}, [[1.0, -1.0]], "negative", "family='gaussian'"),
    ("bernoulli", {}, [[1.0, 0.3]], "neither 0 nor 1", "family='continuous_bernoulli'"),
    ("bernoulli", {}, [[1.0, 3.0]], "integer-valued and above 1", "total_count=n (at least 3"),
    ("binomial", {"total_count": 4}, [[1.0, 7.0]], "above `total_count`", "at least 7 there"),
    ("binomial", {"total_count": 4}, [[1.0, 1.5]], "not integer-valued", "proportions"),
    ("binomial", {"total_count": 4}, [[1.0, -1.0]], "negative", "family='gaussian'"),
    ("continuous_bernoulli", {}, [[0.5, 1.5]], "outside [0, 1]", "Rescale"),
    ("continuous_bernoulli", {}, [[0.5, -0.5]], "outside [0, 1]", "Rescale"),
]


@pytest.mark.parametrize("name, params, first_row, problem, fix", REJECTIONS)
def test_validate_rejection_message(name, params, first_row, problem, fix):
    family = families.get(name, **params)
    y = torch.tensor([[0.0, 0.0]] * 2 + first_row + [first_row[-1]], dtype=torch.float64)
    bad_value = first_row[-1][1]

    with pytest.raises(ValueError) as info:
        family.validate(y, name="counts")

    message = str(info.value)
    assert repr(name) in message
    assert "`counts`" in message
    assert "2 entries are" in message
    assert problem in message
    assert "(row 2, column 1)" in message
    assert repr(bad_value) in message
    assert fix in message


def test_validate_single_bad_entry_grammar():
    with pytest.raises(ValueError, match="1 entry is negative"):
        families.get("poisson").validate(torch.tensor([[1.0, -1.0]]))


def test_validate_skips_masked_entries(family):
    y = _y_grid(family, torch.float64)
    y[0, 0] = math.nan
    y[1, 1] = -7.5
    mask = torch.ones_like(y, dtype=torch.bool)
    mask[0, 0] = False
    mask[1, 1] = False

    family.validate(y, mask=mask)


def test_validate_checks_unmasked_entries():
    y = torch.tensor([[math.nan, -1.0]])
    mask = torch.tensor([[False, True]])

    with pytest.raises(ValueError, match="negative"):
        families.get("poisson").validate(y, mask=mask)


def test_validate_rejects_bad_mask():
    family = families.get("bernoulli")
    y = torch.zeros(2, 3)

    with pytest.raises(ValueError, match=r"shape of `y`"):
        family.validate(y, mask=torch.ones(3, 2, dtype=torch.bool))
    with pytest.raises(TypeError, match="boolean"):
        family.validate(y, mask=torch.ones(2, 3))


def test_validate_accepts_integer_counts():
    y = torch.tensor([[0, 3], [2, 1]])

    families.get("poisson").validate(y)
    families.get("binomial", total_count=3).validate(y)


def test_binomial_validate_rejects_unbroadcastable_count():
    family = families.get("binomial", total_count=torch.tensor([3, 4, 5]))

    with pytest.raises(ValueError, match=r"shape \(3,\) does not broadcast"):
        family.validate(torch.zeros(2, 4))


def test_binomial_validate_per_feature_count():
    family = families.get("binomial", total_count=torch.tensor([1, 5]))

    family.validate(torch.tensor([[1.0, 5.0]]))
    with pytest.raises(ValueError, match=r"\(row 0, column 0\) with value 2.0"):
        family.validate(torch.tensor([[2.0, 5.0]]))


# Binomial and Gaussian parameters


@pytest.mark.parametrize("count", [0, -3, torch.tensor([2, 0]), torch.tensor([1.5]), torch.tensor([])])
def test_binomial_rejects_invalid_count(count):
    with pytest.raises(ValueError, match="total_count"):
        families.Binomial(count)


@pytest.mark.parametrize("count", [2.5, True, "4"])
def test_binomial_rejects_count_type(count):
    with pytest.raises(TypeError, match="total_count"):
        families.Binomial(count)


def test_binomial_max_variance():
    assert families.Binomial(8).max_variance == 2.0
    assert families.Binomial(torch.tensor([[4, 12], [2, 1]])).max_variance == 3.0


def test_binomial_index_rows():
    count = torch.tensor([[1, 2], [3, 4], [5, 6]])
    family = families.Binomial(count)

    subset = family.index_rows(torch.tensor([2, 0]), n_rows=3)

    assert isinstance(subset, families.Binomial)
    assert torch.equal(subset.total_count, torch.tensor([[5, 6], [1, 2]]))
    with pytest.raises(ValueError, match="3 rows"):
        families.Binomial(count[:2]).index_rows(torch.tensor([0]), n_rows=3)


@pytest.mark.parametrize("count", [7, torch.tensor([3, 4]), torch.tensor([[3, 4]])])
def test_binomial_index_rows_shared_count(count):
    family = families.Binomial(count)

    assert family.index_rows(torch.tensor([0, 1]), n_rows=5) is family


def test_gaussian_expected_value_and_scale():
    family = families.get("gaussian", scale=2.0)
    eta = torch.tensor([[1.0, -4.0]])

    assert torch.equal(family.expected_value(eta), eta)
    assert torch.equal(family.mean(eta), eta / 4)
    assert family.max_variance == 0.25


@pytest.mark.parametrize("scale", [0.0, -1.0, math.inf, math.nan])
def test_gaussian_rejects_invalid_scale(scale):
    with pytest.raises(ValueError, match="scale"):
        families.Gaussian(scale)


# Registry


def test_registry_names():
    assert families.names() == [
        "bernoulli", "binomial", "continuous_bernoulli", "gaussian", "poisson"
    ]


def test_registry_returns_classes():
    assert isinstance(families.get("gaussian"), families.Gaussian)
    assert families.get("gaussian", scale=3.0).scale == 3.0
    assert isinstance(families.get("continuous_bernoulli"), families.ContinuousBernoulli)


def test_registry_passes_object_through(family):
    assert families.get(family) is family


def test_registry_rejects_params_with_object():
    with pytest.raises(TypeError, match=r"together with parameters \['scale'\]"):
        families.get(families.Gaussian(), scale=2.0)


def test_registry_unknown_name_lists_names():
    with pytest.raises(ValueError, match="unknown family 'gamma'") as info:
        families.get("gamma")

    for name in families.names():
        assert name in str(info.value)


def test_registry_unknown_params():
    with pytest.raises(TypeError, match=r"unknown parameters \['sd'\]. Accepted parameters: scale"):
        families.get("gaussian", sd=2.0)
    with pytest.raises(TypeError, match=r"unknown parameters \['rate'\]. Accepted parameters: none"):
        families.get("poisson", rate=2.0)


def test_registry_missing_total_count():
    with pytest.raises(TypeError, match=r"requires the parameters \['total_count'\]"):
        families.get("binomial")


def test_registry_rejects_non_name():
    with pytest.raises(TypeError, match="registry name"):
        families.get(families.Poisson)


def test_register_extension(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    class Shifted(families.Gaussian):
        name = "shifted"

    families.register("shifted", Shifted)

    assert "shifted" in families.names()
    assert isinstance(families.get("shifted", scale=2.0), Shifted)
    with pytest.raises(ValueError, match="already registered"):
        families.register("shifted", Shifted)
    with pytest.raises(TypeError, match="subclass of ExponentialFamily"):
        families.register("other", dict)


def test_family_pickle_round_trip(family):
    restored = pickle.loads(pickle.dumps(family))
    eta = _eta_grid(torch.float64)

    assert type(restored) is type(family)
    assert repr(restored) == repr(family)
    assert torch.equal(restored.log_partition(eta), family.log_partition(eta))
