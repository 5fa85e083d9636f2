"""A fixed-point problem built from any per-row log joint by automatic differentiation."""

from __future__ import annotations

from typing import Callable

import torch

from ..solvers.problem import Evaluation, FixedPointProblem

__all__ = ["AutogradProblem"]


class AutogradProblem(FixedPointProblem):
    r"""The MAP of independent rows of latents, from a per-row log joint by autograd.

    Given ``log_joint(z) -> (N,)`` whose row ``n`` depends on row ``n`` of ``z``
    only, the fixed-point map is the scaled gradient step

    .. math:: f(z) = z + \nabla \ell(z) / c,

    where ``c`` is the prior precision of each coordinate, so that ``f`` reduces
    to the closed-form deep equilibrium layer for a Gaussian prior. The Jacobian
    of the residual is ``∇²ℓ / c``, built row-batched from ``k`` backward passes.

    :param log_joint: callable ``z -> (N,)``, differentiable in ``z`` of shape ``(N, k)``.
    :param scale: ``c``, a positive float or a tensor of shape ``(k,)``.
    """

    has_objective = True
    has_jacobian = True

    def __init__(self, log_joint: Callable[[torch.Tensor], torch.Tensor], scale=1.0):
        self.log_joint = log_joint
        self.scale = scale

    def _gradient(self, z: torch.Tensor, create_graph: bool):
        z_leaf = z.detach().requires_grad_(True)
        value = self.log_joint(z_leaf)
        (grad,) = torch.autograd.grad(value.sum(), z_leaf, create_graph=create_graph)
        return z_leaf, value, grad

    def gradient(self, z: torch.Tensor) -> torch.Tensor:
        """Compute ``∇ℓ(z)``, shape ``(N, k)``."""
        with torch.enable_grad():
            return self._gradient(z, create_graph=False)[2]

    def fixed_point_map(self, z: torch.Tensor) -> torch.Tensor:
        return z + self.gradient(z) / self.scale

    def hessian(self, z: torch.Tensor) -> torch.Tensor:
        """Compute ``∇²ℓ(z)`` per row, shape ``(N, k, k)``."""
        with torch.enable_grad():
            z_leaf, _, grad = self._gradient(z, create_graph=True)
            return self._hessian_rows(z_leaf, grad)

    def _hessian_rows(self, z_leaf: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        rows = []
        for i in range(z_leaf.shape[-1]):
            if grad.requires_grad:
                (row,) = torch.autograd.grad(grad[:, i].sum(), z_leaf, retain_graph=True, allow_unused=True)
            else:
                row = None
            rows.append(torch.zeros_like(z_leaf) if row is None else row)
        return torch.stack(rows, dim=-2)

    def evaluate(self, z: torch.Tensor, jacobian: bool = False) -> Evaluation:
        with torch.enable_grad():
            z_leaf, log_joint, grad = self._gradient(z, create_graph=jacobian)
            jac = None
            if jacobian:
                jac = self._hessian_rows(z_leaf, grad).detach()
                jac = jac / (self.scale.unsqueeze(-1) if torch.is_tensor(self.scale) else self.scale)
        step = grad.detach() / self.scale
        value = z + step
        return Evaluation(value=value, residual=step, objective=-log_joint.detach(), jacobian=jac)
