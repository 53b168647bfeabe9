"""Where the code evaluation's sampling spends its time: ``evals.decode.decode`` on HumanEval prompts, by operation.

    python -m benchmarks.decode_profile --model-dir results/cpu/models/smollm2 \
        [--problems 16 --n 4 --max-new-tokens 64 --batch-size 16 --threads 1 --attention sdpa]

It samples as ``eval_code`` does (the chat prompts of the first held-out problems, bf16 weights where the CPU has bf16,
nucleus sampling at T = 0.6, p = 0.95, a closed code block ends a sample) under the torch profiler, and sorts the
operations' own time into

- ``weights``: the model's matrix products (``aten::mm``/``addmm``/``linear`` kernels);
- ``kv_cache``: ``aten::cat`` (transformers' ``DynamicCache`` copied each layer's keys and values at every step
  until ``evals.decode`` preallocated them) and ``aten::index_select``/``index``, which drop finished rows;
- ``attention``: SDPA, and the products and softmax of attention (``bmm``, ``_softmax``);
- ``sampling``: the nucleus sampler's top-k, cumulative sums and the other vocabulary-wide operations
  (``topk``, ``sort``, ``cumsum``, ``ge``, ``nonzero``, ``sub``, ``div``, ``exp``, ``searchsorted``, ``gather``,
  ``scatter``);
- ``other``: the rest (norms, activations, copies).

Prints one JSON object: the wall time, the shares (fractions of the profiled CPU time) and the top operations, so
that the next bottleneck of the evaluations is visible (issue 13).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from ebft.config import CodeEvalConfig
from ebft.models import ATTENTION, autocast_dtype, load_causal_lm, load_tokenizer
from evals.code import code_done, code_prompt, load_problems
from evals.decode import decode

GROUPS = {
    "weights": ("aten::mm", "aten::addmm", "aten::linear"),
    "kv_cache": ("aten::cat", "aten::index_select", "aten::index"),
    "attention": (
        "aten::bmm",
        "aten::_softmax",
        "aten::_scaled_dot_product_flash_attention_for_cpu",
        "aten::_scaled_dot_product_attention_math",
    ),
    "sampling": (
        "aten::topk",
        "aten::sort",
        "aten::ge",
        "aten::nonzero",
        "aten::cumsum",
        "aten::sub",
        "aten::div",
        "aten::exp",
        "aten::searchsorted",
        "aten::gather",
        "aten::scatter",
        "aten::scatter_",
    ),
}


def main() -> None:
    from torch.profiler import ProfilerActivity, profile

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-dir", required=True)
    p.add_argument("--problems", type=int, default=16)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as in the cpu profile)")
    p.add_argument("--attention", choices=ATTENTION, default="sdpa")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    dtype = autocast_dtype("auto", torch.device("cpu")) or torch.float32
    model = load_causal_lm(a.model_dir, dtype=dtype, attention=a.attention).eval()
    tokenizer = load_tokenizer(a.model_dir)
    problems = load_problems("human_eval", None, CodeEvalConfig(human_eval_heldout=64, max_problems=a.problems), 43)
    prompts = [code_prompt(problem, tokenizer, "chat") for problem in problems]
    started = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        settings = dict(n=a.n, greedy=False, temperature=0.6, top_p=0.95, max_new_tokens=a.max_new_tokens,
                        batch_size=a.batch_size, done=code_done("chat"), seed=0)  # fmt: skip
        outs = decode(model, tokenizer, prompts, **settings)
    wall = time.perf_counter() - started
    own = {e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages()}
    total = sum(own.values())
    shares = {group: sum(own.get(k, 0.0) for k in keys) / total for group, keys in GROUPS.items()}
    shares["other"] = 1 - sum(shares.values())
    top = sorted(own.items(), key=lambda kv: -kv[1])[:8]
    tokens = sum(len(tokenizer(o, add_special_tokens=False)["input_ids"]) for group in outs for o in group)
    print(json.dumps({"cpu": platform.processor() or platform.machine(), "threads": a.threads, "dtype": str(dtype),
                      "attention": a.attention, "problems": len(prompts), "n": a.n,
                      "max_new_tokens": a.max_new_tokens, "generated_tokens": tokens, "wall_s": round(wall, 1),
                      "shares": {k: round(v, 3) for k, v in shares.items()},
                      "top_s": {k: round(v, 1) for k, v in top}}))  # fmt: skip


if __name__ == "__main__":
    main()
