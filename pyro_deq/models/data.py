"""Checking and preparing the data arguments of the models: ``y``, ``mask``, ``offset``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["ModelData", "prepare_data", "as_tensor"]


@dataclass
class ModelData:
    """Validated data for a model.

    :ivar torch.Tensor y: observations with missing entries filled by 0, shape ``(N, d)``.
    :ivar mask: ``True`` where ``y`` is observed, shape ``(N, d)``, or ``None`` when all are.
    :ivar offset: added to the canonical parameter, shape broadcastable to ``(N, d)``, or ``None``.
    :ivar source_rows: for data cut from a larger data set by :meth:`rows`, the
        indices of these rows in it, shape ``(N,)``; ``None`` otherwise.
    :ivar source_size: the number of rows of that larger data set, or ``None``.
    """

    y: torch.Tensor
    mask: torch.Tensor | None
    offset: torch.Tensor | None
    source_rows: torch.Tensor | None = None
    source_size: int | None = None

    @property
    def n_rows(self) -> int:
        return self.y.shape[0]

    def to(self, dtype: torch.dtype) -> "ModelData":
        """Return the data with ``y`` and ``offset`` cast to ``dtype``."""
        offset = None if self.offset is None else self.offset.to(dtype)
        return ModelData(self.y.to(dtype), self.mask, offset, self.source_rows, self.source_size)

    def rows(self, index: torch.Tensor) -> "ModelData":
        """Return the data restricted to the rows in ``index``."""
        offset = self.offset
        if offset is not None and offset.dim() == 2 and offset.shape[0] == self.n_rows:
            offset = offset[index]
        mask = None if self.mask is None else self.mask[index]
        if self.source_rows is None:
            source_rows, source_size = index, self.n_rows
        else:
            source_rows, source_size = self.source_rows[index], self.source_size
        return ModelData(self.y[index], mask, offset, source_rows, source_size)

    def family_rows(self, family):
        """Restrict ``family`` to these rows when its parameters are per entry of the larger data set."""
        if self.source_rows is None:
            return family
        return family.index_rows(self.source_rows, self.source_size)


def as_tensor(value, name: str, dtype: torch.dtype, device=None) -> torch.Tensor:
    """Convert an array-like argument to a tensor, naming it in the error."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype=dtype, device=device)
    if hasattr(value, "toarray") and hasattr(value, "tocsr"):
        value = value.toarray()
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"`{name}` must be a numeric array or tensor; converting it failed ({error})."
        ) from None
    return torch.as_tensor(array, dtype=dtype, device=device)


def _prepare_mask(mask, y: torch.Tensor) -> torch.Tensor | None:
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        mask = torch.as_tensor(np.asarray(mask))
    if mask.dtype != torch.bool:
        raise ValueError(
            f"`mask` must be a bool tensor (True where `y` is observed), got dtype {mask.dtype}; "
            "pass mask=~torch.isnan(y) for missing values stored as NaN."
        )
    if mask.shape != y.shape:
        raise ValueError(
            f"`mask` must have the shape of `y` {tuple(y.shape)}, got {tuple(mask.shape)}."
        )
    return mask.to(y.device)


def offset_like(offset, n_rows: int, n_features: int, dtype, device=None) -> torch.Tensor:
    """Return ``offset`` shaped to broadcast to ``(n_rows, n_features)``.

    A 1-D offset of length ``n_rows`` is per row and becomes ``(n_rows, 1)``;
    one of length ``n_features`` is per feature. When the two lengths are
    equal a 1-D offset is ambiguous and rejected.

    :raises ValueError: naming the shape and the fix, for a shape that does
        not broadcast, an ambiguous 1-D offset, or a non-finite value.
    """
    offset = as_tensor(offset, "offset", dtype, device)
    if offset.dim() == 1 and n_rows == n_features and offset.shape[0] == n_rows and n_rows > 1:
        raise ValueError(
            f"`offset` of shape ({n_rows},) is ambiguous because `y` has {n_rows} rows and {n_features} "
            f"columns; pass offset.reshape({n_rows}, 1) for a per-row offset or offset.reshape(1, "
            f"{n_features}) for a per-feature one."
        )
    if offset.dim() == 1 and offset.shape[0] == n_rows:
        offset = offset.unsqueeze(-1)
    allowed = offset.dim() <= 2 and all(
        size in (1, full) for size, full in zip(offset.shape[::-1], (n_features, n_rows))
    )
    if not allowed:
        raise ValueError(
            f"`offset` must broadcast to the shape of `y` {(n_rows, n_features)}: use shape "
            f"({n_rows},) or ({n_rows}, 1) for a per-row offset such as log library size, "
            f"({n_features},) per feature, or ({n_rows}, {n_features}); got {tuple(offset.shape)}."
        )
    if not torch.isfinite(offset).all():
        first = tuple(int(i) for i in (~torch.isfinite(offset)).nonzero()[0])
        raise ValueError(
            f"`offset` must be finite; found a non-finite value at position {first}. "
            "For a log library size, drop rows with zero total count first."
        )
    return offset


def prepare_data(family, y, mask, offset, n_features: int, dtype: torch.dtype, device=None) -> ModelData:
    """Validate ``y``, ``mask`` and ``offset`` for a model with ``n_features`` columns.

    :raises ValueError: naming the argument, the bad value or position, and the fix.
    """
    y = as_tensor(y, "y", dtype, device)
    if y.dim() != 2:
        raise ValueError(
            f"`y` must be a 2-D matrix of shape (n_rows, {n_features}), got shape {tuple(y.shape)}; "
            "reshape a single row with y.reshape(1, -1)."
        )
    if y.shape[1] != n_features:
        raise ValueError(
            f"`y` has {y.shape[1]} columns but the model has n_features={n_features}; "
            "build the model with the number of columns of the data."
        )
    if y.shape[0] == 0:
        raise ValueError("`y` has no rows; pass at least one row of data.")

    mask = _prepare_mask(mask, y)
    missing = torch.isnan(y)
    if mask is None and bool(missing.any()):
        first = tuple(int(i) for i in missing.nonzero()[0])
        raise ValueError(
            f"`y` contains {int(missing.sum())} missing values (NaN), the first at (row, column) "
            f"{first}; pass mask=~torch.isnan(y) to drop them from the likelihood."
        )
    if mask is not None:
        unmasked_nan = missing & mask
        if bool(unmasked_nan.any()):
            first = tuple(int(i) for i in unmasked_nan.nonzero()[0])
            raise ValueError(
                f"`y` is NaN at (row, column) {first} where `mask` is True; set `mask` to False "
                "at missing entries, for example mask=~torch.isnan(y)."
            )

    family.validate(y, mask=mask)
    if mask is not None:
        y = torch.where(mask, y, torch.zeros((), dtype=y.dtype, device=y.device))

    offset = None if offset is None else offset_like(offset, y.shape[0], y.shape[1], y.dtype, y.device)
    return ModelData(y, mask, offset)
