"""Hierarchical exponential-family PCA: a stack of latent layers with one joint fixed point."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, PyroParam

from .. import families, nonlinearities
from .autograd_problem import AutogradProblem
from .data import ModelData, prepare_data
from .expfam_pca import check_positive_int, check_positive_real

__all__ = ["DeepExpFamPCA"]


class DeepExpFamPCA(PyroModule):
    r"""Exponential-family PCA with ``L`` layers of latents.

    With widths ``[d, k_1, …, k_L]`` and ``z_0 = y``:

    .. math::

        z_L \sim \mathcal{N}(0, \lambda^{-1} I), \qquad
        z_{l-1} \mid z_l \sim \text{EF}_l\big(R_l(W_l z_l + b_l)\big), \quad l = L, \dots, 1,

    where layer 1 uses ``family`` and ``nonlinearity`` and the hidden layers are
    Gaussian with scale ``hidden_scale`` and the ``hidden_nonlinearity`` (ReLU
    by default). Each hidden ``z_l`` gets a bottom-up term from the likelihood of
    ``z_{l-1}`` and a top-down term from its own conditional, and the
    stationarity condition over all layers is one fixed point in the
    concatenation ``[z_1, …, z_L]`` of shape ``(N, k_1 + … + k_L)``.

    NOTE: with ReLU hidden layers the joint log joint is not differentiable
    where a hidden pre-activation is zero, and its maximum can sit on such a
    kink. There no stationary point exists, and :func:`pyro_deq.solve` reports
    the affected rows as unconverged instead of returning a fixed point.

    Sites: plate ``"data"``, latent sites ``"z1"`` … ``"zL"``, observed ``"y"``.
    Parameters: ``weight1`` … ``weightL`` (``W_l`` of shape ``(k_{l-1}, k_l)``) and
    ``bias1`` … ``biasL``.

    :param list widths: ``[d, k_1, …, k_L]`` with ``L ≥ 1``.
    :param family: family of the observations.
    :param nonlinearity: canonical nonlinearity of the observation layer.
    :param hidden_nonlinearity: canonical nonlinearity of the hidden layers.
    :param float hidden_scale: standard deviation of the Gaussian hidden layers.
    :param float prior_precision: ``λ`` of the top layer.
    """

    def __init__(
        self,
        widths,
        family="bernoulli",
        nonlinearity="identity",
        hidden_nonlinearity="relu",
        hidden_scale: float = 1.0,
        prior_precision: float = 1.0,
    ):
        super().__init__()
        widths = list(widths)
        if len(widths) < 2:
            raise ValueError(f"`widths` must be [d, k1, ..., kL] with at least one latent layer, got {widths!r}.")
        self.widths = [check_positive_int(w, f"widths[{i}]") for i, w in enumerate(widths)]
        self.family = families.get(family)
        self.nonlinearity = nonlinearities.get(nonlinearity)
        self.hidden_nonlinearity = nonlinearities.get(hidden_nonlinearity)
        self.hidden_scale = check_positive_real(hidden_scale, "hidden_scale")
        self.hidden_family = families.get("gaussian", scale=self.hidden_scale)
        self.prior_precision = check_positive_real(prior_precision, "prior_precision")

        for layer in range(1, self.n_layers + 1):
            shape = (self.widths[layer - 1], self.widths[layer])
            setattr(self, f"weight{layer}", PyroParam(0.1 * torch.randn(shape)))
            layer_nonlinearity = self.nonlinearity if layer == 1 else self.hidden_nonlinearity
            start = 0.0 if layer_nonlinearity.is_identity else nonlinearities.RELU_INITIAL_BIAS
            setattr(self, f"bias{layer}", PyroParam(torch.full((shape[0],), start)))

    @property
    def n_layers(self) -> int:
        return len(self.widths) - 1

    @property
    def n_features(self) -> int:
        return self.widths[0]

    @property
    def latent_sizes(self) -> list[int]:
        """Widths ``[k_1, …, k_L]`` of the latent layers."""
        return self.widths[1:]

    @property
    def latent_names(self) -> list[str]:
        return [f"z{layer}" for layer in range(1, self.n_layers + 1)]

    def layer_parameters(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Return ``[(W_1, b_1), …, (W_L, b_L)]``."""
        return [(getattr(self, f"weight{l}"), getattr(self, f"bias{l}")) for l in range(1, self.n_layers + 1)]

    def split_latents(self, z: torch.Tensor) -> list[torch.Tensor]:
        """Split ``z`` of shape ``(N, k_1 + … + k_L)`` into ``[z_1, …, z_L]``."""
        return list(torch.split(z, self.latent_sizes, dim=-1))

    def prepare(self, y, mask=None, offset=None) -> ModelData:
        """Validate ``y`` (shape ``(N, d)``), ``mask`` and ``offset``."""
        bias = self.bias1
        return prepare_data(self.family, y, mask, offset, self.n_features, bias.dtype, bias.device)

    def forward(self, y=None, mask=None, offset=None, subsample_size=None, subsample=None, n_rows=None):
        """Run the generative model; arguments as for :class:`~pyro_deq.ExpFamPCA`."""
        data = None if y is None else self.prepare(y, mask, offset)
        if data is None and n_rows is None:
            raise ValueError("`n_rows` is required when `y` is None (prior predictive sampling).")
        n_total = data.n_rows if data is not None else check_positive_int(n_rows, "n_rows")
        params = self.layer_parameters()
        dtype, device = params[0][1].dtype, params[0][1].device

        with pyro.plate("data", n_total, subsample_size=subsample_size, subsample=subsample, dim=-1) as rows:
            top = self.n_layers
            loc = torch.zeros(self.widths[top], dtype=dtype, device=device)
            z = pyro.sample(f"z{top}", dist.Normal(loc, self.prior_precision ** -0.5).to_event(1))
            for layer in range(top, 1, -1):
                weight, bias = params[layer - 1]
                eta = self.hidden_nonlinearity(z @ weight.transpose(-1, -2) + bias)
                z = pyro.sample(f"z{layer - 1}", self.hidden_family.distribution(eta).to_event(1))

            weight, bias = params[0]
            eta = self.nonlinearity(z @ weight.transpose(-1, -2) + bias)
            observed = None
            likelihood_mask = None
            if data is not None:
                batch = data.rows(rows)
                observed, likelihood_mask = batch.y, batch.mask
                if batch.offset is not None:
                    eta = eta + batch.offset
            likelihood = self.family.index_rows(rows, n_total).distribution(eta)
            if likelihood_mask is not None:
                likelihood = likelihood.mask(likelihood_mask)
            return pyro.sample("y", likelihood.to_event(1), obs=observed)

    def log_joint(self, y, z, mask=None, offset=None) -> torch.Tensor:
        """Compute ``log p(y_n, z_{1,n}, …, z_{L,n} | θ)`` per row, shape ``(N,)``.

        :param z: the concatenated latents, shape ``(N, k_1 + … + k_L)``.
        """
        data = y if isinstance(y, ModelData) else self.prepare(y, mask, offset)
        layers = self.split_latents(z)
        params = self.layer_parameters()

        weight, bias = params[0]
        eta = self.nonlinearity(layers[0] @ weight.transpose(-1, -2) + bias)
        if data.offset is not None:
            eta = eta + data.offset
        log_prob = data.family_rows(self.family).distribution(eta).log_prob(data.y)
        if data.mask is not None:
            log_prob = torch.where(data.mask, log_prob, torch.zeros_like(log_prob))
        total = log_prob.sum(-1)

        for layer in range(2, self.n_layers + 1):
            weight, bias = params[layer - 1]
            eta = self.hidden_nonlinearity(layers[layer - 1] @ weight.transpose(-1, -2) + bias)
            total = total + self.hidden_family.distribution(eta).log_prob(layers[layer - 2]).sum(-1)

        top = layers[-1]
        prior = dist.Normal(torch.zeros_like(top), self.prior_precision ** -0.5).log_prob(top).sum(-1)
        return total + prior

    def coordinate_precision(self) -> torch.Tensor:
        """Prior precision of each latent coordinate, shape ``(k_1 + … + k_L,)``."""
        hidden = [torch.full((k,), self.hidden_scale ** -2) for k in self.latent_sizes[:-1]]
        top = torch.full((self.latent_sizes[-1],), self.prior_precision)
        return torch.cat(hidden + [top]).to(self.bias1.dtype)

    def problem(self, y, mask=None, offset=None) -> AutogradProblem:
        """Return the joint MAP over all layers as a fixed-point problem.

        The map is ``f(z) = z + ∇ℓ(z) / c`` with ``c`` the per-coordinate prior
        precision, so each hidden layer's update is its top-down mean plus
        ``s²`` times its bottom-up term.
        """
        data = y if isinstance(y, ModelData) else self.prepare(y, mask, offset)
        # NOTE: gradient and Hessian come from autograd here, not from closed forms.
        return AutogradProblem(lambda z: self.log_joint(data, z), self.coordinate_precision())

    def fixed_point_map(self, y, z, mask=None, offset=None) -> torch.Tensor:
        """Apply the joint deep equilibrium layer, shapes ``(N, d)`` and ``(N, k_1 + … + k_L)``."""
        return self.problem(y, mask, offset).fixed_point_map(z)
