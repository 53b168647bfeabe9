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
  step on the same chunk; ratios EBFT/SFT and shared/whole. With ``--reference REV`` (default: the code issue 13
  measured, ``REFERENCE_REV``), also the EBFT and SFT steps of that revision's own code on the same chunk, run by its
  own ``benchmarks.rollout.train_steps`` in a subprocess from ``git archive REV``, and the ratio shared/reference.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

from ebft import strided
from ebft.cli import REPO
from ebft.config import EBFTConfig, FinetuneConfig
from ebft.models import autocast_dtype, load_causal_lm, load_tokenizer, make_trainable

# The code issue 13 measured ("today's path"): whole sequences for the policy and the features, all logits at once,
# torch.multinomial draws, autocast casting the frozen weights at every call. Its EBFT settings are this release's
# minus shared_prefix and logits_chunk, so it computes the same step (other random draws, the same distribution).
REFERENCE_REV = "5c80b3d"

# Run in a checkout of the reference revision: one call of its own train_steps (one warm-up EBFT step and one timed,
# then one SFT warm-up step and one timed); prints its result as JSON.
_REFERENCE_SNIPPET = """
import argparse, json, sys
import torch
opts = json.loads(sys.argv[1])
if opts["threads"]:
    torch.set_num_threads(opts["threads"])
from benchmarks.rollout import real_chunk, train_steps
from ebft.models import load_tokenizer
chunk = real_chunk(load_tokenizer(opts["model_dir"]), opts["length"])
print(json.dumps(train_steps(opts["model_dir"], chunk, argparse.Namespace(**opts["args"]), opts["precision"])))
"""


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


def resolve(rev: str) -> str:
    """The full commit id of revision ``rev`` of this repository, or one sentence saying why there is none (checked
    before any timing, so a mistyped revision costs nothing)."""
    done = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], cwd=REPO,
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode:
        raise SystemExit(f"benchmarks.rollout: {rev!r} is not a commit of the repository at {REPO}; pass --reference "
                         "a revision of it (a clone with history), or --reference none to leave it out")  # fmt: skip
    return done.stdout.strip()


