"""Validation cross-entropy (docs/method.md §6).

Teacher-forced next-token CE at temperature 1 over the held-out packed chunks, token-weighted over every real
position (question, answer and EOS separators): ``val_ce``; and over answer tokens only: ``val_ce_answer``. Both in
nats per token. The 95 % interval resamples chunks with replacement. The model runs in fp32 whatever the training
precision, so numbers from different runs compare.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm

from ebft.config import CEEvalConfig
from ebft.losses import masked_nll, position_nll
from ebft.models import load_causal_lm, load_tokenizer
from ebft.packing import pack_records, target_mask
from evals.stats import bootstrap_ratio_ci

METRICS = {"val_ce": "all", "val_ce_answer": "answer"}  # metric name → target positions


@torch.no_grad()
def chunk_nll(model, chunks, batch_size: int, device) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per-chunk summed NLL and target count for each metric: {metric: (nll (N,), count (N,))}."""
    sums = {m: ([], []) for m in METRICS}
    for start in tqdm(range(0, len(chunks), batch_size), desc="ce", unit="batch"):
        batch = chunks.subset(slice(start, start + batch_size))
        ids = batch.input_ids.to(device)
        per_token = position_nll(model(input_ids=ids).logits, ids)  # once for every metric's targets
        for metric, loss_on in METRICS.items():
            nll, count = masked_nll(per_token, target_mask(batch, loss_on).to(device))
            sums[metric][0].append(nll.cpu())
            sums[metric][1].append(count.cpu())
    return {m: (torch.cat(n), torch.cat(c)) for m, (n, c) in sums.items()}


def evaluate_ce(model_dir: Path, records: list[dict], chunk_length: int, cfg: CEEvalConfig, *, seed: int,
                attention: str = "sdpa") -> list[dict]:  # fmt: skip
    """Score the model in ``model_dir`` on held-out ``records``; one row per metric."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = load_tokenizer(model_dir)
    model = load_causal_lm(model_dir, attention=attention).to(device).eval()
    chunks = pack_records(records, tokenizer, chunk_length)
    if cfg.max_chunks is not None:
        chunks = chunks.subset(slice(0, cfg.max_chunks))
    return ce_rows(model, chunks, cfg, seed=seed, device=device)


def ce_rows(model, chunks, cfg: CEEvalConfig, *, seed: int, device) -> list[dict]:
    """The validation-CE rows of ``model`` (in eval mode, on ``device``) on packed held-out ``chunks``."""
    rows = []
    for metric, (nll, count) in chunk_nll(model, chunks, cfg.batch_size, device).items():
        total = int(count.sum())
        if total == 0:
            continue  # e.g. no answer tokens in these chunks
        low, high = bootstrap_ratio_ci(nll.numpy(), count.numpy(), resamples=cfg.bootstrap, seed=seed)
        rows.append({"metric": metric, "value": float(nll.sum()) / total, "n": total, "units": len(chunks),
                     "ci_low": low, "ci_high": high, "unit_num": nll.tolist(), "unit_den": count.tolist()})  # fmt: skip
    return rows
