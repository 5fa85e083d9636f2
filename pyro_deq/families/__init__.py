"""Exponential families, looked up by name with :func:`get`."""

from pyro_deq.families._validation import check_finite_canonical
from pyro_deq.families.base import ExponentialFamily
from pyro_deq.families.bernoulli import Bernoulli
from pyro_deq.families.binomial import Binomial
from pyro_deq.families.continuous_bernoulli import ContinuousBernoulli
from pyro_deq.families.gaussian import Gaussian
from pyro_deq.families.poisson import Poisson
from pyro_deq.families.registry import get, names, register

__all__ = [
    "Bernoulli",
    "Binomial",
    "ContinuousBernoulli",
    "ExponentialFamily",
    "Gaussian",
    "Poisson",
    "check_finite_canonical",
    "get",
    "names",
    "register",
]
