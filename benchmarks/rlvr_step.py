"""RLVR (GRPO) step time: the project's sampler (``rlvr.sampler: decode``) against TRL's own ``generate``.

    python -m benchmarks.rlvr_step --model-dir results/cpu/models/smollm2 [--task qa_code --steps 3 --threads 1]

Both runs train the default profile's RLVR job of the task (its prompts, reward, LoRA, optimiser and precision) for
``--steps`` optimiser steps from the prepared model and data (``results/cpu``), one after the other in this process
with the same torch threads. It prints one JSON object: seconds per step (the run's wall time over its steps, TRL's
start-up included in neither), the mean completion length and reward TRL logged, and the ratio decode / generate.
The two samplers draw other random numbers, so their completions, rewards and updates differ; the ratio is one of
time, not of results.
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-dir", type=Path, required=True)
    ap.add_argument("--config", type=Path, default=Path("config/cpu.yaml"))
    ap.add_argument("--data-root", type=Path, default=Path("results/cpu/data"))
    ap.add_argument("--task", default="qa_code")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    job = load_study(yaml.safe_load(args.config.read_text())).job("train", task=args.task, method="rlvr")
    records = read_records(args.data_root / args.task / "train.jsonl")
    result = {"task": args.task, "steps": args.steps, "threads": args.threads, "machine": platform.processor() or
              platform.machine(), "torch": torch.__version__}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for sampler in ("decode", "generate"):
            result[sampler] = run(job, args.model_dir, records, sampler, args.steps, Path(tmp) / sampler)
    result["decode/generate"] = round(result["decode"]["s_per_step"] / result["generate"]["s_per_step"], 3)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
