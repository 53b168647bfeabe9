"""The held-out feature-matching loss: its estimator against brute force, under both poolings."""

import itertools

import pytest
import torch

from ebft.features import pool_blocks, token_features
from ebft.rewards import feature_rewards, fm_loss_estimate


def brute_force(gen, ref):
    """‖mean φ̂ − φ_y‖² − ‖φ_y‖² with ‖E φ̂‖² estimated without bias by the mean over ordered pairs i ≠ j."""
    n = gen.shape[0]
    pairs = sum(gen[i] @ gen[j] for i, j in itertools.permutations(range(n), 2)) / (n * (n - 1))
    return pairs - 2 * (gen.mean(0) @ ref)


@pytest.mark.parametrize("pooling", ["last_token", "mean"])
def test_fm_estimate_equals_brute_force_on_pooled_features(pooling):
    L, c, s, G, n = 20, 4, 4, 4, 4  # NB = 4
    g = torch.Generator().manual_seed(0)
    NB = (L - G - c) // s + 1
    hidden = [torch.randn(n, L + NB * G, 6, generator=g, dtype=torch.float64) for _ in range(3)]
    for h in hidden:
        h[:, :L] = h[:1, :L]  # the ground-truth region is shared by the n copies
    gt, gen = pool_blocks(token_features(hidden, [1, 2]).double(), L, c, s, G, pooling)  # (n, NB, D) each
    ref = gt[0]  # (NB, D)
    got = fm_loss_estimate(gen, ref)
    for k in range(NB):
        torch.testing.assert_close(got[k], brute_force(gen[:, k], ref[k]))
    if pooling == "mean":  # mean-pooled features are not unit norm: the cosine form would give another number
        assert (gen.norm(dim=-1) < 0.999).any()
        r = feature_rewards(gen, ref, alpha=1.0, beta=1.0, whitening="none")
        cosine_form = -(r["alignment"] - r["diversity"] / 2).mean(dim=0)
        assert not torch.allclose(cosine_form, got)


def test_fm_estimate_is_bounded_below_by_minus_the_reference_norm():
    """‖E φ̂ − φ_y‖² ≥ 0, so the expectation of the estimate is ≥ −‖φ_y‖²; identical rollouts reach the bound's form."""
    ref = torch.tensor([[0.6, 0.8]], dtype=torch.float64)
    gen = ref.expand(3, 1, 2).clone()  # every rollout equals the reference
    torch.testing.assert_close(fm_loss_estimate(gen, ref), -(ref**2).sum(-1))
    with pytest.raises(ValueError, match="n ≥ 2"):
        fm_loss_estimate(gen[:1], ref)
