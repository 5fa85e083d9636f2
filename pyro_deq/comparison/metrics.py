"""Numbers that set one method's posterior beside NUTS and beside the DEQ MAP."""

from __future__ import annotations

import numpy as np
from scipy.linalg import subspace_angles

__all__ = ["interval_coverage", "standardized_errors", "principal_angles"]


def standardized_errors(point: np.ndarray, reference_draws: np.ndarray) -> np.ndarray:
    """``|point − NUTS mean| / NUTS sd`` per entry, shape ``(n, k)``.

    :param point: the method's estimate, shape ``(n, k)``.
    :param reference_draws: NUTS draws, shape ``(chain, draw, n, k)``.
    """
    flat = reference_draws.reshape(-1, *reference_draws.shape[2:])
    return np.abs(point - flat.mean(0)) / flat.std(0, ddof=1)


def sd_ratio(draws: np.ndarray | None, reference_draws: np.ndarray) -> np.ndarray:
    """``method sd / NUTS sd`` per entry, shape ``(n, k)``; NaN for a point estimate."""
    reference = reference_draws.reshape(-1, *reference_draws.shape[2:]).std(0, ddof=1)
    if draws is None:
        return np.full(reference.shape, np.nan)
    return draws.reshape(-1, *draws.shape[2:]).std(0, ddof=1) / reference


def interval_coverage(draws: np.ndarray | None, reference_draws: np.ndarray, prob: float = 0.9) -> float:
    """Fraction of NUTS draws inside the method's central ``prob`` interval, averaged over entries.

    A calibrated method scores ``prob``; an interval that is too narrow scores
    less. A point estimate has no interval and scores NaN.
    """
    if draws is None:
        return float("nan")
    flat = draws.reshape(-1, *draws.shape[2:])
    lower = np.quantile(flat, (1 - prob) / 2, axis=0)
    upper = np.quantile(flat, (1 + prob) / 2, axis=0)
    reference = reference_draws.reshape(-1, *reference_draws.shape[2:])
    inside = (reference >= lower) & (reference <= upper)
    return float(inside.mean())


def principal_angles(weight_a: np.ndarray, weight_b: np.ndarray) -> np.ndarray:
    """Principal angles in degrees between the column spaces of two loadings, largest first."""
    # In float32 the angle between a subspace and itself comes out near 1e-5
    # degrees; float64 brings that to rounding level.
    return np.degrees(subspace_angles(np.asarray(weight_a, np.float64), np.asarray(weight_b, np.float64)))
