import math

import torch

from ebft.losses import token_nll, token_weighted_ce


def hand_ce(logits, ids, mask):
    total, count = 0.0, 0
    for b in range(ids.shape[0]):
        for j in range(1, ids.shape[1]):
            if mask[b, j]:
                row = logits[b, j - 1].double()
                logz = math.log(sum(math.exp(v) for v in row.tolist()))
                total += logz - row[ids[b, j]].item()
                count += 1
    return total / count


def test_token_weighted_ce_equals_a_hand_loop():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 11, generator=g)
    ids = torch.randint(0, 11, (3, 7), generator=g)
    mask = torch.rand(3, 7, generator=g) > 0.3
    assert math.isclose(token_weighted_ce(logits, ids, mask).item(), hand_ce(logits, ids, mask), rel_tol=1e-5)


def test_reduction_weighs_tokens_not_sequences():
    """Two sequences with 5 and 1 targets: the token-weighted mean is (sum of all 6 NLLs) / 6, by hand."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 6, 5, generator=g)
    ids = torch.randint(0, 5, (2, 6), generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]], dtype=torch.bool)
    nll, count = token_nll(logits, ids, mask)
    assert count.tolist() == [5, 1]  # the first position is never a target
    per_token = [[hand_ce(logits[b : b + 1], ids[b : b + 1], one_target(mask[b], j)) for j in range(1, 6) if mask[b, j]]
                 for b in range(2)]  # fmt: skip
    assert [len(p) for p in per_token] == [5, 1]
    torch.testing.assert_close(nll, torch.tensor([sum(p) for p in per_token]), rtol=1e-5, atol=1e-5)
    weighted = token_weighted_ce(logits, ids, mask).item()
    assert math.isclose(weighted, sum(per_token[0] + per_token[1]) / 6, rel_tol=1e-5)
    per_sequence_mean = (sum(per_token[0]) / 5 + per_token[1][0]) / 2
    assert not math.isclose(weighted, per_sequence_mean, rel_tol=1e-3)


def one_target(row_mask, j):
    """A (1, L) mask that counts only position j."""
    m = torch.zeros(1, row_mask.shape[0], dtype=torch.bool)
    m[0, j] = True
    return m


def test_nothing_counted_gives_zero_not_nan():
    logits = torch.randn(1, 4, 3)
    ids = torch.zeros(1, 4, dtype=torch.long)
    assert token_weighted_ce(logits, ids, torch.zeros(1, 4, dtype=torch.bool)).item() == 0.0
