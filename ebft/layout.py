"""The strided layout's block count (docs/method.md §3); importable without torch, for the workflow's profile check."""

from __future__ import annotations


def num_blocks(L: int, c: int, s: int, G: int) -> int:
    """NB = (L − G − c)/s + 1; refuses layouts where s does not divide L − G − c."""
    if min(c, s, G) < 1 or L < c + G:
        raise ValueError(f"strided layout needs c, s, G ≥ 1 and L ≥ c + G; got L={L}, c={c}, s={s}, G={G}")
    if (L - G - c) % s:
        raise ValueError(
            f"stride s={s} does not divide L − G − c = {L - G - c} (L={L}, c={c}, G={G}); "
            f"choose s, c or L so that it does"
        )
    return (L - G - c) // s + 1
