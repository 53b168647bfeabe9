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


def paired_ratio_diff_ci(num_a, den_a, num_b, den_b, *, resamples: int = 1000, seed: int = 0,
                         level: float = 0.95) -> tuple[float, float, float]:  # fmt: skip
    """Difference A − B of two ratio statistics measured on the same units (chunks, problems), with a paired
    percentile bootstrap: each resample draws one set of units and scores both A and B on it.

    Paired resampling cancels the variation between units that A and B share, so its interval is much tighter than
    two independent ones. Returns (difference, low, high).
    """
    arrays = [np.asarray(x, dtype=np.float64) for x in (num_a, den_a, num_b, den_b)]
    if len({a.shape for a in arrays}) != 1 or arrays[0].ndim != 1 or len(arrays[0]) == 0:
        raise ValueError("paired units: four non-empty 1-D arrays of the same length (the same units for A and B)")
    na, da, nb, db = arrays
    diff = na.sum() / max(da.sum(), 1e-12) - nb.sum() / max(db.sum(), 1e-12)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(na), size=(resamples, len(na)))
    boot = na[idx].sum(1) / np.maximum(da[idx].sum(1), 1e-12) - nb[idx].sum(1) / np.maximum(db[idx].sum(1), 1e-12)
    alpha = (1 - level) / 2
    low, high = np.quantile(boot, [alpha, 1 - alpha])
    return float(diff), float(low), float(high)
