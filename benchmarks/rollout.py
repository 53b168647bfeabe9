"""Strided rollout speed: the cached sampler against the released uncached reference, naive per-prefix generation and
one plain causal forward (the floor); and an EBFT training step against an SFT step on the same chunks.

    python -m benchmarks.rollout --model-dir results/cpu/models/smollm2 [--length 512 --n 4 --precisions fp32 bf16]

All timings come from one process, on the same model and the same chunk (one chunk of real text, copied n times), so
ratios are meaningful even on a busy machine. Prints one JSON object:

- ``seconds``: cached, uncached, naive (every block's prefix generated separately with ``model.generate``), forward (a
  plain causal forward over n × S tokens, S = L + NB·G), per precision;
- ``ratios``: uncached/cached and naive/cached (speed-ups, targets ≥ 5 and ≥ 10) and cached/forward (target ≤ 1.5);
- ``agreement``: fraction of tokens on which cached and uncached agree for the same seed (1.0 expected in fp32);
- ``train_step``: an EBFT optimiser step (LoRA, the cpu profile's settings) on the whole-sequence path and on the
  shared-prefix path, each with its parts (sampling, features, policy forward and backward, optimiser), and an SFT
  step on the same chunk; ratios EBFT/SFT and shared/whole.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from ebft import strided
from ebft.config import EBFTConfig, FinetuneConfig
from ebft.models import autocast_dtype, load_causal_lm, load_tokenizer, make_trainable


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def real_chunk(tokenizer, length: int) -> torch.Tensor:
    """The first ``length`` tokens of a standard-library module (real code, deterministic)."""
    import sysconfig
    from pathlib import Path

    text = (Path(sysconfig.get_paths()["stdlib"]) / "argparse.py").read_text()
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:length]
    return torch.tensor([ids])


def naive(model, chunk, c, s, G, n, temperature, seed):
    """Each copy's every block generated on its own from its prefix (what strided sampling replaces)."""
    NB = strided.num_blocks(chunk.shape[1], c, s, G)
    torch.manual_seed(seed)
    for _ in range(n):
        for k in range(NB):
            prefix = chunk[:, : c + k * s]
            model.generate(prefix, attention_mask=torch.ones_like(prefix), max_new_tokens=G, min_new_tokens=G,
                           do_sample=True, temperature=temperature, top_p=1.0, top_k=0, pad_token_id=0)  # fmt: skip


def rollouts(model, chunk, args, dtype) -> dict:
    c, s, G, n, T = args.c, args.s, args.G, args.n, args.temperature
    rows = chunk.repeat(n, 1)
    NB = strided.num_blocks(chunk.shape[1], c, s, G)
    S = chunk.shape[1] + NB * G
    ctx = (lambda: torch.autocast("cpu", dtype=dtype)) if dtype else (lambda: torch.autocast("cpu", enabled=False))

    def sample(cached):
        with ctx():
            gen = torch.Generator().manual_seed(args.seed)
            return strided.sample_blocks(model, rows, c, s, G, temperature=T, generator=gen, use_cache=cached)

    def forward():
        with ctx(), torch.no_grad():
            model(input_ids=torch.randint(0, 1000, (n, S), generator=torch.Generator().manual_seed(0)))

    sample(True)  # warm-up
    t_cached, a = _timed(lambda: sample(True))
    t_uncached, b = _timed(lambda: sample(False))
    t_forward, _ = _timed(forward)
    t_naive = None
    if not args.skip_naive:
        with ctx(), torch.no_grad():
            t_naive, _ = _timed(lambda: naive(model, chunk, c, s, G, n, T, args.seed))
    seconds = {"cached": t_cached, "uncached": t_uncached, "naive": t_naive, "forward": t_forward}
    ratios = {"uncached/cached": t_uncached / t_cached, "cached/forward": t_cached / t_forward}
    if t_naive is not None:
        ratios["naive/cached"] = t_naive / t_cached
    return {"seconds": {k: v and round(v, 3) for k, v in seconds.items()},
            "ratios": {k: round(v, 2) for k, v in ratios.items()},
            "agreement": round(float((a == b).float().mean()), 4), "blocks": NB, "sequence": S}  # fmt: skip


