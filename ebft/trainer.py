"""EBFT trainer: strided rollouts → base-model features → feature-matching rewards → REINFORCE (docs/method.md §1–§4).

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
- Features: the frozen base model (LoRA: the policy with its adapter disabled; full fine-tuning or an SFT warm start:
  a frozen copy loaded from the base folder).
- Random numbers: the rollouts of each chunk are drawn from a stream seeded from (seed, step, the chunk's index), on
  whichever process samples it, and the data order of epoch e is a permutation
  seeded from (seed, e), so a run resumed from a checkpoint (weights or adapter, optimiser, scheduler, step) continues
  exactly as an uninterrupted one; dropout is 0.

Differences from the released code: none in the update; the sampler uses a KV cache (identical tokens in fp32) unless
``use_cache: false``. With ``document_mask`` attention is confined to each packed document (the released configs
leave it off), and blocks whose ground truth leaves its anchor's document get no gradient.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ebft import optim, scoring, strided
from ebft.config import EBFTConfig, FinetuneConfig, config_hash
from ebft.features import feature_network
from ebft.metrics_log import MetricsLog
from ebft.models import (
    autocast_dtype,
    autocast_of,
    frozen_weights_cast,
    load_causal_lm,
    load_tokenizer,
    make_trainable,
    save_checkpoint,
)
from ebft.packing import PackedChunks, pack_records
from ebft.rewards import feature_rewards, rloo_advantages

TIMINGS = ["rollout_tokens_per_s", "sample_s", "features_s", "policy_s", "optimizer_s", "step_time_s"]  # wall clock
FIELDS = ["step", "epoch", "reward", "alignment", "diversity", "fm_estimate", "ce", "policy_loss", "kl", "loss",
          "grad_norm", "valid_blocks", "lr", *TIMINGS]  # fmt: skip


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


def train_ebft(
    *, base_dir: Path, start_dir: Path, train_records: list[dict], chunk_length: int, finetune: FinetuneConfig,
    cfg: EBFTConfig, precision: str, seed: int, out: Path, settings_hash: str | None = None,
    halt_after: int | None = None, attention: str = "sdpa",
) -> dict:  # fmt: skip
    """Train with EBFT from ``start_dir`` (features from ``base_dir``); resumes from ``out/checkpoint`` if present.

    ``settings_hash`` identifies the settings that define the run (:attr:`ebft.resolve.Job.hash`; by default a hash
    of the arguments here). The checkpoint carries it, and a checkpoint written under other settings is never
    continued: the run starts afresh and says so. ``halt_after`` stops (as if killed) right after saving the
    checkpoint of that step: for resume tests.
    """
    from accelerate import Accelerator

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device_kind = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    mixed = "bf16" if autocast_dtype(precision, device_kind) is not None else "no"
    accelerator = Accelerator(mixed_precision=mixed, cpu=not torch.cuda.is_available())
    optim.require_data_parallel(accelerator)
    torch.manual_seed(seed)
    c, s, G = cfg.c, cfg.s, cfg.G

    tokenizer = load_tokenizer(start_dir)
    chunks = pack_records(train_records, tokenizer, chunk_length)
    strided.num_blocks(chunk_length, c, s, G)  # refuses a layout that does not fit before any work
    valid_blocks = strided.block_valid(chunks, c, s, G, cfg.answer_only, cfg.document_mask)  # (N, NB)

    model = make_trainable(load_causal_lm(start_dir, dropout=finetune.model_dropout, attention=attention), finetune)
    separate_features = finetune.mode == "full" or Path(start_dir) != Path(base_dir)
    frozen = load_causal_lm(base_dir, attention=attention).eval().requires_grad_(False) if separate_features else None
    kl_ref = None
    if cfg.kl_coef > 0 and finetune.mode == "full":
        kl_ref = load_causal_lm(start_dir, attention=attention).eval().requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = optim.adamw(trainable, cfg)
    share = optim.process_share(cfg.batch_size, accelerator.num_processes, "ebft.batch_size")
    steps_per_epoch, total_steps = optim.ebft_step_budget(len(chunks), cfg)
    scheduler = optim.lr_schedule(optimizer, cfg, total_steps)  # stepped here, once per optimiser step
    # The policy's loss forward is one call of a module around the model (two forwards on the shared-prefix path), so
    # that DDP sees one forward per backward; the sampler and the features call the model itself, without gradients.
    policy, optimizer = accelerator.prepare(StridedPolicy(model), optimizer)
    model = accelerator.unwrap_model(policy).model
    for m in (frozen, kl_ref):
        if m is not None:
            m.to(accelerator.device)

    if settings_hash is None:
        settings_hash = config_hash({"base": str(base_dir), "start": str(start_dir), "chunk_length": chunk_length,
                                     "finetune": finetune, "ebft": cfg, "precision": precision, "seed": seed,
                                     "records": len(train_records)})  # fmt: skip
    step, rows = _resume(accelerator, out / "checkpoint", model, optimizer, scheduler, settings_hash)
    if accelerator.is_main_process:
        where = f"resuming from step {step} of {total_steps}" if step else f"starting at step 0 of {total_steps}"
        print(f"ebft: {where} (checkpoints every {cfg.checkpoint_every} steps in {out / 'checkpoint'}).",
              file=sys.stderr, flush=True)  # fmt: skip
    # The per-step rows travel with the checkpoint: the CSV is rebuilt from them (the workflow deletes a failed job's
    # CSV; rows logged after the last checkpoint are logged again), so a resumed run lists every step once.
    log = MetricsLog(out / "train_metrics.csv", FIELDS, enabled=accelerator.is_main_process, rows=rows,
                     tensorboard=out / "tensorboard" if cfg.tensorboard else None)  # fmt: skip
    bar = tqdm(total=total_steps, initial=step, desc="ebft", disable=not accelerator.is_local_main_process)
    started = time.time()
    with log:
        while step < total_steps:
            epoch, within = divmod(step, steps_per_epoch)
            shuffle = torch.Generator().manual_seed(strided.derive_seed(seed, epoch))
            order = torch.randperm(len(chunks), generator=shuffle)
            start = within * cfg.batch_size + accelerator.process_index * share  # this process's share
            index = order[start : start + share]
            row = ebft_step(accelerator, policy, frozen, kl_ref, optimizer, scheduler, chunks.subset(index),
                             valid_blocks[index], cfg, [_sample_seed(seed, step, int(i)) for i in index])  # fmt: skip
            step += 1
            row.update(step=step, epoch=epoch)
            if step % cfg.log_every == 0 or step == total_steps:
                log.write(row)
            if step % cfg.checkpoint_every == 0 or step == total_steps:
                _save_state(accelerator, out / "checkpoint", model, optimizer, scheduler, step, settings_hash,
                            log.rows)  # fmt: skip
            bar.update(1)
            bar.set_postfix(reward=f"{row['reward']:.3f}", ce=f"{row['ce']:.3f}")
            if halt_after is not None and step == halt_after:
                bar.close()
                return {"steps": step, "halted": True}
    bar.close()

    accelerator.wait_for_everyone()
    summary = {"method": "ebft", "steps": step, "train_chunks": len(chunks), "chunk_length": chunk_length,
               "blocks_per_chunk": valid_blocks.shape[1], "valid_block_fraction": float(valid_blocks.float().mean()),
               "trainable_parameters": sum(p.numel() for p in trainable), "mixed_precision": mixed,
               "processes": accelerator.num_processes, "wall_time_s": round(time.time() - started, 2),
               "feature_network": "frozen base copy" if separate_features else "policy with adapter disabled",
               "ebft": asdict(cfg)}  # fmt: skip
    if accelerator.is_main_process:
        save_checkpoint(model, tokenizer, out, finetune.mode)
        (out / "train_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def ebft_step(accelerator, policy, frozen, kl_ref, optimizer, scheduler, batch: PackedChunks, valid, cfg,
              sample_seeds: list[int]):  # fmt: skip
    """One rollout batch: sample, score, one optimiser step. Returns the step's metrics.

    ``sample_seeds``: one per chunk of the batch; the n rollouts of chunk b draw from a stream seeded with
    ``sample_seeds[b]``. Under bf16 autocast the frozen weights run on their casts, made once
    (:func:`ebft.models.frozen_weights_cast`)."""
    model = accelerator.unwrap_model(policy).model
    with frozen_weights_cast(autocast_of(accelerator), model, frozen, kl_ref):
        return _ebft_step(accelerator, policy, frozen, kl_ref, optimizer, scheduler, batch, valid, cfg, sample_seeds)


def _ebft_step(accelerator, policy, frozen, kl_ref, optimizer, scheduler, batch: PackedChunks, valid, cfg,
               sample_seeds: list[int]):  # fmt: skip
    c, s, G, n = cfg.c, cfg.s, cfg.G, cfg.n
    t0 = time.time()
    device = accelerator.device
    B, L = batch.input_ids.shape
    chunks = batch.input_ids.to(device).repeat_interleave(n, dim=0)  # (B·n, L): n copies of each chunk
    docs = batch.document.to(device).repeat_interleave(n, dim=0) if cfg.document_mask else None  # (B·n, L)
    model = accelerator.unwrap_model(policy).model
    generators = [torch.Generator(device=device).manual_seed(seed) for seed in sample_seeds]  # one per chunk
    with accelerator.autocast():
        blocks = strided.sample_blocks(
            model,
            chunks,
            c,
            s,
            G,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            generator=generators,
            use_cache=cfg.use_cache,
            documents=docs,
        )  # (B·n, NB, G)
    sample_s = time.time() - t0
    seq = strided.strided_sequence(chunks, blocks)  # (B·n, S)
    NB = blocks.shape[1]

    R = B * n
    micro = [slice(i, i + (cfg.micro_batch_size or R)) for i in range(0, R, cfg.micro_batch_size or R)]
    with accelerator.autocast(), feature_network(model, frozen) as net:
        parts = [scoring.strided_features(net, seq[m], L, c, s, G, layers=cfg.feature_layers, pooling=cfg.pooling,
                                          documents=docs[m] if docs is not None else None, shared=cfg.shared_prefix)
                 for m in micro]  # fmt: skip
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
        with accelerator.no_sync(policy) if not last else contextlib.nullcontext():  # DDP all-reduces once
            with accelerator.autocast():
                mdocs = docs[m] if docs is not None else None
                score = dict(temperature=cfg.temperature, targets=targets[m], documents=mdocs,
                             shared=cfg.shared_prefix, logits_chunk=cfg.logits_chunk)  # fmt: skip
                logp, nll = policy(seq[m], L, c, s, G, **score)  # (m, NB, G), (m,)
                policy_loss = optim.ddp_scaled(reinforce_sum(adv[m], logp, token_keep[m]) / n_seq, P)
                ce = optim.ddp_scaled(nll.sum() / ce_tokens, P)
                kl = torch.zeros((), device=device)
                if cfg.kl_coef > 0:
                    with torch.no_grad(), feature_network(model, kl_ref) as ref:
                        ref_logp, _ = scoring.policy_scores(ref, seq[m], L, c, s, G, **score)
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
    grad_norm = accelerator.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
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


class StridedPolicy(torch.nn.Module):
    """The policy as the loss sees it: ``forward`` returns :func:`ebft.scoring.policy_scores` of ``model``."""

    def __init__(self, model):
        super().__init__()
        self.model = model

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


def _trainable_state(model) -> dict:
    return {k: v.detach().cpu() for k, v in model.named_parameters() if v.requires_grad}


def _save_state(accelerator, path: Path, model, optimizer, scheduler, step: int, settings_hash: str,
                rows: list[dict]) -> None:  # fmt: skip
    """Resumable state: trainable weights (adapter or all), optimiser, scheduler, step, the per-step metric rows so
    far and the hash of the settings that define the run (written atomically)."""
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return
    path.mkdir(parents=True, exist_ok=True)
    state = {"step": step, "settings_hash": settings_hash,
             "trainable": _trainable_state(model),
             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "rng": torch.get_rng_state(), "rows": list(rows)}  # fmt: skip
    tmp = path / "state.pt.partial"
    torch.save(state, tmp)
    tmp.replace(path / "state.pt")


def _resume(accelerator, path: Path, model, optimizer, scheduler, settings_hash: str) -> tuple[int, list[dict]]:
    """Load the state saved by :func:`_save_state` if there is one; return the step to continue from and the metric
    rows logged up to it.

    A checkpoint that cannot be continued (written under other settings, before checkpoints carried them or their
    metric rows, or for other trainable weights, such as another LoRA rank) is removed and the run starts afresh,
    saying so in one line.
    """
    file = path / "state.pt"
    if not file.is_file():
        return 0, []
    try:
        state = torch.load(file, weights_only=False)
    except Exception as e:  # noqa: BLE001  (a truncated or foreign file: whatever torch.load raises)
        state, problem = {}, f"it cannot be read ({type(e).__name__})"
    else:
        problem = _unusable(state, settings_hash, _trainable_state(model))
    if problem:
        accelerator.wait_for_everyone()  # every process has read the file before it goes
        if accelerator.is_main_process:
            print(f"ebft: the checkpoint in {path} cannot be continued: {problem}; starting afresh.", file=sys.stderr,
                  flush=True)  # fmt: skip
            shutil.rmtree(path)
        return 0, []
    with torch.no_grad():
        params = dict(model.named_parameters())
        for name, value in state["trainable"].items():
            params[name].copy_(value)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    return int(state["step"]), list(state["rows"])


def _unusable(state: dict, settings_hash: str, trainable: dict) -> str | None:
    """Why a loaded checkpoint cannot be continued by this run, or None."""
    if not isinstance(state, dict) or "step" not in state:
        return "it is not an EBFT checkpoint"
    if state.get("settings_hash") != settings_hash:
        return f"it was written under other settings ({state.get('settings_hash')} ≠ {settings_hash})"
    if "rows" not in state:
        return "it predates checkpoints that carry their metric rows"
    theirs = state.get("trainable", {})
    differ = [k for k in trainable.keys() | theirs.keys()
              if k not in trainable or k not in theirs or trainable[k].shape != theirs[k].shape]  # fmt: skip
    if differ:
        return f"its trainable weights differ from this model's ({len(differ)} tensors, e.g. {sorted(differ)[0]})"
    return None
