"""RLVR: reinforcement learning from verifiable rewards, the baseline the paper compares EBFT against.

TRL's ``GRPOTrainer`` (or ``RLOOTrainer``) on the task's training prompts, with the same base model, LoRA/full choice,
optimiser settings, prompts per step and step budget as EBFT (the task's resolved ``ebft`` section). The rewards:

- ``unit_tests`` (Q&A coding): the fraction of the problem's unit tests the completion's program passes; each unit
  test runs as its own program in :mod:`evals.sandbox` (never in this process).
- ``chrf`` (translation): sentence-level chrF (sacreBLEU) of the completion's first line against the reference,
  scaled to [0, 1].

Unstructured code has no verifier, so it has no RLVR run. Prompts are written exactly as the downstream evaluation
writes them (:func:`evals.code.code_prompt`, :func:`evals.code.render`). The GRPO settings that define the run are
written to ``rlvr_settings.yaml`` next to the checkpoint; TRL's per-step logs go to ``train_metrics.csv``.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
import yaml

from ebft import optim
from ebft.config import EBFTConfig, FinetuneConfig, RLVRConfig
from ebft.errors import UserError
from ebft.paths import atomic_write


def first_line(completion: str) -> str:
    """A translation hypothesis: the completion's first non-empty line (the model may go on after it)."""
    return next((line.strip() for line in completion.splitlines() if line.strip()), "")


def prompt_rows(records: list[dict], tokenizer, prompt_format: str, reward: str) -> list[dict]:
    """Training prompts with what the reward needs: the problem (unit tests) or the reference (chrF)."""
    from evals.code import code_prompt, has_tests, render

    if reward == "unit_tests":
        rows = [
            {
                "prompt": code_prompt(r, tokenizer, prompt_format),
                "question": r["question"],
                "tests": r["tests"],
                "entry_point": r["entry_point"],
            }
            for r in records
            if has_tests(r)
        ]
    elif reward == "chrf":
        rows = [
            {
                "prompt": render(r["question"], tokenizer, prompt_format),
                "reference": (r.get("meta") or {}).get("reference") or r["answer"].strip(),
            }
            for r in records
        ]
    else:
        raise UserError(
            f"RLVR needs a verifiable reward but the task's reward is {reward!r}; set it to unit_tests "
            f"or chrf, or drop rlvr from methods."
        )
    if not rows:
        raise UserError("no training record carries what the RLVR reward needs (unit tests, and for a check function "
                        "its entry point); check the task's tests_field.")  # fmt: skip
    return rows


def unit_test_reward(prompt_format: str, cfg: RLVRConfig):
    """Reward function for TRL: per completion, the fraction of its problem's unit tests that pass in the sandbox."""
    from evals.code import extract_program, unit_test_programs
    from evals.sandbox import require_executed, run_many

    def unit_tests_passed(prompts, completions, question, tests, entry_point, **_):
        programs, owner = [], []
        for i, (completion, q, t, e) in enumerate(zip(completions, question, tests, entry_point, strict=True)):
            problem = {"question": q, "tests": t, "entry_point": e}
            variants = unit_test_programs(problem, extract_program(problem, completion, prompt_format))
            programs += variants
            owner += [i] * len(variants)
        results = run_many(
            programs, timeout=cfg.reward_timeout, memory_mb=cfg.reward_memory_mb, workers=cfg.reward_workers
        )
        require_executed(results, "the RLVR reward")  # never a reward of 0 for programs that could not run
        passed, total = [0.0] * len(completions), [0] * len(completions)
        for i, res in zip(owner, results, strict=True):
            passed[i] += res.passed
            total[i] += 1
        return [p / t for p, t in zip(passed, total, strict=True)]

    return unit_tests_passed


def chrf_reward(prompts, completions, reference, **_):
    """Sentence chrF / 100 of each completion's first line against its reference."""
    from sacrebleu.metrics import CHRF

    chrf = CHRF()
    return [chrf.sentence_score(first_line(c), [r]).score / 100 for c, r in zip(completions, reference, strict=True)]


