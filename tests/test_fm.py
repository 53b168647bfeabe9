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


def test_the_released_whitened_variant_is_labelled_apart_and_equals_the_estimate_without_whitening(tiny_model_dir):
    """fm_loss_whitened scores the same rollouts as training does. Without whitening and with unit-norm (last-token)
    features it is the unbiased estimate itself; under the released whitening it is another number, in its own row."""
    from ebft.config import EBFTConfig, FMEvalConfig, HumanEvalSource
    from ebft.data import human_eval_split
    from evals.fm import evaluate_fm

    records = human_eval_split(HumanEvalSource(heldout=64), 43)[1][:4]
    cfg = FMEvalConfig(max_chunks=2, n=3, batch_size=2, bootstrap=20, whitened=True)
    rows = {}
    for whitening in ("none", "released"):
        ebft = EBFTConfig(c=8, s=8, G=8, pooling="last_token", whitening=whitening)
        got = evaluate_fm(tiny_model_dir, tiny_model_dir, records, 64, ebft, cfg, seed=3)
        rows[whitening] = {r["metric"]: r for r in got}
    plain, released = rows["none"], rows["released"]
    assert set(plain) == set(released) == {"fm_loss", "fm_loss_whitened"}
    assert plain["fm_loss_whitened"]["value"] == pytest.approx(plain["fm_loss"]["value"], abs=1e-4)
    assert released["fm_loss"]["value"] == plain["fm_loss"]["value"]  # the same rollouts and estimate
    assert released["fm_loss_whitened"]["value"] != pytest.approx(plain["fm_loss"]["value"], abs=1e-3)
    without = evaluate_fm(tiny_model_dir, tiny_model_dir, records, 64, EBFTConfig(c=8, s=8, G=8),
                          FMEvalConfig(max_chunks=2, n=3, batch_size=2, bootstrap=20), seed=3)  # fmt: skip
    assert [r["metric"] for r in without] == ["fm_loss"]
