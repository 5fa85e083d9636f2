"""Tests of DEQPCA: scikit-learn's estimator checks and behaviour on the digits."""

from __future__ import annotations

import pickle

import numpy as np
import pyro
import pytest
import scipy.sparse
import torch
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.utils.estimator_checks import parametrize_with_checks

import pyro_deq
from pyro_deq import DEQPCA, families

BINOMIAL = families.get("binomial", total_count=16)


# The checks run with the default Gaussian family, whose support is all of ℝ,
# so every check's data are valid input and none has to be skipped. A few
# epochs keep each check fast; the public default stays max_epochs=200.
# check_array_api_input skips itself unless SCIPY_ARRAY_API=1 is set.
@parametrize_with_checks([DEQPCA(max_epochs=5)])
def test_sklearn_compatible(estimator, check):
    check(estimator)


@pytest.fixture(scope="module")
def digits():
    """Return 200 rows of digit counts (float64, values 0..16) and their labels."""
    data = pyro_deq.datasets.load_digits()
    order = np.random.RandomState(0).permutation(data.data.shape[0])[:200]
    return data.data.numpy().astype(np.float64)[order], np.asarray(data.target)[order]


@pytest.fixture(scope="module")
def fitted(digits):
    """Return a DEQPCA fitted to the digits and its fit_transform output."""
    counts, _ = digits
    estimator = DEQPCA(n_components=3, family=BINOMIAL, max_epochs=25, learning_rate=0.1, random_state=0)
    latents = estimator.fit_transform(counts)
    return estimator, latents


def test_fit_transform_shapes(digits, fitted):
    counts, _ = digits
    estimator, latents = fitted

    assert latents.shape == (200, 3)
    assert estimator.components_.shape == (3, 64)
    assert estimator.bias_.shape == (64,)
    assert estimator.n_features_in_ == 64
    assert estimator.n_iter_ == 25
    assert len(estimator.loss_curve_) == 25
    assert estimator.loss_curve_[-1] < estimator.loss_curve_[0]
    assert estimator.inverse_transform(latents).shape == (200, 64)
    assert estimator.predict_mean(counts[:7]).shape == (7, 64)


def test_transform_subset_equals_fit_transform_rows(digits, fitted):
    counts, _ = digits
    estimator, latents = fitted

    np.testing.assert_allclose(estimator.transform(counts[50:80]), latents[50:80], rtol=1e-9, atol=1e-9)


def test_inverse_transform_is_binomial_mean(fitted):
    estimator, latents = fitted

    logits = latents @ estimator.components_ + estimator.bias_
    expected = 16.0 / (1.0 + np.exp(-logits))

    np.testing.assert_allclose(estimator.inverse_transform(latents), expected, rtol=1e-10)


def test_clone_round_trip(fitted):
    estimator, _ = fitted

    copy = clone(estimator)

    parameters = copy.get_params()
    family = parameters.pop("family")
    expected = estimator.get_params()
    expected.pop("family")
    assert parameters == expected
    assert isinstance(family, type(BINOMIAL))
    assert family.total_count == 16
    assert not hasattr(copy, "components_")


def test_pickle_round_trip(digits, fitted):
    counts, _ = digits
    estimator, _ = fitted

    restored = pickle.loads(pickle.dumps(estimator))

    np.testing.assert_array_equal(restored.transform(counts[:20]), estimator.transform(counts[:20]))


def test_score_beats_intercept_only(digits, fitted):
    counts, _ = digits
    estimator, _ = fitted
    # With zero loadings the latents drop out of the likelihood, and the
    # Laplace marginal is the exact log-likelihood of the bias alone.
    intercept_only = pickle.loads(pickle.dumps(estimator))
    intercept_only.components_ = np.zeros_like(estimator.components_)

    score = estimator.score(counts)
    baseline = intercept_only.score(counts)

    assert np.isfinite(score)
    assert np.isfinite(baseline)
    assert score > baseline + 10.0
    assert estimator.score_samples(counts).shape == (200,)


def test_deviance_is_non_negative_and_below_intercept_only(digits, fitted):
    counts, _ = digits
    estimator, _ = fitted
    intercept_only = pickle.loads(pickle.dumps(estimator))
    intercept_only.components_ = np.zeros_like(estimator.components_)

    deviance = estimator.deviance(counts)

    assert deviance.shape == (200,)
    assert (deviance >= 0).all()
    assert deviance.mean() < intercept_only.deviance(counts).mean()


