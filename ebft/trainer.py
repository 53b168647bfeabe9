"""EBFT trainer: strided rollouts → base-model features → feature-matching rewards → REINFORCE (docs/method.md §1–§4).

:class:`EBFTTrainer` is the one training loop: the library's entry point (``EBFTTrainer(model=..., args=EBFTConfig(...),
train_dataset=...).train()``, in the conventions of TRL's trainers) and what ``ebft train --method ebft`` runs for
every workflow job (:func:`train_ebft` gives it the job's folders).

Objective per rollout batch of B chunks, each copied n times (train batch B·n sequences):

    loss = mean_seq [ mean_{generated tokens (t,k) of valid blocks} −A_{j,k} · log π(ŷ_{t,k} | prefix, ŷ_{<t,k}) / T ]
           + γ · CE(ground-truth chunk)  +  kl_coef · KL_estimator(π ‖ π_start)

- A is the RLOO advantage of rewards α·alignment − β·diversity (``ebft.rewards``), one per (rollout, block), given to
  all G tokens of the block; log-probs use logits / T (T the sampling temperature) and are read at the position that
  predicted each token (``strided.predictor_index``). Plain on-policy REINFORCE: no ratio, no clipping, no std
  normalisation; exactly one optimiser step per rollout batch.
- A block counts ("valid") when its ground truth holds no padding (and, with ``answer_only``, lies inside an answer);
  other blocks get no gradient and no reward statistics.
- CE: teacher-forced next-token CE at T = 1 over the ground-truth chunk (every real token), from the same forward.
- Features: the frozen base model (LoRA: the policy with its adapter disabled; full fine-tuning: a frozen copy of the
  starting model; an SFT warm start: the base model, given as ``feature_model``).
- Random numbers: LoRA's initialisation draws from the global stream seeded with ``seed``; the rollouts of each chunk
  are drawn from a stream seeded from (seed, step, the chunk's index), on whichever process samples it, and the data
  order of epoch e is a permutation seeded from (seed, e), so a run resumed from a checkpoint (weights or adapter,
  optimiser, scheduler, step) continues exactly as an uninterrupted one; the policy runs in eval mode (no dropout), so
  the update's log-probs are those of the distribution that drew the rollouts.
- A checkpoint carries what identifies its run: the settings, the content of the packed training data and a
  fingerprint of the starting weights (policy and feature network). It is continued only by a run with the same three.

Differences from the released code: none in the update; the sampler uses a KV cache (identical tokens in fp32) unless
``use_cache: false``. With ``document_mask`` attention is confined to each packed document (the released configs
leave it off), and blocks whose ground truth leaves its anchor's document get no gradient.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ebft import during, optim, scoring, sharding, strided
from ebft.config import EBFTConfig as EBFTSection
from ebft.config import FinetuneConfig, config_hash
from ebft.ebft_config import EBFTConfig
from ebft.errors import ConfigError, UserError
from ebft.features import feature_network
from ebft.formats import to_records
from ebft.metrics_log import MetricsLog
from ebft.models import (
    ATTENTION,
    autocast_dtype,
    autocast_of,
    check_model_dir,
    frozen_weights_cast,
    is_peft_model,
    load_causal_lm,
    load_tokenizer,
    lora_config,
    prepare_trainable,
    ready_tokenizer,
    require_supported,
    save_checkpoint,
)
from ebft.packing import PackedChunks, pack_records
from ebft.rewards import feature_rewards, rloo_advantages

TIMINGS = ["rollout_tokens_per_s", "sample_s", "features_s", "policy_s", "optimizer_s", "step_time_s"]  # wall clock
FIELDS = ["step", "epoch", "reward", "alignment", "diversity", "fm_estimate", "ce", "policy_loss", "kl", "loss",
          "grad_norm", "valid_blocks", "lr", *TIMINGS]  # fmt: skip
EVENTS = ("on_init_end", "on_train_begin", "on_epoch_begin", "on_epoch_end", "on_step_begin", "on_step_end", "on_log",
          "on_save", "on_evaluate", "on_train_end")  # fmt: skip
# settings that change where or how often things are written, not what a step computes: a run may be resumed with
# other values
UNIDENTIFYING = ("output_dir", "report_to", "tensorboard", "log_every", "checkpoint_every", "eval_max_chunks",
                 "eval_every", "hub_model_id", "strategy", "fsdp_reshard_after_forward",
                 "fsdp_cpu_offload")  # fmt: skip
BUDGETS, EVAL_FIELDS = during.BUDGETS, during.EVAL_FIELDS


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token KL(π ‖ π_ref) estimate from samples of π (Schulman's k1/k2/k3)."""
    log_ratio = ref_logp - logp  # log π_ref/π
    if estimator == "k1":
        return -log_ratio
    if estimator == "k2":
        return log_ratio**2 / 2
    if estimator == "k3":
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}; choose k1, k2 or k3")


