"""RLVR (GRPO) step time: the project's sampler (``rlvr.sampler: decode``) against TRL's own ``generate``.

    python -m benchmarks.rlvr_step --model-dir results/cpu/models/smollm2 [--task qa_code --steps 3 --threads 1]
                                   [--parity 16]

Both runs train the default profile's RLVR job of the task (its prompts, reward, LoRA, optimiser and precision) for
``--steps`` optimiser steps from the prepared model and data (``results/cpu``), one after the other in this process
with the same torch threads. It prints one JSON object: seconds per step (the run's wall time over its steps, TRL's
start-up included in neither), the mean completion length and reward TRL logged, and the ratio decode / generate.
The two samplers draw other random numbers, so their completions, rewards and updates differ; the ratio is one of
time, not of results.

With ``--parity P`` it first samples the task's first P training prompts × num_generations from the starting policy,
untrained, with each sampler (``decode``: the merged bf16 copy stopping where the evaluation stops; ``generate``:
transformers' ``generate`` on the fp32 policy up to ``max_completion_length``, as TRL runs it) and reports each one's
mean reward, the time its sandboxed reward took and its generation time: the two must reward alike, or the faster
sampler changes what RLVR learns from.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import tempfile
from pathlib import Path

import pandas as pd
import torch
import yaml

from baselines.rlvr import train_rlvr
from ebft.data import read_records
from ebft.resolve import load_study


def run(job, model_dir: Path, records: list[dict], sampler: str, steps: int, out: Path) -> dict:
    ebft = dataclasses.replace(job.ebft_config(), max_steps=steps)
    cfg = dataclasses.replace(job.rlvr, sampler=sampler)
    summary = train_rlvr(start_dir=model_dir, train_records=records, reward=job.reward,
                         prompt_format=job.prompt_format, chunk_length=job.chunk_length, finetune=job.finetune,
                         ebft=ebft, cfg=cfg, precision=job.precision, seed=job.seed, out=out,
                         attention=job.attention)  # fmt: skip
    log = pd.read_csv(out / "train_metrics.csv")
    return {
        "s_per_step": round(summary["wall_time_s"] / summary["steps"], 2),
        "mean_completion_tokens": round(float(log["completions/mean_length"].mean()), 1),
        "mean_reward": round(float(log["reward"].mean()), 4),
    }


def parity(job, model_dir: Path, records: list[dict], prompts: int) -> dict:
    """Mean reward of the untrained policy's completions under each sampler, and their generation times."""
    import statistics
    import time

    from baselines.rlvr import chrf_reward, prompt_rows, stop_rule, unit_test_reward
    from ebft.models import autocast_dtype, load_causal_lm, load_tokenizer
    from evals.decode import decode_tokens

    cfg, n = job.rlvr, job.rlvr.num_generations or job.ebft_config().n
    tokenizer = load_tokenizer(model_dir)
    rows = prompt_rows(records, tokenizer, job.prompt_format, job.reward)[:prompts]
    encoded = [tokenizer(text=r["prompt"])["input_ids"] for r in rows]
    reward = unit_test_reward(job.prompt_format, cfg) if job.reward == "unit_tests" else chrf_reward

    def score(completions: list[list[str]]) -> dict:
        flat = [(r, c) for r, cs in zip(rows, completions, strict=True) for c in cs]
        fields = {k: [r[k] for r, _ in flat] for k in rows[0] if k != "prompt"}
        start = time.time()
        values = reward([r["prompt"] for r, _ in flat], [c for _, c in flat], **fields)
        return {"reward": round(statistics.mean(values), 4), "reward_s": round(time.time() - start, 1)}

    out = {}
    dtype = autocast_dtype(job.precision, torch.device("cpu")) or torch.float32
    engine = load_causal_lm(model_dir, dtype=dtype, attention=job.attention).eval()
    start = time.time()
    tokens = decode_tokens(engine, tokenizer, encoded, n=n, greedy=False, temperature=cfg.temperature, top_p=cfg.top_p,
                           max_new_tokens=cfg.max_completion_length, batch_size=2, seed=job.seed,
                           done=stop_rule(job.reward, rows, job.prompt_format), progress=False)  # fmt: skip
    seconds = time.time() - start
    texts = [[tokenizer.decode(t, skip_special_tokens=True) for t in ts] for ts in tokens]
    out["decode"] = {**score(texts), "generation_s": round(seconds, 1),
                     "mean_tokens": round(statistics.mean(len(t) for ts in tokens for t in ts), 1)}  # fmt: skip
    policy = load_causal_lm(model_dir, attention=job.attention).eval()
    torch.manual_seed(job.seed)
    tokenizer.padding_side = "left"
    texts, counted, start = [], [], time.time()
    for i in range(0, len(rows), 2):  # 2 prompts × n completions per call, as a GRPO step of the default profile
        batch = tokenizer([r["prompt"] for r in rows[i : i + 2]], return_tensors="pt", padding=True)
        with torch.no_grad():
            ids = policy.generate(**batch, max_new_tokens=cfg.max_completion_length, do_sample=True, top_k=0,
                                  temperature=cfg.temperature, top_p=cfg.top_p, num_return_sequences=n,
                                  pad_token_id=tokenizer.pad_token_id)  # fmt: skip
        new = ids[:, batch["input_ids"].shape[1] :]
        counted += [int((row != tokenizer.pad_token_id).sum()) for row in new]
        decoded = tokenizer.batch_decode(new, skip_special_tokens=True)
        texts += [decoded[j : j + n] for j in range(0, len(decoded), n)]
    seconds = time.time() - start
    out["generate"] = {**score(texts), "generation_s": round(seconds, 1),
                       "mean_tokens": round(statistics.mean(counted), 1)}  # fmt: skip
    out["prompts"], out["completions_each"] = len(rows), n
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-dir", type=Path, required=True)
    ap.add_argument("--config", type=Path, default=Path("config/cpu.yaml"))
    ap.add_argument("--data-root", type=Path, default=Path("results/cpu/data"))
    ap.add_argument("--task", default="qa_code")
    ap.add_argument("--steps", type=int, default=3, help="GRPO steps per sampler (0: only --parity)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--parity", type=int, default=0, metavar="P", help="also compare rewards on P prompts (0: no)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    job = load_study(yaml.safe_load(args.config.read_text())).job("train", task=args.task, method="rlvr")
    records = read_records(args.data_root / args.task / "train.jsonl")
    result = {"task": args.task, "steps": args.steps, "threads": args.threads, "machine": platform.processor() or
              platform.machine(), "torch": torch.__version__}  # fmt: skip
    if args.parity:
        result["parity"] = parity(job, args.model_dir, records, args.parity)
    if args.steps:
        with tempfile.TemporaryDirectory() as tmp:
            for sampler in ("decode", "generate"):
                result[sampler] = run(job, args.model_dir, records, sampler, args.steps, Path(tmp) / sampler)
        result["decode/generate"] = round(result["decode"]["s_per_step"] / result["generate"]["s_per_step"], 3)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
