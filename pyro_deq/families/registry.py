"""Look up exponential families by name."""

from __future__ import annotations

import inspect

from pyro_deq.families.base import ExponentialFamily
from pyro_deq.families.bernoulli import Bernoulli
from pyro_deq.families.binomial import Binomial
from pyro_deq.families.continuous_bernoulli import ContinuousBernoulli
from pyro_deq.families.gaussian import Gaussian
from pyro_deq.families.poisson import Poisson

__all__ = ["get", "names", "register"]

_REGISTRY: dict[str, type[ExponentialFamily]] = {}


def register(name: str, cls: type[ExponentialFamily], overwrite: bool = False) -> None:
    """Register the family class ``cls`` under ``name``.

    :param str name: the name that :func:`get` accepts.
    :param type cls: a subclass of :class:`~pyro_deq.families.base.ExponentialFamily`.
    :param bool overwrite: replace an existing entry of the same name.
    :raises TypeError: if ``cls`` is not such a subclass.
    :raises ValueError: if ``name`` is taken and ``overwrite`` is false.
    """
    if not (isinstance(cls, type) and issubclass(cls, ExponentialFamily)):
        raise TypeError(
            f"`cls` must be a subclass of ExponentialFamily, but got {cls!r}."
        )
    if name in _REGISTRY and not overwrite:
        raise ValueError(
            f"family name {name!r} is already registered to {_REGISTRY[name].__name__}. "
            f"Choose another name or pass overwrite=True."
        )
    _REGISTRY[name] = cls


def names() -> list[str]:
    """Return the registered family names, sorted."""
    return sorted(_REGISTRY)


def get(name_or_family: str | ExponentialFamily, **params) -> ExponentialFamily:
    """Return a family instance from a registry name or pass a family object through.

    :param name_or_family: a name from :func:`names`, or an
        :class:`~pyro_deq.families.base.ExponentialFamily` instance, which is
        returned unchanged.
    :param params: constructor arguments, for example ``scale=`` for
        ``"gaussian"`` or ``total_count=`` for ``"binomial"``.
    :raises ValueError: if the name is not registered.
    :raises TypeError: if ``params`` come with an object, name unknown
        arguments, or miss a required one.

    Example::

        family = get("binomial", total_count=16)
        assert get(family) is family
    """
    if isinstance(name_or_family, ExponentialFamily):
        if params:
            raise TypeError(
                f"got a family object, {name_or_family!r}, together with parameters "
                f"{sorted(params)}. Pass either a name with parameters or a "
                f"configured family object."
            )
        return name_or_family

    if not isinstance(name_or_family, str):
        raise TypeError(
            f"`family` must be a registry name or an ExponentialFamily instance, but got "
            f"{name_or_family!r}. Valid names: {', '.join(names())}."
        )
    if name_or_family not in _REGISTRY:
        raise ValueError(
            f"unknown family {name_or_family!r}. Valid names: {', '.join(names())}."
        )

    cls = _REGISTRY[name_or_family]
    _check_params(name_or_family, cls, params)
    return cls(**params)


def _check_params(name: str, cls: type, params: dict) -> None:
    """Raise ``TypeError`` for unknown or missing constructor arguments of ``cls``."""
    if cls.__init__ is object.__init__:
        accepted = []
    else:
        accepted = list(inspect.signature(cls.__init__).parameters.values())[1:]
    takes_any_keyword = any(p.kind is p.VAR_KEYWORD for p in accepted)
    accepted = [p for p in accepted if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    accepted_names = [p.name for p in accepted]

    unknown = sorted(set(params) - set(accepted_names))
    if unknown and not takes_any_keyword:
        allowed = ", ".join(accepted_names) if accepted_names else "none"
        raise TypeError(
            f"family {name!r} got unknown parameters {unknown}. Accepted parameters: "
            f"{allowed}."
        )

    missing = [p.name for p in accepted if p.default is p.empty and p.name not in params]
    if missing:
        example = ", ".join(f"{m}=..." for m in missing)
        raise TypeError(
            f"family {name!r} requires the parameters {missing}, for example "
            f"families.get({name!r}, {example})."
        )


for _cls in (Gaussian, Bernoulli, Binomial, Poisson, ContinuousBernoulli):
    register(_cls.name, _cls)
