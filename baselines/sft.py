"""Supervised fine-tuning (SFT): the baseline EBFT is compared against.

Objective: teacher-forced next-token cross-entropy (temperature 1) on the packed training chunks of docs/method.md §3,
token-weighted: per optimiser step, the summed NLL of every counted target in the step's chunks divided by their
number (``loss_on: all`` counts every real token: question, answer and EOS separators, as in the released SFT
runs on packed data; ``answer`` counts answer tokens only). Padding is never a target. AdamW with the profile's
betas and weight decay, warm-up then a constant/cosine/linear schedule, gradient-norm clipping.

Built on ``accelerate`` so the same loop runs on one CPU process or on several GPUs (``accelerate launch``).
``batch_size`` is the global batch of one micro-step: each of P processes takes its 1/P share of every batch
(``split_batches``), so steps per epoch and the learning-rate schedule do not depend on P; the loss is divided by
the target count of the whole global step, so P processes compute the update of one.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ebft import during, optim, sharding
from ebft.config import FinetuneConfig, SFTConfig
from ebft.losses import token_nll
from ebft.metrics_log import MetricsLog
from ebft.models import (
    autocast_dtype,
    autocast_of,
    frozen_weights_cast,
    is_peft_model,
    load_causal_lm,
    load_tokenizer,
    make_trainable,
    save_checkpoint,
)
from ebft.packing import pack_records, target_mask
from ebft.sharding import CausalRoot, Strategy

METRIC_FIELDS = ["step", "epoch", "loss", "targets", "lr", "grad_norm", "step_time_s", "tokens_per_s"]


def train_sft(
    *,
    model_dir: Path,
    train_records: list[dict],
    chunk_length: int,
    finetune: FinetuneConfig,
    sft: SFTConfig,
    precision: str,
    seed: int,
    out: Path,
    attention: str = "sdpa",
    evaluation: during.Settings | None = None,
    strategy: Strategy | None = None,
) -> dict:
    """Fine-tune the model in ``model_dir`` on ``train_records``; write the checkpoint and metrics under ``out``.

    ``evaluation``: held-out evaluations during training (:mod:`ebft.during`) into ``out/eval_metrics.csv``; they
    change nothing in training. ``strategy``: how the processes hold the model (default DDP; FSDP shards it,
    :mod:`ebft.sharding`)."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, set_seed

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    probe_device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    mixed = "bf16" if autocast_dtype(precision, probe_device) is not None else "no"
    # cpu=True on a machine without CUDA, so that several CPU processes (torchrun) train data-parallel over gloo
    # split_batches: the loader's batch is the global batch; each process takes its share of it
    accelerator = Accelerator(mixed_precision=mixed, cpu=not torch.cuda.is_available(),
                              dataloader_config=DataLoaderConfiguration(split_batches=True))  # fmt: skip
    optim.require_data_parallel(accelerator)
    optim.process_share(sft.batch_size, accelerator.num_processes, "sft.batch_size")
    set_seed(seed)

    tokenizer = load_tokenizer(model_dir)
    chunks = pack_records(train_records, tokenizer, chunk_length)
    targets = target_mask(chunks, sft.loss_on)
    dataset = torch.utils.data.TensorDataset(chunks.input_ids, targets, chunks.valid.sum(dim=1))
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=sft.batch_size, shuffle=True, drop_last=False,
        generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip

    strategy = strategy or Strategy()
    model = make_trainable(load_causal_lm(model_dir, dropout=finetune.model_dropout, attention=attention), finetune)
    model.train()
    policy, frozen = model, None  # the plain model, and the evaluations' feature network of full fine-tuning
    if strategy.sharded:  # sharded together
        if evaluation is not None and not is_peft_model(model):
            frozen = _frozen_base(model_dir, attention)
        model = sharding.shard(CausalRoot(policy, frozen, own=True), strategy, accelerator.device)
    trainable = [p for p in policy.parameters() if p.requires_grad]  # the shards, under FSDP
    optimizer = optim.adamw(trainable, sft)
    if strategy.sharded:
        loader = accelerator.prepare(loader)
    else:
        model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    steps_per_epoch = max(1, len(loader) // sft.grad_accum)  # counted on the prepared loader each process iterates
    total_steps = optim.step_budget(steps_per_epoch, epochs=sft.epochs, max_steps=sft.max_steps)
    scheduler = optim.lr_schedule(optimizer, sft, total_steps)  # stepped here, once per optimiser step

    log = MetricsLog(out / "train_metrics.csv", METRIC_FIELDS, enabled=accelerator.is_main_process)
    budget = dict.fromkeys(during.BUDGETS, 0)
    params = sum(p.numel() for p in policy.parameters())
    plan, held_out, evals, downstream_at = {}, None, None, set()
    if evaluation is not None:
        held_out = evaluation.held_out(tokenizer, chunk_length, seed)
        matched = evaluation.matched("sft", len(chunks), chunk_length)
        plan = during.eval_steps(total_steps, evaluation.every, matched)
        downstream_at = evaluation.downstream_steps(total_steps, matched)
        plan.update({k: "" for k in downstream_at if k not in plan})
        evals = during.EvalLog(out, enabled=accelerator.is_main_process)
        if not strategy.sharded and not is_peft_model(policy):  # full fine-tuning: the base model's own features
            frozen = _frozen_base(model_dir, attention).to(accelerator.device)

    # the evaluations run through a root: the sharded one (inside its forward hooks), or a plain one
    eval_root = model if strategy.sharded else CausalRoot(policy, frozen)

    def evaluate(at: int) -> None:
        device = accelerator.device
        rows = eval_root.run(lambda root: held_out.rows(root.model, root.features, device))
        if at in downstream_at:
            whole = sharding.gathered(policy, keep=accelerator.is_main_process)
            rows += evaluation.downstream(accelerator, whole, tokenizer, finetune.mode, out, at)
        evals.record(at, rows, budget, plan[at])

    if accelerator.is_main_process:
        print(f"sft: starting at step 0 of {total_steps} (SFT keeps no resumable checkpoint: an interrupted run "
              f"starts again).", file=sys.stderr, flush=True)  # fmt: skip
    bar = tqdm(total=total_steps, desc="sft", disable=not accelerator.is_local_main_process)
    step, epoch, started = 0, 0, time.time()
    with log:
        if 0 in plan:
            evaluate(0)
        while step < total_steps:
            batches = iter(loader)
            for within in range(steps_per_epoch):
                if step == total_steps:
                    break
                first = within * sft.grad_accum  # index of the step's first micro-batch in the epoch
                micro = [_real_rows(next(batches), first + j, len(chunks), sft.batch_size, accelerator)
                         for j in range(sft.grad_accum)]  # [(ids (b, L), mask (b, L), real tokens (b,))]  # fmt: skip
                row = sft_step(model, optimizer, scheduler, accelerator, [m[:2] for m in micro], sft.grad_clip)
                # the global step's real tokens, and its positions (rows × L) without the fillers of several processes
                real = optim.global_sum(accelerator, torch.stack([torch.stack([m[2].sum(), (m[2] > 0).sum()])
                                                                  for m in micro]).sum(dim=0))  # fmt: skip
                budget["gt_tokens"] += int(real[0])
                budget["train_flops"] += during.sft_step_flops(int(real[1]) * chunk_length, params)
                budget["train_wall_s"] = round(budget["train_wall_s"] + row["step_time_s"], 3)
                step += 1
                row.update(step=step, epoch=epoch)
                if step % sft.log_every == 0 or step == total_steps:
                    log.write(row)
                if step in plan:
                    evaluate(step)
                bar.update(1)
                bar.set_postfix(loss=f"{row['loss']:.4f}")
            epoch += 1
    bar.close()

    whole = sharding.gathered(policy, keep=accelerator.is_main_process)  # whole, under FSDP
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_checkpoint(whole, tokenizer, out, finetune.mode)
    summary = {
        "method": "sft",
        "steps": step,
        "epochs_started": epoch,
        "train_chunks": len(chunks),
        "chunk_length": chunk_length,
        "train_records": len(train_records),
        "trainable_parameters": sum(p.numel() for p in trainable),
        "mixed_precision": mixed,
        "processes": accelerator.num_processes,
        "strategy": strategy.name,
        "parameters_per_process": sharding.local_parameters(policy),
        "wall_time_s": round(time.time() - started, 2),
        "budget": budget,
        "loss": {"kind": "next-token cross-entropy", "temperature": 1.0, "reduction": "token-weighted mean per step",
                 "targets": sft.loss_on, "padding": "excluded"},
        "sft": asdict(sft),
    }  # fmt: skip
    if accelerator.is_main_process:
        (out / "train_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _frozen_base(model_dir: Path, attention: str):
    return load_causal_lm(model_dir, attention=attention).eval().requires_grad_(False)


def _real_rows(batch, index: int, num_chunks: int, batch_size: int, accelerator):
    """This process's part of global micro-batch ``index`` (ids, targets, real tokens per row), with targets and real
    tokens only on real rows.

    With several processes accelerate fills an epoch's last, short batch up to ``batch_size`` with chunks from the
    epoch's start, so that every process gets rows; those fillers must not count twice, so their targets are
    cleared. One process never gets fillers.
    """
    ids, mask, valid = batch
    real = min(batch_size, num_chunks - index * batch_size)  # rows of the global batch that are data
    share = batch_size // accelerator.num_processes
    position = accelerator.process_index * share + torch.arange(ids.shape[0], device=mask.device)
    if (position >= real).any():
        mask = mask & (position < real)[:, None]
        valid = valid * (position < real)
    return ids, mask, valid


def sft_step(model, optimizer, scheduler, accelerator, micro, grad_clip) -> dict:
    """One optimiser step over ``micro`` batches, token-weighted over all of them (under bf16 autocast, frozen weights
    on their casts, made once: :func:`ebft.models.frozen_weights_cast`)."""
    cast = None if sharding.is_sharded(model) else autocast_of(accelerator)  # FSDP gathers weights itself
    with frozen_weights_cast(cast, model):
        return _sft_step(model, optimizer, scheduler, accelerator, micro, grad_clip)


def _sft_step(model, optimizer, scheduler, accelerator, micro, grad_clip) -> dict:
    t0 = time.time()
    sharding.same_forwards(accelerator, "an SFT step", (len(micro), *micro[0][0].shape))
    local_targets = torch.stack([mask[:, 1:].sum() for _, mask in micro]).sum()
    n_targets = int(optim.global_sum(accelerator, local_targets))  # the whole global step's targets
    total_nll = 0.0
    for ids, mask in micro:
        logits = model(input_ids=ids).logits  # (b, L, V)
        nll_sum, _ = token_nll(logits, ids, mask)
        loss = optim.ddp_scaled(nll_sum.sum() / max(n_targets, 1), accelerator.num_processes)
        accelerator.backward(loss)
        total_nll += float(nll_sum.detach().sum())
    if accelerator.num_processes > 1:
        total_nll = float(accelerator.reduce(torch.tensor(total_nll, device=accelerator.device), "sum"))
    grad_norm = sharding.clip_grad_norm(accelerator, model.parameters(), grad_clip)
    lr = scheduler.get_last_lr()[0]  # the rate this step uses (warm-up starts at 0)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    dt = time.time() - t0
    n_tokens = sum(ids.numel() for ids, _ in micro)
    return {
        "loss": total_nll / max(n_targets, 1),
        "targets": n_targets,
        "lr": lr,
        "grad_norm": float(grad_norm),
        "step_time_s": round(dt, 4),
        "tokens_per_s": round(n_tokens / dt, 1),
    }