class EBFTTrainer:
    """Energy-based fine-tuning of a causal LM, in the conventions of TRL's trainers.

    ``model``: a hub id or a local folder, a ``transformers`` causal LM, or a ``peft`` model (its adapters train).
    ``args``: :class:`ebft.EBFTConfig` (default: the paper's settings). ``train_dataset``, ``eval_dataset``: rows in
    the forms of :mod:`ebft.formats` (text, prompt-completion, question-answer, conversational), as a
    ``datasets.Dataset``, a list of dicts or a list of strings. ``processing_class``: the tokenizer (default: the
    model's). ``peft_config``: a ``peft`` config (e.g. ``LoraConfig``) wrapped around ``model``; None: full fine-tuning
    (or the given peft model's adapters). ``feature_model``: the frozen network that embeds rollouts (a hub id, a
    folder or a model); by default the policy with its adapter disabled (LoRA) or a frozen copy of the starting model
    (full fine-tuning); a run that starts from an SFT checkpoint passes the base model. ``callbacks``:
    ``transformers.TrainerCallback`` classes or instances.

    After :meth:`train`, :attr:`model` is the trained model in memory (saving never changes it),
    :attr:`state` holds ``global_step`` and ``log_history``, and :meth:`save_model` writes it as a plain Hugging Face
    folder (``output_dir/model``; with adapters also ``output_dir/adapter``).
    """

    def __init__(self, model, args: EBFTConfig | None = None, train_dataset=None, eval_dataset=None,
                 processing_class=None, peft_config=None, feature_model=None, callbacks=None):  # fmt: skip
        from accelerate import Accelerator
        from transformers import TrainerControl, TrainerState

        self.args = args = _config(args)
        device_kind = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.mixed_precision = "bf16" if autocast_dtype(args.precision, device_kind) is not None else "no"
        self.accelerator = Accelerator(mixed_precision=self.mixed_precision, cpu=not torch.cuda.is_available())
        optim.require_data_parallel(self.accelerator)
        self.train_dataset, self.eval_dataset = train_dataset, eval_dataset
        policy = _load_model(model, args.attention, "model")
        require_supported(policy)
        self.processing_class = _tokenizer(processing_class, model, policy)
        self.chunks = self.valid_blocks = None
        if train_dataset is not None:
            self.chunks = self._pack(train_dataset, "train_dataset")
            self.valid_blocks = strided.block_valid(self.chunks, args.c, args.s, args.G, args.answer_only,
                                                    args.document_mask)  # (N, NB)  # fmt: skip
        if feature_model is model:
            feature_model = None  # the policy's own starting weights: what the default gives
        is_peft = is_peft_model(policy)
        if is_peft and peft_config is not None:
            raise UserError("model is already a peft model with adapters, and peft_config asks for more; pass "
                            "peft_config=None to train its adapters, or pass the plain model.")  # fmt: skip
        self.is_peft = is_peft or peft_config is not None
        start_copy = None
        if not self.is_peft and (feature_model is None or args.kl_coef > 0):
            start_copy = _frozen(copy.deepcopy(policy))  # the starting model, before any update
        torch.manual_seed(args.seed)  # LoRA's initialisation
        self.model = prepare_trainable(policy, peft_config, args.gradient_checkpointing).eval()
        if feature_model is not None:
            self.frozen = _frozen(_load_model(feature_model, args.attention, "feature_model"))
            require_supported(self.frozen, "EBFT's feature network")
            self.feature_source = "frozen base copy"
        else:
            self.frozen = None if self.is_peft else start_copy
            self.feature_source = "policy with adapter disabled" if self.is_peft else "frozen copy of the start"
        self.kl_ref = start_copy if args.kl_coef > 0 and not self.is_peft else None
        vocabulary = self.frozen.get_input_embeddings().weight.shape[0] if self.frozen is not None else None
        if vocabulary is not None and vocabulary < len(self.processing_class):
            raise UserError(f"feature_model's vocabulary ({vocabulary} tokens) is smaller than the tokenizer's "
                            f"({len(self.processing_class)}); give a feature network that shares the policy's "
                            f"tokenizer, such as its base model.")  # fmt: skip
        self.start_fingerprint = weights_fingerprint(self.model, self.frozen)
        self.run_id: str | None = None  # what identifies the settings (the workflow's job hash); None: args + peft
        self._halt_after: int | None = None
        # the workflow's evaluation settings (CE and FM configs) and the steps matched to SFT's budgets
        self._eval_settings: tuple | None = None
        self._matched: dict[str, int] = {}
        self._downstream: during.Settings | None = None  # the workflow's downstream evaluations during training
        self._downstream_at: set[int] = set()
        self._root: StridedPolicy | None = None  # the policy with the frozen networks, sharded under FSDP (train())
        self.peft_settings = _plain(peft_config.to_dict()) if peft_config is not None else None
        self.callbacks = [cb() if isinstance(cb, type) else cb for cb in (callbacks or [])]
        self.state = TrainerState(is_local_process_zero=self.accelerator.is_local_main_process,
                                  is_world_process_zero=self.accelerator.is_main_process)  # fmt: skip
        self.control = TrainerControl()
        self.optimizer = self.lr_scheduler = None
        self._event("on_init_end")

    # ------------------------------------------------------------------------------------------------

    def add_callback(self, callback) -> None:
        self.callbacks.append(callback() if isinstance(callback, type) else callback)

    def _event(self, name: str, **kwargs) -> None:
        for cb in self.callbacks:
            result = getattr(cb, name)(self.args, self.state, self.control, model=self.model,
                                       processing_class=self.processing_class, optimizer=self.optimizer,
                                       lr_scheduler=self.lr_scheduler, **kwargs)  # fmt: skip
            if result is not None:
                self.control = result

    def _pack(self, dataset, where: str) -> PackedChunks:
        records = to_records(dataset, self.processing_class, where=where)
        try:
            chunks = pack_records(records, self.processing_class, self.args.chunk_length)
        except ValueError as e:
            raise UserError(f"{where} cannot be packed ({e}); give rows with text.") from None
        return chunks

    def identity(self) -> dict:
        """What a checkpoint of this run must match to be continued: settings, training data and starting weights."""
        settings = self.run_id
        if settings is None:
            args = {k: v for k, v in dataclasses.asdict(self.args).items() if k not in UNIDENTIFYING}
            settings = config_hash({"args": args, "peft": self.peft_settings})
        return {"settings": settings, "data": data_fingerprint(self.chunks), "model": self.start_fingerprint}

    # ------------------------------------------------------------------------------------------------

    def train(self, resume_from_checkpoint: bool | str | os.PathLike | None = None):
        """Train; returns ``transformers.trainer_utils.TrainOutput`` (global step, mean loss, the run's summary).

        ``resume_from_checkpoint``: None refuses an ``output_dir`` that already holds a checkpoint (nothing is
        resumed silently); True continues ``output_dir/checkpoint``, and a path the checkpoint folder there, each
        only when it was written by the same settings, training data and starting model, refused in one sentence
        otherwise. ``"auto"`` (the CLI and the workflow) continues a matching checkpoint and starts afresh over any
        other, saying so. A callback that sets ``control.should_training_stop`` stops the run right after a
        checkpoint of that step, so that it resumes exactly.
        """
        from transformers.trainer_utils import TrainOutput

        if self.chunks is None:
            raise UserError("EBFTTrainer got no train_dataset, so there is nothing to train on; pass one.")
        args, accelerator = self.args, self.accelerator
        out = Path(args.output_dir)
        checkpoint = out / "checkpoint"
        source = _checkpoint_source(resume_from_checkpoint, checkpoint)
        out.mkdir(parents=True, exist_ok=True)
        if not any(p.requires_grad for p in self.model.parameters()):
            raise UserError("the model has no trainable parameters; pass a peft_config, a peft model with trainable "
                            "adapters, or a model whose weights require gradients.")  # fmt: skip
        share = optim.process_share(args.batch_size, accelerator.num_processes, "ebft.batch_size")
        steps_per_epoch, total_steps = optim.ebft_step_budget(len(self.chunks), args)
        # The policy's loss forward is one call of a module around the model (two forwards on the shared-prefix path),
        # so that DDP sees one forward per backward; the sampler, the features and the evaluations run through its
        # `run`, without gradients. Under FSDP that module is the sharded root (ebft.sharding).
        strategy = args.sharding()
        if self._root is None:
            root = StridedPolicy(self.model, self.frozen, self.kl_ref, own=strategy.sharded)
            if strategy.sharded:
                self._root = sharding.shard(root, strategy, accelerator.device)
            else:
                for m in (self.frozen, self.kl_ref):
                    if m is not None:
                        m.to(accelerator.device)
                self._root = root
        trainable = [p for p in self.model.parameters() if p.requires_grad]  # the shards, under FSDP
        optimizer = optim.adamw(trainable, args)
        scheduler = optim.lr_schedule(optimizer, args, total_steps)  # stepped here, once per optimiser step
        if strategy.sharded:
            policy = self._root
        else:
            policy, optimizer = accelerator.prepare(self._root, optimizer)
        self.optimizer, self.lr_scheduler = optimizer, scheduler
        identity = self.identity()
        held_out, plan = None, {}
        if args.eval_every is not None or self._matched:
            if self.eval_dataset is None:
                raise UserError("eval_every is set but the trainer has no eval_dataset; pass one, or set "
                                "eval_every=None.")  # fmt: skip
            held_out = self._held_out_spec(self.eval_dataset)
            plan = during.eval_steps(total_steps, args.eval_every, self._matched)
            if self._downstream is not None:
                self._downstream_at = self._downstream.downstream_steps(total_steps, self._matched)
                plan.update({k: "" for k in self._downstream_at if k not in plan})
        step, rows, extra = _resume(accelerator, source, self.model, optimizer, scheduler, identity,
                                    strict=resume_from_checkpoint != "auto")  # fmt: skip
        budget = dict(extra.get("budget") or dict.fromkeys(BUDGETS, 0))
        evals = during.EvalLog(out, extra.get("evals"), enabled=accelerator.is_main_process)
        if plan:  # the evaluations the checkpoint kept, written now: a run resumed at its last step makes no more
            evals.write()
        per_step = self._step_budget()
        if accelerator.is_main_process:
            where = f"resuming from step {step} of {total_steps}" if step else f"starting at step 0 of {total_steps}"
            print(f"ebft: {where} (checkpoints every {args.checkpoint_every} steps in {checkpoint}).",
                  file=sys.stderr, flush=True)  # fmt: skip
        self.state.max_steps, self.state.global_step = total_steps, step
        self.state.num_train_epochs, self.state.train_batch_size = args.epochs, args.batch_size
        self.state.logging_steps, self.state.save_steps = args.log_every, args.checkpoint_every
        self.state.log_history = [dict(r) for r in rows]
        # The per-step rows travel with the checkpoint: the CSV is rebuilt from them (the workflow deletes a failed
        # job's CSV; rows logged after the last checkpoint are logged again), so a resumed run lists every step once.
        log = MetricsLog(out / "train_metrics.csv", FIELDS, enabled=accelerator.is_main_process, rows=rows,
                         integrations=args.reporters, run_dir=out, config=dataclasses.asdict(args))  # fmt: skip
        bar = tqdm(total=total_steps, initial=step, desc="ebft", disable=not accelerator.is_local_main_process)
        started, stopped = time.time(), False
        with log:
            self._event("on_train_begin")
            if 0 in plan and 0 not in evals.steps:
                self._held_out(held_out, 0, budget, evals, plan[0])
            while step < total_steps:
                epoch, within = divmod(step, steps_per_epoch)
                if within == 0:
                    self._event("on_epoch_begin")
                shuffle = torch.Generator().manual_seed(strided.derive_seed(args.seed, epoch))
                order = torch.randperm(len(self.chunks), generator=shuffle)
                start = within * args.batch_size + accelerator.process_index * share  # this process's share
                index = order[start : start + share]
                self._event("on_step_begin")
                t0 = time.time()
                row = ebft_step(accelerator, policy, self.frozen, self.kl_ref, optimizer, scheduler,
                                self.chunks.subset(index), self.valid_blocks[index], args,
                                [_sample_seed(args.seed, step, int(i)) for i in index])  # fmt: skip
                whole = order[within * args.batch_size : (within + 1) * args.batch_size]  # every process's share
                budget["gt_tokens"] += int(self.chunks.valid[whole].sum())
                budget["rollout_tokens"] += per_step["rollout_tokens"]
                budget["train_flops"] += per_step["train_flops"]
                budget["train_wall_s"] = round(budget["train_wall_s"] + time.time() - t0, 3)
                step += 1
                row.update(step=step, epoch=epoch)
                self.state.global_step, self.state.epoch = step, step / steps_per_epoch
                self._event("on_step_end")
                if step % args.log_every == 0 or step == total_steps:
                    log.write(row)
                    self.state.log_history.append(dict(log.rows[-1]))
                    self._event("on_log", logs=dict(log.rows[-1]))
                if step % steps_per_epoch == 0:
                    self._event("on_epoch_end")
                if step in plan:
                    self._held_out(held_out, step, budget, evals, plan[step])
                stopped = self.control.should_training_stop and step < total_steps
                if step % args.checkpoint_every == 0 or step == total_steps or stopped or self.control.should_save:
                    _save_state(accelerator, checkpoint, self.model, optimizer, scheduler, step, identity, log.rows,
                                {"budget": budget, "evals": evals.rows})  # fmt: skip
                    self.control.should_save = False
                    self._event("on_save")
                bar.update(1)
                bar.set_postfix(reward=f"{row['reward']:.3f}", ce=f"{row['ce']:.3f}")
                if step == self._halt_after:  # tests: as if killed here, after this step's checkpoint if one was due
                    stopped = True
                if stopped:
                    break
        bar.close()
        accelerator.wait_for_everyone()
        losses = [float(r["loss"]) for r in log.rows if r.get("loss") is not None]
        summary = {"method": "ebft", "steps": step, "halted": stopped, "train_chunks": len(self.chunks),
                   "chunk_length": args.chunk_length, "blocks_per_chunk": self.valid_blocks.shape[1],
                   "valid_block_fraction": float(self.valid_blocks.float().mean()),
                   "trainable_parameters": sum(p.numel() for p in trainable), "mixed_precision": self.mixed_precision,
                   "processes": accelerator.num_processes, "strategy": strategy.name,
                   "parameters_per_process": sharding.local_parameters(self.model),
                   "wall_time_s": round(time.time() - started, 2),
                   "feature_network": self.feature_source, "identity": identity, "budget": budget,
                   "ebft": dataclasses.asdict(args.section())}  # fmt: skip
        if accelerator.is_main_process and not stopped:
            (out / "train_summary.json").write_text(json.dumps(summary, indent=2))
        self._event("on_train_end")
        return TrainOutput(step, sum(losses) / len(losses) if losses else float("nan"), summary)

    def save_model(self, output_dir: str | os.PathLike | None = None) -> None:
        """Write the model as a plain Hugging Face folder, ``<output_dir>/model`` (adapters merged into a copy), with
        the tokenizer, and for a peft model its adapter in ``<output_dir>/adapter``; :attr:`model` is unchanged."""
        out = Path(output_dir or self.args.output_dir)
        model = sharding.gathered(self.model, keep=self.accelerator.is_main_process)  # whole, under FSDP
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            save_checkpoint(model, self.processing_class, out, "lora" if self.is_peft else "full")

    def push_to_hub(self, commit_message: str = "EBFT", **kwargs) -> str:
        """Save the model and upload ``output_dir/model`` to ``args.hub_model_id`` (or the output folder's name);
        refused in one sentence where the hub is offline or unreachable. Returns the repository id."""
        from ebft import hub

        repo = self.args.hub_model_id or Path(self.args.output_dir).resolve().name
        hub.require_hub(f"push_to_hub (repository {repo!r})")
        self.save_model()
        if self.accelerator.is_main_process:
            from huggingface_hub import HfApi

            api = HfApi()
            api.create_repo(repo, exist_ok=True, **kwargs)
            api.upload_folder(repo_id=repo, folder_path=str(Path(self.args.output_dir) / "model"),
                              commit_message=commit_message)  # fmt: skip
        return repo

    @torch.no_grad()
    def evaluate(self, eval_dataset=None, metric_key_prefix: str = "eval") -> dict:
        """Held-out validation CE (every real token and answer tokens, nats per token) and feature-matching loss of the
        model as it is now, each with its 95 % bootstrap interval, from the evaluations' own functions
        (``evals.ce``, ``evals.fm``; docs/method.md §6): ``{"eval_val_ce": …, "eval_val_ce_ci_low": …, …}``."""
        data = eval_dataset if eval_dataset is not None else self.eval_dataset
        if data is None:
            raise UserError("evaluate() got no eval_dataset and the trainer has none; pass one.")
        spec = self._held_out_spec(data)
        return self._record_evaluation(self._held_out_rows(spec), self.state.global_step, metric_key_prefix)

    def _held_out_rows(self, spec: during.HeldOut) -> list[dict]:
        """The held-out rows of the model as it is, through the root training built (sharded under FSDP), or before
        training through a plain one."""
        device = self.accelerator.device
        root = self._root if self._root is not None else StridedPolicy(self.model.to(device), self.frozen)
        return root.run(lambda r: spec.rows(r.model, r.features, device))

    def _record_evaluation(self, rows: list[dict], step: int, prefix: str = "eval") -> dict:
        """Evaluation rows as ``{"<prefix>_<metric>": value, …_ci_low, …_ci_high}``, appended to the log history at
        ``step`` and passed to the callbacks' ``on_evaluate``."""
        metrics = {}
        for r in rows:
            key = f"{prefix}_{r['metric']}"
            metrics.update({key: r["value"], f"{key}_ci_low": r["ci_low"], f"{key}_ci_high": r["ci_high"]})
        self.state.log_history.append({**metrics, "step": step})
        self._event("on_evaluate", metrics=metrics)
        return metrics

    def _held_out_spec(self, data) -> during.HeldOut:
        """The held-out chunks of ``data`` and the evaluations' settings: the workflow's (``_eval_settings``), else
        every chunk up to ``eval_max_chunks``, scored with the run's n rollouts."""
        from ebft.config import CEEvalConfig, FMEvalConfig

        chunks = self._pack(data, "eval_dataset")
        if self._eval_settings is not None:
            ce, fm = self._eval_settings
        else:
            if self.args.eval_max_chunks is not None:
                chunks = chunks.subset(slice(0, self.args.eval_max_chunks))
            ce, fm = CEEvalConfig(max_chunks=None), FMEvalConfig(max_chunks=None, n=self.args.n)
        return during.HeldOut(chunks, ce, fm, self.args.section(), self.args.seed)

    @torch.no_grad()
    def _held_out(self, spec: during.HeldOut, step: int, budget: dict, evals: during.EvalLog, matched: str) -> None:
        """An evaluation during training, in fp32, with the step and the budgets spent so far: recorded in ``evals``
        (``eval_metrics.csv``, ``eval_units.json``) and passed to the callbacks."""
        rows = self._held_out_rows(spec)
        if step in self._downstream_at:
            model = sharding.gathered(self.model, keep=self.accelerator.is_main_process)
            rows += self._downstream.downstream(self.accelerator, model, self.processing_class,
                                                "lora" if self.is_peft else "full", Path(self.args.output_dir),
                                                step)  # fmt: skip
        evals.record(step, rows, budget, matched)
        self._record_evaluation(rows, step)

    def _step_budget(self) -> dict:
        """Rollout tokens and the training-compute estimate of one optimiser step (docs/method.md §6): FLOPs ≈ 2 × the
        parameters a token passes through forwards + 4 × those it passes through backwards, over whole sequences of
        L + NB·G tokens: the sampler's and the loss's forwards and the loss's backward through the policy, the
        features' forward through the feature network (and the KL reference's, with kl_coef)."""
        args = self.args
        NB = self.valid_blocks.shape[1]
        sequences, S = args.batch_size * args.n, args.chunk_length + NB * args.G
        policy = sum(p.numel() for p in self.model.parameters())
        features = sum(p.numel() for p in self.frozen.parameters()) if self.frozen is not None else policy
        reference = sum(p.numel() for p in self.kl_ref.parameters()) if self.kl_ref is not None else policy
        flops = during.ebft_step_flops(sequences, S, policy, features, reference if args.kl_coef > 0 else 0)
        return {"rollout_tokens": sequences * NB * args.G, "train_flops": flops}


