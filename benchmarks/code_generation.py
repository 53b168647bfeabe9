"""Code-evaluation generation: ``evals.decode.decode`` (what the evaluations use) against transformers' ``generate``
with the same early stop (``evals.code.hf_generate``, the evaluations' sampler until issue 13).

    python -m benchmarks.code_generation --model-dir results/cpu/models/smollm2 --prompt-format chat \
        [--problems 16 --n 4 --max-new-tokens 192 --batch-size 16]

Both sample the same HumanEval prompts with the same settings, batch size and stopping rule (a closed code block, or
HumanEval's stop sequences), in one process. ``generate`` runs a batch until its longest sequence ends and prefills
each prompt n times; ``decode`` sorts prompts by length, prefills each once and drops finished rows. Their random
streams differ, so the sampled completions (and their lengths) differ; the generated-token counts are printed with
the times. Prints one JSON object: seconds, generated tokens and the ratio ours/reference.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from ebft.config import CodeEvalConfig
from ebft.models import autocast_dtype, load_causal_lm, load_tokenizer
from evals.code import code_done, code_prompt, hf_generate, load_problems
from evals.decode import decode


def run(model_dir, prompt_format: str, problems: int, n: int, max_new_tokens: int, batch_size: int,
        precision: str = "auto") -> dict:  # fmt: skip
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = load_tokenizer(model_dir)
    dtype = autocast_dtype(precision, device) or torch.float32
    model = load_causal_lm(model_dir, dtype=dtype).to(device).eval()
    cfg = CodeEvalConfig(human_eval_heldout=64, max_problems=problems)
    prompts = [code_prompt(p, tokenizer, prompt_format) for p in load_problems("human_eval", None, cfg, 43)]
    settings = dict(n=n, greedy=False, temperature=0.6, top_p=0.95, max_new_tokens=max_new_tokens,
                    batch_size=batch_size, done=code_done(prompt_format), seed=0)  # fmt: skip

    def timed(sampler):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.time()
        outs = sampler(model, tokenizer, prompts, **settings)
        if device.type == "cuda":
            torch.cuda.synchronize()
        tokens = sum(len(tokenizer(o, add_special_tokens=False)["input_ids"]) for group in outs for o in group)
        return time.time() - t0, tokens

    timed(decode) if device.type == "cuda" else None  # CUDA warm-up
    ours_s, ours_tokens = timed(decode)
    ref_s, ref_tokens = timed(hf_generate)
    return {"device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
            "dtype": str(dtype), "prompt_format": prompt_format, "problems": len(prompts), "n": n,
            "max_new_tokens": max_new_tokens, "threads": torch.get_num_threads(), "ours_s": round(ours_s, 2),
            "reference_s": round(ref_s, 2), "ours_tokens": ours_tokens, "reference_tokens": ref_tokens,
            "ours_over_reference": round(ours_s / ref_s, 3),
            "ours_over_reference_per_token": round((ours_s / ours_tokens) / (ref_s / ref_tokens), 3)}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-dir", required=True)
    p.add_argument("--prompt-format", choices=["raw", "chat"], default="chat")
    p.add_argument("--problems", type=int, default=16)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=192)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--precision", default="auto")
    a = p.parse_args()
    print(json.dumps(run(a.model_dir, a.prompt_format, a.problems, a.n, a.max_new_tokens, a.batch_size,
                         a.precision)))  # fmt: skip


if __name__ == "__main__":
    main()
