"""Values outside the family's support raise ValueError at the guide and comparison boundaries.

The family validators and the model are tested in tests/families and
tests/models, and the command line in tests/cli; these tests feed the same
kinds of bad data to the guides and to compare, as a user would.
"""

import pytest
import torch

import pyro_deq


def centred_matrix():
    generator = torch.Generator().manual_seed(0)
    y = torch.randn(30, 10, generator=generator)
    return y - y.mean(0)


CASES = {
    "negative counts": (
        "poisson", {}, centred_matrix(),
        ["family 'poisson'", "148 entries are negative", "(row 0, column 0)", "family='gaussian'"],
    ),
    "non-binary values": (
        "bernoulli", {}, torch.tensor([[0.0, 1.0, 0.5]]),
        ["family 'bernoulli'", "neither 0 nor 1", "(row 0, column 2)", "continuous_bernoulli"],
    ),
    "above total_count": (
        "binomial", {"total_count": 3}, torch.tensor([[0.0, 4.0, 1.0]]),
        ["family 'binomial'", "above `total_count`", "(row 0, column 1)", "Raise `total_count`"],
    ),
    "counts divided by library size": (
        "poisson", {}, torch.tensor([[2.0, 3.0], [4.0, 0.0]]) / 7.0,
        ["family 'poisson'", "not integer-valued", "(row 0, column 0)", "`offset` of log library size"],
    ),
}


@pytest.mark.parametrize("guide_class", [pyro_deq.AutoDEQ, pyro_deq.AutoDEQLaplace])
@pytest.mark.parametrize("case", list(CASES))
def test_guide_median_rejects_invalid_data(case, guide_class):
    name, params, y, phrases = CASES[case]
    model = pyro_deq.ExpFamPCA(y.shape[1], 1, family=pyro_deq.families.get(name, **params))
    with pytest.raises(ValueError) as error:
        guide_class(model).median(y)
    for phrase in phrases:
        assert phrase in str(error.value)


def test_compare_rejects_negative_counts():
    y = centred_matrix()
    model = pyro_deq.ExpFamPCA(10, 2, family="poisson")
    with pytest.raises(ValueError, match="family 'poisson' got invalid values in `y`"):
        pyro_deq.compare(model, y, methods=["AutoDEQ"])
