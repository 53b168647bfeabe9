"""Held-out evaluation during training, shared by SFT, EBFT and RLVR (docs/method.md §6).

At step 0, every ``eval_every`` optimiser steps, at the steps matched to another method's budget
(:func:`matched_steps`) and at the end, a trainer scores its policy as it is on the held-out chunks with the
evaluations' own functions (validation CE, :func:`evals.ce.ce_rows`; the held-out feature-matching loss,
:func:`evals.fm.fm_rows`) and records each metric as a row of ``eval_metrics.csv`` with the budgets spent so far
(:data:`BUDGETS`), and its per-chunk values in ``eval_units.json`` (for the paired comparisons of
:mod:`evals.claims`). Nothing an evaluation does draws from a random stream training uses, and the model leaves it in
the mode it came in, so training is bit-identical with and without these evaluations.

Training compute is estimated as 2 FLOPs per parameter a token passes forwards and 4 per parameter it passes backwards
(:func:`sft_step_flops`, :func:`ebft_step_flops`, :func:`rlvr_flops`).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

BUDGETS = ["gt_tokens", "rollout_tokens", "train_flops", "train_wall_s"]  # cumulative, at each evaluation
EVAL_FIELDS = ["step", "metric", "value", "ci_low", "ci_high", "n", *BUDGETS, "matched"]
UNITS = ("unit_num", "unit_den", "unit_ids", "unit_stats")  # what an evaluation row keeps of its units
AXES = ("gt_tokens", "train_flops")  # the budgets two methods are matched on


def sft_step_flops(tokens: int, params: int) -> float:
    """One SFT step over ``tokens`` positions (padding included): a forward and a backward through every parameter."""
    return float(tokens * 6 * params)


def ebft_step_flops(sequences: int, length: int, policy: int, features: int, reference: int = 0) -> float:
    """One EBFT step over ``sequences`` strided sequences of ``length`` = L + NB·G tokens: the sampler's and the loss's
    forwards and the loss's backward through the policy (8·P), the features' forward (2·P_features) and, with a KL
    term, the reference's forward (2·P_reference)."""
    return float(sequences * length * (8 * policy + 2 * features + 2 * reference))


def rlvr_flops(tokens: int, policy: int, reference: int = 0) -> float:
    """RLVR over ``tokens`` prompt and completion tokens: the sampler's forward, the loss's forward and backward
    (8·P), and with a KL term the reference's forward."""
    return float(tokens * (8 * policy + 2 * reference))


