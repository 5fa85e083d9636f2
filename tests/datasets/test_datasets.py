import sys

import numpy as np
import pytest
import scipy.sparse
import torch

from pyro_deq.datasets import (
    Dataset,
    load_breast_cancer,
    load_digits,
    load_reuters,
    make_synthetic,
)


def test_digits_counts():
    digits = load_digits()

    assert isinstance(digits, Dataset)
    assert digits.data.shape == (1797, 64)
    assert digits.data.dtype == torch.float32
    assert digits.data.min() == 0
    assert digits.data.max() == 16
    assert torch.equal(digits.data, digits.data.round())
    assert digits.family == "binomial"
    assert digits.family_params == {"total_count": 16}
    assert digits.target.shape == (1797,)
    assert set(np.unique(digits.target)) == set(range(10))
    assert len(digits.feature_names) == 64
    assert digits.feature_names[0] == "pixel_0_0"
    assert digits.row_names is None
    assert digits.to_dense() is digits.data


@pytest.mark.parametrize("threshold", [0, 8, 15.5, 16])
def test_digits_binarized(threshold):
    counts = load_digits().data
    binary = load_digits(binarize=True, threshold=threshold)

    assert binary.family == "bernoulli"
    assert binary.family_params == {}
    assert binary.data.dtype == torch.float32
    assert set(binary.data.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(binary.data, (counts > threshold).float())


@pytest.mark.parametrize("threshold", [-1, 16.5, "8", None, True])
def test_digits_threshold_invalid(threshold):
    with pytest.raises(ValueError, match="`threshold`") as info:
        load_digits(binarize=True, threshold=threshold)

    assert repr(threshold) in str(info.value)
    assert "threshold=8" in str(info.value)


def test_reuters_sparse():
    reuters = load_reuters()

    assert scipy.sparse.isspmatrix_csr(reuters.data)
    assert reuters.data.shape == (395, 4258)
    assert reuters.shape == (395, 4258)
    assert reuters.data.dtype == np.float32
    assert reuters.data.min() == 0
    assert reuters.family == "poisson"
    assert reuters.target is None
    assert len(reuters.feature_names) == 4258
    assert len(reuters.row_names) == 395
    assert reuters.row_names[0].startswith("0 UK: Prince Charles")

    dense = reuters.to_dense()
    assert isinstance(dense, torch.Tensor)
    assert dense.dtype == torch.float32
    assert dense.shape == (395, 4258)
    assert dense.sum() == pytest.approx(float(reuters.data.sum()))


def test_reuters_dense():
    sparse = load_reuters()
    dense = load_reuters(dense=True)

    assert isinstance(dense.data, torch.Tensor)
    assert dense.data.dtype == torch.float32
    assert torch.equal(dense.data, sparse.to_dense())


def test_breast_cancer_standardized():
    cancer = load_breast_cancer()

    assert cancer.data.shape == (569, 30)
    assert cancer.data.dtype == torch.float32
    assert cancer.family == "gaussian"
    assert cancer.family_params == {"scale": 1.0}
    assert torch.allclose(cancer.data.mean(0), torch.zeros(30), atol=1e-5)
    assert torch.allclose(cancer.data.std(0, unbiased=False), torch.ones(30), atol=1e-4)
    assert np.bincount(cancer.target).tolist() == [212, 357]
    assert len(cancer.feature_names) == 30


def test_breast_cancer_raw():
    cancer = load_breast_cancer(standardize=False)

    assert cancer.data.min() >= 0
    assert cancer.data.max() > 1000


@pytest.mark.parametrize(
    "loader, blocked, package",
    [
        (load_digits, ["sklearn", "sklearn.datasets"], "scikit-learn"),
        (load_breast_cancer, ["sklearn", "sklearn.datasets"], "scikit-learn"),
        (load_reuters, ["lda", "lda.datasets"], "lda"),
    ],
)
def test_missing_package_message(monkeypatch, loader, blocked, package):
    # A None entry in sys.modules makes the import statement raise ImportError.
    for module in blocked:
        monkeypatch.setitem(sys.modules, module, None)

    with pytest.raises(ImportError) as info:
        loader()

    assert 'pip install "pyro-deq[data]"' in str(info.value)
    assert f"pip install {package}" in str(info.value)
    assert loader.__name__ in str(info.value)


def test_synthetic_shapes():
    dataset = make_synthetic(n_samples=90, n_features=7, n_components=4, family="gaussian",
                             family_params={"scale": 0.5})

    assert dataset.data.shape == (90, 7)
    assert dataset.data.dtype == torch.float32
    assert dataset.target.shape == (90,)
    assert dataset.truth["latent"].shape == (90, 4)
    assert dataset.truth["weight"].shape == (7, 4)
    assert dataset.truth["bias"].shape == (7,)
    assert dataset.truth["eta"].shape == (90, 7)
    assert dataset.family == "gaussian"
    assert dataset.family_params == {"scale": 0.5}
    assert len(dataset.feature_names) == 7


def test_synthetic_eta_is_linear():
    dataset = make_synthetic(n_samples=30, n_features=5, family="gaussian")
    truth = dataset.truth

    expected = truth["latent"] @ truth["weight"].T + truth["bias"]
    assert torch.allclose(truth["eta"], expected)


def test_synthetic_latents_inside_shapes():
    dataset = make_synthetic(n_samples=300, n_components=3, family="gaussian")
    z = dataset.truth["latent"]
    labels = torch.as_tensor(dataset.target)

    left = z[labels == 0, :2] - torch.tensor([-1.5, -0.75])
    right = z[labels == 1, :2] - torch.tensor([1.5, -0.75])
    square = z[labels == 2, :2] - torch.tensor([0.0, 1.5])
    assert left.norm(dim=-1).max() <= 1.0
    assert right.norm(dim=-1).max() <= 1.0
    assert square.abs().max() <= 1.0
    assert z[:, 2].abs().max() < 0.5


@pytest.mark.parametrize("n_samples", [1, 2, 600, 601])
def test_synthetic_label_proportions(n_samples):
    dataset = make_synthetic(n_samples=n_samples, family="gaussian")
    counts = np.bincount(dataset.target, minlength=3)

    assert counts.sum() == n_samples
    assert counts.max() - counts.min() <= 1


def test_synthetic_same_seed_same_data():
    first = make_synthetic(seed=3, family="gaussian")
    second = make_synthetic(seed=3, family="gaussian")

    assert torch.equal(first.data, second.data)
    for key in ("latent", "weight", "bias"):
        assert torch.equal(first.truth[key], second.truth[key])


def test_synthetic_other_seed_other_data():
    first = make_synthetic(seed=3, family="gaussian")
    second = make_synthetic(seed=4, family="gaussian")

    assert not torch.equal(first.data, second.data)
    assert not torch.equal(first.truth["weight"], second.truth["weight"])


def test_synthetic_keeps_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)

    torch.manual_seed(123)
    make_synthetic(n_samples=10, family="gaussian")
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize(
    "family, family_params, low, high",
    [
        ("bernoulli", None, 0, 1),
        ("binomial", {"total_count": 5}, 0, 5),
        ("poisson", None, 0, None),
    ],
)
def test_synthetic_family_support(family, family_params, low, high):
    dataset = make_synthetic(n_samples=60, family=family, family_params=family_params)

    assert dataset.family == family
    assert dataset.data.min() >= low
    if high is not None:
        assert dataset.data.max() <= high
    assert torch.equal(dataset.data, dataset.data.round())


@pytest.mark.parametrize(
    "argument, value",
    [
        ("n_samples", 0),
        ("n_samples", 2.5),
        ("n_features", 0),
        ("n_components", 1),
        ("extra_scale", -0.1),
        ("weight_scale", float("nan")),
    ],
)
def test_synthetic_invalid_argument(argument, value):
    with pytest.raises(ValueError, match=f"`{argument}`") as info:
        make_synthetic(**{argument: value}, family="gaussian")

    assert repr(value) in str(info.value)


def test_synthetic_unknown_family():
    with pytest.raises(ValueError, match="`family`") as info:
        make_synthetic(family="not_a_family")

    assert "'not_a_family'" in str(info.value)
    assert "bernoulli" in str(info.value)
