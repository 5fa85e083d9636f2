"""Deep equilibrium guides for exponential-family latent-variable models in Pyro."""

from . import datasets, families, nonlinearities
from .errors import ConvergenceWarning, NumericalError
from .guides import AutoDEQ, AutoDEQGuideList, AutoDEQLaplace
from .models import DeepExpFamPCA, ExpFamPCA
from .comparison import compare
from .encoder import DEQEncoder
from .estimator import DEQPCA
from .solvers import solve

__version__ = "0.1.0"

__all__ = [
    "AutoDEQ",
    "AutoDEQGuideList",
    "AutoDEQLaplace",
    "ConvergenceWarning",
    "DEQEncoder",
    "DEQPCA",
    "DeepExpFamPCA",
    "ExpFamPCA",
    "NumericalError",
    "compare",
    "datasets",
    "families",
    "nonlinearities",
    "solve",
]
