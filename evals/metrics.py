"""Downstream metrics: the unbiased pass@k estimator (Chen et al., 2021; EBFT_SPEC.md §6)."""

from __future__ import annotations

from math import comb


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n (c correct) is correct.

    ``1 − C(n−c, k) / C(n, k)``: unbiased for pass@k when the n samples are i.i.d. With ``k = n`` it is "any of the n
    passes"; with ``k = 1`` it is c / n. Refuses k > n, which the estimator cannot give (best-of-n is not pass@k).
    """
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k needs 0 ≤ c ≤ n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass@{k} needs 1 ≤ k ≤ n = {n} samples per problem; draw more samples or lower k")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)
