"""Peak GPU memory of one training process, estimated before anything runs (``ebft check``; docs/cluster.md).

The estimate adds what a process of an SFT or EBFT job holds on its GPU under its strategy (the task's ``launch``):

- resident: fp32 weights of every network the step runs (the policy; for full fine-tuning also EBFT's frozen feature
  copy, and the KL reference with ``kl_coef`` > 0), fp32 gradients and AdamW's two fp32 moments of the trainable
  weights, and under bf16 autocast a bf16 copy of the trainable weights. DDP: all of it in every process. FSDP: 1/P of
  it per process (none with ``cpu_offload``), plus the units gathered whole at a time: the root (embeddings, final
  norms, heads of every network) and two decoder layers with their gradients (one computing, one prefetched);
- the peak of the step's two phases: sampling (EBFT: the KV cache of the process's rollouts, bf16) and the loss's
  forward and backward (the activations each decoder layer keeps for its backward, per token, bf16 under autocast,
  for the tokens of one micro-batch; and the output head's logits for one chunk of positions: bf16, an fp32 copy, the
  log-softmax and two gradients, 16 bytes per position and vocabulary entry).

Per token and decoder layer a Llama-style layer keeps about 18·h + 4·kv + 8·i bytes (two fp32 norm inputs, the bf16
inputs and outputs of the attention and MLP projections; h the width, kv the key-value width, i the MLP width); with
gradient checkpointing only its fp32 input, 4·h, plus one layer's whole activations while it is recomputed. Attention
scores are not kept (sdpa's fused kernels). It is an estimate from the architecture, not a measurement: the allocator's
fragmentation and the CUDA context (about 1 GiB) come on top, so a job is said to fit an 80 GB GPU below 74 GiB.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

GiB = 2**30
FITS_GIB = 74.0  # an 80 GB GPU, less the CUDA context and the allocator's slack

# public architecture configs of the models the profiles name (no hub needed to size a job)
ARCHITECTURES = {
    "qwen2.5-0.5b": dict(model_type="qwen2", hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True,
                         max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6),
    "qwen2.5-1.5b": dict(model_type="qwen2", hidden_size=1536, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, intermediate_size=8960, vocab_size=151936, tie_word_embeddings=True,
                         max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6),
    "qwen2.5-7b": dict(model_type="qwen2", hidden_size=3584, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, intermediate_size=18944, vocab_size=152064, tie_word_embeddings=False,
                       max_position_embeddings=131072, rope_theta=1e6, rms_norm_eps=1e-6),
    "llama-3.2-1b": dict(model_type="llama", hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, intermediate_size=8192, vocab_size=128256, tie_word_embeddings=True,
                         max_position_embeddings=131072, rope_theta=5e5, rms_norm_eps=1e-5),
    "smollm2-135m": dict(model_type="llama", hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, intermediate_size=1536, vocab_size=49152, tie_word_embeddings=True,
                         max_position_embeddings=8192, rope_theta=1e5, rms_norm_eps=1e-5),
}  # fmt: skip
# a profile's model source → its architecture
SOURCES = {"Qwen/Qwen2.5-0.5B": "qwen2.5-0.5b", "Qwen/Qwen2.5-1.5B": "qwen2.5-1.5b", "Qwen/Qwen2.5-7B": "qwen2.5-7b",
           "meta-llama/Llama-3.2-1B": "llama-3.2-1b", "smollm2-gguf": "smollm2-135m",
           "HuggingFaceTB/SmolLM2-135M-Instruct": "smollm2-135m"}  # fmt: skip
LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Shape:
    """What the estimate needs of an architecture."""

    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool
    bias: bool = False  # biases on the query, key and value projections (Qwen2)

    @property
    def kv(self) -> int:
        return self.kv_heads * self.hidden // self.heads

    def linears(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each projection of a decoder layer."""
        h, kv, i = self.hidden, self.kv, self.intermediate
        return {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h), "gate_proj": (h, i),
                "up_proj": (h, i), "down_proj": (i, h)}  # fmt: skip

    @property
    def layer_params(self) -> int:
        biases = self.hidden + 2 * self.kv if self.bias else 0
        return sum(a * b for a, b in self.linears().values()) + 2 * self.hidden + biases

    @property
    def root_params(self) -> int:
        """Embeddings, the final norm and the head (counted once when tied)."""
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden

    @property
    def params(self) -> int:
        return self.layers * self.layer_params + self.root_params


def shape_of(arch: dict) -> Shape:
    """The shape of a Hugging Face ``config.json`` (or an entry of :data:`ARCHITECTURES`)."""
    heads = arch["num_attention_heads"]
    return Shape(hidden=arch["hidden_size"], layers=arch["num_hidden_layers"], intermediate=arch["intermediate_size"],
                 heads=heads, kv_heads=arch.get("num_key_value_heads") or heads, vocab=arch["vocab_size"],
                 tied=bool(arch.get("tie_word_embeddings", True)),
                 bias=bool(arch.get("attention_bias", arch.get("model_type") == "qwen2")))  # fmt: skip


