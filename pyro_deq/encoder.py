"""DEQEncoder: the per-row MAP of an ExpFamPCA as a differentiable torch layer."""

from __future__ import annotations

import torch

from .models import ExpFamPCA
from .solvers import attach_gradient, solve

__all__ = ["DEQEncoder"]


class DEQEncoder(torch.nn.Module):
    r"""Map each row ``y_n`` to the MAP ``z*_n`` of an :class:`~pyro_deq.ExpFamPCA`.

    The forward pass solves ``z = f(z; y)`` per row with :func:`pyro_deq.solve`
    and attaches the implicit gradient

    .. math:: \frac{dz^*}{d\theta} = -J^{-1} \frac{\partial r}{\partial \theta},
              \qquad r(z; \theta) = f(z; y, \theta) - z, \quad J = \partial r / \partial z,

    for ``θ = (W, b)``, so a loss of ``z*`` (a classifier head, say) trains the
    loadings and bias end to end. The backward pass solves one ``k × k``
    system per row with the closed-form Jacobian ``J = -H / λ`` and does not
    depend on the solver's iterations.

    Parameters: the encoder registers ``model`` as a submodule, so
    :meth:`parameters` yields the model's ``weight_unconstrained`` and
    ``bias_unconstrained``. A :class:`~pyro.nn.PyroModule` registers these
    ``torch.nn.Parameter`` objects when it is built, and the model reads its
    loadings and bias from them. When the model later runs inside a Pyro
    inference (SVI), Pyro's parameter store adopts these same tensors under
    ``"<name>.weight"`` and ``"<name>.bias"``, so a torch optimizer and SVI
    update one set of values. A store that already holds those names when the
    model first runs replaces the module's values with its own; give each
    model a distinct ``name``.

    Example::

        model = pyro_deq.ExpFamPCA(64, 8, family=families.get("binomial", total_count=16))
        encoder = pyro_deq.DEQEncoder(model)
        head = torch.nn.Linear(8, 10)
        optimizer = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=1e-2)
        loss = torch.nn.functional.cross_entropy(head(encoder(y)), labels)
        loss.backward()
        optimizer.step()

    :param ExpFamPCA model: a model whose loadings are parameters
        (``weight_decay=None``).
    :param str method: solver, ``None`` for the default (Newton for this model).
    :param float tol: relative residual tolerance; ``None`` derives it from the dtype.
    :param int max_iter: solver iteration limit; ``None`` uses the solver's default.
    :raises TypeError: if ``model`` is not an :class:`~pyro_deq.ExpFamPCA`.
    :raises ValueError: if the model has a prior on its loadings.
    """

    def __init__(self, model: ExpFamPCA, *, method: str | None = None, tol: float | None = None,
                 max_iter: int | None = None):
        super().__init__()
        if not isinstance(model, ExpFamPCA):
            raise TypeError(f"`model` must be an ExpFamPCA, got {type(model).__name__}.")
        if model.weight_decay is not None:
            raise ValueError(
                "DEQEncoder needs the loadings as parameters, but this model has weight_decay="
                f"{model.weight_decay} (a prior that makes them a latent site); build the model "
                "with weight_decay=None and add the penalty to your loss, for example "
                "loss + 0.5 * tau * (model.weight ** 2).sum()."
            )
        self.model = model
        self.method = method
        self.tol = tol
        self.max_iter = max_iter

    def forward(self, y, mask=None, offset=None, return_std: bool = False):
        """Return the MAP latents of the rows of ``y``, differentiable in the model's parameters.

        :param y: observations, shape ``(N, d)``, in the support of the model's family.
        :param mask: bool, shape ``(N, d)``; ``False`` drops an entry from the likelihood.
        :param offset: added to the canonical parameter, broadcastable to ``(N, d)``.
        :param bool return_std: also return the Laplace posterior standard deviations.
        :returns: ``z*`` of shape ``(N, k)`` in the model's dtype; with
            ``return_std``, the pair ``(z*, std)`` where ``std`` of shape
            ``(N, k)`` is the square root of the diagonal of ``H⁻¹``, computed
            in float64 and differentiable in the parameters through ``z*`` and ``H``.
        """
        model = self.model
        weight, bias = model.weight, model.bias
        problem = model.problem(y, mask, offset)
        data = problem.data

        z0 = torch.zeros(data.n_rows, model.n_components, dtype=bias.dtype, device=bias.device)
        result = solve(problem, z0, method=self.method, tol=self.tol, max_iter=self.max_iter)
        z_star = result.z
        if torch.is_grad_enabled():
            jacobian = problem.evaluate(z_star, jacobian=True).jacobian.detach()
            z_star = attach_gradient("implicit", _Residual(model, data), z_star, (weight, bias), jacobian=jacobian)
        if not return_std:
            return z_star

        precision = problem.to(torch.float64).precision(z_star.double())
        factor = torch.linalg.cholesky(precision)
        covariance = torch.cholesky_inverse(factor)
        std = torch.diagonal(covariance, dim1=-2, dim2=-1).sqrt().to(z_star.dtype)
        return z_star, std


class _Residual:
    """Residual ``r(z; W, b)`` of the model's MAP problem on fixed data, as a picklable callable."""

    def __init__(self, model: ExpFamPCA, data):
        self.model = model
        self.data = data

    def __call__(self, z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return self.model.problem(self.data, weight=weight, bias=bias).residual(z)