def matched_steps(num_chunks: int, chunk_length: int, sft, ebft) -> dict[str, dict[str, int]]:
    """For SFT and EBFT training on the same ``num_chunks`` packed chunks: on each budget axis (ground-truth tokens,
    training compute), the step of each method at which it has spent the budget that the method with the smaller
    total spends in its whole run, rounded to the nearest step (so the method with the smaller total is matched at its
    end). ``{"sft": {"gt_tokens": step, "train_flops": step}, "ebft": {...}}``.

    Both methods see whole chunks of L tokens (the packing's one short last chunk aside), so ground-truth tokens are
    matched as chunks; compute per step is :func:`sft_step_flops` and :func:`ebft_step_flops` with the feature network
    (and the KL reference) as large as the policy, as in this project's runs, so the match does not depend on the
    model's size. The budgets actually spent are recorded with each evaluation.
    """
    from ebft import optim
    from ebft.layout import num_blocks

    sft_chunks = sft.batch_size * sft.grad_accum
    sft_total = optim.step_budget(max(1, math.ceil(num_chunks / sft.batch_size) // sft.grad_accum), epochs=sft.epochs,
                                  max_steps=sft.max_steps)  # fmt: skip
    _, ebft_total = optim.ebft_step_budget(num_chunks, ebft)
    blocks = num_blocks(chunk_length, ebft.c, ebft.s, ebft.G)
    per_step = {
        "sft": {"gt_tokens": float(sft_chunks), "train_flops": sft_step_flops(sft_chunks * chunk_length, 1)},
        "ebft": {"gt_tokens": float(ebft.batch_size),
                 "train_flops": ebft_step_flops(ebft.batch_size * ebft.n, chunk_length + blocks * ebft.G, 1, 1,
                                                1 if ebft.kl_coef > 0 else 0)},
    }  # fmt: skip
    totals = {"sft": sft_total, "ebft": ebft_total}
    out: dict[str, dict[str, int]] = {"sft": {}, "ebft": {}}
    for axis in AXES:
        target = min(totals[m] * per_step[m][axis] for m in totals)
        for m in totals:
            out[m][axis] = max(1, min(totals[m], int(target / per_step[m][axis] + 0.5)))
    return out


@dataclass
class HeldOut:
    """What an evaluation during training scores: the packed held-out chunks (CE on the first ``ce.max_chunks``, the
    FM loss on the first ``fm.max_chunks``), the evaluations' settings, and the task's strided layout and sampling
    (``layout``: an EBFT section) for the FM loss."""

    chunks: object  # ebft.packing.PackedChunks
    ce: object  # ebft.config.CEEvalConfig
    fm: object  # ebft.config.FMEvalConfig
    layout: object  # ebft.config.EBFTConfig
    seed: int

    @torch.no_grad()
    def rows(self, model, feature_net, device) -> list[dict]:
        """The evaluations' rows of ``model`` as it is, in fp32, with per-chunk values; ``feature_net()`` is a context
        manager yielding the feature network (:func:`ebft.features.feature_network`)."""
        from evals.ce import ce_rows
        from evals.fm import fm_rows

        with evaluating(model):
            rows = ce_rows(model, _first(self.chunks, self.ce.max_chunks), self.ce, seed=self.seed, device=device)
            rows += fm_rows(model, feature_net, _first(self.chunks, self.fm.max_chunks), self.layout, self.fm,
                            seed=self.seed, device=device)  # fmt: skip
        return rows


def _first(chunks, count: int | None):
    return chunks if count is None else chunks.subset(slice(0, count))


@contextlib.contextmanager
def evaluating(model):
    """``model`` in eval mode (no dropout, so no random draws) and in fp32 for the block (a forward that accelerate
    wrapped in bf16 autocast runs unwrapped), back as it was afterwards."""
    was = model.training
    wrapped = model.__dict__.get("forward") if "_original_forward" in model.__dict__ else None
    if wrapped is not None:
        model.forward = model._original_forward
    model.eval()
    try:
        yield model
    finally:
        model.train(was)
        if wrapped is not None:
            model.forward = wrapped


class EvalLog:
    """A run's evaluations during training: rows of :data:`EVAL_FIELDS` in ``out/eval_metrics.csv`` and their
    per-chunk values in ``out/eval_units.json``, each file rewritten whole after every evaluation. ``rows`` continues
    the evaluations a resumed run kept (with their units)."""

    def __init__(self, out: Path, rows: list[dict] | None = None, *, enabled: bool = True):
        self.out, self.rows, self.enabled = Path(out), [dict(r) for r in rows or []], enabled

    @property
    def steps(self) -> set[int]:
        return {int(r["step"]) for r in self.rows}

    def record(self, step: int, rows: list[dict], budget: dict, matched: str = "") -> None:
        for r in rows:
            units = {k: r[k] for k in UNITS if k in r}  # per-chunk, per-problem or per-sentence values
            self.rows.append({"step": step, **{k: r[k] for k in ("metric", "value", "ci_low", "ci_high", "n")},
                              **{k: budget[k] for k in BUDGETS}, "matched": matched, **units})  # fmt: skip
        self.write()

    def write(self) -> None:
        """Both files, whole (with no evaluation: a header and an empty list, so that a run that does not evaluate
        leaves none of an earlier run's evaluations behind)."""
        if not self.enabled:
            return
        from ebft.paths import atomic_write

        self.out.mkdir(parents=True, exist_ok=True)
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=EVAL_FIELDS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write(self.out / "eval_metrics.csv", text.getvalue())
        units = [{k: r[k] for k in ("step", "metric", "matched", *UNITS) if k in r} for r in self.rows]
        atomic_write(self.out / "eval_units.json", json.dumps(units))


def eval_steps(total: int, every: int | None, matched: dict[str, int] | None = None) -> dict[int, str]:
    """The steps a run evaluates at, each with the budget axes it is matched on ('' for none): 0, every ``every``
    steps, the matched steps and the last."""
    steps = {0: "", total: ""}
    if every:
        steps.update({k: "" for k in range(every, total + 1, every)})
    for axis, step in (matched or {}).items():
        steps[step] = "+".join(a for a in (steps.get(step, "").split("+") + [axis]) if a)
    return dict(sorted(steps.items()))


@dataclass
class Settings:
    """The workflow's evaluation during training of one run (:func:`from_job`): the held-out records, the evaluations'
    settings, the task's strided layout for the FM loss, ``every``, and, where the run is matched to the other
    method's budget, both methods' step plans."""

    records: list[dict]
    ce: object  # ebft.config.CEEvalConfig
    fm: object  # ebft.config.FMEvalConfig
    layout: object  # ebft.config.EBFTConfig: the task's c, s, G, sampling, features (and EBFT's step plan)
    every: int | None
    sft: object | None = None  # ebft.config.SFTConfig, where SFT and EBFT are matched
    downstream_every: int | None = None
    judge: object | None = None  # model folder, samples folder → the task's downstream rows (:func:`downstream_judge`)

    def downstream_steps(self, total: int, matched: dict[str, int]) -> set[int]:
        """The steps a run scores downstream at: every ``downstream_every`` steps and its matched steps (none without
        ``downstream_every``; the end of training is scored by the evaluation rules)."""
        if self.judge is None or not self.downstream_every:
            return set()
        return set(range(self.downstream_every, total + 1, self.downstream_every)) | set(matched.values())

    def downstream(self, accelerator, model, tokenizer, mode: str, out: Path, step: int) -> list[dict]:
        """The task's downstream rows of ``model`` as it is, scored once, by the first process (the others wait and
        get none): a merged copy saved to a temporary folder under ``out`` and scored there by the evaluations' own
        functions (samples kept in ``out/downstream_samples``), with the global random state restored afterwards, so
        that training draws what it would have drawn."""
        import tempfile

        from ebft.models import save_checkpoint

        rows = []
        if accelerator.is_main_process:
            with torch.random.fork_rng(), tempfile.TemporaryDirectory(dir=out, prefix=".downstream-") as tmp:
                save_checkpoint(model, tokenizer, Path(tmp), mode)
                rows = self.judge(Path(tmp) / "model", Path(out) / "downstream_samples" / f"step-{step}")
        accelerator.wait_for_everyone()
        return rows

    def matched(self, method: str, num_chunks: int, chunk_length: int) -> dict[str, int]:
        """This run's steps matched to the other method's budget (:func:`matched_steps`); {} where not matched."""
        if self.sft is None:
            return {}
        return matched_steps(num_chunks, chunk_length, self.sft, self.layout)[method]

    def held_out(self, tokenizer, chunk_length: int, seed: int) -> HeldOut:
        from ebft.packing import pack_records

        return HeldOut(pack_records(self.records, tokenizer, chunk_length), self.ce, self.fm, self.layout, seed)


def from_job(job, data_dir: Path) -> Settings | None:
    """The evaluation during training a training job asks for (its method's ``eval_every``), or None."""
    from ebft.data import read_records

    section = {"sft": job.sft, "ebft": job.ebft and job.ebft_config(), "rlvr": job.rlvr}[job.method]
    if section is None or section.eval_every is None:
        return None
    if job.ce is None or job.fm is None:
        raise ValueError(f"the train job of {job.task}/{job.run_name} evaluates during training but carries no "
                         f"evaluation settings")  # fmt: skip
    every = getattr(section, "downstream_every", None)
    return Settings(read_records(Path(data_dir) / "heldout.jsonl"), job.ce, job.fm, job.ebft_config(),
                    section.eval_every, sft=job.sft if job.method != "sft" else _sft_if_matched(job),
                    downstream_every=every, judge=downstream_judge(job, data_dir) if every else None)  # fmt: skip


def score_downstream(kind: str, job, model_dir: Path, data_dir: Path, samples: Path) -> tuple[list[dict], dict]:
    """One downstream evaluation of the model in ``model_dir`` with the job's settings: pass@k on the task's problems
    (``kind`` 'code') or BLEU and chrF++ on its held-out pairs ('translation'), samples written to ``samples``.
    Returns (metric rows, what the record keeps besides). The evaluation rules and the evaluations during training
    both score this way."""
    from ebft.data import read_records

    heldout = Path(data_dir) / "heldout.jsonl"
    if kind == "code":
        from evals.code import evaluate_code, load_problems

        problems = load_problems(job.code_eval, heldout, job.code, job.seed)
        rows, extra = evaluate_code(model_dir, problems, job.prompt_format, job.code, precision=job.precision,
                                    seed=job.seed, samples_out=samples, attention=job.attention)  # fmt: skip
        return rows, {**extra, "problems": len(problems), "samples_file": str(samples)}
    from evals.translation import evaluate_translation

    return evaluate_translation(model_dir, read_records(heldout), job.prompt_format, job.translation,
                                precision=job.precision, seed=job.seed, samples_out=samples,
                                attention=job.attention)  # fmt: skip


def downstream_judge(job, data_dir: Path):
    """The task's downstream evaluations as one function of a model folder (:func:`score_downstream` of each kind the
    job carries settings for); rows as the evaluation records hold them."""
    kinds = [k for k, cfg in (("code", job.code), ("translation", job.translation)) if cfg is not None]

    def judge(model_dir: Path, samples: Path) -> list[dict]:
        rows = []
        for kind in kinds:
            rows += score_downstream(kind, job, model_dir, data_dir, samples.with_suffix(f".{kind}.jsonl"))[0]
        return rows

    return judge


def _sft_if_matched(job):
    return job.sft if job.ebft is not None and "batch_size" in job.ebft else None
