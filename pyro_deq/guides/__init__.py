"""Guides that place the exact per-row MAP of the local latents, as Pyro autoguides."""

from .deq import AutoDEQ
from .guide_list import AutoDEQGuideList
from .laplace import AutoDEQLaplace

__all__ = ["AutoDEQ", "AutoDEQGuideList", "AutoDEQLaplace"]
