"""Data sets for examples and tests: real data shipped inside installed packages, and synthetic data.

Nothing is downloaded at run time. The real data needs the optional packages
scikit-learn and lda (``pip install "pyro-deq[data]"``).
"""

from .base import Dataset
from .real import load_breast_cancer, load_digits, load_reuters
from .synthetic import make_synthetic

__all__ = ["Dataset", "load_breast_cancer", "load_digits", "load_reuters", "make_synthetic"]
