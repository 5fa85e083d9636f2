"""A guide list that hands the values of global latents to AutoDEQ parts."""

from __future__ import annotations

import torch
from pyro.infer.autoguide import AutoGuideList

from .deq import AutoDEQ

__all__ = ["AutoDEQGuideList"]


class AutoDEQGuideList(AutoGuideList):
    """Compose guides for global latents with an :class:`AutoDEQ` for the local ones.

    Unlike :class:`~pyro.infer.autoguide.AutoGuideList`, each :class:`AutoDEQ`
    part receives the values that earlier parts sampled (for example the
    loadings ``"weight"`` under a prior), so its fixed point is solved at those
    values. Under ``Predictive(parallel=True)`` every draw of the globals gets
    its own fixed point. :meth:`quantiles` works with parts that have no
    ``quantiles`` method (such as :class:`~pyro.infer.autoguide.AutoDelta`),
    whose point estimate stands for every quantile.

    Example::

        model = ExpFamPCA(d, k, family="poisson", weight_decay=10.0)
        guide = AutoDEQGuideList(model)
        guide.append(AutoNormal(poutine.block(model, expose=["weight"])))
        guide.append(AutoDEQ(model))
    """

    def forward(self, *args, **kwargs):
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        self._create_plates(*args, **kwargs)

        result = {}
        for part in self:
            result.update(self._call_part(part, "__call__", dict(result), args, kwargs))
        return result

    def _create_plates(self, *args, **kwargs):
        # Each AutoDEQ part opens its own data plate on the rows it solves for.
        # A second plate of the same name, opened here from the prototype,
        # would record the plate's subsample site twice in the guide trace.
        local = {part.adapter.plate for part in self if isinstance(part, AutoDEQ)}
        frames = self._prototype_frames
        self._prototype_frames = {name: frame for name, frame in frames.items() if name not in local}
        try:
            return super()._create_plates(*args, **kwargs)
        finally:
            self._prototype_frames = frames

    @staticmethod
    def _call_part(part, method: str, globals_: dict, args, kwargs, *extra):
        if not isinstance(part, AutoDEQ):
            return getattr(part, method)(*extra, *args, **kwargs)
        part.global_values = globals_
        try:
            return getattr(part, method)(*extra, *args, **kwargs)
        finally:
            part.global_values = None

    @torch.no_grad()
    def median(self, *args, **kwargs) -> dict:
        """Return the median (the MAP for AutoDEQ parts) of every latent site."""
        result = {}
        for part in self:
            result.update(self._call_part(part, "median", dict(result), args, kwargs))
        return result

    @torch.no_grad()
    def quantiles(self, quantiles, *args, **kwargs) -> dict:
        """Return quantiles of every latent site, shape ``(len(quantiles), *site_shape)``.

        AutoDEQ parts are solved at the median of the globals.
        """
        levels = torch.as_tensor(quantiles)
        medians, result = {}, {}
        for part in self:
            part_medians = self._call_part(part, "median", dict(medians), args, kwargs)
            medians.update(part_medians)
            if isinstance(part, AutoDEQ) or hasattr(part, "quantiles"):
                values = self._call_part(part, "quantiles", dict(medians), args, kwargs, quantiles)
            else:
                values = {name: v.expand(levels.numel(), *v.shape) for name, v in part_medians.items()}
            result.update(values)
        return result