def merged_weights(model) -> dict[str, torch.Tensor]:
    """The policy's weights under the plain architecture's parameter names, each LoRA adapter's delta added to its
    base weight (the model is not modified, unlike peft's ``merge_adapter``, whose unmerge leaves rounding behind)."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    if not isinstance(model, PeftModel):
        return {name: p.detach() for name, p in model.named_parameters()}
    inner = model.get_base_model()
    weights = {}
    for name, module in inner.named_modules():
        if isinstance(module, LoraLayer):
            base = module.get_base_layer()
            weight = base.weight.detach()
            for adapter in module.active_adapters:
                if adapter in module.lora_A:
                    weight = weight + module.get_delta_weight(adapter).detach()
            weights[f"{name}.weight"] = weight
    for name, p in inner.named_parameters():
        if "lora_" not in name:
            weights.setdefault(name.replace(".base_layer.", "."), p.detach())
    return weights


class MergedPolicySampler:
    """TRL's ``rollout_func``: completions sampled from a copy of the policy with its adapters merged, in the run's
    precision (bf16 where supported), by the evaluations' sampler (:func:`evals.decode.decode_tokens`).

    The copy takes the policy's weights whenever the optimiser step has moved on (as TRL's vLLM path syncs its
    engine), so every step samples from the current policy. The completions end at EOS, after
    ``max_completion_length`` tokens, or once ``done(text so far)`` holds: where the downstream evaluation stops (a
    closed code block, a finished first line), since the reward reads nothing after it. Each prompt's prefix is
    computed once for its completions, finished rows leave the batch, and row j of the i-th prompt of step t draws
    from a random stream of its own, seeded from (seed, t, i, j). TRL's own ``generate`` runs the fp32 policy with
    its adapters unmerged, and the whole batch until its longest row ends (``sampler: generate``).

    The policy-gradient loss is TRL's, on the policy as it trains; the sampling copy differs from it only by the
    rounding of the merged bf16 weights (TRL's vLLM engine, also bf16, differs the same way).
    """

    def __init__(self, engine, tokenizer, cfg: RLVRConfig, done, seed: int):
        self.engine, self.tokenizer, self.cfg, self.done, self.seed = engine.eval(), tokenizer, cfg, done, seed
        self.synced_step: int | None = None

    @torch.no_grad()
    def sync(self, policy) -> None:
        weights = merged_weights(policy)
        for name, p in self.engine.named_parameters():
            p.copy_(weights[name])

    def __call__(self, prompts: list[str], trainer) -> dict:
        from ebft.strided import derive_seed
        from evals.decode import decode_tokens

        step = trainer.state.global_step
        if step != self.synced_step:
            self.sync(trainer.accelerator.unwrap_model(trainer.model))
            self.synced_step = step
        prompt_ids = trainer.processing_class(text=prompts)["input_ids"]  # as TRL tokenises a text prompt
        # GRPO's sampler repeats each prompt num_generations times in a row: prefill each once
        runs = [(ids, len(list(copies))) for ids, copies in itertools.groupby(prompt_ids)]
        n = runs[0][1] if len({k for _, k in runs}) == 1 else 1
        unique = [ids for ids, _ in runs] if n > 1 else prompt_ids
        seed = derive_seed(self.seed, step, trainer.accelerator.process_index)
        tokens = decode_tokens(self.engine, self.tokenizer, unique, n=n, greedy=False,
                               temperature=self.cfg.temperature, top_p=self.cfg.top_p,
                               max_new_tokens=self.cfg.max_completion_length, batch_size=len(unique),
                               done=self.done, seed=seed, progress=False)  # fmt: skip
        completions = [t for samples in tokens for t in samples]
        if len(completions) != len(prompts):  # one completion per prompt row, in order
            raise RuntimeError(f"the sampler returned {len(completions)} completions for {len(prompts)} prompts")
        return {"prompt_ids": [list(ids) for ids in prompt_ids], "completion_ids": completions, "logprobs": None}


def stop_rule(reward: str, rows: list[dict], prompt_format: str):
    """Where a completion is finished for the reward (and the downstream evaluation), given the training prompts'
    :func:`prompt_rows`: None means at EOS only."""
    from evals.code import code_done, tests_form
    from evals.translation import first_line_done

    if reward == "chrf":
        return first_line_done
    forms = {tests_form(r) for r in rows}
    return code_done(prompt_format, forms.pop()) if len(forms) == 1 else None


def trl_settings(cfg: RLVRConfig, ebft: EBFTConfig, *, steps: int, bf16: bool, seed: int, processes: int = 1) -> dict:
    """The TRL config arguments of the run: GRPO/RLOO settings plus EBFT's optimiser and budget.

    ``steps`` is EBFT's number of optimiser steps on the same data (:func:`ebft.optim.ebft_step_budget`), handed to
    TRL as ``max_steps``, which overrides any epoch count there: both methods take exactly the same number of steps.
    Each optimiser step takes EBFT's global ``batch_size`` prompts, split over ``processes``.
    """
    generations = cfg.num_generations or ebft.n
    share = optim.process_share(ebft.batch_size, processes, "ebft.batch_size")
    settings = {
        "num_generations": generations,
        "beta": cfg.beta,
        "epsilon": cfg.epsilon,
        "temperature": cfg.temperature,
        "top_p": cfg.top_p,
        "top_k": 0,
        "max_completion_length": cfg.max_completion_length,
        "per_device_train_batch_size": share * generations,
        "gradient_accumulation_steps": 1,
        "num_iterations": 1,
        "max_steps": steps,
        "learning_rate": ebft.lr,
        "lr_scheduler_type": optim.scheduler_name(ebft.scheduler),
        "warmup_steps": ebft.warmup_ratio,
        "adam_beta1": ebft.betas[0],
        "adam_beta2": ebft.betas[1],
        "weight_decay": ebft.weight_decay,
        "max_grad_norm": ebft.grad_clip,
        "bf16": bf16,
        "seed": seed,
        "disable_dropout": True,
        "gradient_checkpointing": cfg.gradient_checkpointing,
    }
    if cfg.algorithm == "grpo":
        settings.update(loss_type=cfg.loss_type, scale_rewards=cfg.scale_rewards)
    elif cfg.algorithm == "rloo":
        settings.update(normalize_advantages=cfg.scale_rewards != "none")
    else:
        raise ValueError(f"unknown RLVR algorithm {cfg.algorithm!r}; choose 'grpo' or 'rloo'")
    return settings


def train_rlvr(
    *,
    start_dir: Path,
    train_records: list[dict],
    reward: str,
    prompt_format: str,
    chunk_length: int,
    finetune: FinetuneConfig,
    ebft: EBFTConfig,
    cfg: RLVRConfig,
    precision: str,
    seed: int,
    out: Path,
    attention: str = "sdpa",
    evaluation=None,
    base_dir: Path | None = None,
) -> dict:
    """Train the policy in ``start_dir`` with RLVR; write the checkpoint, metrics and settings under ``out``.

    ``evaluation`` (:class:`ebft.during.Settings`): held-out evaluations during training into ``out/eval_metrics.csv``
    (:class:`HeldOutCallback`), the FM loss on the features of the model in ``base_dir`` (default ``start_dir``); they
    change nothing in training."""
    import datasets
    import pandas as pd
    import trl
    from accelerate import PartialState
    from transformers import TrainerCallback, set_seed

    from ebft.models import autocast_dtype, load_causal_lm, load_tokenizer, make_trainable, save_checkpoint
    from ebft.packing import pack_records

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()
    bf16 = autocast_dtype(precision, torch.device("cuda" if cuda else "cpu")) is not None
    tokenizer = load_tokenizer(start_dir)
    rows = prompt_rows(train_records, tokenizer, prompt_format, reward)
    _, steps = optim.ebft_step_budget(len(pack_records(train_records, tokenizer, chunk_length)), ebft)
    settings = trl_settings(cfg, ebft, steps=steps, bf16=bf16, seed=seed, processes=PartialState().num_processes)
    sampler = cfg.sampler_name
    record = {"algorithm": cfg.algorithm, "trl": trl.__version__, "reward": reward, "prompt_format": prompt_format,
              "prompts": len(rows), "sampler": sampler, **settings, "rlvr": asdict(cfg)}  # fmt: skip
    print(f"rlvr: starting at step 0 of {steps} (RLVR keeps no resumable checkpoint: an interrupted run starts "
          f"again).", file=sys.stderr, flush=True)  # fmt: skip

    config_cls, trainer_cls = (
        (trl.GRPOConfig, trl.GRPOTrainer) if cfg.algorithm == "grpo" else (trl.RLOOConfig, trl.RLOOTrainer)
    )
    args = config_cls(
        output_dir=str(out / "trainer"),
        use_cpu=not cuda,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        **settings,
    )
    set_seed(seed)  # the LoRA adapters are drawn here, before TRL seeds its trainer: without it every run differs
    model = make_trainable(load_causal_lm(start_dir, dropout=0.0, attention=attention), finetune)
    reward_func = unit_test_reward(prompt_format, cfg) if reward == "unit_tests" else chrf_reward  # checked above
    log: list[dict] = []

    class CsvLog(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                log.append({"step": state.global_step, **logs})
                pd.DataFrame(log).to_csv(out / "train_metrics.csv", index=False)

    callbacks = [CsvLog()]
    if evaluation is not None:
        base = Path(base_dir or start_dir)
        callbacks.append(held_out_callback(evaluation, tokenizer, chunk_length, seed, out, steps, settings, base,
                                           Path(start_dir), attention, cfg.beta))  # fmt: skip
    extra = {}
    if sampler == "decode":
        dtype = autocast_dtype(precision, torch.device("cuda" if cuda else "cpu")) or torch.float32
        engine = load_causal_lm(start_dir, dtype=dtype, attention=attention).to(model.device)
        done = stop_rule(reward, rows, prompt_format)  # rows: the records the reward can score
        extra["rollout_func"] = MergedPolicySampler(engine, tokenizer, cfg, done, seed)
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is marked experimental; we pin TRL
    trainer = trainer_cls(
        model=model,
        reward_funcs=reward_func,
        args=args,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=callbacks,
        **extra,
    )
    started = time.time()
    trainer.train()
    wall = round(time.time() - started, 2)
    if not log:
        raise UserError("RLVR logged no training step; raise ebft.max_steps or check the training prompts.")
    if trainer.state.global_step != steps:  # the budget is EBFT's by construction; anything else is a bug
        raise RuntimeError(f"RLVR took {trainer.state.global_step} optimiser steps, not EBFT's {steps}")
    save_checkpoint(trainer.model, tokenizer, out, finetune.mode)
    atomic_write(out / "rlvr_settings.yaml", yaml.safe_dump(record, sort_keys=False))  # with its checkpoint
    summary = {"steps": trainer.state.global_step, "wall_time_s": wall, "final_reward": log[-1].get("reward")}
    if evaluation is not None:
        summary["budget"] = callbacks[-1].budget
    return summary


def held_out_callback(evaluation, tokenizer, chunk_length, seed, out, steps, settings, base_dir: Path,
                      start_dir: Path, attention, kl_coef):  # fmt: skip
    """A TRL callback that evaluates the policy on held-out chunks during training (:mod:`ebft.during`): at step 0,
    every ``evaluation.every`` steps and at the end, after the step's update, with the budgets spent so far read from
    TRL's logs. Ground-truth tokens: RLVR reads only the prompts (its answers enter through the reward), so it counts
    each step's prompt tokens once; rollout tokens: the completions' tokens; compute: :func:`ebft.during.rlvr_flops`
    over every prompt and completion token; wall time: training's, evaluations excluded."""
    from transformers import TrainerCallback

    from ebft import during
    from ebft.features import feature_network
    from ebft.models import is_peft_model, load_causal_lm

    held_out = evaluation.held_out(tokenizer, chunk_length, seed)
    plan = during.eval_steps(steps, evaluation.every)
    evals = during.EvalLog(out)
    completions_per_step = settings["per_device_train_batch_size"] * settings["gradient_accumulation_steps"]
    generations = settings["num_generations"]

    class HeldOut(TrainerCallback):
        def __init__(self):
            self.budget = dict.fromkeys(during.BUDGETS, 0)

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.frozen = None
            if not is_peft_model(model) or base_dir != start_dir:  # else the policy without its adapter is the base
                self.frozen = load_causal_lm(base_dir, attention=attention).to(model.device).eval()
                self.frozen.requires_grad_(False)
            self.started, self.evaluating_s, self.rollout = time.time(), 0.0, 0.0
            self.params = sum(p.numel() for p in model.parameters())
            if 0 in plan:
                self.evaluate(0, model)

        def on_log(self, args, state, control, logs=None, model=None, **kwargs):
            if not logs or "loss" not in logs:
                return
            processed = int(logs["num_tokens"])  # prompt and completion tokens so far, over every process
            self.rollout += float(logs["completions/mean_length"]) * completions_per_step * args.world_size
            rollout = int(round(self.rollout))
            self.budget.update(gt_tokens=(processed - rollout) // generations, rollout_tokens=rollout,
                               train_flops=during.rlvr_flops(processed, self.params, self.params if kl_coef else 0),
                               train_wall_s=round(time.time() - self.started - self.evaluating_s, 3))  # fmt: skip
            if state.global_step in plan:
                self.evaluate(state.global_step, model)

        def evaluate(self, step, model):
            t0 = time.time()
            rows = held_out.rows(model, lambda: feature_network(model, self.frozen), model.device)
            evals.record(step, rows, self.budget, plan[step])
            self.evaluating_s += time.time() - t0

    return HeldOut()
