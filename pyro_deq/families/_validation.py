"""Input checks shared by the families: support of the data and finiteness of ``A(eta)``."""

from __future__ import annotations

import torch

from pyro_deq.errors import NumericalError

__all__ = ["check_finite_canonical", "check_data_shape", "reject_entries"]

# How many offending rows a NumericalError message lists before it shortens the list.
_MAX_ROWS_IN_MESSAGE = 10


def check_data_shape(
    family: str, y: torch.Tensor, name: str, mask: torch.Tensor | None
) -> torch.Tensor:
    """Check that ``y`` is a 2-D tensor and return the mask of entries to check.

    :param str family: registry name of the family, used in messages.
    :param torch.Tensor y: data of shape ``(N, d)``.
    :param str name: name of the argument, used in messages.
    :param mask: optional boolean tensor of shape ``(N, d)``; ``False`` marks a
        missing entry, which is not checked.
    :returns: a boolean tensor of shape ``(N, d)``, ``True`` where ``y`` is checked.
    :raises TypeError: if ``y`` or ``mask`` is not a tensor, or ``mask`` is not boolean.
    :raises ValueError: if ``y`` is not 2-D or ``mask`` has another shape.
    """
    if not isinstance(y, torch.Tensor):
        raise TypeError(
            f"family {family!r} expects `{name}` to be a torch.Tensor of shape (N, d), "
            f"but got {type(y).__name__}. Convert it with torch.as_tensor({name})."
        )
    if y.dim() != 2:
        raise ValueError(
            f"family {family!r} expects `{name}` of shape (N, d) with one row per "
            f"observation, but got shape {tuple(y.shape)}. Reshape a single "
            f"observation with {name}.unsqueeze(0) or a single feature with "
            f"{name}.unsqueeze(-1)."
        )
    if mask is None:
        return torch.ones(y.shape, dtype=torch.bool, device=y.device)

    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise TypeError(
            f"`mask` must be a boolean torch.Tensor of shape {tuple(y.shape)}, "
            f"but got {_describe(mask)}. Build it with ~torch.isnan({name}) or "
            f"with a comparison."
        )
    if mask.shape != y.shape:
        raise ValueError(
            f"`mask` must have the shape of `{name}`, {tuple(y.shape)}, "
            f"but got shape {tuple(mask.shape)}."
        )
    return mask


def reject_entries(
    family: str,
    y: torch.Tensor,
    name: str,
    bad: torch.Tensor,
    problem: str,
    fix: str,
) -> None:
    """Raise ``ValueError`` if any entry of ``bad`` is ``True``.

    The message names the family, the argument, the number of bad entries,
    the first bad position in row-major order with its value, and the fix.

    :param str family: registry name of the family.
    :param torch.Tensor y: data of shape ``(N, d)``.
    :param str name: name of the argument.
    :param torch.Tensor bad: boolean tensor of shape ``(N, d)``.
    :param str problem: an adjective phrase for the bad entries that reads
        with "is" and "are", for example "negative".
    :param str fix: one or more sentences telling the caller what to do.
    """
    n_bad = int(bad.sum())
    if n_bad == 0:
        return

    row, column = (int(i) for i in bad.nonzero()[0])
    value = y[row, column].item()
    entries = "1 entry is" if n_bad == 1 else f"{n_bad} entries are"
    raise ValueError(
        f"family {family!r} got invalid values in `{name}`: {entries} {problem}. "
        f"The first is at (row {row}, column {column}) with value {value!r}. {fix}"
    )


def reject_non_finite(family: str, y: torch.Tensor, name: str, checked: torch.Tensor) -> None:
    """Raise ``ValueError`` if a checked entry of ``y`` is NaN or infinite."""
    reject_entries(
        family,
        y,
        name,
        checked & ~torch.isfinite(y),
        "NaN or infinite",
        "Pass `mask` with False at missing entries, or drop the rows that contain them.",
    )


def check_finite_canonical(eta: torch.Tensor, family) -> None:
    """Raise :class:`~pyro_deq.errors.NumericalError` if ``eta`` or ``A(eta)`` is not finite.

    Families whose log-partition grows fast, such as the Poisson's
    ``A(eta) = exp(eta)``, return ``inf`` when the value overflows the dtype.
    Call this after computing a canonical parameter to turn that ``inf``, or a
    NaN in ``eta`` itself, into an error that names the rows.

    :param torch.Tensor eta: canonical parameter of shape ``(N, d)``, or
        ``(N,)`` where each entry is a row.
    :param family: an :class:`~pyro_deq.families.base.ExponentialFamily` instance.
    :raises NumericalError: with ``diagnostics`` holding ``"family"`` (name),
        ``"rows"`` (list of row indices with a non-finite value),
        ``"n_bad_entries"`` (int) and ``"max_eta"`` (largest finite ``eta``,
        or ``None``).
    """
    with torch.no_grad():
        log_partition = family.log_partition(eta)
        bad = ~torch.isfinite(eta) | ~torch.isfinite(log_partition)

    if not bool(bad.any()):
        return

    bad_rows = bad.reshape(bad.shape[0], -1).any(dim=1) if bad.dim() > 0 else bad.reshape(1)
    rows = bad_rows.nonzero().flatten().tolist()
    finite_eta = eta.detach()[torch.isfinite(eta.detach())]
    max_eta = finite_eta.max().item() if finite_eta.numel() > 0 else None
    diagnostics = {
        "family": family.name,
        "rows": rows,
        "n_bad_entries": int(bad.sum()),
        "max_eta": max_eta,
    }

    shown = ", ".join(str(row) for row in rows[:_MAX_ROWS_IN_MESSAGE])
    if len(rows) > _MAX_ROWS_IN_MESSAGE:
        shown += f", ... ({len(rows) - _MAX_ROWS_IN_MESSAGE} more)"
    raise NumericalError(
        f"family {family.name!r}: the canonical parameter `eta` or the log-partition "
        f"A(eta) is NaN or infinite in {len(rows)} row(s): [{shown}]. The largest finite "
        f"eta is {max_eta!r} in {eta.dtype}. Lower the initial weights, add "
        f"weight decay, use float64, or check the `offset`.",
        diagnostics,
    )


def _describe(value) -> str:
    """Return the type of ``value``, with the dtype when it is a tensor."""
    if isinstance(value, torch.Tensor):
        return f"a tensor of dtype {value.dtype}"
    return type(value).__name__
