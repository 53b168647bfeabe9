"""Sharded training (FSDP2) for the SFT and EBFT trainers: ``launch.strategy: fsdp`` (docs/cluster.md).

Under ``ddp`` (the default) every process holds the whole model and accelerate wraps it in DDP. Under ``fsdp`` torch's
FSDP2 (``torch.distributed.fsdp.fully_shard``) shards it: each decoder layer of the policy (and of the frozen networks
the step runs: the feature network and the KL reference of full fine-tuning) is a unit of its own, then a
:class:`Root` around them all takes the embeddings, norms and heads. Each process keeps 1/P of every weight, gradient
and AdamW moment; a unit's weights are gathered for its forward and backward and dropped again after them
(``reshard_after_forward``), and can live in host memory between uses (``cpu_offload``).

The sharding is applied here, not by accelerate: accelerate only launches the processes (on a CPU it silently turns an
FSDP configuration into plain data parallelism). What the trainers need of it:

- Every call into the model runs inside a forward of the root, so that the root's weights are gathered: the loss is the
  root's ``forward``, and the strided sampler, the features, the KL reference and the held-out evaluations go through
  :meth:`Root.run`, registered with ``register_fsdp_forward_method`` (a call into an inner module bypasses the root's
  hooks and fails with "mixed torch.Tensor and DTensor").
- Every process makes the same forwards in the same order, or the collectives of the gathers pair up wrongly and the
  processes wait for ever. The trainers give every process the same shapes, and :func:`same_forwards` compares each
  step's plan across processes first, failing in one sentence where they differ.
- Checkpoints hold full tensors in the format of an unsharded run (:func:`full_state`, :func:`full_optimizer_state`),
  so a run resumes on another process count or strategy; the saved model is a plain Hugging Face folder
  (:func:`gathered`).

FSDP2 averages gradients over the processes as DDP does, so the trainers' loss scaling is the same under both.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

from ebft.config import STRATEGIES
from ebft.errors import UserError
from ebft.features import backbone, base_model, feature_network


@dataclass(frozen=True)
class Strategy:
    """How a training job's processes hold the model: ``ddp`` (whole, data-parallel) or ``fsdp`` (sharded)."""

    name: str = "ddp"
    reshard_after_forward: bool = True
    cpu_offload: bool = False

    def __post_init__(self):
        if self.name not in STRATEGIES:
            raise UserError(f"strategy {self.name!r} is not one of {', '.join(STRATEGIES)}; choose one of them.")

    @property
    def sharded(self) -> bool:
        return self.name == "fsdp"


class Root(torch.nn.Module):
    """The policy with the frozen networks a step also runs (``frozen``: the feature network of full fine-tuning;
    ``kl_ref``: the KL reference). Under FSDP they are submodules, sharded with the root (``own``); otherwise they are
    plain attributes, so that DDP neither broadcasts nor tracks them.

    ``forward`` is the loss's call (subclasses define it); :meth:`run` calls ``fn(self, …)`` inside the root's forward
    hooks, for every other use of the networks."""

    def __init__(self, model, frozen=None, kl_ref=None, *, own: bool = False):
        super().__init__()
        self.model = model
        for name, net in (("frozen", frozen), ("kl_ref", kl_ref)):
            if own and net is not None:
                setattr(self, name, net)
            else:
                object.__setattr__(self, name, net)

    def run(self, fn, *args, **kwargs):
        """``fn(self, *args, **kwargs)``; under FSDP with the root's weights gathered for it."""
        return fn(self, *args, **kwargs)

    def features(self):
        """Context manager yielding the feature network: the policy with its adapter disabled, or the frozen copy."""
        return feature_network(self.model, self.frozen)


class CausalRoot(Root):
    """A causal LM's root whose forward is the model's own (SFT)."""

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)


def decoder_layers(model) -> list[torch.nn.Module]:
    """The decoder layers of a (possibly peft-wrapped) causal LM: FSDP's units."""
    body = backbone(model)
    for name in ("layers", "h", "blocks"):
        layers = getattr(body, name, None)
        if isinstance(layers, torch.nn.ModuleList) and len(layers):
            return list(layers)
    raise UserError(f"{type(base_model(model)).__name__} keeps no list of decoder layers that FSDP could shard "
                    f"layer by layer; train it with launch.strategy ddp.")  # fmt: skip


def ensure_process_group(device: torch.device) -> None:
    """A process group for FSDP's device mesh: the launched processes' one, or a group of this process alone."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=dist.HashStore(), rank=0,
                                world_size=1)  # fmt: skip


def shard(root: Root, strategy: Strategy, device: torch.device) -> Root:
    """Shard ``root`` in place with FSDP2 (each decoder layer of each of its networks, then the root) and register
    :meth:`Root.run` as one of its forwards."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard, register_fsdp_forward_method

    ensure_process_group(device)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    offload = CPUOffloadPolicy(pin_memory=device.type == "cuda") if strategy.cpu_offload else OffloadPolicy()
    kwargs = {"mesh": mesh, "reshard_after_forward": strategy.reshard_after_forward, "offload_policy": offload}
    networks = {id(net): net for net in (root.model, root.frozen, root.kl_ref) if net is not None}
    for net in networks.values():  # once each: the feature network may be the KL reference too
        for layer in decoder_layers(net):
            fully_shard(layer, **kwargs)
    fully_shard(root, **kwargs)
    register_fsdp_forward_method(root, "run")
    return root