def _config(args) -> EBFTConfig:
    if args is None:
        return EBFTConfig()
    if isinstance(args, EBFTConfig):
        return args
    if isinstance(args, EBFTSection):
        raise ConfigError("args is a profile's ebft section; pass ebft.EBFTConfig.from_section(section, "
                          "output_dir=...) or an ebft.EBFTConfig.")  # fmt: skip
    raise ConfigError(f"args is a {type(args).__name__}; pass an ebft.EBFTConfig (TRL's and transformers' configs "
                      f"name other settings: see docs/custom.md).")  # fmt: skip


def _load_model(spec, attention: str, what: str):
    """A causal LM from a hub id, a folder or an object; an object must run an attention kernel that reads the strided
    layout's 4-D mask."""
    if isinstance(spec, (str, os.PathLike)):
        path = Path(spec).expanduser()
        if path.is_dir():
            return load_causal_lm(path, attention=attention)
        if str(spec).startswith(("/", ".", "~")) or path.exists():
            raise UserError(f"{what} {str(spec)!r} is not a model folder; give a folder holding config.json, or a hub "
                            f"id.")  # fmt: skip
        return _from_hub(str(spec), attention, what)
    if not isinstance(spec, torch.nn.Module) or not hasattr(spec, "config"):
        raise UserError(f"{what} is a {type(spec).__name__}; pass a hub id, a folder, a transformers causal LM or a "
                        f"peft model.")  # fmt: skip
    kernel = getattr(spec.config, "_attn_implementation", None)
    if kernel not in ATTENTION:
        raise UserError(f"{what} runs the attention kernel {kernel!r}, which cannot read the strided layout's 4-D "
                        f"mask; load it with attn_implementation='sdpa' or 'eager'.")  # fmt: skip
    return spec


