"""Pyro models whose per-row MAP of the latents is a fixed point."""

from .autograd_problem import AutogradProblem
from .data import ModelData
from .deep import DeepExpFamPCA
from .expfam_pca import ExpFamPCA
from .problem import ExpFamPCAProblem

__all__ = ["AutogradProblem", "DeepExpFamPCA", "ExpFamPCA", "ExpFamPCAProblem", "ModelData"]
