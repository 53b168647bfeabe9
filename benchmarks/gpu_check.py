"""One-shot GPU check of the CUDA paths, at a realistic size, with random weights (no hub on the GPU machine).

    python -m benchmarks.gpu_check --tokenizer DIR --out results.json [--arch qwen2.5-1.5b] [--sections fsdp]

Builds a random-init model from a public architecture config (Qwen2.5-1.5B by default) with SmolLM2's tokenizer,
then, each section on its own so one failure does not hide the others:

- ``ebft``: three EBFT steps (bf16 autocast, full fine-tuning, L = 1024, c = s = G = 8, n = 4, 2 chunks per step)
  on the released whole-sequence path, on the shared-prefix path with chunked logits, and on it with gradient
  checkpointing; and three SFT steps on the same chunks: seconds per step (with its parts) and peak memory;
- ``rlvr``: two GRPO steps through TRL (2 prompts × 4 completions, up to 256 new tokens; random weights never stop
  early, so this is the worst case) with the sandboxed unit-test reward;
- ``fsdp``: the sharded path (``launch.strategy: fsdp``) on this one GPU, with and without CPU offload of the shards:
  three EBFT steps at one process's share of the paper's batch (2 chunks × 4 rollouts, micro-batches of 4) and three
  SFT steps, full fine-tuning in bf16: seconds per step, peak memory, and ``ebft.memory``'s estimate of it. At 7B
  (``--arch qwen2.5-7b --sections fsdp``) only the offloaded runs fit one 80 GB GPU;
- ``generation``: ``benchmarks.code_generation`` (16 HumanEval prompts × 4 samples × 512 tokens): the early-stop
  criterion's overhead against plain ``generate``.

Throughput does not depend on trained weights, so the timings stand for the released models' sizes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
import traceback
from pathlib import Path

import torch

from ebft.memory import ARCHITECTURES as ARCHS  # public architecture configs (docs/method.md §5 models)


def build_model(arch: str, tokenizer_dir: Path, out: Path) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    spec = dict(ARCHS[arch])
    config = AutoConfig.for_model(spec.pop("model_type"), **spec)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out)
    return out


def code_records(count: int) -> list[dict]:
    from ebft.config import CodeEvalConfig
    from evals.code import load_problems

    return load_problems("human_eval", None, CodeEvalConfig(), 43)[:count]


def section_ebft(model_dir: Path, work: Path) -> dict:
    from baselines.sft import train_sft
    from ebft.config import EBFTConfig, FinetuneConfig, SFTConfig
    from ebft.trainer import train_ebft

    records = code_records(64)
    full = FinetuneConfig(mode="full")
    res = {}
    variants = {  # the released whole-sequence forwards; the shared prefix with chunked logits; and with checkpointing
        "ebft_whole": ({"shared_prefix": False, "logits_chunk": 0}, full),
        "ebft": ({}, full),
        "ebft_checkpointed": ({}, FinetuneConfig(mode="full", gradient_checkpointing=True)),
    }
    for name, (settings, finetune) in variants.items():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        cfg = EBFTConfig(c=8, s=8, G=8, n=4, batch_size=2, max_steps=3, checkpoint_every=100, lr=1e-6, **settings)
        t0 = time.time()
        summary = train_ebft(base_dir=model_dir, start_dir=model_dir, train_records=records, chunk_length=1024,
                             finetune=finetune, cfg=cfg, precision="bf16", seed=43, out=work / name)  # fmt: skip
        res[name] = {"steps": summary["steps"], "wall_s": round(time.time() - t0, 1),
                     "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1),
                     "metrics": (work / name / "train_metrics.csv").read_text()}  # fmt: skip
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    sft = SFTConfig(batch_size=2, max_steps=3, lr=1e-6, scheduler="constant", warmup_ratio=0.0)
    t0 = time.time()
    summary = train_sft(model_dir=model_dir, train_records=records, chunk_length=1024, finetune=full, sft=sft,
                        precision="bf16", seed=43, out=work / "sft")  # fmt: skip
    res["sft"] = {"steps": summary["steps"], "wall_s": round(time.time() - t0, 1),
                  "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1),
                  "metrics": (work / "sft" / "train_metrics.csv").read_text()}  # fmt: skip
    return res


def section_fsdp(model_dir: Path, work: Path, arch: str) -> dict:
    from baselines.sft import train_sft
    from ebft.config import EBFTConfig, FinetuneConfig, LaunchConfig, SFTConfig
    from ebft.memory import GiB, estimate, shape_of
    from ebft.sharding import Strategy
    from ebft.trainer import train_ebft

    records, full, shape = code_records(64), FinetuneConfig(mode="full"), shape_of(ARCHS[arch])
    offloads = [True] if shape.params > 3e9 else [False, True]  # 7B: the shards alone outgrow one GPU
    res = {}
    for offload in offloads:
        strategy = Strategy("fsdp", cpu_offload=offload)
        launch = LaunchConfig(strategy="fsdp", cpu_offload=offload)
        runs = {"ebft": EBFTConfig(c=8, s=8, G=8, n=4, batch_size=2, micro_batch_size=4, max_steps=3,
                                   checkpoint_every=100, lr=1e-6),
                "sft": SFTConfig(batch_size=2, max_steps=3, lr=1e-6, scheduler="constant",
                                 warmup_ratio=0.0)}  # fmt: skip
        for method, cfg in runs.items():
            name = f"{method}_fsdp" + ("_offload" if offload else "")
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            t0 = time.time()
            try:
                if method == "ebft":
                    summary = train_ebft(base_dir=model_dir, start_dir=model_dir, train_records=records,
                                         chunk_length=1024, finetune=full, cfg=cfg, precision="bf16", seed=43,
                                         out=work / name, strategy=strategy)  # fmt: skip
                else:
                    summary = train_sft(model_dir=model_dir, train_records=records, chunk_length=1024, finetune=full,
                                        sft=cfg, precision="bf16", seed=43, out=work / name,
                                        strategy=strategy)  # fmt: skip
            except Exception:  # noqa: BLE001  (an out-of-memory is a result here)
                res[name] = {"error": traceback.format_exc()[-1500:]}
                continue
            peak = torch.cuda.max_memory_allocated()
            guess = estimate(shape, method=method, finetune=full, section=cfg, chunk_length=1024, launch=launch,
                             bf16=True, has_frozen_copy=True)  # fmt: skip
            rows = (work / name / "train_metrics.csv").read_text()
            res[name] = {"steps": summary["steps"], "wall_s": round(time.time() - t0, 1),
                         "peak_gib": round(peak / GiB, 1), "estimate_gib": round(guess.total / GiB, 1),
                         "measured_over_estimate": round(peak / guess.total, 2), "metrics": rows}  # fmt: skip
    return res


def section_rlvr(model_dir: Path, work: Path) -> dict:
    from baselines.rlvr import train_rlvr
    from ebft.config import EBFTConfig, FinetuneConfig, RLVRConfig

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    ebft = EBFTConfig(n=4, batch_size=2, max_steps=2, lr=1e-6)
    t0 = time.time()
    summary = train_rlvr(start_dir=model_dir, train_records=code_records(8), reward="unit_tests", prompt_format="raw",
                         chunk_length=256, finetune=FinetuneConfig(mode="full"), ebft=ebft,
                         cfg=RLVRConfig(max_completion_length=256), precision="bf16", seed=43,
                         out=work / "rlvr")  # fmt: skip
    return {"steps": summary["steps"], "wall_s": round(time.time() - t0, 1),
            "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1),
            "metrics": (work / "rlvr" / "train_metrics.csv").read_text()}  # fmt: skip


def section_generation(model_dir: Path, work: Path) -> dict:
    from benchmarks.code_generation import run

    torch.cuda.empty_cache()
    return run(model_dir, "raw", problems=16, n=4, max_new_tokens=512, batch_size=16, precision="bf16")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokenizer", required=True, help="a folder with SmolLM2's tokenizer files")
    p.add_argument("--arch", choices=sorted(ARCHS), default="qwen2.5-1.5b")
    p.add_argument("--sections", default="ebft,rlvr,generation,fsdp")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    report = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(), "arch": a.arch}
    try:
        model_dir = build_model(a.arch, Path(a.tokenizer), work / "model")
        sections = {
            "ebft": section_ebft,
            "rlvr": section_rlvr,
            "generation": section_generation,
            "fsdp": lambda model, where: section_fsdp(model, where, a.arch),
        }
        for name in a.sections.split(","):
            t0 = time.time()
            try:
                report[name] = sections[name](model_dir, work)
            except Exception:  # report and go on: one broken section must not hide the others
                report[name] = {"error": traceback.format_exc()[-3000:]}
            report[name]["section_s"] = round(time.time() - t0, 1)
            Path(a.out).write_text(json.dumps(report, indent=2))
            print(name, json.dumps(report[name])[:600], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