def _from_hub(repo: str, attention: str, what: str):
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(repo, dtype=torch.float32, attn_implementation=attention)
    except (OSError, ValueError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise UserError(
            f"{what} {repo!r} is neither a local folder nor loadable from the hub or its cache "
            f"({reason}); check the name, or download it where the hub is reachable."
        ) from None


def _tokenizer(given, spec, model):
    if given is not None:
        if not hasattr(given, "apply_chat_template") and hasattr(given, "tokenizer"):
            given = given.tokenizer  # a processor: its text tokenizer
        return ready_tokenizer(given, "processing_class")
    if isinstance(spec, (str, os.PathLike)) and Path(spec).expanduser().is_dir():
        return load_tokenizer(Path(spec).expanduser())
    name = spec if isinstance(spec, (str, os.PathLike)) else getattr(model, "name_or_path", None)
    if name and Path(name).is_dir() and not any(Path(name).glob("tokenizer*")):
        name = None
    if name:
        from transformers import AutoTokenizer

        try:
            return ready_tokenizer(AutoTokenizer.from_pretrained(name), f"the tokenizer of {name}")
        except (OSError, ValueError):
            pass
    raise UserError("the model's tokenizer cannot be found from the model; pass it as processing_class=tokenizer.")


def _frozen(model):
    return model.eval().requires_grad_(False)


def _plain(obj):
    """JSON-able data with sets sorted (a peft config's target modules), so that its hash does not vary by process."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (set, frozenset)):
        return sorted(_plain(v) for v in obj)
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj if isinstance(obj, (str, int, float, bool, type(None))) else str(obj)


def weights_fingerprint(*models) -> str:
    """A fingerprint of ``models``' weights: each tensor's name, shape, dtype, the sum of its values' bit patterns as
    integers and 4,096 evenly spaced values (a changed weight changes it; cheap enough for a 7B model).

    The sum is of integers, so it is exact whatever the order of the additions: a float sum came out differently under
    another thread count, so a run resumed with other threads per process (on another process count) refused its own
    checkpoint as written for another starting model."""
    h = hashlib.sha256()
    for model in models:
        if model is None:
            continue
        for name, t in model.state_dict().items():
            flat = t.detach().reshape(-1)
            h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|{_bit_sum(flat)}|".encode())
            sample = flat[:: max(1, flat.numel() // 4096)]
            h.update(sample.float().cpu().numpy().tobytes() if sample.is_floating_point() else sample.cpu().numpy()
                     .tobytes())  # fmt: skip
    return h.hexdigest()[:16]


def _bit_sum(flat: torch.Tensor) -> int:
    """The exact sum of a tensor's elements read as integers of their width (floats: their bit patterns)."""
    if flat.is_floating_point():
        width = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.int8}[flat.element_size()]
        flat = flat.contiguous().view(width)
    return int(flat.sum(dtype=torch.int64)) if flat.dtype != torch.bool else int(flat.sum())