def model_shape(model, model_dir: Path | None = None) -> Shape | None:
    """The architecture of a profile's model (:class:`ebft.config.ModelConfig`): its prepared folder's config.json,
    the tiny model's settings, or the table of public configs; None where none of them knows it."""
    if model_dir is not None and (Path(model_dir) / "config.json").is_file():
        return shape_of(json.loads((Path(model_dir) / "config.json").read_text()))
    if model.source == "tiny-random":
        t = model.tiny
        return Shape(hidden=t.hidden_size, layers=t.num_layers, intermediate=t.intermediate_size, heads=t.num_heads,
                     kv_heads=t.num_kv_heads, vocab=49152, tied=True)  # fmt: skip
    local = Path(model.source).expanduser()
    if (local / "config.json").is_file():
        return shape_of(json.loads((local / "config.json").read_text()))
    name = SOURCES.get(model.source)
    return shape_of(ARCHITECTURES[name]) if name else None


def lora_params(shape: Shape, lora) -> int:
    """Adapter weights of LoRA rank r on the targeted projections of every layer."""
    targets = LINEAR_NAMES if lora.target_modules == "all-linear" else [t for t in lora.target_modules
                                                                         if t in LINEAR_NAMES]  # fmt: skip
    return shape.layers * sum(lora.r * (a + b) for name, (a, b) in shape.linears().items() if name in targets)


def activation_bytes(shape: Shape, tokens: int, checkpointing: bool) -> float:
    """What the decoder layers keep for the backward pass over ``tokens`` tokens."""
    per_layer = 18 * shape.hidden + 4 * shape.kv + 8 * shape.intermediate
    if checkpointing:
        return tokens * (4 * shape.hidden * shape.layers + per_layer)
    return tokens * per_layer * shape.layers


@dataclass
class Estimate:
    """One process's peak GPU memory, in bytes, by part."""

    parts: dict[str, float]

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    def fits(self) -> bool:
        return self.total / GiB <= FITS_GIB

    def line(self) -> str:
        parts = ", ".join(f"{name} {value / GiB:.1f}" for name, value in self.parts.items() if value)
        verdict = "fits an 80 GB GPU" if self.fits() else "does not fit an 80 GB GPU"
        return f"{self.total / GiB:.1f} GiB ({parts}); {verdict}"


def estimate(shape: Shape, *, method: str, finetune, section, chunk_length: int, launch, bf16: bool,
             has_frozen_copy: bool) -> Estimate:  # fmt: skip
    """The peak GPU memory of one process of an SFT or EBFT job (``section``: its sft or ebft settings)."""
    P = launch.processes
    full = finetune.mode == "full"
    policy = shape.params
    trainable = policy if full else lora_params(shape, finetune.lora)
    networks = 1 + (method == "ebft" and has_frozen_copy) + (method == "ebft" and full and section.kl_coef > 0)
    weights = 4 * (policy * networks + (0 if full else trainable))
    states = 12 * trainable  # fp32 gradients and AdamW's two moments
    casts = 2 * trainable if bf16 else 0
    parts: dict[str, float] = {}
    if launch.strategy == "fsdp":
        held = 0 if launch.cpu_offload else (weights + states) / P
        parts["weight and optimiser shards"] = held
        parts["gathered units"] = 4 * shape.root_params * networks + 2 * (4 + 4 * full) * shape.layer_params
        parts["bf16 casts"] = casts / P
    else:
        parts["weights"], parts["gradients and optimiser"], parts["bf16 casts"] = weights, states, casts
    L, act = chunk_length, 2 if bf16 else 4
    if method == "ebft":
        NB = (L - section.c - section.G) // section.s + 1
        rows = section.batch_size // P * section.n  # this process's rollouts
        micro = min(section.micro_batch_size or rows, rows)
        S = L + NB * section.G
        tokens = (micro // section.n * L + micro * NB * section.G) if section.shared_prefix else micro * S
        # the head reads the generated positions and the CE's (once per chunk on the shared path), all kept for the
        # backward, or one chunk of positions at a time (recomputed in the backward)
        ce = (micro // section.n if section.shared_prefix else micro) * (L - 1)
        positions = min(section.logits_chunk, micro * NB * section.G) if section.logits_chunk else \
            micro * NB * section.G + ce  # fmt: skip
        sampling = 2 * act * shape.layers * shape.kv * S * rows
    else:
        micro = section.batch_size // P  # chunks of one micro-step on this process
        tokens = micro * L
        positions = tokens
        sampling = 0
    training = activation_bytes(shape, tokens, finetune.gradient_checkpointing) * act / 2
    # the output head over one chunk of positions: bf16 logits, their fp32 copy, log-softmax and the two gradients
    training += 16 * positions * shape.vocab
    parts["activations" if training >= sampling else "sampling KV cache"] = max(training, sampling)
    return Estimate(parts)


def job_estimate(study, task: str, run: str, model_dir: Path | None = None) -> Estimate | None:
    """The estimate of one training run of a study (None: RLVR, or a model whose architecture is not known here)."""
    spec = study.task(task)
    job = study.job("train", task=task, method=run)
    if job.method == "rlvr":
        return None
    shape = model_shape(spec.model, model_dir)
    if shape is None:
        return None
    section = job.sft if job.method == "sft" else job.ebft_config()
    bf16 = study.profile.precision in ("bf16", "auto")
    frozen = job.method == "ebft" and (job.finetune.mode == "full" or not job.start.startswith("base"))
    return estimate(shape, method=job.method, finetune=job.finetune, section=section, chunk_length=job.chunk_length,
                    launch=spec.launch, bf16=bf16, has_frozen_copy=frozen)  # fmt: skip
