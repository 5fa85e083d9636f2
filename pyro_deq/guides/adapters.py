"""Adapters that give a guide a model's data, rows and per-row MAP problem.

Two adapters share one small interface. :class:`ExpFamAdapter` serves
:class:`~pyro_deq.ExpFamPCA` and :class:`~pyro_deq.DeepExpFamPCA` with their
closed forms; :class:`GenericAdapter` serves any Pyro model whose local latents
sit in one plate, by running the model, hidden from any outer trace, as a
function of the latents.
"""

from __future__ import annotations

import inspect

import torch
from pyro import poutine

from ..models import AutogradProblem, DeepExpFamPCA, ExpFamPCA

__all__ = ["ExpFamAdapter", "GenericAdapter", "make_adapter"]


class RowBatch:
    """The rows a guide call works on.

    :ivar torch.Tensor rows: indices into the full data set, shape ``(B,)``.
    :ivar int n_total: the plate's full size ``N``.
    :ivar dict plate_kwargs: keyword arguments that open the guide's plate on these rows.
    """

    def __init__(self, rows: torch.Tensor, n_total: int, plate_kwargs: dict):
        self.rows = rows
        self.n_total = n_total
        self.plate_kwargs = plate_kwargs


class ExpFamAdapter:
    """Adapter for the models of this package, using their closed forms."""

    closed_form = True

    def __init__(self, model, plate: str = "data"):
        self.model = model
        self.plate = plate
        self.plate_dim = -1
        self.signature = inspect.signature(model.forward)
        if isinstance(model, DeepExpFamPCA):
            self.latent_names = model.latent_names
            self.latent_sizes = model.latent_sizes
        else:
            self.latent_names = ["z"]
            self.latent_sizes = [model.n_components]

    def bind(self, args, kwargs) -> dict:
        bound = self.signature.bind(*args, **kwargs)
        return dict(bound.arguments)

    def data(self, args, kwargs):
        """Validate and return the model's data as :class:`~pyro_deq.models.ModelData`."""
        arguments = self.bind(args, kwargs)
        if arguments.get("y") is None:
            raise ValueError(
                "The guide needs observations: call it with the data `y`, as the model is called."
            )
        if isinstance(self.model, ExpFamPCA):
            return self.model._prepare_cached(arguments["y"], arguments.get("mask"), arguments.get("offset"))
        return self.model.prepare(arguments["y"], arguments.get("mask"), arguments.get("offset"))

    def batch_data(self, data, batch: RowBatch):
        """Restrict validated data to the rows of ``batch``."""
        if batch.plate_kwargs.get("subsample") is None:
            return data
        return data.rows(batch.rows)

    def row_batch(self, args, kwargs, data) -> RowBatch:
        """Return the rows of this call, from the model's own plate arguments."""
        arguments = self.bind(args, kwargs)
        subsample = arguments.get("subsample")
        subsample_size = arguments.get("subsample_size")
        plate_kwargs = {"subsample": subsample, "subsample_size": subsample_size}
        if subsample is None and subsample_size is None:
            rows = torch.arange(data.n_rows, device=data.y.device)
            return RowBatch(rows, data.n_rows, plate_kwargs)
        if subsample is not None:
            rows = torch.as_tensor(subsample, device=data.y.device)
        else:
            # The model's plate replays these indices from the guide trace.
            rows = torch.randperm(data.n_rows, device=data.y.device)[:subsample_size]
        return RowBatch(rows, data.n_rows, {"subsample": rows})

    def problem(self, data, args=(), kwargs=None, globals_=None, params=None):
        """Return the MAP problem of the rows in ``data``.

        :param dict globals_: values of global latent sites, such as ``"weight"``.
        :param tuple params: explicit ``(weight, bias)`` overriding the model's.
        """
        if isinstance(self.model, DeepExpFamPCA):
            return self.model.problem(data)
        weight, bias = params if params is not None else self.parameters(globals_)
        return self.model.problem(data, weight=weight, bias=bias)

    def canonical_globals(self, globals_: dict | None) -> dict | None:
        """Key the value of the loadings' site as ``"weight"``, whatever the model's ``name``."""
        if not globals_ or isinstance(self.model, DeepExpFamPCA):
            return globals_
        site = self.model.weight_site
        if site == "weight" or site not in globals_:
            return globals_
        renamed = {key: value for key, value in globals_.items() if key != site}
        renamed["weight"] = globals_[site]
        return renamed

    def parameters(self, globals_=None) -> tuple:
        """Tensors the per-row problem depends on, for implicit gradients."""
        if isinstance(self.model, DeepExpFamPCA):
            return tuple(t for pair in self.model.layer_parameters() for t in pair)
        globals_ = globals_ or {}
        weight = globals_.get("weight")
        if weight is None:
            weight = self.model.resolve_parameters()[0]
        return weight, self.model.bias

    def residual_fn(self, data):
        """Return ``residual(z, *params)`` for implicit differentiation."""
        if isinstance(self.model, DeepExpFamPCA):
            return None
        return lambda z, weight, bias: self.model.problem(data, weight=weight, bias=bias).residual(z)

    def precision(self, problem, z: torch.Tensor) -> torch.Tensor:
        """Posterior precision ``-∇²ℓ(z)`` per row, shape ``(B, k, k)``."""
        if isinstance(problem, AutogradProblem):
            return -problem.hessian(z)
        return problem.precision(z)


