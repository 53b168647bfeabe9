"""The optimiser, learning-rate schedule and step budget that SFT, EBFT and RLVR share.

A profile's ``batch_size`` is the global batch of one optimiser step, summed over every process: the same profile
defines the same optimisation on one process or on eight (each process takes ``batch_size / processes`` of it). The
schedule is stepped once per optimiser step by the trainer itself, never through ``accelerate.prepare`` (whose
scheduler wrapper steps once per process per optimiser step, so N processes would run the schedule N times too fast).
"""

from __future__ import annotations

import math

import torch

from ebft.errors import UserError

# profile name → transformers' scheduler name; "constant" keeps the warm-up
SCHEDULERS = {"constant": "constant_with_warmup", "cosine": "cosine", "linear": "linear"}


def scheduler_name(name: str) -> str:
    """transformers' name of a profile's ``scheduler``."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    return SCHEDULERS[name]


def adamw(params, cfg) -> torch.optim.AdamW:
    """AdamW with a section's ``lr``, ``betas`` and ``weight_decay`` (SFTConfig, EBFTConfig)."""
    return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


def lr_schedule(optimizer, cfg, total_steps: int):
    """Warm-up over ⌈warmup_ratio · total_steps⌉ steps, then the section's schedule; step it once per optimiser step."""
    from transformers import get_scheduler

    return get_scheduler(scheduler_name(cfg.scheduler), optimizer,
                         num_warmup_steps=math.ceil(cfg.warmup_ratio * total_steps),
                         num_training_steps=total_steps)  # fmt: skip


def process_share(batch_size: int, processes: int, key: str) -> int:
    """Each process's part of a global batch; refuses a batch that does not split evenly."""
    if batch_size % processes:
        raise UserError(f"{key} is {batch_size}, which {processes} processes cannot split evenly; make it a "
                        f"multiple of {processes} or launch a number of processes that divides it.")  # fmt: skip
    return batch_size // processes


def step_budget(batches_per_epoch: int, *, epochs: int, max_steps: int | None) -> int:
    """Optimiser steps of a run: ``max_steps``, or fewer when ``epochs`` passes over the data end first (None: as many
    as ``epochs`` allow)."""
    return epochs * batches_per_epoch if max_steps is None else min(max_steps, epochs * batches_per_epoch)


def ebft_step_budget(num_chunks: int, cfg, *, key: str = "ebft.batch_size") -> tuple[int, int]:
    """(rollout batches per epoch, optimiser steps) of an EBFT run over ``num_chunks`` packed chunks.

    RLVR takes the same number of steps, so both methods get the same budget under every profile.
    """
    per_epoch = num_chunks // cfg.batch_size
    if per_epoch == 0:
        raise UserError(f"{num_chunks} training chunks cannot fill one rollout batch of {cfg.batch_size}; "
                        f"lower {key} or add data.")  # fmt: skip
    return per_epoch, step_budget(per_epoch, epochs=cfg.epochs, max_steps=cfg.max_steps)


def global_sum(accelerator, x: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` over every process (x itself with one process)."""
    if accelerator.num_processes == 1:
        return x
    return accelerator.reduce(x.detach().clone(), reduction="sum")


def ddp_scaled(x: torch.Tensor, processes: int) -> torch.Tensor:
    """A global-batch mean, times the process count that DDP's gradient averaging divides by again."""
    return x if processes == 1 else x * processes


def require_data_parallel(accelerator) -> None:
    """Refuse accelerate's own FSDP and DeepSpeed: the trainers shard the model themselves (``ebft.sharding``), with
    accelerate launching the processes only."""
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    if kind not in (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU):
        raise UserError(f"accelerate launched this training as {kind.value}, but the SFT and EBFT trainers shard the "
                        f"model themselves; use config/accelerate/ddp.yaml to launch the processes and set "
                        f"launch.strategy to fsdp (EBFTConfig(strategy='fsdp')) for sharded training.")  # fmt: skip
