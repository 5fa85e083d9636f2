"""Real data sets that ship inside installed packages, so nothing is downloaded.

The digits and breast cancer data come with scikit-learn and the Reuters
word counts with the ``lda`` package. Both are optional dependencies
(``pip install "pyro-deq[data]"``).
"""

from __future__ import annotations

import numbers
import warnings

import numpy as np
import torch

from .base import Dataset, import_optional

__all__ = ["load_breast_cancer", "load_digits", "load_reuters"]

# scikit-learn's digits count the set pixels in each 4x4 block of a 32x32
# bitmap, so every value is an integer from 0 to 16.
_DIGITS_MAX_COUNT = 16


def load_digits(binarize: bool = False, threshold: float = 8) -> Dataset:
    """Load scikit-learn's 8x8 handwritten digits.

    Parameters
    ----------
    binarize : bool, default False
        If true, replace each pixel by 1 where its count exceeds ``threshold``
        and by 0 elsewhere, and suggest the Bernoulli family.
    threshold : float, default 8
        Count above which a pixel is set when ``binarize`` is true, in 0..16.

    Returns
    -------
    Dataset
        ``data`` is a ``float32`` tensor of shape ``(1797, 64)`` with integer
        values in 0..16 (family ``"binomial"``, ``total_count=16``) or in {0, 1}
        (family ``"bernoulli"``). ``target`` is the digit, 0..9, of shape
        ``(1797,)``. Feature names are ``"pixel_<row>_<column>"``.

    Raises
    ------
    ValueError
        If ``threshold`` lies outside 0..16.
    ImportError
        If scikit-learn is not installed.
    """
    _check_threshold(threshold)
    sk_datasets = import_optional("sklearn.datasets", "scikit-learn", "load_digits")
    bunch = sk_datasets.load_digits()

    counts = torch.as_tensor(bunch.data, dtype=torch.float32)
    description = (
        "scikit-learn's optical recognition of handwritten digits: 1797 images "
        "of 8x8 pixels, each pixel the count (0..16) of set pixels in a 4x4 "
        "block of a 32x32 bitmap."
    )
    if binarize:
        data = (counts > threshold).to(torch.float32)
        family, family_params = "bernoulli", {}
        description += f" Binarized: 1 where the count exceeds {threshold}, else 0."
    else:
        data = counts
        family, family_params = "binomial", {"total_count": _DIGITS_MAX_COUNT}

    return Dataset(
        data=data,
        target=np.asarray(bunch.target, dtype=np.int64),
        feature_names=list(bunch.feature_names),
        row_names=None,
        family=family,
        family_params=family_params,
        description=description,
    )


def load_reuters(dense: bool = False) -> Dataset:
    """Load the Reuters word counts shipped by the ``lda`` package.

    Parameters
    ----------
    dense : bool, default False
        If true, return ``data`` as a dense ``float32`` tensor instead of a
        ``float32`` CSR matrix.

    Returns
    -------
    Dataset
        ``data`` has shape ``(395, 4258)``: the count of each vocabulary word
        in each news story. About 96% of the entries are zero, hence the
        sparse default. ``feature_names`` is the vocabulary, ``row_names`` the
        story titles, ``target`` is ``None`` and the family is ``"poisson"``.

    Raises
    ------
    ImportError
        If ``lda`` (or SciPy) is not installed.
    """
    lda_datasets = import_optional("lda.datasets", "lda", "load_reuters")
    sparse = import_optional("scipy.sparse", "scipy", "load_reuters")

    # lda 3.0.2 opens the count file without closing it. The ResourceWarning
    # is issued inside this block, when that file object is collected.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        dense_counts = lda_datasets.load_reuters()

    counts = sparse.csr_matrix(dense_counts, dtype=np.float32)
    data = torch.as_tensor(counts.toarray()) if dense else counts

    return Dataset(
        data=data,
        target=None,
        feature_names=list(lda_datasets.load_reuters_vocab()),
        row_names=list(lda_datasets.load_reuters_titles()),
        family="poisson",
        family_params={},
        description=(
            "Reuters news stories as bag-of-words counts, 395 documents by a "
            "4258-word vocabulary, from the lda package."
        ),
    )


def load_breast_cancer(standardize: bool = True) -> Dataset:
    """Load scikit-learn's Wisconsin breast cancer features.

    Parameters
    ----------
    standardize : bool, default True
        If true, center each feature and divide it by its standard deviation
        (``ddof=0``), so that the Gaussian family with unit scale fits it.

    Returns
    -------
    Dataset
        ``data`` is a ``float32`` tensor of shape ``(569, 30)``, family
        ``"gaussian"`` with ``scale=1.0``. ``target`` is the diagnosis of shape
        ``(569,)``: 0 for malignant (212 rows), 1 for benign (357 rows).

    Raises
    ------
    ImportError
        If scikit-learn is not installed.
    """
    sk_datasets = import_optional("sklearn.datasets", "scikit-learn", "load_breast_cancer")
    bunch = sk_datasets.load_breast_cancer()

    features = np.asarray(bunch.data, dtype=np.float64)
    description = (
        "scikit-learn's Wisconsin diagnostic breast cancer data: 30 features of "
        "cell nuclei for 569 tumours. Target 0 is malignant, 1 is benign."
    )
    if standardize:
        features = (features - features.mean(axis=0)) / features.std(axis=0)
        description += " Each feature is standardized to mean 0 and standard deviation 1."
    else:
        # NOTE: the raw features range from 0 to about 4300, so a Gaussian
        # with unit scale fits them poorly. The suggested family assumes standardized features.
        description += " Features are unscaled."

    return Dataset(
        data=torch.as_tensor(features, dtype=torch.float32),
        target=np.asarray(bunch.target, dtype=np.int64),
        feature_names=list(bunch.feature_names),
        row_names=None,
        family="gaussian",
        family_params={"scale": 1.0},
        description=description,
    )


def _check_threshold(threshold: float) -> None:
    """Raise ``ValueError`` unless ``threshold`` is a real number in 0..16."""
    is_real = isinstance(threshold, numbers.Real) and not isinstance(threshold, bool)
    if not is_real or not 0 <= threshold <= _DIGITS_MAX_COUNT:
        raise ValueError(
            f"`threshold` must be a number from 0 to {_DIGITS_MAX_COUNT}, because digit "
            f"pixels are counts in that range, but got {threshold!r}. Pass for example "
            f"threshold=8."
        )