def data_fingerprint(chunks: PackedChunks) -> str:
    """SHA-256 of the packed training chunks (token ids, masks and documents)."""
    h = hashlib.sha256()
    for t in (chunks.input_ids, chunks.valid, chunks.answer, chunks.document):
        h.update(t.cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _checkpoint_source(resume, checkpoint: Path) -> Path:
    if resume is None:
        if (checkpoint / "state.pt").is_file():
            raise UserError(f"{checkpoint.parent} holds a checkpoint of an earlier run; pass "
                            f"resume_from_checkpoint=True to continue it (only if it is this run's), or choose "
                            f"another output_dir.")  # fmt: skip
        return checkpoint
    if resume is True or resume == "auto":
        if resume is True and not (checkpoint / "state.pt").is_file():
            raise UserError(f"resume_from_checkpoint=True, but {checkpoint} holds no checkpoint; pass None to start "
                            f"afresh.")  # fmt: skip
        return checkpoint
    if resume is False:
        raise UserError("resume_from_checkpoint=False is not a choice here; pass None to start afresh or True to "
                        "continue.")  # fmt: skip
    path = Path(resume)
    path = path.parent if path.name == "state.pt" else path
    if not (path / "state.pt").is_file():
        raise UserError(f"resume_from_checkpoint names {resume}, which holds no EBFT checkpoint (state.pt); give "
                        f"output_dir/checkpoint of the run to continue.")  # fmt: skip
    return path


def train_ebft(
    *, base_dir: Path, start_dir: Path, train_records: list[dict], chunk_length: int, finetune: FinetuneConfig,
    cfg: EBFTSection, precision: str, seed: int, out: Path, settings_hash: str | None = None,
    halt_after: int | None = None, attention: str = "sdpa", evaluation: during.Settings | None = None,
    strategy: sharding.Strategy | None = None,
) -> dict:  # fmt: skip
    """One EBFT run of the workflow, from folders: :class:`EBFTTrainer` on the model in ``start_dir`` (features from
    ``base_dir``), writing ``out``; resumes a checkpoint in ``out/checkpoint`` written by the same settings, data and
    starting model, and starts afresh over any other, saying so.

    ``settings_hash`` identifies the settings (:attr:`ebft.resolve.Job.hash`; by default a hash of these arguments).
    ``halt_after`` stops (as if killed) right after saving the checkpoint of that step: for resume tests.
    ``evaluation``: the workflow's evaluations during training (:mod:`ebft.during`; ``cfg.eval_every``), with its
    settings and at the steps matched to SFT's budgets. ``strategy``: how the processes hold the model (the task's
    ``launch``; default DDP).
    """
    strategy = strategy or sharding.Strategy()
    args = EBFTConfig.from_section(cfg, output_dir=str(out), chunk_length=chunk_length, seed=seed, precision=precision,
                                   attention=attention, gradient_checkpointing=finetune.gradient_checkpointing,
                                   strategy=strategy.name, fsdp_reshard_after_forward=strategy.reshard_after_forward,
                                   fsdp_cpu_offload=strategy.cpu_offload)  # fmt: skip
    tokenizer = load_tokenizer(start_dir)
    check_model_dir(base_dir)  # a folder, or one sentence
    separate_features = finetune.mode == "full" or Path(start_dir) != Path(base_dir)
    model = load_causal_lm(start_dir, dropout=finetune.model_dropout, attention=attention)
    trainer = EBFTTrainer(model, args=args, train_dataset=train_records, processing_class=tokenizer,
                          eval_dataset=evaluation.records if evaluation is not None else None,
                          peft_config=lora_config(finetune),
                          feature_model=base_dir if separate_features else None)  # fmt: skip
    trainer._halt_after = halt_after
    if evaluation is not None:
        trainer._eval_settings = (evaluation.ce, evaluation.fm)
        trainer._downstream = evaluation if evaluation.judge is not None else None
        trainer._matched = evaluation.matched("ebft", len(trainer.chunks), chunk_length)
    trainer.run_id = settings_hash or config_hash({"finetune": finetune, "ebft": cfg, "chunk_length": chunk_length,
                                                   "precision": precision, "seed": seed,
                                                   "attention": attention})  # fmt: skip
    summary = trainer.train(resume_from_checkpoint="auto").metrics
    if summary["halted"]:
        return {"steps": summary["steps"], "halted": True}
    trainer.save_model()
    return summary


def ebft_step(accelerator, policy, frozen, kl_ref, optimizer, scheduler, batch: PackedChunks, valid, cfg,
              sample_seeds: list[int]):  # fmt: skip
    """One rollout batch: sample, score, one optimiser step. Returns the step's metrics.

    ``sample_seeds``: one per chunk of the batch; the n rollouts of chunk b draw from a stream seeded with
    ``sample_seeds[b]``. Under bf16 autocast the frozen weights run on their casts, made once
    (:func:`ebft.models.frozen_weights_cast`)."""
    root = accelerator.unwrap_model(policy)
    cast = None if sharding.is_sharded(root) else autocast_of(accelerator)  # FSDP gathers weights itself
    with frozen_weights_cast(cast, root.model, frozen, kl_ref):
        return _ebft_step(accelerator, policy, frozen, kl_ref, optimizer, scheduler, batch, valid, cfg, sample_seeds)


def _ebft_step(accelerator, policy, frozen, kl_ref, optimizer, scheduler, batch: PackedChunks, valid, cfg,
               sample_seeds: list[int]):  # fmt: skip
    c, s, G, n = cfg.c, cfg.s, cfg.G, cfg.n
    t0 = time.time()
    device = accelerator.device
    B, L = batch.input_ids.shape
    chunks = batch.input_ids.to(device).repeat_interleave(n, dim=0)  # (B·n, L): n copies of each chunk
    docs = batch.document.to(device).repeat_interleave(n, dim=0) if cfg.document_mask else None  # (B·n, L)
    root = accelerator.unwrap_model(policy)
    R = B * n
    size = cfg.micro_batch_size or R
    if accelerator.num_processes > 1 and sharding.skew(accelerator.process_index):  # tests: one process differs
        size = max(1, size // 2)
    micro = [slice(i, i + size) for i in range(0, R, size)]
    # under FSDP every process must make the same forwards (the sampler's, the features', the loss's)
    sharding.same_forwards(accelerator, "an EBFT step", (R, L, len(micro), int(cfg.kl_coef > 0)))
    generators = [torch.Generator(device=device).manual_seed(seed) for seed in sample_seeds]  # one per chunk
    with accelerator.autocast():
        blocks = root.run(lambda r: strided.sample_blocks(r.model, chunks, c, s, G, temperature=cfg.temperature,
                                                          top_p=cfg.top_p, generator=generators,
                                                          use_cache=cfg.use_cache, documents=docs))  # fmt: skip
    sample_s = time.time() - t0
    seq = strided.strided_sequence(chunks, blocks)  # (B·n, S)
    NB = blocks.shape[1]

    def features(r):
        with r.features() as net:
            return [scoring.strided_features(net, seq[m], L, c, s, G, layers=cfg.feature_layers, pooling=cfg.pooling,
                                             documents=docs[m] if docs is not None else None,
                                             shared=cfg.shared_prefix) for m in micro]  # fmt: skip

    with accelerator.autocast():
        parts = root.run(features)
    gt_feat, gen_feat = (torch.cat([p[i] for p in parts]) if len(parts) > 1 else parts[0][i] for i in (0, 1))
    features_s = time.time() - t0 - sample_s
    gen_feat = gen_feat.view(B, n, NB, -1)  # (B, n, NB, D)
    gt_feat = gt_feat.view(B, n, NB, -1)[:, 0]  # (B, NB, D): identical across copies
    scores = [feature_rewards(gen_feat[b], gt_feat[b], alpha=cfg.alpha, beta=cfg.beta, whitening=cfg.whitening)
              for b in range(B)]  # fmt: skip
    alignment = torch.stack([r["alignment"] for r in scores])  # (B, n, NB)
    diversity = torch.stack([r["diversity"] for r in scores])
    reward = torch.stack([r["reward"] for r in scores])
    adv = torch.stack([rloo_advantages(a, d, alpha=cfg.alpha, beta=cfg.beta) for a, d in zip(alignment, diversity,
                                                                                         strict=True)])  # fmt: skip
    keep = valid.to(device)[:, None, :].expand(B, n, NB)  # (B, n, NB)
    adv = (adv * keep).reshape(B * n, NB).float()
    token_keep = keep.reshape(B * n, NB, 1).expand(B * n, NB, G).float()  # (B·n, NB, G)

    # Reductions over the global batch, so that P processes compute the update of one process (DDP averages the P
    # gradients, hence the factor P): the policy loss is a mean over the sequences that hold at least one valid block
    # (a sequence with none has no generated token to train), the CE a mean over every real token of the batch. Each
    # term is a sum over sequences divided by a count of the whole batch, so the micro-batches' losses add up to the
    # batch's loss and their accumulated gradients to its gradient.
    P = accelerator.num_processes
    per_seq_tokens = token_keep.sum(dim=(1, 2))  # (B·n,)
    n_seq = optim.global_sum(accelerator, (per_seq_tokens > 0).sum()).clamp_min(1)  # sequences with a valid block
    targets = batch.valid.to(device).repeat_interleave(n, dim=0)  # (B·n, L)
    ce_tokens = optim.global_sum(accelerator, targets[:, 1:].sum()).clamp_min(1)  # token_nll's targets, whole batch
    terms = {"policy_loss": 0.0, "ce": 0.0, "kl": 0.0, "loss": 0.0}
    t_policy_start = time.time()
    for i, m in enumerate(micro):
        last = i == len(micro) - 1
        with sharding.no_sync(accelerator, policy, last):  # the gradients are reduced once, after the last
            with accelerator.autocast():
                mdocs = docs[m] if docs is not None else None
                score = dict(temperature=cfg.temperature, targets=targets[m], documents=mdocs,
                             shared=cfg.shared_prefix, logits_chunk=cfg.logits_chunk)  # fmt: skip
                logp, nll = policy(seq[m], L, c, s, G, **score)  # (m, NB, G), (m,)
                policy_loss = optim.ddp_scaled(reinforce_sum(adv[m], logp, token_keep[m]) / n_seq, P)
                ce = optim.ddp_scaled(nll.sum() / ce_tokens, P)
                kl = torch.zeros((), device=device)
                if cfg.kl_coef > 0:

                    def reference(r, m=m, score=score):
                        with torch.no_grad(), feature_network(r.model, r.kl_ref) as ref:
                            return scoring.policy_scores(ref, seq[m], L, c, s, G, **score)[0]

                    ref_logp = root.run(reference)
                    per_seq_kl = (kl_penalty(logp, ref_logp, cfg.kl_estimator) * token_keep[m]).sum(dim=(1, 2))
                    kl = optim.ddp_scaled((per_seq_kl / per_seq_tokens[m].clamp_min(1)).sum() / n_seq, P)
                loss = policy_loss + cfg.gamma * ce + cfg.kl_coef * kl
            accelerator.backward(loss)
        for name, value in (("policy_loss", policy_loss), ("ce", ce), ("kl", kl), ("loss", loss)):
            terms[name] = terms[name] + value.detach()
        del logp, nll
    policy_loss, ce, kl, loss = (terms[k] for k in ("policy_loss", "ce", "kl", "loss"))
    t_policy = time.time()
    policy_s = t_policy - t_policy_start
    grad_norm = sharding.clip_grad_norm(accelerator, policy.parameters(), cfg.grad_clip)
    lr = scheduler.get_last_lr()[0]  # the rate this step uses (warm-up starts at 0)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    optimizer_s = time.time() - t_policy

    k = keep.float()
    denom = optim.global_sum(accelerator, k.sum()).clamp_min(1)

    def masked_mean(x):  # over the valid (rollout, block) pairs of the global batch
        return float(optim.global_sum(accelerator, (x.to(k.dtype) * k).sum()) / denom)

    def global_mean(x):  # a loss term: each process holds its P-scaled share
        return float(optim.global_sum(accelerator, x.detach()) / P)

    return {
        "reward": masked_mean(reward), "alignment": masked_mean(alignment), "diversity": masked_mean(diversity),
        "fm_estimate": masked_mean(alignment - diversity / 2), "ce": global_mean(ce),
        "policy_loss": global_mean(policy_loss), "kl": global_mean(kl), "loss": global_mean(loss),
        "grad_norm": float(grad_norm), "valid_blocks": int(optim.global_sum(accelerator, valid.sum())), "lr": lr,
        "rollout_tokens_per_s": round(B * n * NB * G / max(sample_s, 1e-9), 1), "sample_s": round(sample_s, 3),
        "features_s": round(features_s, 3), "policy_s": round(policy_s, 3), "optimizer_s": round(optimizer_s, 3),
        "step_time_s": round(time.time() - t0, 3),
    }  # fmt: skip


class StridedPolicy(sharding.Root):
    """The policy as the loss sees it: ``forward`` returns :func:`ebft.scoring.policy_scores` of ``model``; the frozen
    networks ride along (:class:`ebft.sharding.Root`)."""

    def forward(self, seq, L, c, s, G, **kw):
        return scoring.policy_scores(self.model, seq, L, c, s, G, **kw)


def reinforce_sum(adv: torch.Tensor, logp: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Σ over sequences of the mean of −A·log π over each sequence's kept tokens (a scalar).

    adv (R, NB) per block, logp and keep (R, NB, G). A sequence with no kept token (no valid block) adds nothing;
    the caller divides by the number of sequences that have one, so such a sequence never dilutes the mean.
    """
    tokens = keep.sum(dim=(1, 2))  # (R,)
    per_seq = -(adv[..., None] * logp * keep).sum(dim=(1, 2)) / tokens.clamp_min(1)
    return per_seq.sum()


def _sample_seed(seed: int, step: int, chunk: int) -> int:
    """The seed of the random stream from which the rollouts of training chunk ``chunk`` (its index in the packed
    training set) are drawn at ``step``. Fixed by the chunk, not by the process that samples it or by the other
    chunks of its batch: P processes draw the rollouts of one."""
    return strided.derive_seed(seed, step, 1, chunk)


def _trainable_shapes(model) -> dict[str, torch.Size]:
    """The whole shapes of the trainable weights (of the full tensors, under FSDP)."""
    return {k: v.shape for k, v in model.named_parameters() if v.requires_grad}


def _save_state(accelerator, path: Path, model, optimizer, scheduler, step: int, identity: dict,
                rows: list[dict], extra: dict | None = None) -> None:  # fmt: skip
    """Resumable state: trainable weights (adapter or all), optimiser, scheduler, step, the per-step metric rows so
    far and what identifies the run (its settings, training data and starting weights; written atomically)."""
    accelerator.wait_for_everyone()
    main = accelerator.is_main_process
    # whole CPU tensors (under FSDP gathered by every process): the same format under either strategy
    trainable = sharding.full_state(model, trainable_only=True, keep=main)
    moments = sharding.full_optimizer_state(optimizer, keep=main)
    if not main:
        return
    path.mkdir(parents=True, exist_ok=True)
    state = {"step": step, "identity": identity, "trainable": trainable,
             "optimizer": moments, "scheduler": scheduler.state_dict(),
             "rng": torch.get_rng_state(), "rows": list(rows), "extra": extra or {}}  # fmt: skip
    tmp = path / "state.pt.partial"
    torch.save(state, tmp)
    tmp.replace(path / "state.pt")


def _resume(accelerator, path: Path, model, optimizer, scheduler, identity: dict, *,
            strict: bool) -> tuple[int, list[dict], dict]:  # fmt: skip
    """Load the state saved by :func:`_save_state` in ``path`` if there is one; return the step to continue from, the
    metric rows logged up to it and what else the run kept (its budgets and evaluations so far).

    A checkpoint that cannot be continued (written under other settings, data or starting weights, before checkpoints
    carried them or their metric rows, or for other trainable weights, such as another LoRA rank) is refused in one
    sentence (``strict``), or removed so that the run starts afresh, saying so in one line.
    """
    file = path / "state.pt"
    if not file.is_file():
        return 0, [], {}
    try:
        state = torch.load(file, weights_only=False)
    except Exception as e:  # noqa: BLE001  (a truncated or foreign file: whatever torch.load raises)
        state, problem = {}, f"it cannot be read ({type(e).__name__})"
    else:
        problem = _unusable(state, identity, _trainable_shapes(model))
    if problem:
        if strict:
            raise UserError(f"the checkpoint in {path} cannot be continued by this run: {problem}; train into another "
                            f"output_dir, or pass resume_from_checkpoint=None there.")  # fmt: skip
        accelerator.wait_for_everyone()  # every process has read the file before it goes
        if accelerator.is_main_process:
            print(f"ebft: the checkpoint in {path} cannot be continued: {problem}; starting afresh.", file=sys.stderr,
                  flush=True)  # fmt: skip
            shutil.rmtree(path)
        return 0, [], {}
    params = dict(model.named_parameters())
    for name, value in state["trainable"].items():
        sharding.load_full_(params[name], value)  # or this process's shard of it
    sharding.load_optimizer_state(optimizer, state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    return int(state["step"]), list(state["rows"]), dict(state.get("extra") or {})


IDENTITY = {"settings": "other settings", "data": "other training data", "model": "another starting model"}


def _unusable(state: dict, identity: dict, shapes: dict) -> str | None:
    """Why a loaded checkpoint cannot be continued by this run, or None."""
    if not isinstance(state, dict) or "step" not in state:
        return "it is not an EBFT checkpoint"
    theirs = state.get("identity")
    if theirs != identity:
        differ = [IDENTITY[k] for k in IDENTITY if not isinstance(theirs, dict) or theirs.get(k) != identity[k]]
        return f"it was written for {' and '.join(differ) or 'another run'}"
    if "rows" not in state:
        return "it predates checkpoints that carry their metric rows"
    saved = state.get("trainable", {})
    differ = [k for k in shapes.keys() | saved.keys()
              if k not in shapes or k not in saved or shapes[k] != saved[k].shape]  # fmt: skip
    if differ:
        return f"its trainable weights differ from this model's ({len(differ)} tensors, e.g. {sorted(differ)[0]})"
    return None
