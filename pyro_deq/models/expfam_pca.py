"""Exponential-family PCA as a Pyro model."""

from __future__ import annotations

import math
from numbers import Real

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, PyroParam, PyroSample

from .. import families, nonlinearities
from .data import ModelData, as_tensor, offset_like, prepare_data
from .problem import ExpFamPCAProblem

__all__ = ["ExpFamPCA"]


def check_positive_int(value, name: str) -> int:
    """Return ``value`` as an int, raising ``ValueError`` unless it is a positive integer."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
    return value


def check_positive_real(value, name: str) -> float:
    """Return ``value`` as a float, raising ``ValueError`` unless it is finite and positive."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"`{name}` must be a finite positive number, got {value!r}.")
    return float(value)


class ExpFamPCA(PyroModule):
    r"""Exponential-family PCA with a canonical nonlinearity, as a Pyro model.

    For each row ``n`` of the data:

    .. math::

        z_n \sim \mathcal{N}(0, \lambda^{-1} I_k), \qquad
        \eta_n = R(W z_n + b) + \text{offset}_n, \qquad
        y_{nj} \mid \eta_{nj} \sim h(y) \exp(T(y)\eta - A(\eta)).

    Sites: plate ``"data"`` over rows (dim ``-1``), local latent ``"z"`` with
    event shape ``(k,)``, observed ``"y"`` with event shape ``(d,)``, and
    ``"weight"`` as a global latent when ``weight_decay`` is given.

    Example::

        model = ExpFamPCA(64, 2, family=families.get("binomial", total_count=16))
        guide = pyro_deq.AutoDEQ(model)
        svi = SVI(model, guide, Adam({"lr": 0.05}), Trace_ELBO())
        svi.step(y)

    :param int n_features: ``d``, the number of columns of the data.
    :param int n_components: ``k``, the latent dimension.
    :param family: a registry name or an :class:`~pyro_deq.families.ExponentialFamily`.
    :param nonlinearity: ``"identity"`` or ``"relu"``, or a nonlinearity object.
    :param float prior_precision: ``λ``, the precision of the Gaussian prior on ``z``.
    :param weight: initial loadings, shape ``(d, k)``; random ``N(0, 0.1²)`` by default.
    :param bias: initial bias, shape ``(d,)``; zeros by default, and 0.5 for the
        ReLU nonlinearity so that its mask starts open.
    :param weight_decay: precision ``τ`` of an optional ``N(0, τ⁻¹)`` prior on each
        loading, which makes ``"weight"`` a latent site; ``None`` keeps it a parameter.
    :param str name: prefix of the parameter names in Pyro's param store, so that
        several models can live in one store (``"a"`` gives ``"a.weight"``).
    """

    def __init__(
        self,
        n_features: int,
        n_components: int,
        family="bernoulli",
        nonlinearity="identity",
        prior_precision: float = 1.0,
        weight=None,
        bias=None,
        weight_decay: float | None = None,
        name: str = "",
    ):
        super().__init__(name=name)
        self.n_features = check_positive_int(n_features, "n_features")
        self.n_components = check_positive_int(n_components, "n_components")
        self.family = families.get(family)
        self.nonlinearity = nonlinearities.get(nonlinearity)
        self.prior_precision = check_positive_real(prior_precision, "prior_precision")
        self.weight_decay = None if weight_decay is None else check_positive_real(weight_decay, "weight_decay")

        weight = self._initial_weight(weight)
        bias = self._initial_bias(bias, weight.dtype)
        self.initial_weight = weight
        if self.weight_decay is None:
            self.weight = PyroParam(weight)
        else:
            scale = torch.tensor(self.weight_decay ** -0.5, dtype=weight.dtype)
            self.weight = PyroSample(dist.Normal(torch.zeros_like(weight), scale).to_event(2))
        self.bias = PyroParam(bias)

    def _initial_weight(self, weight) -> torch.Tensor:
        shape = (self.n_features, self.n_components)
        if weight is None:
            return 0.1 * torch.randn(shape)
        weight = as_tensor(weight, "weight", weight.dtype if isinstance(weight, torch.Tensor) else torch.get_default_dtype())
        if tuple(weight.shape) != shape:
            raise ValueError(
                f"`weight` must have shape (n_features, n_components) = {shape}, got {tuple(weight.shape)}."
            )
        if not torch.isfinite(weight).all():
            raise ValueError("`weight` contains non-finite values; pass finite initial loadings.")
        return weight.detach().clone()

    def _initial_bias(self, bias, dtype: torch.dtype) -> torch.Tensor:
        if bias is None:
            start = 0.0 if self.nonlinearity.is_identity else nonlinearities.RELU_INITIAL_BIAS
            return torch.full((self.n_features,), start, dtype=dtype)
        bias = as_tensor(bias, "bias", dtype)
        if tuple(bias.shape) != (self.n_features,):
            raise ValueError(
                f"`bias` must have shape (n_features,) = ({self.n_features},), got {tuple(bias.shape)}."
            )
        if not torch.isfinite(bias).all():
            raise ValueError("`bias` contains non-finite values; pass a finite initial bias.")
        return bias.detach().clone()

    # ------------------------------------------------------------------ data

    @property
    def weight_site(self) -> str:
        """Name of the ``weight`` site in traces: ``"weight"``, prefixed by the model's ``name``."""
        return f"{self._pyro_name}.weight" if self._pyro_name else "weight"

    @property
    def dtype(self) -> torch.dtype:
        return self.bias.dtype

    def prepare(self, y, mask=None, offset=None) -> ModelData:
        """Validate ``y`` (shape ``(N, d)``), ``mask`` and ``offset``.

        :raises ValueError: naming the argument, the bad position and the fix.
        """
        bias = self.bias
        return prepare_data(self.family, y, mask, offset, self.n_features, bias.dtype, bias.device)

    def _prepare_cached(self, y, mask, offset) -> ModelData:
        # SVI calls the model with the same tensors at every step, so the
        # validation is redone only when the arguments or their contents change.
        # The cache keeps the arguments themselves, because comparing ids alone
        # would match a new tensor that reuses the memory of a freed one.
        arguments = (y, mask, offset)
        versions = tuple(a._version if isinstance(a, torch.Tensor) else None for a in arguments)
        cached = getattr(self, "_data_cache", None)
        if (
            cached is not None
            and all(a is b for a, b in zip(cached[0], arguments))
            and cached[1] == versions
        ):
            return cached[2]
        data = self.prepare(y, mask, offset)
        object.__setattr__(self, "_data_cache", (arguments, versions, data))
        return data

    def __getstate__(self):
        # The validated-data cache refers to the caller's tensors; it is not
        # part of the model.
        state = dict(super().__getstate__())
        state.pop("_data_cache", None)
        return state

    # ----------------------------------------------------------------- model

    def forward(self, y=None, mask=None, offset=None, subsample_size=None, subsample=None, n_rows=None):
        """Run the generative model.

        :param y: observations, shape ``(N, d)``, or ``None`` to sample the prior
            predictive (then ``n_rows`` gives ``N``).
        :param mask: bool, shape ``(N, d)``; ``False`` drops an entry from the likelihood.
        :param offset: added to the canonical parameter, broadcastable to ``(N, d)``.
        :param subsample_size: minibatch size for the plate ``"data"``.
        :param subsample: explicit row indices for the plate ``"data"``.
        :param n_rows: number of rows to sample when ``y`` is ``None``.
        :returns: the observations (sampled when ``y`` is ``None``), shape ``(B, d)``.
        """
        data = None
        if y is not None:
            data = self._prepare_cached(y, mask, offset)
            n_total = data.n_rows
        else:
            if n_rows is None:
                raise ValueError("`n_rows` is required when `y` is None (prior predictive sampling).")
            n_total = check_positive_int(n_rows, "n_rows")

        weight = self.weight
        bias = self.bias
        scale = torch.tensor(self.prior_precision ** -0.5, dtype=bias.dtype, device=bias.device)
        loc = torch.zeros(self.n_components, dtype=bias.dtype, device=bias.device)

        with pyro.plate("data", n_total, subsample_size=subsample_size, subsample=subsample, dim=-1) as rows:
            z = pyro.sample("z", dist.Normal(loc, scale).to_event(1))
            eta = self.nonlinearity(z @ weight.transpose(-1, -2) + bias)
            observed = None
            family = self.family.index_rows(rows, n_total)
            if data is not None:
                batch = data.rows(rows)
                observed = batch.y
                if batch.offset is not None:
                    eta = eta + batch.offset
            likelihood = family.distribution(eta)
            if data is not None and batch.mask is not None:
                likelihood = likelihood.mask(batch.mask)
            return pyro.sample("y", likelihood.to_event(1), obs=observed)

    # ------------------------------------------------------ closed forms

    def resolve_parameters(self, weight=None, bias=None) -> tuple[torch.Tensor, torch.Tensor]:
        if weight is None:
            if self.weight_decay is not None:
                raise ValueError(
                    "`weight` has a prior (weight_decay is set), so it is a latent site and its value "
                    "must be passed explicitly. With SVI, use pyro_deq.AutoDEQGuideList with a guide "
                    "for the weight, such as AutoNormal, then AutoDEQ; for the closed forms pass "
                    "weight=..., for example guide_list.median(y)['weight']."
                )
            weight = self.weight
        return weight, self.bias if bias is None else bias

    def problem(self, y, mask=None, offset=None, weight=None, bias=None) -> ExpFamPCAProblem:
        """Return the per-row MAP of ``z`` as a :class:`~pyro_deq.solvers.FixedPointProblem`.

        ``y`` may be a :class:`~pyro_deq.models.data.ModelData` that is already validated.
        """
        weight, bias = self.resolve_parameters(weight, bias)
        if weight.dtype != bias.dtype:
            raise ValueError(
                f"`weight` is {weight.dtype} but `bias` is {bias.dtype}; pass both in one dtype, "
                "for example weight=weight.double(), bias=model.bias.double()."
            )
        if isinstance(y, ModelData):
            data = y
        else:
            # The data take the dtype of the parameters in use, which may differ from the model's own.
            data = prepare_data(self.family, y, mask, offset, self.n_features, weight.dtype, weight.device)
        family = data.family_rows(self.family)
        return ExpFamPCAProblem(family, self.nonlinearity, data, weight, bias, self.prior_precision)

    def log_joint(self, y, z, mask=None, offset=None, weight=None, bias=None) -> torch.Tensor:
        """Compute ``log p(y_n, z_n | θ)`` per row, shape ``(N,)``.

        :param y: observations, shape ``(N, d)``.
        :param z: latents, shape ``(N, k)``.
        """
        problem = self.problem(y, mask, offset, weight, bias)
        data = problem.data
        _, eta = problem.canonical_parameter(z)
        log_prob = problem.family.distribution(eta).log_prob(data.y)
        if data.mask is not None:
            log_prob = torch.where(data.mask, log_prob, torch.zeros_like(log_prob))
        scale = self.prior_precision ** -0.5
        prior = dist.Normal(torch.zeros_like(z), scale).log_prob(z).sum(-1)
        return log_prob.sum(-1) + prior

    def fixed_point_map(self, y, z, mask=None, offset=None, weight=None, bias=None) -> torch.Tensor:
        """Apply the deep equilibrium layer ``f(z; y) = λ⁻¹ Wᵀ[R'(u) ⊙ (T(y) − A'(η))]``.

        Its fixed point is the MAP of ``z``. Shapes: ``y`` ``(N, d)``, ``z`` and result ``(N, k)``.
        """
        return self.problem(y, mask, offset, weight, bias).fixed_point_map(z)

    def log_joint_gradient(self, y, z, mask=None, offset=None, weight=None, bias=None) -> torch.Tensor:
        """Compute ``∇_z log p(y_n, z_n | θ)`` in closed form, shape ``(N, k)``."""
        return self.problem(y, mask, offset, weight, bias).gradient(z)

    def log_joint_hessian(self, y, z, mask=None, offset=None, weight=None, bias=None) -> torch.Tensor:
        """Compute ``∇²_z log p(y_n, z_n | θ)`` in closed form, shape ``(N, k, k)``.

        It is negative definite for the identity nonlinearity; its negative is
        the precision of the Laplace approximation.
        """
        return -self.problem(y, mask, offset, weight, bias).precision(z)

    def expected_value(self, z, offset=None, weight=None, bias=None) -> torch.Tensor:
        """Compute ``E[y | z] `` per entry, shape ``(N, d)``."""
        weight, bias = self.resolve_parameters(weight, bias)
        eta = self.nonlinearity(z @ weight.transpose(-1, -2) + bias)
        if offset is not None:
            eta = eta + offset_like(offset, eta.shape[-2], eta.shape[-1], eta.dtype, eta.device)
        return self.family.expected_value(eta)
