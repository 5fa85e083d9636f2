"""Warning and error types shared by every part of the package.

This module imports nothing else from ``pyro_deq``, so the solvers can use it
while still depending on nothing of ours.
"""

from __future__ import annotations

import os
import sys
import warnings

__all__ = ["ConvergenceWarning", "NumericalError", "warn_at_caller"]

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


class ConvergenceWarning(UserWarning):
    """Issued when a fixed-point solve stops before every row meets its tolerance."""


class NumericalError(FloatingPointError):
    """Raised when a computation produced non-finite values it cannot recover from.

    :param str message: what failed and what to try instead.
    :param dict diagnostics: the iteration, residuals and offending rows, for
        programmatic inspection.
    """

    def __init__(self, message: str, diagnostics: dict | None = None):
        super().__init__(message)
        self.diagnostics = dict(diagnostics or {})


def _stacklevel_outside_package() -> int:
    """Count frames up to the first one outside ``pyro_deq``, ``pyro`` and ``torch``."""
    internal = (_PACKAGE_DIR,)
    for name in ("pyro", "torch"):
        module = sys.modules.get(name)
        if module is not None and getattr(module, "__file__", None):
            internal += (os.path.dirname(os.path.abspath(module.__file__)),)

    frame = sys._getframe(2)
    level = 2
    while frame is not None:
        filename = os.path.abspath(frame.f_code.co_filename)
        if not filename.startswith(internal) and "contextlib" not in filename:
            return level
        frame = frame.f_back
        level += 1
    return 2


def warn_at_caller(message: str, category: type[Warning] = ConvergenceWarning) -> None:
    """Issue ``message`` with a stack level that points at the user's own line."""
    warnings.warn(message, category, stacklevel=_stacklevel_outside_package())
