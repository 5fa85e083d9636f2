"""Canonical nonlinearities ``R`` that map ``u = W z + b`` to ``eta = R(u)`` elementwise."""

from __future__ import annotations

import torch

__all__ = ["Identity", "Nonlinearity", "ReLU", "get", "names"]


class Nonlinearity:
    """Elementwise map ``R`` with its first and second derivatives.

    Every method takes ``u`` of any shape, typically ``(N, d)``, and returns a
    tensor of the same shape, dtype and device.

    :cvar str name: registry name.
    """

    name: str = ""

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        """Compute ``R(u)``."""
        raise NotImplementedError

    def derivative(self, u: torch.Tensor) -> torch.Tensor:
        """Compute ``R'(u)``."""
        raise NotImplementedError

    def second_derivative(self, u: torch.Tensor) -> torch.Tensor:
        """Compute ``R''(u)``."""
        raise NotImplementedError

    @property
    def is_identity(self) -> bool:
        """Whether ``R(u) = u``, which lets callers skip the chain rule."""
        return False

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Identity(Nonlinearity):
    """``R(u) = u``, the canonical link of classical exponential-family PCA."""

    name = "identity"

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        """Return ``u`` unchanged."""
        return u

    def derivative(self, u: torch.Tensor) -> torch.Tensor:
        """Return ones with the shape of ``u``."""
        return torch.ones_like(u)

    def second_derivative(self, u: torch.Tensor) -> torch.Tensor:
        """Return zeros with the shape of ``u``."""
        return torch.zeros_like(u)

    @property
    def is_identity(self) -> bool:
        """Always ``True``."""
        return True


# Default bias of a layer with a ReLU nonlinearity. At u = W z + b = 0 the mask
# R'(u) is 0, so with a zero bias and latents starting at 0 no gradient reaches
# the latents, the loadings or the bias and nothing moves. A positive bias of
# unit order starts every unit active.
RELU_INITIAL_BIAS = 0.5


class ReLU(Nonlinearity):
    """``R(u) = max(u, 0)``, which turns the model into a network with a data-dependent mask.

    ``R'`` is the mask ``u > 0`` with the convention ``R'(0) = 0``, as in
    ``torch.relu``'s gradient. ``R''`` is zero except at ``u = 0``, where it is
    undefined, and is returned as zero everywhere.
    """

    name = "relu"

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        """Compute ``max(u, 0)``."""
        return torch.relu(u)

    def derivative(self, u: torch.Tensor) -> torch.Tensor:
        """Compute the mask ``u > 0`` in the dtype of ``u``."""
        return (u > 0).to(u.dtype)

    def second_derivative(self, u: torch.Tensor) -> torch.Tensor:
        """Return zeros with the shape of ``u``, the second derivative away from 0."""
        return torch.zeros_like(u)


_REGISTRY: dict[str, type[Nonlinearity]] = {"identity": Identity, "relu": ReLU}


def names() -> list[str]:
    """Return the registered nonlinearity names, sorted."""
    return sorted(_REGISTRY)


def get(name_or_object: str | Nonlinearity) -> Nonlinearity:
    """Return a nonlinearity from a registry name or pass a :class:`Nonlinearity` through.

    :param name_or_object: ``"identity"``, ``"relu"`` or a :class:`Nonlinearity`.
    :raises ValueError: if the name is not registered.
    :raises TypeError: if the argument is neither a name nor a :class:`Nonlinearity`.
    """
    if isinstance(name_or_object, Nonlinearity):
        return name_or_object
    if not isinstance(name_or_object, str):
        raise TypeError(
            f"`nonlinearity` must be a registry name or a Nonlinearity instance, but got "
            f"{name_or_object!r}. Valid names: {', '.join(names())}."
        )
    if name_or_object not in _REGISTRY:
        raise ValueError(
            f"unknown nonlinearity {name_or_object!r}. Valid names: {', '.join(names())}."
        )
    return _REGISTRY[name_or_object]()
