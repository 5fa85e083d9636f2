"""Helpers for the output directories that the report and the command line write."""

from __future__ import annotations

import os

__all__ = ["apply_umask"]


def apply_umask(path: str | os.PathLike) -> None:
    """Give ``path`` the permissions of a new directory under the user's umask.

    :func:`tempfile.mkdtemp` creates private directories (mode 0700), which
    is wrong for output that the user publishes.
    """
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o777 & ~umask)
