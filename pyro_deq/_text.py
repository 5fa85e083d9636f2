"""Wording helpers for messages."""

from __future__ import annotations

__all__ = ["count_noun"]


def count_noun(count: int, singular: str, plural: str | None = None) -> str:
    """Write ``count`` with its noun in the right number: ``"1 row"``, ``"3 rows"``.

    :param str plural: the plural form, when it is not ``singular + "s"``.
    """
    noun = singular if count == 1 else (plural or singular + "s")
    return f"{count} {noun}"