def checkout(commit: str, into: Path) -> Path:
    """The files of ``commit`` of this repository (``git archive``), extracted under ``into``."""
    tar = subprocess.run(["git", "archive", "--format=tar", commit], cwd=REPO, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        archive.extractall(into, filter="data")
    return into


def reference_step(tree: Path, model_dir: str, chunk_length: int, args, precision: str) -> dict:
    """One EBFT step and one SFT step of the reference revision's own code (checked out in ``tree``) on the same chunk
    and settings: its ``train_steps``, in a subprocess run from its files."""
    settings = {k: getattr(args, k) for k in ("c", "s", "G", "n", "temperature", "seed")}
    opts = {"model_dir": str(Path(model_dir).resolve()), "length": chunk_length, "precision": precision,
            "threads": args.threads, "args": settings}  # fmt: skip
    done = subprocess.run([sys.executable, "-c", _REFERENCE_SNIPPET, json.dumps(opts)], cwd=tree,
                          env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True)  # fmt: skip
    if done.returncode:
        raise RuntimeError(f"revision {args.reference} failed to run its own train_steps (a reference needs "
                           f"{REFERENCE_REV}'s benchmarks.rollout): {done.stderr[-2000:]}")  # fmt: skip
    row = json.loads(done.stdout.strip().splitlines()[-1])
    if not {"ebft_step_s", "ebft_sampling_s", "sft_step_s"} <= row.keys():
        raise RuntimeError(f"revision {args.reference}'s train_steps reports {sorted(row)}, not the ebft_step_s, "
                           f"ebft_sampling_s and sft_step_s of {REFERENCE_REV}'s")  # fmt: skip
    return row


def train_steps(model_dir, chunk, args, precision: str, reference: Path | None = None) -> dict:
    """EBFT steps (n copies of the chunk) on the whole-sequence path (the released computation) and the shared-prefix
    path, each split into its parts, and one SFT step on the chunk; LoRA, the trainer's own code paths, one warm-up
    step each, then the median of ``--steps`` steps. With ``reference`` (a checkout of the reference revision), each
    round of steps also runs one of its EBFT and SFT steps, so that the machine's drift reaches every path alike."""
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
    # whole: the released computation (whole sequences, all logits at once); shared: this release's defaults
    cfgs = {path: EBFTConfig(c=args.c, s=args.s, G=args.G, n=args.n, temperature=args.temperature, batch_size=1,
                             shared_prefix=shared, **({} if shared else {"logits_chunk": 0}))
            for path, shared in (("whole", False), ("shared", True))}  # fmt: skip
    for cfg in cfgs.values():
        ebft_step(acc, policy, None, None, opt, sched, batch, valid, cfg, [0])  # warm-up
    rows, ref_rows, ref_error = {path: [] for path in cfgs}, [], None
    for i in range(args.steps):  # rounds: the reference, then each path
        if reference is not None and ref_error is None:
            try:
                ref_rows.append(reference_step(reference, model_dir, chunk.shape[1], args, precision))
            except RuntimeError as error:  # this release's timings still come out
                ref_error = str(error)
        for path, cfg in cfgs.items():
            rows[path].append(ebft_step(acc, policy, None, None, opt, sched, batch, valid, cfg, [1 + i]))
    out = {f"ebft_{path}": {"step_s": _median([r["step_time_s"] for r in rows[path]]),
                            **{k: _median([r[k] for r in rows[path]]) for k in parts}} for path in cfgs}  # fmt: skip
    with acc.autocast():
        sft_step(model, opt, sched, acc, [(chunk, ones)], 1.0)
        times = [_timed(lambda: sft_step(model, opt, sched, acc, [(chunk, ones)], 1.0))[0] for _ in range(args.steps)]
    out["sft_step_s"] = round(_median(times), 3)
    if ref_error:
        out["reference"] = {"rev": args.reference, "error": ref_error}
    elif ref_rows:
        out["reference"] = {"rev": args.reference, "step_s": _median([r["ebft_step_s"] for r in ref_rows]),
                            "sample_s": _median([r["ebft_sampling_s"] for r in ref_rows]),
                            "sft_step_s": _median([r["sft_step_s"] for r in ref_rows])}  # fmt: skip
    whole, shared = out["ebft_whole"]["step_s"], out["ebft_shared"]["step_s"]
    sample = {path: out[f"ebft_{path}"]["sample_s"] for path in ("whole", "shared")}
    out["ratios"] = {
        "ebft_shared/sft": round(shared / out["sft_step_s"], 2),
        "ebft_whole/sft": round(whole / out["sft_step_s"], 2),
        "shared/whole": round(shared / whole, 3),
        "shared/whole without sampling": round((shared - sample["shared"]) / (whole - sample["whole"]), 3),
    }
    if "step_s" in out.get("reference", {}):
        ref = out["reference"]
        out["ratios"].update({"reference/sft": round(ref["step_s"] / ref["sft_step_s"], 2),
                              "shared/reference": round(shared / ref["step_s"], 3)})  # fmt: skip
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
    p.add_argument("--reference", default=REFERENCE_REV, metavar="REV",
                   help=f"also time the EBFT and SFT steps of revision REV's own code on the same chunk (default "
                        f"{REFERENCE_REV}, the code issue 13 measured); 'none' leaves it out")  # fmt: skip
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="ebft-reference-") as tmp:
        reference = None
        if args.reference != "none" and not args.skip_train:
            args.reference = resolve(args.reference)
            reference = checkout(args.reference, Path(tmp))
        print(json.dumps(run_all(args, reference), indent=2))


def run_all(args, reference: Path | None) -> dict:
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
            run["train_step"] = train_steps(args.model_dir, chunk, args, precision, reference)
        result["runs"][precision] = run
    return result


if __name__ == "__main__":
    main()