def test_gaussian_deviance_is_squared_error():
    data = np.random.RandomState(0).randn(40, 5)
    estimator = DEQPCA(n_components=2, max_epochs=20, random_state=0).fit(data)

    residual = data - estimator.predict_mean(data)

    np.testing.assert_allclose(estimator.deviance(data), (residual**2).sum(1), rtol=1e-9)


def test_sparse_input_equals_dense(digits):
    counts, _ = digits
    dense = DEQPCA(n_components=2, family=BINOMIAL, max_epochs=10, random_state=0)
    sparse = clone(dense)

    dense_latents = dense.fit_transform(counts[:80])
    sparse_latents = sparse.fit_transform(scipy.sparse.csr_matrix(counts[:80]))

    np.testing.assert_allclose(sparse.components_, dense.components_, rtol=1e-12)
    np.testing.assert_allclose(sparse_latents, dense_latents, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        sparse.score_samples(scipy.sparse.csc_matrix(counts[80:90])), dense.score_samples(counts[80:90])
    )


def test_pipeline_and_grid_search(digits):
    counts, labels = digits
    pipeline = make_pipeline(
        DEQPCA(family=BINOMIAL, max_epochs=10, random_state=0),
        LogisticRegression(max_iter=500),
    )

    search = GridSearchCV(pipeline, {"deqpca__n_components": [2, 4]}, cv=2)
    search.fit(counts[:120], labels[:120])

    assert search.best_params_["deqpca__n_components"] in (2, 4)
    assert search.score(counts[120:], labels[120:]) > 0.3


def test_fit_leaves_callers_param_store_alone(digits):
    counts, _ = digits
    pyro.param("caller.value", torch.ones(3))

    DEQPCA(family=BINOMIAL, max_epochs=2, random_state=0).fit(counts[:30])

    assert list(pyro.get_param_store().keys()) == ["caller.value"]
    torch.testing.assert_close(pyro.param("caller.value"), torch.ones(3))


def test_fit_restores_torch_generator(digits):
    counts, _ = digits
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)

    DEQPCA(family=BINOMIAL, max_epochs=2, random_state=0).fit(counts[:30])

    torch.testing.assert_close(torch.rand(3), expected)


def test_fit_with_options(digits):
    counts, _ = digits
    base = DEQPCA(n_components=2, family=BINOMIAL, max_epochs=5, random_state=0)

    for estimator in (
        clone(base).set_params(objective="laplace"),
        clone(base).set_params(weight_decay=1.0),
        clone(base).set_params(batch_size=32),
    ):
        estimator.fit(counts[:64])
        assert np.isfinite(estimator.score(counts[:64]))
        assert len(estimator.loss_curve_) == 5


def test_invalid_data_names_family_and_fix():
    estimator = DEQPCA(family=BINOMIAL, max_epochs=2)

    with pytest.raises(ValueError, match="binomial") as error:
        estimator.fit(np.full((5, 3), -1.0))
    assert "gaussian" in str(error.value)


@pytest.mark.parametrize(
    ("parameter", "value"),
    [("n_components", 0), ("max_epochs", 1.5), ("learning_rate", -1.0), ("objective", "elbo"),
     ("prior_precision", float("nan")), ("batch_size", 0)],
)
def test_invalid_hyperparameter_raises(parameter, value):
    estimator = DEQPCA(max_epochs=2).set_params(**{parameter: value})

    with pytest.raises(ValueError, match=parameter):
        estimator.fit(np.zeros((5, 3)))


def test_unknown_family_name_raises():
    with pytest.raises(ValueError, match="unknown family"):
        DEQPCA(family="gamma", max_epochs=2).fit(np.ones((5, 3)))


def test_deviance_of_continuous_bernoulli_is_not_implemented():
    data = np.random.RandomState(0).uniform(size=(10, 3))
    estimator = DEQPCA(family="continuous_bernoulli", max_epochs=2, random_state=0).fit(data)

    with pytest.raises(NotImplementedError, match="continuous"):
        estimator.deviance(data)
