"""Sharded (FSDP2) against data-parallel (DDP) training on this machine: time per step and memory per process.

    python -m benchmarks.fsdp --config config/cpu.yaml --task qa_code --model-dir results/cpu/models/smollm2 \\
        --data-dir results/cpu/data/qa_code [--methods ebft sft] [--mode full] [--steps 3] [--processes 2]

For each method it runs the task's training job as `ebft train` runs it, over ``--processes`` CPU processes (gloo),
once with ``--strategy ddp`` (the reference) and once with ``--strategy fsdp``, ``--steps`` optimiser steps each, with
``finetune.mode`` set to ``--mode`` (full fine-tuning is where sharding matters). It prints one JSON object per method:
the median step time of each (steps after the first), the first process's peak resident memory and the parameters it
holds, FSDP's ratios to DDP, and whether the two logged the same per-step losses within 1e-4 (they compute the same
update; under bf16 a rounding difference in the reduced gradients can flip a sampled token after a few steps, and
the rollouts then differ). On a CPU the processes share one memory, so the resident memory says what each process
keeps, not what a GPU would hold (``ebft check`` estimates that; ``benchmarks.gpu_check`` measures it).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from ebft.config import read_profile_file


def run(profile: Path, method: str, task: str, model_dir: Path, data_dir: Path, out: Path, strategy: str,
        processes: int) -> dict:  # fmt: skip
    cmd = [sys.executable, "-m", "ebft.cli", "train", "--config", str(profile), "--method", method, "--task", task,
           "--model-dir", str(model_dir), "--data-dir", str(data_dir), "--out", str(out), "--strategy", strategy,
           "--processes", str(processes), "--threads", str(processes)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode:
        raise SystemExit(f"{method} under {strategy} failed:\n{proc.stderr[-3000:]}")
    with (out / "train_metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    summary = json.loads((out / "train_summary.json").read_text())
    ran = yaml.safe_load((out / "resolved_config.yaml").read_text())
    times = [float(r["step_time_s"]) for r in rows[1:]] or [float(rows[0]["step_time_s"])]
    return {"median_step_s": round(statistics.median(times), 3), "peak_rss_mb": ran["peak_rss_mb"],
            "parameters_per_process": summary["parameters_per_process"],
            "losses": [float(r["loss"]) for r in rows]}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="config/cpu.yaml")
    p.add_argument("--task", default="qa_code")
    p.add_argument("--model-dir", type=Path, required=True)
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--methods", nargs="+", default=["ebft", "sft"], choices=["ebft", "sft"])
    p.add_argument("--mode", default="full", choices=["full", "lora"])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], help="default: the profile's")
    a = p.parse_args()
    raw = read_profile_file(a.config)
    if a.precision:
        raw["precision"] = a.precision
    raw["finetune"] = {**(raw.get("finetune") or {}), "mode": a.mode}
    for section in ("sft", "ebft"):
        raw[section] = {**(raw.get(section) or {}), "max_steps": a.steps}
        for key in ("eval_every", "downstream_every"):
            raw[section].pop(key, None)
    with tempfile.TemporaryDirectory(prefix="fsdp_bench_") as tmp:
        profile = Path(tmp) / "profile.yaml"
        profile.write_text(yaml.safe_dump(raw))
        for method in a.methods:
            res = {s: run(profile, method, a.task, a.model_dir, a.data_dir, Path(tmp) / f"{method}-{s}", s,
                          a.processes) for s in ("ddp", "fsdp")}  # fmt: skip
            ddp, fsdp = res["ddp"], res["fsdp"]
            same = all(
                abs(x - y) <= 1e-4 * max(1.0, abs(x)) for x, y in zip(ddp["losses"], fsdp["losses"], strict=True)
            )
            print(json.dumps({
                "method": method, "mode": a.mode, "processes": a.processes, "steps": a.steps,
                "machine": platform.processor() or platform.machine(),
                "precision": raw.get("precision", "auto"), "ddp": {k: v for k, v in ddp.items() if k != "losses"},
                "fsdp": {k: v for k, v in fsdp.items() if k != "losses"},
                "step_time_ratio": round(fsdp["median_step_s"] / ddp["median_step_s"], 2),
                "peak_rss_ratio": round(fsdp["peak_rss_mb"] / ddp["peak_rss_mb"], 2),
                "parameters_ratio": round(fsdp["parameters_per_process"] / ddp["parameters_per_process"], 3),
                "same_losses": same, "losses": {"ddp": ddp["losses"], "fsdp": fsdp["losses"]},
            }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
