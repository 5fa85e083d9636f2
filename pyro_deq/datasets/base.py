"""The container returned by every loader, and the import of optional packages."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np
import torch

__all__ = ["Dataset", "import_optional"]


@dataclass
class Dataset:
    """A data matrix with its labels, names and the family suggested for it.

    Attributes
    ----------
    data : torch.Tensor or scipy.sparse.csr_matrix, shape (n_samples, n_features)
        The observations. Dense data is a ``torch.float32`` tensor. Count
        matrices that are mostly zeros (Reuters) are a ``float32`` CSR matrix
        by default, because for Reuters (3.6% nonzero) a dense copy is about 14
        times larger. :meth:`to_dense` converts them.
    target : numpy.ndarray of shape (n_samples,), or None
        Integer class labels, or ``None`` when the data set has none.
    feature_names : list of str, length n_features
        The name of each column.
    row_names : list of str of length n_samples, or None
        The name of each row (document titles for Reuters), or ``None``.
    family : str
        Registry name of the exponential family suggested for ``data``, to pass
        to ``pyro_deq.families.get``.
    family_params : dict
        Keyword arguments for ``pyro_deq.families.get`` with ``family``, such
        as ``{"total_count": 16}``.
    description : str
        Source, size, value range and preprocessing of the data.
    truth : dict or None
        For synthetic data, the quantities the data was generated from
        (``"latent"``, ``"weight"``, ``"bias"``, ``"eta"``); ``None`` for real data.
    """

    data: Any
    target: np.ndarray | None
    feature_names: list[str]
    row_names: list[str] | None
    family: str
    family_params: dict = field(default_factory=dict)
    description: str = ""
    truth: dict | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_samples, n_features)`` of :attr:`data`."""
        return tuple(self.data.shape)

    def to_dense(self) -> torch.Tensor:
        """Return :attr:`data` as a dense ``float32`` tensor of shape ``(n_samples, n_features)``.

        Dense data is returned as is, without a copy.
        """
        if isinstance(self.data, torch.Tensor):
            return self.data
        return torch.as_tensor(self.data.toarray(), dtype=torch.float32)


def import_optional(module: str, package: str, caller: str) -> ModuleType:
    """Import ``module``, or raise an ``ImportError`` that gives the install command.

    Parameters
    ----------
    module : str
        Dotted module name, such as ``"sklearn.datasets"``.
    package : str
        The name of the distribution on PyPI that provides ``module``.
    caller : str
        The function that needs the module, named in the message.
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"{caller} needs the optional package {package!r}, which could not be "
            f"imported ({error}). Install the data extras with "
            f'pip install "pyro-deq[data]", or only this package with pip install {package}.'
        ) from error
