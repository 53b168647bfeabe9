"""Held-out feature-matching loss (docs/method.md §1).

For each held-out chunk, n rollouts per block from the model under test (strided sampler, the task's c/s/G and
sampling temperature, a fixed seed shared by every model), features from the frozen base model, unwhitened, pooled
as the task pools them: ``fm_loss`` is the mean over valid blocks of the unbiased estimate of
‖E φ(ŷ) − φ(y)‖² − ‖φ(y)‖² (:func:`ebft.rewards.fm_loss_estimate`, raw inner products of the pooled features, so it
is this quantity under mean pooling too, where features are not unit norm). Lower is better; differences between
models are differences in the conditional feature-matching loss (the task's answer-only and document masking
settings apply). 95 % interval by bootstrap over chunks.

With ``whitened``, also ``fm_loss_whitened``, the released online eval's variant: the same rollouts scored as training
scores them, −mean_j(A_j − D_j/2) under the task's whitening and reward form (cosine alignment), averaged over valid
blocks. It is not the quantity above (whitening changes the geometry per block), so it is labelled apart.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ebft import strided
from ebft.config import EBFTConfig, FMEvalConfig
from ebft.models import load_causal_lm, load_tokenizer, require_supported
from ebft.packing import pack_records
from ebft.rewards import feature_rewards, fm_loss_estimate
from ebft.scoring import strided_features
from ebft.strided import block_valid, derive_seed
from evals.stats import bootstrap_ratio_ci


@torch.no_grad()
def evaluate_fm(model_dir: Path, base_dir: Path, records: list[dict], chunk_length: int, ebft: EBFTConfig,
                cfg: FMEvalConfig, *, seed: int, attention: str = "sdpa") -> list[dict]:  # fmt: skip
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_causal_lm(model_dir, attention=attention).to(device).eval()
    require_supported(model, "the held-out FM loss")  # it samples with the strided sampler
    same = Path(model_dir) == Path(base_dir)
    features = model if same else load_causal_lm(base_dir, attention=attention).to(device).eval()
    require_supported(features, "the held-out FM loss")  # and scores with strided forwards
    chunks = pack_records(records, load_tokenizer(base_dir), chunk_length)
    if cfg.max_chunks is not None:
        chunks = chunks.subset(slice(0, cfg.max_chunks))
    return fm_rows(model, lambda: contextlib.nullcontext(features), chunks, ebft, cfg, seed=seed, device=device)


@torch.no_grad()
def fm_rows(model, feature_net, chunks, ebft: EBFTConfig, cfg: FMEvalConfig, *, seed: int, device) -> list[dict]:
    """The FM-loss rows of ``model`` on packed held-out ``chunks``; ``feature_net()`` is a context manager yielding
    the feature network (a frozen model, or the policy with its adapter disabled: ``ebft.features.feature_network``).
    """
    c, s, G, n = ebft.c, ebft.s, ebft.G, cfg.n
    valid = block_valid(chunks, c, s, G, ebft.answer_only, ebft.document_mask)  # (N, NB)
    sums, counts, whitened = [], [], []
    for start in tqdm(range(0, len(chunks), cfg.batch_size), desc="fm", unit="batch"):
        batch = chunks.subset(slice(start, start + cfg.batch_size))
        B, L = batch.input_ids.shape
        rep = batch.input_ids.to(device).repeat_interleave(n, dim=0)
        docs = batch.document.to(device).repeat_interleave(n, dim=0) if ebft.document_mask else None
        generator = torch.Generator(device=device).manual_seed(derive_seed(seed, start))
        blocks = strided.sample_blocks(
            model, rep, c, s, G, temperature=ebft.temperature, top_p=ebft.top_p, generator=generator, documents=docs
        )
        seq = strided.strided_sequence(rep, blocks)
        with feature_net() as features:
            gt, gen = strided_features(
                features, seq, L, c, s, G, layers=ebft.feature_layers, pooling=ebft.pooling, documents=docs
            )
        NB = blocks.shape[1]
        gen, gt = gen.view(B, n, NB, -1), gt.view(B, n, NB, -1)[:, 0]
        for b in range(B):
            keep = valid[start + b].to(device).double()  # (NB,)
            sums.append(float((fm_loss_estimate(gen[b], gt[b]) * keep).sum()))
            counts.append(float(keep.sum()))
            if cfg.whitened:  # training's estimate of ‖φ_y‖² − loss under its whitening: mean_j(A_j − D_j/2)
                r = feature_rewards(gen[b], gt[b], alpha=1.0, beta=1.0, whitening=ebft.whitening)
                estimate = (r["alignment"].double() - r["diversity"].double() / 2).mean(dim=0)  # (NB,)
                whitened.append(float((-estimate * keep).sum()))
    total = sum(counts)
    if total == 0:
        return []
    rows = []
    for metric, values in (("fm_loss", sums), ("fm_loss_whitened", whitened)):
        if values:
            low, high = bootstrap_ratio_ci(values, counts, resamples=cfg.bootstrap, seed=seed)
            rows.append({"metric": metric, "value": sum(values) / total, "n": int(total), "units": len(values),
                         "ci_low": low, "ci_high": high, "unit_num": values, "unit_den": counts})  # fmt: skip
    return rows
