"""``EBFTConfig``: the settings of one EBFT run through :class:`ebft.EBFTTrainer`, in the conventions of TRL's configs.

It is the profile's ``ebft`` section (:class:`ebft.config.EBFTConfig`: the same names, bounds and meanings: ``c``,
``s``, ``G``, ``n``, ``alpha``, ``beta``, ``gamma``, ``whitening``, ``lr``, ``batch_size``, ``max_steps``, …) with the
run's own settings added (``output_dir``, ``chunk_length``, ``seed``, ``precision``, ``attention``, ``report_to``, …)
and the paper's released values as defaults (docs/method.md §5). Each setting is declared once: the section's fields
are inherited, and a profile's ``ebft`` section and this class cannot disagree.

Names that TRL uses for something else get one sentence instead of a silent default: TRL's ``beta`` is the KL
coefficient (here ``kl_coef``; this ``beta`` is the diversity coefficient), ``learning_rate`` is ``lr``,
``num_generations`` is ``n``, and so on (:data:`TRL_NAMES`).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import typing
from dataclasses import dataclass
from typing import Literal

from ebft import config
from ebft.config import Attention, FieldError, setting
from ebft.errors import ConfigError

REPORTERS = ("csv", "tensorboard", "wandb", "trackio", "none")

# TRL / transformers TrainingArguments names → what to write here instead
TRL_NAMES = {
    "learning_rate": "lr",
    "per_device_train_batch_size": "batch_size (chunks per rollout batch, summed over every process; each chunk is "
    "sampled n times)",
    "num_generations": "n (rollouts per chunk)",
    "num_train_epochs": "epochs",
    "lr_scheduler_type": "scheduler",
    "max_grad_norm": "grad_clip",
    "adam_beta1": "betas=[β1, β2]",
    "adam_beta2": "betas=[β1, β2]",
    "warmup_steps": "warmup_ratio",
    "logging_steps": "log_every",
    "save_steps": "checkpoint_every",
    "gradient_accumulation_steps": "micro_batch_size (sequences per forward and backward; EBFT takes exactly one "
    "optimiser step per rollout batch)",
    "max_length": "chunk_length (tokens per packed training chunk)",
    "max_seq_length": "chunk_length (tokens per packed training chunk)",
    "max_completion_length": "G (tokens generated per block; rollouts are blocks of a chunk, not whole completions)",
    "max_prompt_length": "c (context tokens before the first block) and s (the stride between blocks)",
    "bf16": "precision='bf16' (or 'auto')",
    "fp16": "precision ('auto', 'bf16' or 'fp32'; fp16 is not supported)",
    "fsdp": "strategy='fsdp' (FSDP2 over every process; docs/cluster.md)",
    "fsdp_config": "fsdp_reshard_after_forward and fsdp_cpu_offload (with strategy='fsdp')",
    "deepspeed": "strategy='fsdp' (DeepSpeed is not offered; docs/cluster.md)",
    "attn_implementation": "attention",
    "epsilon": "nothing: EBFT is plain on-policy REINFORCE (one optimiser step per rollout batch, no ratio clipping)",
    "loss_type": "nothing: EBFT's loss is fixed (docs/method.md §2)",
    "scale_rewards": "nothing: EBFT's advantages are leave-one-out baselines, never rescaled",
    "num_iterations": "nothing: EBFT takes exactly one optimiser step per rollout batch",
    "eval_steps": "eval_every (held-out evaluations during train(), at step 0, every eval_every steps and at the end)",
    "eval_strategy": "eval_every (optimiser steps between held-out evaluations; null: none)",
    "push_to_hub": "trainer.push_to_hub() after training (hub_model_id names the repository)",
    "resume_from_checkpoint": "trainer.train(resume_from_checkpoint=True)",
}


@dataclass
class EBFTConfig(config.EBFTConfig):
    """Settings of one EBFT run (keyword arguments only); every field of the profile's ``ebft`` section, plus:"""

    output_dir: str = setting("ebft_output", "where checkpoints, train_metrics.csv and save_model() go", minLength=1)
    chunk_length: int = setting(1024, "L: tokens per packed training chunk (the paper's 1024; c + G ≤ L and "
                                      "(L − c − G) divisible by s)", minimum=2)  # fmt: skip
    seed: int = setting(43, "drives LoRA's initialisation, the data order and every rollout (the released seed)",
                        minimum=0)  # fmt: skip
    precision: Literal["auto", "bf16", "fp32"] = setting(
        "auto", "bf16 autocast where the device supports it ('auto'), always ('bf16') or never ('fp32')"
    )
    attention: Attention = setting("sdpa", "the attention kernel (transformers' attn_implementation): sdpa or "
                                           "eager, the two that read the strided layout's 4-D mask")  # fmt: skip
    report_to: list[str] = setting(factory=lambda: ["csv"], doc="where per-step metrics go besides "
                                   "output_dir/train_metrics.csv (always written): tensorboard, wandb, trackio; "
                                   "'none' or 'csv' for nothing more")  # fmt: skip
    gradient_checkpointing: bool = setting(False, "recompute each layer's activations in the backward pass")
    strategy: Literal["ddp", "fsdp"] = setting("ddp", "how the processes hold the model: ddp (each a whole copy) or "
                                                      "fsdp (FSDP2 shards of weights, gradients and optimiser state; "
                                                      "docs/cluster.md)")  # fmt: skip
    fsdp_reshard_after_forward: bool = setting(True, "fsdp: free each layer's gathered weights after its forward "
                                                     "(less memory, one more gather in the backward)")  # fmt: skip
    fsdp_cpu_offload: bool = setting(False, "fsdp: keep weights, gradients and optimiser state in host memory "
                                            "between uses (7B full fine-tuning on one 80 GB GPU)")  # fmt: skip
    eval_max_chunks: int | None = setting(None, "evaluate(): the first held-out chunks scored; null: all", minimum=1)
    hub_model_id: str | None = setting(None, "push_to_hub(): the repository; null: the output folder's name")
    beta: float = setting(0.0, "diversity coefficient of the reward (α·alignment − β·diversity; needs n ≥ 3 when > "
                               "0); not TRL's beta, the KL coefficient, which is kl_coef here", minimum=0)  # fmt: skip
    # the paper's released values where they differ from the profile section's small-run defaults
    lr: float = setting(1e-6, "peak learning rate (the released full fine-tuning rate)", exclusiveMinimum=0)
    batch_size: int = setting(16, "chunks per rollout batch, summed over all processes (× n sequences)", minimum=1)
    micro_batch_size: int | None = setting(8, "sequences per forward and backward within one rollout batch "
                                              "(gradient accumulation, one optimiser step per rollout batch); null: "
                                              "the whole batch at once", minimum=1)  # fmt: skip
    max_steps: int | None = setting(None, "optimiser steps = rollout batches; null: as many as `epochs` allow",
                                    minimum=1)  # fmt: skip
    epochs: int = setting(2, "episodes: passes over the training chunks at most (the released 2 from a base model)",
                          minimum=1)  # fmt: skip
    checkpoint_every: int = setting(100, "steps between resumable checkpoints (and at the end)", minimum=1)

    def __post_init__(self):
        if isinstance(self.report_to, str):
            self.report_to = [self.report_to]
        if isinstance(self.output_dir, os.PathLike):
            self.output_dir = os.fspath(self.output_dir)
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):  # the builder's type checks, so that a wrong type is one sentence too
            setattr(self, f.name, config._coerce(hints[f.name], getattr(self, f.name), f"EBFTConfig.{f.name}"))
        unknown = [r for r in self.report_to if r not in REPORTERS]
        if unknown:
            raise ConfigError(f"EBFTConfig.report_to names {unknown[0]!r}; choose from {', '.join(REPORTERS)}.")
        try:
            super().__post_init__()
        except FieldError as e:
            raise ConfigError(f"EBFTConfig.{e.name} is {getattr(self, e.name)!r}; {e.rule}.") from None

    @property
    def reporters(self) -> list[str]:
        """The integrations besides the CSV (``tensorboard: true`` of the section counts as one)."""
        wanted = [r for r in self.report_to if r not in ("csv", "none")]
        if self.tensorboard and "tensorboard" not in wanted:
            wanted.append("tensorboard")
        return wanted

    @classmethod
    def from_section(cls, section: config.EBFTConfig, **run) -> EBFTConfig:
        """A profile's resolved ``ebft`` section with the run's settings (``output_dir``, ``chunk_length``, …)."""
        return cls(**{**dataclasses.asdict(section), **run})

    def sharding(self):
        """The run's :class:`ebft.sharding.Strategy`."""
        from ebft.sharding import Strategy

        return Strategy(self.strategy, self.fsdp_reshard_after_forward, self.fsdp_cpu_offload)

    def section(self) -> config.EBFTConfig:
        """The profile section's part of these settings."""
        names = {f.name for f in dataclasses.fields(config.EBFTConfig)}
        return config.EBFTConfig(**{k: v for k, v in dataclasses.asdict(self).items() if k in names})


def _keyword_only(init):
    """Wrap the generated ``__init__``: positional arguments and unknown or TRL-only names are refused in one
    sentence naming this class's setting."""
    names = {f.name for f in dataclasses.fields(EBFTConfig)}

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        if args:
            raise ConfigError("EBFTConfig takes keyword arguments only, e.g. EBFTConfig(output_dir='out', lr=1e-5).")
        for key in kwargs:
            if key in names:
                continue
            if key in TRL_NAMES:
                raise ConfigError(f"EBFTConfig has no {key!r} (a TRL/transformers name); here it is "
                                  f"{TRL_NAMES[key]}.")  # fmt: skip
            close = difflib.get_close_matches(key, sorted(names), n=1)
            hint = f"did you mean {close[0]!r}?" if close else "see docs/custom.md for the settings"
            raise ConfigError(f"EBFTConfig has no setting {key!r}; {hint}")
        init(self, **kwargs)

    return __init__


EBFTConfig.__init__ = _keyword_only(EBFTConfig.__init__)
