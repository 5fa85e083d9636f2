"""Deep equilibrium guides for exponential-family latent-variable models in Pyro."""

from . import families, nonlinearities
from .errors import ConvergenceWarning, NumericalError
from .guides import AutoDEQ, AutoDEQGuideList, AutoDEQLaplace
from .models import DeepExpFamPCA, ExpFamPCA
from .solvers import solve

__version__ = "0.1.0"

__all__ = [
    "AutoDEQ",
    "AutoDEQGuideList",
    "AutoDEQLaplace",
    "ConvergenceWarning",
    "DeepExpFamPCA",
    "ExpFamPCA",
    "NumericalError",
    "families",
    "nonlinearities",
    "solve",
]
