"""Confidence intervals by bootstrap over units (chunks, problems), for ratio and mean statistics."""

from __future__ import annotations

import numpy as np


def bootstrap_ratio_ci(
    numerators, denominators, *, resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile CI of sum(num)/sum(den) when units (rows) are resampled with replacement.

    Used for token-weighted CE: a unit is a chunk, its numerator the summed NLL, its denominator its target count.
    """
    num = np.asarray(numerators, dtype=np.float64)
    den = np.asarray(denominators, dtype=np.float64)
    if num.shape != den.shape or num.ndim != 1 or len(num) == 0:
        raise ValueError("numerators and denominators must be non-empty 1-D arrays of the same length")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(num), size=(resamples, len(num)))
    stats = num[idx].sum(axis=1) / np.maximum(den[idx].sum(axis=1), 1e-12)
    alpha = (1 - level) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha])
    return float(low), float(high)
