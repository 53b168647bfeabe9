"""What evaluation during training costs, against the training it sits in, at a profile's shapes.

    python -m benchmarks.during --config config/cpu.yaml --task qa_code --model-dir results/cpu/models/smollm2 \\
        --data-dir results/cpu/data/qa_code [--methods sft ebft] [--steps 2] [--threads 1]

For each method it runs the task's training job twice on the same data in this process, ``--steps`` optimiser steps
each (the profile's other settings as they are): without evaluation (the reference), and with an evaluation at every
step (``eval_every: 1``: steps 0 … ``--steps``) with the profile's ``eval.ce`` and ``eval.fm`` settings. It prints one
JSON object per method: the seconds of both runs, the median training step, the seconds one evaluation adds
((with − without) / evaluations) and its ratio to one training step, which is what an evaluation point costs in
training steps. It also checks that both runs logged the same training rows (timings aside): evaluating changes
nothing in training.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ebft import during
from ebft.data import read_records
from ebft.resolve import read_study


def _rows(out: Path) -> list[dict]:
    from ebft.trainer import TIMINGS

    with (out / "train_metrics.csv").open() as fh:  # every column but the wall-clock ones
        return [{k: v for k, v in r.items() if k not in (*TIMINGS, "tokens_per_s")} for r in csv.DictReader(fh)]


def _step_times(out: Path) -> list[float]:
    with (out / "train_metrics.csv").open() as fh:
        return [float(r["step_time_s"]) for r in csv.DictReader(fh)]


def run(job, method: str, model_dir: Path, records: list[dict], evaluation, out: Path) -> float:
    common = {"finetune": job.finetune, "precision": job.precision, "seed": job.seed, "out": out,
              "attention": job.attention, "evaluation": evaluation}  # fmt: skip
    every = None if evaluation is None else evaluation.every
    t0 = time.time()
    if method == "sft":
        from baselines.sft import train_sft

        train_sft(model_dir=model_dir, train_records=records, chunk_length=job.chunk_length, sft=job.sft, **common)
    else:
        from ebft.trainer import train_ebft

        cfg = dataclasses.replace(job.ebft_config(), eval_every=every)  # EBFT's trainer reads its section's
        train_ebft(base_dir=model_dir, start_dir=model_dir, train_records=records, chunk_length=job.chunk_length,
                   cfg=cfg, **common)  # fmt: skip
    return time.time() - t0


def bench(study, task: str, method: str, model_dir: Path, data_dir: Path, steps: int) -> dict:
    job = study.job("train", task=task, method=method)
    if method == "sft":
        job.sft = dataclasses.replace(job.sft, max_steps=steps, eval_every=None)
    else:
        job.ebft = {**job.ebft, "max_steps": steps, "checkpoint_every": steps, "eval_every": None}
    spec = study.task(task)
    layout = spec.ebft
    evaluation = during.Settings(read_records(data_dir / "heldout.jsonl"), spec.eval.ce, spec.eval.fm, layout, 1)
    records = read_records(data_dir / "train.jsonl")
    with tempfile.TemporaryDirectory() as tmp:
        plain = run(job, method, model_dir, records, None, Path(tmp) / "plain")
        evaluated = run(job, method, model_dir, records, evaluation, Path(tmp) / "evaluated")
        same = _rows(Path(tmp) / "plain") == _rows(Path(tmp) / "evaluated")
        step = statistics.median(_step_times(Path(tmp) / "plain"))
    per_eval = (evaluated - plain) / (steps + 1)
    return {"steps": steps, "without_eval_s": round(plain, 2), "with_eval_s": round(evaluated, 2),
            "evaluations": steps + 1, "step_s": round(step, 3), "evaluation_s": round(per_eval, 2),
            "evaluation/step": round(per_eval / step, 2), "training_rows_identical": same}  # fmt: skip


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="config/cpu.yaml")
    p.add_argument("--task", default="qa_code")
    p.add_argument("--model-dir", required=True, type=Path)
    p.add_argument("--data-dir", required=True, type=Path)
    p.add_argument("--methods", nargs="+", default=["sft", "ebft"], choices=["sft", "ebft"])
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    study = read_study(args.config)
    spec = study.task(args.task)
    result = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "config": args.config, "task": args.task, "ce_chunks": spec.eval.ce.max_chunks,
              "fm_chunks": spec.eval.fm.max_chunks, "fm_rollouts": spec.eval.fm.n, "runs": {}}  # fmt: skip
    for method in args.methods:
        result["runs"][method] = bench(study, args.task, method, args.model_dir, args.data_dir, args.steps)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
