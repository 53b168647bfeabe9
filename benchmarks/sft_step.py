"""SFT optimiser-step time: this project's loop against the reference HF loss path, and bf16 autocast against fp32.

    python -m benchmarks.sft_step --model-dir results/cpu/models/smollm2 [--batch 8 --length 256 --steps 3]

For each fine-tuning mode (LoRA, full) and precision (fp32, bf16 autocast where supported) it times, on the same
chunks and in the same process:

- ``ours``: ``baselines.sft.sft_step`` (token-weighted CE from ``ebft.losses.token_nll``, AdamW, clipping);
- ``reference``: the same optimiser step with the loss computed by transformers itself (``model(..., labels=...)``).

It prints one JSON object: seconds per step (median of ``--steps`` after one warm-up step) and the ratios
ours/reference and bf16/fp32. The reference and ours compute the same loss (checked on the warm-up step).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from baselines.sft import sft_step
from ebft.config import FinetuneConfig
from ebft.losses import token_weighted_ce
from ebft.models import autocast_dtype, load_causal_lm, make_trainable


class _NoAccel:
    """The accelerate calls the step uses, for a single process."""

    num_processes = 1

    def backward(self, loss):
        loss.backward()

    def clip_grad_norm_(self, params, max_norm):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)


def _reference_step(model, optimizer, ids):
    t0 = time.time()
    loss = model(input_ids=ids, labels=ids).loss  # transformers' own shifted, mean-reduced CE
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.time() - t0, float(loss.detach())


def bench(model_dir, mode, dtype, ids, steps):
    model = make_trainable(load_causal_lm(model_dir, dropout=0.0), FinetuneConfig(mode=mode))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    mask = torch.ones_like(ids, dtype=torch.bool)
    ctx = (lambda: torch.autocast("cpu", dtype=dtype)) if dtype else (lambda: torch.autocast("cpu", enabled=False))
    with torch.no_grad(), ctx():  # both losses on the same weights: they must agree
        logits = model(input_ids=ids).logits
        losses = {
            "ours": float(token_weighted_ce(logits, ids, mask)),
            "reference": float(model(input_ids=ids, labels=ids).loss),
        }
    times = {"ours": [], "reference": []}
    for i in range(steps + 1):  # step 0 warms up
        with ctx():
            row = sft_step(model, opt, sched, _NoAccel(), [(ids, mask)], 1.0)
            dt, _ = _reference_step(model, opt, ids)
        if i:
            times["ours"].append(row["step_time_s"])
            times["reference"].append(dt)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = round(med["ours"] / med["reference"], 3)
    return {"ours_s": round(med["ours"], 3), "reference_s": round(med["reference"], 3), "ours/reference": ratio,
            "loss_before": losses}  # fmt: skip


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", required=True)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=256)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    vocab = load_causal_lm(args.model_dir).config.vocab_size
    ids = torch.randint(0, vocab, (args.batch, args.length))
    bf16 = autocast_dtype("auto", torch.device("cpu"))
    result = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "batch": args.batch, "length": args.length, "runs": {}}  # fmt: skip
    for mode in ("lora", "full"):
        for name, dtype in (("fp32", None), ("bf16", bf16)):
            if name == "bf16" and dtype is None:
                continue
            result["runs"][f"{mode}/{name}"] = bench(args.model_dir, mode, dtype, ids, args.steps)
        if f"{mode}/bf16" in result["runs"]:
            r = result["runs"]
            r[f"{mode}/bf16_over_fp32"] = round(r[f"{mode}/bf16"]["ours_s"] / r[f"{mode}/fp32"]["ours_s"], 3)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
