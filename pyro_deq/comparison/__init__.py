"""Comparison of DEQ estimates with SVI and MCMC posteriors, and the ArviZ interop.

The ArviZ adapter (:mod:`pyro_deq.comparison.arviz_adapter`) imports no torch.
"""

from .compare import DEFAULT_METHODS, Settings, SettingsError, compare
from .report import ComparisonReport

__all__ = ["ComparisonReport", "DEFAULT_METHODS", "Settings", "SettingsError", "compare"]