def _site_log_prob(site) -> torch.Tensor:
    # Per-row log density without the subsampling scale N/B, which would
    # reweight the likelihood against the prior and move the MAP.
    log_prob = site["fn"].log_prob(site["value"])
    mask = site.get("mask")
    if mask is not None and mask is not True:
        log_prob = torch.where(torch.as_tensor(mask), log_prob, torch.zeros_like(log_prob))
    return log_prob


class GenericAdapter:
    """Adapter for any Pyro model with a local latent site inside one plate.

    The latent must have a continuous prior on all of ``ℝ^k`` (Normal by
    default). The model is evaluated by autograd as a function of the latent,
    under :func:`pyro.poutine.block`, so none of these inner runs reaches an
    outer trace such as the one SVI records.
    """

    closed_form = False

    def __init__(self, model, latent: str = "z", plate: str = "data"):
        self.model = model
        self.plate = plate
        self.latent_names = [latent]
        self.latent_sizes = None
        self.latent_dtype = None
        self.plate_dim = -1

    def _hidden_trace(self, args, kwargs, replay_trace=None, conditioned=None):
        model = self.model
        if conditioned:
            model = poutine.condition(model, data=conditioned)
        if replay_trace is not None:
            model = poutine.replay(model, trace=replay_trace)
        with poutine.block():
            return poutine.trace(model).get_trace(*args, **kwargs)

    def data(self, args, kwargs):
        """Run the model once, hidden, and return its trace: it fixes rows and shapes."""
        trace = self._hidden_trace(args, kwargs)
        latent = self.latent_names[0]
        if latent not in trace.nodes or trace.nodes[latent]["type"] != "sample":
            sites = [name for name, site in trace.nodes.items() if site["type"] == "sample"]
            raise ValueError(f"The model has no sample site `{latent}`; its sample sites are {sites}.")
        site = trace.nodes[latent]
        if site["is_observed"]:
            raise ValueError(f"The site `{latent}` is observed; pass the name of a latent site as `latent`.")
        frames = [f for f in site["cond_indep_stack"] if f.name == self.plate]
        if not frames:
            raise ValueError(
                f"The latent site `{latent}` is not inside a plate named `{self.plate}`; "
                "pass the plate's name as `plate`."
            )
        if site["value"].dim() != 2:
            raise NotImplementedError(
                f"The latent site `{latent}` must have shape (batch, k), got {tuple(site['value'].shape)}; "
                "declare it with .to_event(1) inside the plate."
            )
        self.plate_dim = frames[0].dim
        self.latent_sizes = [site["value"].shape[-1]]
        self.latent_dtype = site["value"].dtype
        return trace

    def batch_data(self, trace, batch: RowBatch):
        return trace

    def row_batch(self, args, kwargs, trace) -> RowBatch:
        """Return the rows the model's plate chose in the hidden run."""
        plate_site = trace.nodes[self.plate]
        rows = plate_site["value"]
        n_total = plate_site["fn"].size if hasattr(plate_site["fn"], "size") else rows.numel()
        return RowBatch(rows, int(n_total), {"subsample": rows})

    def _log_joint(self, args, kwargs, trace, globals_):
        latent = self.latent_names[0]

        def log_joint(z: torch.Tensor) -> torch.Tensor:
            conditioned = dict(globals_ or {})
            conditioned[latent] = z
            inner = self._hidden_trace(args, kwargs, replay_trace=trace, conditioned=conditioned)
            total = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
            for name, site in inner.nodes.items():
                if site["type"] != "sample" or name == self.plate or type(site["fn"]).__name__ == "_Subsample":
                    continue
                if not any(f.name == self.plate for f in site["cond_indep_stack"]):
                    continue
                total = total + _site_log_prob(site)
            return total

        return log_joint

    def problem(self, trace, args=(), kwargs=None, globals_=None, params=None):
        """Return the MAP problem of the rows the hidden run ``trace`` chose."""
        site = trace.nodes[self.latent_names[0]]
        scale = 1.0
        base = site["fn"]
        while hasattr(base, "base_dist"):
            base = base.base_dist
        if hasattr(base, "scale"):
            scale_tensor = torch.as_tensor(base.scale).detach()
            if scale_tensor.numel() > 0 and bool(torch.isfinite(scale_tensor).all()):
                scale = torch.broadcast_to(scale_tensor, site["value"].shape)[0].pow(-2)
        return AutogradProblem(self._log_joint(args, kwargs or {}, trace, globals_), scale)

    def canonical_globals(self, globals_: dict | None) -> dict | None:
        return globals_

    def parameters(self, globals_=None) -> tuple:
        return ()

    def residual_fn(self, data):
        return None

    def precision(self, problem, z: torch.Tensor) -> torch.Tensor:
        return -problem.hessian(z)


def make_adapter(model, latent: str = "z", plate: str = "data"):
    """Choose the closed-form adapter for models of this package, else the generic one."""
    if isinstance(model, (ExpFamPCA, DeepExpFamPCA)):
        if plate != "data":
            raise ValueError(f"`plate` must be 'data' for {type(model).__name__}, got {plate!r}.")
        return ExpFamAdapter(model, plate)
    if not callable(model):
        raise TypeError(f"`model` must be a Pyro model (a callable), got {type(model).__name__}.")
    return GenericAdapter(model, latent, plate)
