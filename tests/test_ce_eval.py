import math

import numpy as np
import torch

from ebft.config import CEEvalConfig
from ebft.models import load_causal_lm, load_tokenizer
from ebft.packing import pack_records
from evals.ce import evaluate_ce
from evals.stats import bootstrap_ratio_ci, paired_ratio_diff_ci

RECORDS = [
    {"question": "Translate this from English to German:\nEnglish: Save\nGerman:", "answer": " Sichern"},
    {"question": "def f(x):\n", "answer": "    return x * 2\n"},
    {"question": "", "answer": "import os\nprint(os.sep)\n"},
]


def test_validation_ce_equals_a_hand_computation(tiny_model_dir):
    rows = {r["metric"]: r for r in evaluate_ce(tiny_model_dir, RECORDS, 16, CEEvalConfig(batch_size=2), seed=0)}
    tok = load_tokenizer(tiny_model_dir)
    model = load_causal_lm(tiny_model_dir).eval()
    chunks = pack_records(RECORDS, tok, 16)
    total = {"val_ce": [0.0, 0], "val_ce_answer": [0.0, 0]}
    with torch.no_grad():
        for c in range(len(chunks)):
            ids = chunks.input_ids[c]
            logp = model(input_ids=ids[None]).logits[0].double().log_softmax(-1)
            for j in range(1, len(ids)):
                if chunks.valid[c, j]:
                    nll = -logp[j - 1, ids[j]].item()
                    total["val_ce"][0] += nll
                    total["val_ce"][1] += 1
                    if chunks.answer[c, j]:
                        total["val_ce_answer"][0] += nll
                        total["val_ce_answer"][1] += 1
    for metric, (nll, n) in total.items():
        assert rows[metric]["n"] == n
        assert math.isclose(rows[metric]["value"], nll / n, rel_tol=1e-5)
        assert rows[metric]["ci_low"] <= rows[metric]["value"] <= rows[metric]["ci_high"]
        assert rows[metric]["units"] == len(chunks)
        num, den = rows[metric]["unit_num"], rows[metric]["unit_den"]  # per chunk, for paired comparisons
        assert len(num) == len(den) == len(chunks) and sum(den) == n
        assert math.isclose(sum(num) / sum(den), nll / n, rel_tol=1e-5)


def test_bootstrap_ratio_ci_brackets_the_ratio_and_narrows_with_data():
    rng = np.random.default_rng(0)
    den = rng.integers(50, 100, size=400)
    num = den * (2.0 + rng.normal(0, 0.3, size=400))
    lo, hi = bootstrap_ratio_ci(num, den, resamples=500, seed=1)
    assert lo < num.sum() / den.sum() < hi
    lo_small, hi_small = bootstrap_ratio_ci(num[:20], den[:20], resamples=500, seed=1)
    assert hi - lo < hi_small - lo_small


def test_a_paired_difference_is_far_tighter_than_two_independent_intervals_and_sees_a_small_shift():
    """Two methods on the same 64 chunks whose difficulty varies a lot: B is 0.02 nats/token worse on every chunk."""
    rng = np.random.default_rng(0)
    den = rng.integers(100, 256, size=64).astype(float)
    a = den * rng.uniform(1.5, 2.5, size=64)  # per-chunk NLL sums of method A
    b = a + 0.02 * den
    diff, lo, hi = paired_ratio_diff_ci(a, den, b, den, resamples=1000, seed=3)
    assert math.isclose(diff, -0.02, rel_tol=1e-9) and lo <= diff <= hi and hi < 0  # A is better, surely
    lo_a, hi_a = bootstrap_ratio_ci(a, den, resamples=1000, seed=3)
    lo_b, hi_b = bootstrap_ratio_ci(b, den, resamples=1000, seed=3)
    assert lo_a < hi_b and lo_b < hi_a  # the two intervals overlap: on their own they cannot tell A and B apart
    assert (hi - lo) < 0.05 * min(hi_a - lo_a, hi_b - lo_b)
    same = paired_ratio_diff_ci(a, den, a, den, resamples=200, seed=3)
    assert same == (0.0, 0.0, 0.0)