def train_steps(model_dir, chunk, args, precision: str) -> dict:
    """EBFT steps (n copies of the chunk) on the whole-sequence path (the released computation) and the shared-prefix
    path, each split into its parts, and one SFT step on the chunk; LoRA, the trainer's own code paths, one warm-up
    step each, then the median of ``--steps`` steps."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from baselines.sft import sft_step
    from ebft.packing import PackedChunks
    from ebft.trainer import StridedPolicy, ebft_step

    AcceleratorState._reset_state(True)  # one process measures both precisions
    acc = Accelerator(cpu=True, mixed_precision="bf16" if precision == "bf16" else "no")
    model = make_trainable(load_causal_lm(model_dir, dropout=0.0), FinetuneConfig(mode="lora"))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    policy, opt = acc.prepare(StridedPolicy(model), opt)
    ones = torch.ones_like(chunk, dtype=torch.bool)
    batch = PackedChunks(chunk, ones, ones, torch.zeros_like(chunk))
    valid = torch.ones(1, strided.num_blocks(chunk.shape[1], args.c, args.s, args.G), dtype=torch.bool)
    parts = ("sample_s", "features_s", "policy_s", "optimizer_s")
    out = {}
    for path, shared in (("whole", False), ("shared", True)):
        # whole: the released computation (whole sequences, all logits at once); shared: this release's defaults
        cfg = EBFTConfig(c=args.c, s=args.s, G=args.G, n=args.n, temperature=args.temperature, batch_size=1,
                         shared_prefix=shared, **({} if shared else {"logits_chunk": 0}))  # fmt: skip
        ebft_step(acc, policy, None, None, opt, sched, batch, valid, cfg, [0])  # warm-up
        rows = [ebft_step(acc, policy, None, None, opt, sched, batch, valid, cfg, [1 + i]) for i in range(args.steps)]
        out[f"ebft_{path}"] = {"step_s": _median([r["step_time_s"] for r in rows]),
                               **{k: _median([r[k] for r in rows]) for k in parts}}  # fmt: skip
    with acc.autocast():
        sft_step(model, opt, sched, acc, [(chunk, ones)], 1.0)
        times = [_timed(lambda: sft_step(model, opt, sched, acc, [(chunk, ones)], 1.0))[0] for _ in range(args.steps)]
    out["sft_step_s"] = round(_median(times), 3)
    whole, shared = out["ebft_whole"]["step_s"], out["ebft_shared"]["step_s"]
    sample = {path: out[f"ebft_{path}"]["sample_s"] for path in ("whole", "shared")}
    out["ratios"] = {
        "ebft_shared/sft": round(shared / out["sft_step_s"], 2),
        "ebft_whole/sft": round(whole / out["sft_step_s"], 2),
        "shared/whole": round(shared / whole, 3),
        "shared/whole without sampling": round((shared - sample["shared"]) / (whole - sample["whole"]), 3),
    }
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", default="results/cpu/models/smollm2")
    p.add_argument("--length", type=int, default=512)
    p.add_argument("--c", type=int, default=8)
    p.add_argument("--s", type=int, default=8)
    p.add_argument("--G", type=int, default=8)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--temperature", type=float, default=0.6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--skip-naive", action="store_true", help="leave out the (slow) naive per-prefix generation")
    p.add_argument("--skip-train", action="store_true", help="leave out the EBFT and SFT step timings")
    p.add_argument("--skip-rollouts", action="store_true", help="only the EBFT and SFT step timings")
    p.add_argument("--steps", type=int, default=3, help="timed training steps per path (median)")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_causal_lm(args.model_dir).eval()
    chunk = real_chunk(load_tokenizer(args.model_dir), args.length)
    result = {"model_dir": args.model_dir, "threads": torch.get_num_threads(), "L": chunk.shape[1], "c": args.c,
              "s": args.s, "G": args.G, "n": args.n, "temperature": args.temperature, "runs": {}}  # fmt: skip
    for precision in args.precisions:
        dtype = autocast_dtype(precision, torch.device("cpu"))
        if precision == "bf16" and dtype is None:
            result["runs"][precision] = "skipped: this CPU lacks bf16"
            continue
        run = {} if args.skip_rollouts else rollouts(model, chunk, args, dtype)
        if not args.skip_train:
            run["train_step"] = train_steps(args.model_dir, chunk, args, precision)
        result["runs"][precision] = run
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
