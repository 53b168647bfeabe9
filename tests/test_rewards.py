"""Rewards, whitening variants and RLOO advantages against values computed by hand."""

import itertools

import pytest
import torch

from ebft.rewards import feature_rewards, rloo_advantages


def unit(*rows):
    x = torch.tensor(rows, dtype=torch.float64)
    return x / x.norm(dim=-1, keepdim=True)


def test_unwhitened_rewards_by_hand():
    # one block, n = 3 rollouts in R^2
    gen = unit([1.0, 0.0], [0.0, 1.0], [1.0, 1.0])[:, None, :]  # (3, 1, 2)
    ref = unit([1.0, 0.0])  # (1, 2)
    out = feature_rewards(gen, ref, alpha=1.0, beta=0.5, whitening="none")
    r2 = 2**-0.5
    alignment = torch.tensor([2 * 1.0, 2 * 0.0, 2 * r2])
    diversity = torch.tensor([2 * (0 + r2) / 2, 2 * (0 + r2) / 2, 2 * (r2 + r2) / 2])
    torch.testing.assert_close(out["alignment"][:, 0], alignment.double())
    torch.testing.assert_close(out["diversity"][:, 0], diversity.double())
    torch.testing.assert_close(out["reward"][:, 0], (alignment - 0.5 * diversity).double())


def test_alignment_is_a_cosine_and_diversity_a_raw_dot_product():
    gen = torch.tensor([[[2.0, 0.0]], [[0.0, 3.0]], [[1.0, 1.0]]], dtype=torch.float64)
    ref = torch.tensor([[5.0, 0.0]], dtype=torch.float64)
    out = feature_rewards(gen, ref, alpha=1.0, beta=1.0, whitening="none")
    torch.testing.assert_close(out["alignment"][:, 0], torch.tensor([2.0, 0.0, 2 * 2**-0.5], dtype=torch.float64))
    torch.testing.assert_close(out["diversity"][:, 0], torch.tensor([2.0, 3.0, 5.0], dtype=torch.float64))


def explicit_paper_whitening(X, y):
    """W = ((XᵀX)⁺)^{1/2} formed explicitly as a D × D matrix (slow reference)."""
    evals, evecs = torch.linalg.eigh(X.T @ X)
    keep = evals > (1e-5 * evals.max().sqrt()) ** 2
    W = evecs[:, keep] @ torch.diag(evals[keep] ** -0.5) @ evecs[:, keep].T
    return X @ W, y @ W


def explicit_released_whitening(X, y):
    U, S, Vh = torch.linalg.svd(X, full_matrices=False)
    W = U @ torch.diag(1 / S) @ U.T  # n × n, applied on the left
    return W @ X, W @ y.expand_as(X)


def by_hand(Xw, Yw):
    """alignment 2·cos(row j, reference row j), diversity 2·mean_{i≠j} dot."""
    n = Xw.shape[0]
    Yw = Yw.expand_as(Xw)
    a = 2 * torch.nn.functional.cosine_similarity(Xw, Yw, dim=-1)
    gram = Xw @ Xw.T
    d = 2 * (gram.sum(dim=1) - gram.diagonal()) / (n - 1)
    return a, d


@pytest.mark.parametrize("whitening,explicit", [("paper", explicit_paper_whitening),
                                                ("released", explicit_released_whitening)])  # fmt: skip
def test_whitening_variants_match_an_explicit_computation(whitening, explicit):
    g = torch.Generator().manual_seed(0)
    n, NB, D = 4, 3, 12
    gen = torch.randn(n, NB, D, generator=g, dtype=torch.float64)
    ref = torch.randn(NB, D, generator=g, dtype=torch.float64)
    out = feature_rewards(gen, ref, alpha=1.0, beta=1.0, whitening=whitening)
    for k in range(NB):
        a, d = by_hand(*explicit(gen[:, k], ref[k][None]))
        torch.testing.assert_close(out["alignment"][:, k], a)
        torch.testing.assert_close(out["diversity"][:, k], d, atol=1e-9, rtol=0)


@pytest.mark.parametrize("whitening", ["paper", "released"])
def test_whitened_distinct_rollouts_have_no_diversity_and_duplicates_do(whitening):
    g = torch.Generator().manual_seed(1)
    gen = torch.nn.functional.normalize(torch.randn(4, 2, 64, generator=g), dim=-1)
    ref = torch.nn.functional.normalize(torch.randn(2, 64, generator=g), dim=-1)
    distinct = feature_rewards(gen, ref, alpha=1.0, beta=1.0, whitening=whitening)
    assert distinct["diversity"].abs().max() < 1e-5
    dup = gen.clone()
    dup[1] = dup[0]  # rollouts 0 and 1 coincide in every block
    out = feature_rewards(dup, ref, alpha=1.0, beta=1.0, whitening=whitening)
    assert (out["diversity"][:2] > 0.1).all()
    assert out["diversity"][2:].abs().max() < 1e-5
    unwhitened = feature_rewards(gen, ref, alpha=1.0, beta=1.0, whitening="none")
    assert unwhitened["diversity"].abs().max() > 1e-3  # only whitening removes the distinct rollouts' overlap