def is_sharded(model) -> bool:
    """Whether ``model`` holds FSDP-sharded weights (DTensors)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def local_parameters(model) -> int:
    """The parameter elements this process holds (its shards, under FSDP)."""
    from torch.distributed.tensor import DTensor

    return sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in model.parameters())


def no_sync(accelerator, policy, sync: bool):
    """A micro-batch's backward without the gradient reduction (``sync`` False), which the last micro-batch does once:
    DDP's ``no_sync``, or FSDP's ``set_requires_gradient_sync``."""
    if sync:
        return contextlib.nullcontext()
    if hasattr(policy, "set_requires_gradient_sync"):

        @contextlib.contextmanager
        def unsynced():
            policy.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                policy.set_requires_gradient_sync(True)

        return unsynced()
    return accelerator.no_sync(policy)


def clip_grad_norm(accelerator, params, max_norm: float) -> torch.Tensor:
    """The gradients' global norm, clipped to ``max_norm``; over the whole model under FSDP as under DDP."""
    from torch.distributed.tensor import DTensor

    params = list(params)
    if not any(isinstance(p, DTensor) for p in params):
        return accelerator.clip_grad_norm_(params, max_norm)
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return norm.full_tensor() if isinstance(norm, DTensor) else norm


# --------------------------------------------------------------------------------------------------
# The same forwards on every process
# --------------------------------------------------------------------------------------------------

SKEW_ENV = "EBFT_TEST_SKEW_RANK"  # tests: this process plans one micro-batch more than the others


def skew(rank: int) -> int:
    """Extra micro-batches that the tests' fault injection gives process ``rank`` (0 outside the tests)."""
    return int(os.environ.get(SKEW_ENV, "-1") == str(rank))


def same_forwards(accelerator, what: str, plan: tuple[int, ...]) -> None:
    """Refuse in one sentence a step whose forwards differ between processes (under FSDP they would wait for each
    other for ever): ``plan`` is what fixes this process's forwards (rows, micro-batches, blocks, …)."""
    if accelerator.num_processes == 1:
        return
    mine = torch.tensor(plan, dtype=torch.long, device=accelerator.device)
    every = accelerator.gather(mine[None]).view(accelerator.num_processes, -1).cpu()
    if (every != every[0]).any():
        odd = next(i for i in range(len(every)) if (every[i] != every[0]).any())
        raise UserError(f"process {odd} would make other forwards in {what} than process 0 (plan "
                        f"{tuple(every[odd].tolist())} against {tuple(every[0].tolist())}), and sharded "
                        f"processes must make the same ones; give every process the same batch share and "
                        f"micro-batches.")  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Full state: checkpoints and the saved model
# --------------------------------------------------------------------------------------------------


def _full(t: torch.Tensor, keep: bool) -> torch.Tensor | None:
    """The whole tensor of a shard (a collective: every process calls it), on the CPU where kept."""
    from torch.distributed.tensor import DTensor

    if isinstance(t, DTensor):
        t = t.full_tensor()
    return t.detach().cpu() if keep else None


def full_state(model, *, trainable_only: bool, keep: bool) -> dict[str, torch.Tensor]:
    """The model's weights (or its trainable ones) as whole CPU tensors, named as in an unsharded model; every
    process calls it, those with ``keep`` False get an empty dict."""
    items = ((k, v) for k, v in model.named_parameters() if v.requires_grad) if trainable_only else \
        model.state_dict().items()  # fmt: skip
    state = {k: _full(v, keep) for k, v in items}
    return state if keep else {}


def full_optimizer_state(optimizer, *, keep: bool) -> dict:
    """The optimiser's state dict with whole tensors, as an unsharded run's ``state_dict()`` (a collective)."""
    sd = optimizer.state_dict()
    state = {i: {k: _full(v, keep) if torch.is_tensor(v) else v for k, v in s.items()}
             for i, s in sorted(sd["state"].items())}  # fmt: skip
    return {"state": state, "param_groups": sd["param_groups"]} if keep else {}


def load_full_(param: torch.nn.Parameter, value: torch.Tensor) -> None:
    """Copy a whole tensor into ``param``, or into this process's shard of it."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    with torch.no_grad():
        if isinstance(param, DTensor):
            value = distribute_tensor(value.to(param.device, param.dtype), param.device_mesh, param.placements)
        param.copy_(value)


def load_optimizer_state(optimizer, state: dict) -> None:
    """Load an unsharded optimiser state dict into an optimiser over sharded parameters (or plain ones)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    params = [p for group in optimizer.param_groups for p in group["params"]]
    converted = {}
    for i, s in state["state"].items():
        p = params[int(i)]
        converted[i] = {k: distribute_tensor(v.to(p.to_local().device), p.device_mesh, p.placements)
                        if isinstance(p, DTensor) and torch.is_tensor(v) and v.shape == p.shape else v
                        for k, v in s.items()}  # fmt: skip
    optimizer.load_state_dict({"state": converted, "param_groups": state["param_groups"]})


def gathered(model, *, keep: bool):
    """An unsharded copy of a sharded model, on the CPU, for saving and for scoring a checkpoint (every process calls
    it; those with ``keep`` False get None). A plain model is returned as it is."""
    if not is_sharded(model):
        return model
    state = full_state(model, trainable_only=False, keep=keep)
    if not keep:
        return None
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    from ebft.models import is_peft_model

    base = base_model(model)
    dtype = next(iter(state.values())).dtype
    with torch.random.fork_rng(), init_empty_weights(include_buffers=False):
        plain = AutoModelForCausalLM.from_config(base.config, dtype=dtype,
                                                 attn_implementation=base.config._attn_implementation)  # fmt: skip
        if is_peft_model(model):
            from peft import get_peft_model

            name = model.active_adapter
            plain = get_peft_model(plain, model.peft_config[name], adapter_name=name)
    plain.load_state_dict(state, strict=True, assign=True)
    base_model(plain).tie_weights()
    return plain.eval()
