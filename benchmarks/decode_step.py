"""Where one cached decode step of the profile's model spends its time: what bounds sampling on a CPU core.

    python -m benchmarks.decode_step --model-dir results/cpu/models/smollm2 [--rows 8 64 --context 300 --threads 1]

Every sampler of the study decodes one token per row per step against a KV cache: TRL's ``generate`` in RLVR (8 rows,
fp32 weights, LoRA adapters unmerged), EBFT's strided sampler (LoRA under bf16 autocast) and the downstream
evaluations (``evals.decode``: bf16 weights, 64 rows falling as rows finish). For each of these weight forms and each
row count this times ``--steps`` decode steps after a prefill of ``--context`` tokens, in one process, and splits the
step with the torch profiler into matrix products (``aten::mm``/``addmm``/``bmm``), the cache's concatenation
(``aten::cat``: transformers' ``DynamicCache`` copies each layer's keys and values at every step) and attention.
``weights_gb_per_s`` is the model's weight bytes over the time in matrix products: where it is near the memory
bandwidth of one core, sampling is memory-bound, and only more rows per step (or fewer bytes per weight) speed it up.
Prints one JSON object per (form, rows), with the step time over the first form's at the same rows (fp32, by default).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from ebft.config import FinetuneConfig
from ebft.models import ATTENTION, load_causal_lm, make_trainable

MATMUL = ("aten::mm", "aten::addmm", "aten::bmm")


FORMS = {
    "fp32": "fp32",
    "lora": "fp32 + LoRA (RLVR's generate)",
    "lora-autocast": "LoRA under bf16 autocast (EBFT's sampler)",
    "bf16": "bf16 weights (evaluations)",
}


def forms(model_dir, names, attention: str):
    """(name, model, autocast dtype or None), built one at a time (each holds a copy of the model)."""
    if "fp32" in names:
        yield FORMS["fp32"], load_causal_lm(model_dir, attention=attention).eval(), None
    if {"lora", "lora-autocast"} & set(names):
        lora = make_trainable(load_causal_lm(model_dir, attention=attention), FinetuneConfig()).eval()
        if "lora" in names:
            yield FORMS["lora"], lora, None
        if "lora-autocast" in names:
            yield FORMS["lora-autocast"], lora, torch.bfloat16
        del lora
    if "bf16" in names:
        yield FORMS["bf16"], load_causal_lm(model_dir, dtype=torch.bfloat16, attention=attention).eval(), None


@torch.no_grad()
def step_profile(model, autocast, rows: int, context: int, steps: int) -> dict:
    from torch.profiler import ProfilerActivity, profile
    from transformers import DynamicCache

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(100, model.config.vocab_size - 100, (rows, context), generator=generator)
    with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        cache = DynamicCache(config=model.config)
        model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        token = ids[:, -1:]
        model(input_ids=token, past_key_values=cache, use_cache=True)  # warm-up step
        started = time.perf_counter()
        for _ in range(steps):
            model(input_ids=token, past_key_values=cache, use_cache=True)
        step_s = (time.perf_counter() - started) / steps
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                model(input_ids=token, past_key_values=cache, use_cache=True)
    self_s = {e.key: e.self_cpu_time_total / 1e6 / steps for e in prof.key_averages()}
    total = sum(self_s.values())
    matmul = sum(self_s.get(k, 0.0) for k in MATMUL)
    attention = sum(v for k, v in self_s.items() if "scaled_dot_product" in k)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"step_ms": round(step_s * 1e3, 1), "matmul_share": round(matmul / total, 3),
            "cache_concat_share": round(self_s.get("aten::cat", 0.0) / total, 3),
            "attention_share": round(attention / total, 3),
            "weights_gb_per_s": round(weight_bytes / 1e9 / max(matmul * step_s / total, 1e-9), 1)}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-dir", required=True)
    p.add_argument("--rows", type=int, nargs="+", default=[8, 64], help="rows decoded per step (default 8 64)")
    p.add_argument("--context", type=int, default=300, help="prefilled tokens per row (default 300)")
    p.add_argument("--steps", type=int, default=20, help="timed decode steps (default 20)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as in the cpu profile)")
    p.add_argument("--forms", nargs="+", choices=list(FORMS), default=list(FORMS), help="weight forms (default all)")
    p.add_argument("--attention", choices=ATTENTION, default="sdpa", help="attention kernel (default sdpa)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    plain: dict[int, float] = {}
    for name, model, autocast in forms(a.model_dir, a.forms, a.attention):
        for rows in a.rows:
            r = step_profile(model, autocast, rows, a.context, a.steps)
            plain.setdefault(rows, r["step_ms"])
            print(json.dumps({"form": name, "rows": rows, "context": a.context, "threads": a.threads,
                              "attention": a.attention,
                              "cpu": platform.processor() or platform.machine(), **r,
                              "over_first_form": round(r["step_ms"] / plain[rows], 2)}), flush=True)  # fmt: skip
        del model


if __name__ == "__main__":
    main()