def test_rloo_baselines_by_hand():
    A = torch.tensor([[1.0], [2.0], [4.0]])
    D = torch.tensor([[0.5], [1.0], [1.5]])
    adv = rloo_advantages(A, D, alpha=1.0, beta=0.5)
    n = 3
    for j in range(n):
        b_a = (A.sum() - A[j]) / (n - 1)
        b_d = (D.sum() - 2 * D[j]) / (n - 2)
        expected = (A[j] - 0.5 * D[j]) - (b_a - 0.5 * b_d)
        torch.testing.assert_close(adv[j], expected)


def test_diversity_baseline_is_the_mean_diversity_of_the_other_rollouts():
    g = torch.Generator().manual_seed(2)
    n, D = 5, 8
    gen = torch.randn(n, 1, D, generator=g, dtype=torch.float64)
    ref = torch.randn(1, D, generator=g, dtype=torch.float64)
    full = feature_rewards(gen, ref, alpha=1.0, beta=1.0, whitening="none")
    adv = rloo_advantages(full["alignment"], full["diversity"], alpha=0.0, beta=1.0)  # isolates −(D_j − b^D_j)
    for j in range(n):
        others = [i for i in range(n) if i != j]
        sub = feature_rewards(gen[others], ref, alpha=1.0, beta=1.0, whitening="none")
        mean_other_diversity = sub["diversity"].mean()
        torch.testing.assert_close(adv[j, 0], -(full["diversity"][j, 0] - mean_other_diversity))


def test_rloo_advantages_sum_to_zero_and_refuse_small_groups():
    g = torch.Generator().manual_seed(3)
    A, D = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    torch.testing.assert_close(rloo_advantages(A, D, alpha=1.0, beta=0.0).sum(0), torch.zeros(6), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="n ≥ 3"):
        rloo_advantages(A[:2], D[:2], alpha=1.0, beta=0.5)
    assert rloo_advantages(A[:2], D[:2], alpha=1.0, beta=0.0).shape == (2, 6)


def test_unknown_whitening_is_refused():
    with pytest.raises(ValueError, match="unknown whitening 'zca'"):
        feature_rewards(torch.zeros(3, 1, 2), torch.zeros(1, 2), alpha=1, beta=0, whitening="zca")


def test_cfm_identity_for_unit_features():
    """mean_j(A_j − D_j/2) = ‖φ_y‖² − unbiased ‖mean φ_j − φ_y‖² for unit-norm, unwhitened features."""
    g = torch.Generator().manual_seed(4)
    n, D = 6, 5
    gen = torch.nn.functional.normalize(torch.randn(n, 1, D, generator=g, dtype=torch.float64), dim=-1)
    ref = torch.nn.functional.normalize(torch.randn(1, D, generator=g, dtype=torch.float64), dim=-1)
    out = feature_rewards(gen, ref, alpha=1.0, beta=1.0, whitening="none")
    metric = (out["alignment"] - out["diversity"] / 2).mean()
    phi = gen[:, 0]
    pairs = sum(phi[i] @ phi[j] for i, j in itertools.permutations(range(n), 2)) / (n * (n - 1))
    unbiased = pairs - 2 * (phi.mean(0) @ ref[0]) + ref[0] @ ref[0]
    torch.testing.assert_close(metric, ref[0] @ ref[0] - unbiased)


def test_released_whitening_falls_back_per_group_when_the_batched_svd_fails(monkeypatch):
    """The released code retries a failed SVD with tiny noise, group by group; the result matches the batched one."""
    torch.manual_seed(0)
    gen, ref = torch.randn(4, 5, 16), torch.randn(5, 16)
    expected = feature_rewards(gen, ref, alpha=1.0, beta=0.5, whitening="released")
    svd = torch.linalg.svd

    def batched_fails(x, *args, **kwargs):
        if x.shape[0] > 1:
            raise RuntimeError("linalg.svd: the algorithm failed to converge")
        return svd(x, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "svd", batched_fails)
    got = feature_rewards(gen, ref, alpha=1.0, beta=0.5, whitening="released")
    for key in ("alignment", "diversity", "reward"):
        torch.testing.assert_close(got[key], expected[key], atol=1e-4, rtol=1e-4)
