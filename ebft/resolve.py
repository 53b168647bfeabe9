"""The one reader of a profile: raw YAML → typed :class:`Study` → the typed :class:`Job` settings of one command.

Config flows one way. :func:`load_study` builds the profile's typed sections (:mod:`ebft.config`) and merges each
task's overrides (``tasks.<task>.sft/ebft/rlvr``) onto the global sections, once. :meth:`Study.job` then gives the
settings that define one job (prepare a model, prepare a task's data, train a method, evaluate a checkpoint,
report): exactly the settings that change its result, nothing else, so that

- the ``ebft`` CLI runs from a :class:`Job` whether a person passed ``--config config/cpu.yaml`` or the workflow
  passed the job's JSON (``--job``), and the provenance hash (:attr:`Job.hash`) is the same either way;
- the Snakemake rules pass that JSON as their ``params``, so a job reruns when, and only when, a setting that
  defines it changes;
- the settings of a task's jobs include the content of its local data folders (``kind: hub`` with a folder), so an
  edited file reruns its data preparation and what depends on it;
- a training job's settings include its starting point (the base model's source, or the hash of the SFT job it
  starts from), and an evaluation's include the hash of the training job that produced its checkpoint.

The workflow asks the study which tasks, methods, evaluations and files exist; no rule re-derives a default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from ebft import layout
from ebft.config import (
    DEFAULT_HELDOUT_FRACTION,
    METHODS,
    OVERRIDES,
    Attention,
    CEEvalConfig,
    CodeEvalConfig,
    EBFTConfig,
    EvalConfig,
    FinetuneConfig,
    FMEvalConfig,
    LaunchConfig,
    ModelConfig,
    ModelSource,
    Profile,
    RLVRConfig,
    SFTConfig,
    Source,
    TranslationEvalConfig,
    build,
    config_hash,
    plain,
)
from ebft.data import local_data_digest, split_identity
from ebft.errors import ConfigError, UserError
from ebft.paths import Layout

COMMANDS = ("prepare-model", "prepare-data", "train", "eval", "report")
EVAL_KINDS = ("ce", "fm", "code", "translation")  # validation CE, held-out FM loss, pass@k, BLEU/chrF++/COMET
# the EBFT settings that decide the held-out FM loss (the rollouts' layout and sampling, the features) and those
# RLVR shares with EBFT (budget, batch, optimiser, starting point)
FM_EBFT_FIELDS = ("c", "s", "G", "temperature", "top_p", "feature_layers", "pooling", "answer_only", "document_mask")
RLVR_EBFT_FIELDS = ("n", "batch_size", "max_steps", "epochs", "lr", "scheduler", "warmup_ratio", "betas",
                    "weight_decay", "grad_clip", "init")  # fmt: skip
MATCH_EBFT_FIELDS = ("n", "batch_size", "max_steps", "epochs", "kl_coef")  # with c, s, G: EBFT's step plan and budgets
HASH_EXCLUDES = ("profile", "results_dir", "offline")  # where results go and how models are fetched


@dataclass(frozen=True)
class Task:
    """One task of a study with every override merged."""

    name: str
    model_name: str
    model: ModelConfig
    source: Source
    chunk_length: int
    kind: str  # code, text or translation: given, or implied by a built-in name (not part of any job's settings)
    reward: str
    code_eval: str
    translation_eval: str
    sft: SFTConfig
    ebft: EBFTConfig
    rlvr: RLVRConfig
    eval: EvalConfig
    launch: LaunchConfig = dataclasses.field(default_factory=LaunchConfig)  # how its training jobs run (no setting)

    def section(self, method: str) -> SFTConfig | EBFTConfig | RLVRConfig:
        """The task's resolved settings of a trained method."""
        return {"sft": self.sft, "ebft": self.ebft, "rlvr": self.rlvr}[method]


@dataclass(frozen=True)
class SweepPoint:
    """One run of a sweep on one task: its id (its folder under runs/ and its name in the report), its grid values and
    its EBFT settings (the task's, with the sweep's fixed settings and the point's values laid over)."""

    id: str
    sweep: str
    settings: dict[str, Any]
    ebft: EBFTConfig
    warm_start: str | None = None  # a key of `models` to start from
    same_as: str | None = None  # 'ebft' when its settings are the task's EBFT run's: that run is this point


def point_id(sweep: str, settings: dict[str, Any]) -> str:
    """'<sweep>/<setting>-<value>_…', e.g. 'set1/whitening-none_gamma-0.03_beta-0.5'."""

    def text(value) -> str:
        if isinstance(value, bool):
            return str(value).lower()
        return "+".join(text(v) for v in value) if isinstance(value, list) else str(value)

    return f"{sweep}/" + "_".join(f"{key}-{text(value)}" for key, value in settings.items())


def deep_merge(base: dict, overrides: dict) -> dict:
    """``base`` with ``overrides`` laid over it, nested mappings key by key (a task's ``eval: {code: {…}}`` changes
    only the keys it names); any other value, lists included, is replaced whole."""
    merged = dict(base)
    for key, value in overrides.items():
        both = isinstance(value, dict) and isinstance(base.get(key), dict)
        merged[key] = deep_merge(base[key], value) if both else value
    return merged


@dataclass
class Job:
    """The settings that define one job of the study, typed; built from a profile or from the workflow's JSON.

    Fields a command does not use are None. ``ebft`` holds the task's resolved EBFT settings, or only the part a job
    uses (:data:`FM_EBFT_FIELDS`, :data:`RLVR_EBFT_FIELDS`); :meth:`ebft_config` types it.
    """

    command: Literal["prepare-model", "prepare-data", "train", "eval", "report"]
    profile: str
    results_dir: str = "results"
    offline: bool = True
    seed: int = 43
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    attention: Attention | None = None  # None: jobs that load no model
    task: str | None = None
    method: Literal["base", "sft", "ebft", "rlvr"] | None = None  # trained method; 'base' only in an evaluation
    kind: Literal["ce", "fm", "code", "translation"] | None = None
    model_name: str | None = None
    model: ModelSource | None = None
    prompt_format: Literal["raw", "chat"] | None = None
    source: Source | None = None
    local_data: dict[str, str] | None = None  # a kind: hub source's local folders by content: {side: SHA-256}
    chunk_length: int | None = None
    reward: Literal["unit_tests", "chrf", "none"] | None = None
    code_eval: Literal["none", "heldout", "human_eval"] | None = None
    finetune: FinetuneConfig | None = None
    sft: SFTConfig | None = None
    ebft: dict[str, Any] | None = None
    rlvr: RLVRConfig | None = None
    ce: CEEvalConfig | None = None
    fm: FMEvalConfig | None = None
    code: CodeEvalConfig | None = None
    translation: TranslationEvalConfig | None = None
    start: str | None = None  # training from: 'base', or 'sft:<hash of the SFT job>'
    trained: str | None = None  # evaluation of a checkpoint: the hash of the job that trained it
    same_as: str | None = None  # an evaluation already computed: '<task>/<run>:<hash>' of the record this one copies
    run: str | None = None  # a sweep point's run id ('<sweep>/<setting>-<value>_…'); None: the method's own run
    sweep: dict[str, Any] | None = None  # a sweep point's evaluation: the sweep's name and the point's settings
    methods: list[str] | None = None  # report: the trained methods
    no_verifier: list[str] | None = None  # report: tasks without an RLVR reward (their RLVR cells read n/a)

    @property
    def hash(self) -> str:
        """Provenance hash: every setting of the job except where its files go."""
        data = {k: v for k, v in plain(self).items() if k not in HASH_EXCLUDES and v is not None}
        return config_hash(data)

    @property
    def layout(self) -> Layout:
        return Layout(self.results_dir, self.profile)

    @property
    def run_name(self) -> str | None:
        """Where a training job's run lives and what its evaluations are called: the sweep point, else the method."""
        return self.run or self.method

    def ebft_config(self) -> EBFTConfig:
        if self.ebft is None:
            raise ValueError(f"the {self.command} job of {self.task}/{self.method} carries no EBFT settings")
        return build(EBFTConfig, self.ebft, "ebft")

    def to_json(self) -> str:
        """The job as the workflow passes it (``--job``): unused (None) fields left out."""
        import json

        return json.dumps({k: v for k, v in plain(self).items() if v is not None}, sort_keys=True)


def job_from_json(text: str) -> Job:
    import json

    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--job is not valid JSON ({e.msg} at column {e.colno}); pass the JSON the workflow "
                          f"writes (Study.job(...).to_json()).") from None  # fmt: skip
    if not isinstance(data, dict):
        raise ConfigError("--job must be a JSON object of a job's settings, as the workflow writes it.")
    return build(Job, data, "job")


@dataclass(frozen=True)
class Study:
    """A typed profile with its tasks resolved: what the workflow and the CLI ask every question of."""

    profile: Profile
    tasks: dict[str, Task] = field(default_factory=dict)
    sweeps: dict[str, list[SweepPoint]] = field(default_factory=dict)  # per task, in grid order

    @property
    def layout(self) -> Layout:
        return Layout(self.profile.results_dir, self.profile.profile)

    def task(self, name: str) -> Task:
        if name not in self.tasks:
            raise UserError(f"the profile {self.profile.profile!r} has no task {name!r}; it has "
                            f"{', '.join(self.tasks)}.")  # fmt: skip
        return self.tasks[name]

    def model(self, name: str) -> ModelConfig:
        if name not in self.profile.models:
            raise UserError(f"the profile {self.profile.profile!r} has no model {name!r}; it has "
                            f"{', '.join(self.profile.models)}.")  # fmt: skip
        return self.profile.models[name]

    @property
    def models(self) -> list[str]:
        """The models the tasks use, and the sweeps' warm starts (each prepared once)."""
        starts = {p.warm_start for points in self.sweeps.values() for p in points if p.warm_start}
        return sorted({t.model_name for t in self.tasks.values()} | starts)

    def points(self, task: str) -> list[SweepPoint]:
        """The sweep runs on ``task``, every sweep's points in grid order."""
        return self.sweeps.get(task, [])

    def point(self, task: str, run: str) -> SweepPoint | None:
        return next((p for p in self.points(task) if p.id == run), None)

    def runs(self, task: str) -> list[str]:
        """Every trained run on ``task``: the methods', then the sweep points' that are not a method's run."""
        return [*self.trained(task), *(p.id for p in self.points(task) if not p.same_as)]

    def checkpoint_of(self, task: str, run: str) -> str:
        """The run folder whose checkpoint ``run`` evaluates: its own, or the method's run a sweep point is."""
        point = self.point(task, run)
        return point.same_as if point is not None and point.same_as else run

    def trained(self, task: str) -> list[str]:
        """The methods trained on ``task``: RLVR only where the task has a verifiable reward."""
        has_reward = self.task(task).reward != "none"
        return [m for m in self.profile.methods if m != "rlvr" or has_reward]

    def evaluated(self, task: str) -> list[str]:
        """What is evaluated on ``task``: the base model, every method's run and every sweep point (one that is a
        method's run copies that run's records)."""
        return ["base", *self.trained(task), *(p.id for p in self.points(task))]

    @property
    def code_ks(self) -> list[int]:
        """Every k of pass@k some task reports."""
        return sorted({k for t in self.tasks.values() if t.code_eval != "none" for k in t.eval.code.ks})

    def eval_kinds(self, task: str) -> list[str]:
        spec = self.task(task)
        return (["ce", "fm"] + (["code"] if spec.code_eval != "none" else [])
                + (["translation"] if spec.translation_eval != "none" else []))  # fmt: skip

    @property
    def no_verifier(self) -> list[str]:
        """Tasks whose RLVR cells read 'n/a (no verifier)' (only when RLVR is one of the methods)."""
        if "rlvr" not in self.profile.methods:
            return []
        return [t for t, spec in self.tasks.items() if spec.reward == "none"]

    def start(self, task: str, point: SweepPoint | None = None) -> str:
        """EBFT's and RLVR's starting point: 'base', 'sft:<hash>' of the task's SFT job, or for a sweep point with a
        warm start 'model:<name>'."""
        if point is not None and point.warm_start:
            return f"model:{point.warm_start}"
        if (point.ebft if point is not None else self.task(task).ebft).init == "sft":
            return f"sft:{self.job('train', task=task, method='sft').hash}"
        return "base"

    # ----------------------------------------------------------------------------------------------

    def job(self, command: str, *, task: str | None = None, method: str | None = None, kind: str | None = None,
            model: str | None = None) -> Job:  # fmt: skip
        """The settings that define one job; refuses a combination the study does not have."""
        p = self.profile
        common = {"command": command, "profile": p.profile, "results_dir": p.results_dir, "offline": p.offline}
        if command == "prepare-model":
            cfg = self.model(model)
            return Job(**common, model_name=model, model=cfg.origin)
        if command == "report":
            return Job(**common, methods=list(p.methods), no_verifier=self.no_verifier)
        spec = self.task(task)
        base = {**common, "seed": p.seed, "task": task, "model_name": spec.model_name, "source": spec.source,
                "local_data": local_data_digest(spec.source)}  # fmt: skip
        if command == "prepare-data":
            return Job(**{**base, "model_name": None}, chunk_length=None)
        base.update(
            precision=p.precision, attention=p.attention, model=spec.model.origin, chunk_length=spec.chunk_length
        )
        if command == "train":
            return self._train_job(base, spec, method)
        if command == "eval":
            return self._eval_job(base, spec, method, kind)
        raise ValueError(f"unknown command {command!r}; choose one of {', '.join(COMMANDS)}")

    def _train_job(self, base: dict, spec: Task, method: str | None) -> Job:
        point = self.point(spec.name, method)
        if point is not None and point.same_as:
            return self._train_job(base, spec, point.same_as)  # the method's run is this point
        if point is not None:
            evaluate = {"ce": spec.eval.ce, "fm": spec.eval.fm} if point.ebft.eval_every is not None else {}
            return Job(**base, method="ebft", finetune=self.profile.finetune, ebft=plain(point.ebft),
                       start=self.start(spec.name, point), run=point.id, **evaluate)  # fmt: skip
        if method not in METHODS:
            raise UserError(f"training method {method!r} is not available; choose one of {', '.join(METHODS)}.")
        if method == "rlvr" and spec.reward == "none":
            raise UserError(f"{spec.name} has no verifiable reward (tasks.{spec.name}.reward is 'none'), so RLVR "
                            f"cannot train on it; set a reward or drop rlvr for this task.")  # fmt: skip
        train = {**base, "method": method, "finetune": self.profile.finetune}
        # evaluation during training (the method's eval_every): the evaluations' settings, the task's strided layout
        # for the FM loss and, where SFT and EBFT both evaluate, the other method's step plan, so that each evaluates
        # at the steps matched to the other's budget (ebft.during.matched_steps)
        section = spec.section(method)
        evaluate = {"ce": spec.eval.ce, "fm": spec.eval.fm} if section.eval_every is not None else {}
        matched = bool(evaluate) and self.matched(spec.name)
        if method != "rlvr" and section.downstream_every is not None:
            evaluate.update(self._downstream(spec))
        if method == "sft":
            fields = (FM_EBFT_FIELDS + MATCH_EBFT_FIELDS) if matched else FM_EBFT_FIELDS
            layout = {k: getattr(spec.ebft, k) for k in fields} if evaluate else None
            return Job(**train, sft=spec.sft, ebft=layout, **evaluate)
        start = self.start(spec.name)
        if method == "ebft":
            return Job(**train, ebft=plain(spec.ebft), start=start, sft=spec.sft if matched else None, **evaluate)
        shared = {k: getattr(spec.ebft, k) for k in RLVR_EBFT_FIELDS + (FM_EBFT_FIELDS if evaluate else ())}
        return Job(**train, ebft=shared, rlvr=spec.rlvr, reward=spec.reward, prompt_format=spec.model.prompt_format,
                   start=start, **evaluate)  # fmt: skip

    def evaluates_during_training(self) -> bool:
        """Whether any method's run on any task evaluates during training (its ``eval_every``)."""
        return any(spec.section(m).eval_every is not None for spec in map(self.task, self.tasks)
                   for m in self.trained(spec.name))  # fmt: skip

    def _downstream(self, spec: Task) -> dict:
        """A train job's settings for downstream evaluations during training (``downstream_every``): the task's."""
        out = {}
        if spec.code_eval != "none":
            out.update(code=spec.eval.code, code_eval=spec.code_eval, prompt_format=spec.model.prompt_format)
        if spec.translation_eval != "none":
            out.update(translation=spec.eval.translation, prompt_format=spec.model.prompt_format)
        return out

    def matched(self, task: str) -> bool:
        """Whether SFT and EBFT both train on ``task`` and both evaluate during training: then each also evaluates at
        the steps where it has spent the other's whole budget (ground-truth tokens, compute)."""
        spec = self.task(task)
        methods = self.trained(task)
        return ("sft" in methods and "ebft" in methods and spec.sft.eval_every is not None
                and spec.ebft.eval_every is not None)  # fmt: skip

    def _eval_job(self, base: dict, spec: Task, method: str | None, kind: str | None) -> Job:
        job = self._eval_settings(base, spec, method, kind)
        point = self.point(spec.name, method)
        if point is not None and point.same_as:  # the method's run is this point: its records, relabelled
            source = self.job("eval", task=spec.name, method=point.same_as, kind=kind)
            job.same_as = f"{spec.name}/{point.same_as}:{source.hash}"
        return job

    def _eval_settings(self, base: dict, spec: Task, method: str | None, kind: str | None) -> Job:
        if kind not in EVAL_KINDS:
            raise UserError(f"evaluation {kind!r} is not available; choose 'ce' (validation cross-entropy), "
                            f"'fm' (held-out feature-matching loss) or 'code' (pass@k).")  # fmt: skip
        point = self.point(spec.name, method)
        if method != "base" and method not in METHODS and point is None:
            raise UserError(f"method {method!r} is not available; choose 'base' or one of {', '.join(METHODS)}, or a "
                            f"sweep run of {spec.name} ({len(self.points(spec.name))} in this profile).")  # fmt: skip
        trained = None if method == "base" else self.job("train", task=spec.name, method=method).hash
        job = {**base, "method": method, "kind": kind, "trained": trained}
        if point is not None:
            job["run"], job["sweep"] = point.id, {"name": point.sweep, **point.settings}
            job["method"] = "ebft"
        ev = spec.eval
        ebft_cfg = point.ebft if point is not None else spec.ebft
        if kind == "ce":
            return Job(**job, ce=ev.ce)
        if kind == "fm":
            fields = FM_EBFT_FIELDS + (("whitening",) if ev.fm.whitened else ())  # whitening only decides the variant
            return Job(**job, fm=ev.fm, ebft={k: getattr(ebft_cfg, k) for k in fields})
        if kind == "translation":
            if spec.translation_eval == "none":
                raise UserError(f"{spec.name} has no translation evaluation (tasks.{spec.name}.translation_eval is "
                                f"'none'); set it to heldout.")  # fmt: skip
            return Job(**job, translation=ev.translation, prompt_format=spec.model.prompt_format)
        if spec.code_eval == "none":
            raise UserError(f"{spec.name} has no code evaluation (tasks.{spec.name}.code_eval is 'none'); set it to "
                            f"heldout or human_eval.")  # fmt: skip
        code = Job(**job, code=ev.code, code_eval=spec.code_eval, prompt_format=spec.model.prompt_format)
        owner = self.base_code_owner(spec.name) if method == "base" else spec.name
        if owner != spec.name:
            code.same_as = f"{owner}/base:{self.job('eval', task=owner, method='base', kind='code').hash}"
        return code

    def code_problem_set(self, task: str) -> dict:
        """What decides a task's pass@k problems, known before any data exist: tasks with equal sets score the same
        problems in the same order (HumanEval's held-out split is the same for every task under one seed)."""
        spec = self.task(task)
        cfg = spec.eval.code
        if spec.code_eval == "none":
            return {}
        if spec.code_eval == "human_eval":
            problems = {"human_eval": cfg.human_eval_heldout}  # None: all 164
        elif spec.source.kind == "human_eval":
            problems = {"human_eval": spec.source.heldout}
        else:
            problems = {"heldout": plain(spec.source)}
        return {**problems, "seed": self.profile.seed, "max_problems": cfg.max_problems}

    def base_code_owner(self, task: str) -> str:
        """The task whose base-model pass@k this task's is: the first task (in profile order) with the same problems,
        model, prompt format and code-evaluation settings (a task may override them: ``tasks.<t>.eval.code``). The
        base model is evaluated once per problem set and settings; the others copy."""

        def key(name: str) -> tuple:
            spec = self.task(name)
            return (config_hash(self.code_problem_set(name)), plain(spec.model.origin), spec.model.prompt_format,
                    config_hash(plain(spec.eval.code)))  # fmt: skip

        if self.task(task).code_eval == "none":
            return task
        return next(t for t in self.tasks if self.tasks[t].code_eval != "none" and key(t) == key(task))


def _sweep_points(profile: Profile, tasks: dict[str, Task]) -> dict[str, list[SweepPoint]]:
    """Every sweep's points per task, each point's EBFT settings typed and checked like a task's."""
    import itertools
    import re

    points: dict[str, list[SweepPoint]] = {}
    for name, sweep in profile.sweeps.items():
        where = f"sweeps.{name}"
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ConfigError(f"{where}: a sweep's name must be letters, digits, '_', '.' or '-'; rename it.")
        covered = sweep.tasks if sweep.tasks is not None else list(tasks)
        for task in covered:
            if task not in tasks:
                raise ConfigError(f"{where}.tasks lists {task!r}, which is not a task of this profile (tasks: "
                                  f"{', '.join(tasks)}); fix the name.")  # fmt: skip
        for task, model in (sweep.warm_start or {}).items():
            if model not in profile.models:
                raise ConfigError(f"{where}.warm_start.{task} is {model!r}, which is not defined under 'models' "
                                  f"(defined: {', '.join(profile.models)}); add it or fix the name.")  # fmt: skip
        keys = list(sweep.grid)
        for values in itertools.product(*(sweep.grid[k] for k in keys)):
            settings = dict(zip(keys, values, strict=True))
            run = point_id(name, settings)
            if not re.fullmatch(r"[A-Za-z0-9_.+=/-]+", run):
                raise ConfigError(f"{where}: the run {run!r} would not make a folder name; sweep plain numbers, "
                                  f"words and lists of them.")  # fmt: skip
            for task in covered:
                spec = tasks[task]
                merged = deep_merge(deep_merge(plain(spec.ebft), sweep.ebft or {}), settings)
                ebft = build(EBFTConfig, merged, where)
                try:
                    layout.num_blocks(spec.chunk_length, ebft.c, ebft.s, ebft.G)
                except ValueError as e:
                    raise ConfigError(f"{where}: the run {run} does not fit {task}'s chunks ({e}); change its "
                                      f"grid.") from None  # fmt: skip
                if ebft.init == "sft" and not (sweep.warm_start or {}).get(task) and "sft" not in profile.methods:
                    raise ConfigError(f"{where} starts from SFT (init: sft) but methods does not list sft; add it, or "
                                      f"give warm_start.{task}.")  # fmt: skip
                warm = (sweep.warm_start or {}).get(task)
                same = "ebft" if "ebft" in profile.methods and not warm and plain(ebft) == plain(spec.ebft) else None
                points.setdefault(task, []).append(SweepPoint(run, name, settings, ebft, warm, same))
    for task, runs in points.items():
        ids = [p.id for p in runs]
        if len(set(ids)) != len(ids):
            raise ConfigError(f"two sweeps give {task} the same run; give the sweeps different names or grids.")
    return points


def _data_has(source: Source, side: str, what: str) -> bool:
    """Whether a source's ``side`` ('train' or 'heldout') carries unit tests (``what`` 'tests') or translation pairs
    ('pairs'). A hub source without a held-out split holds out its training rows, with their columns."""
    if source.kind == "hub":
        split = source.train if side == "train" or source.heldout is None else source.heldout
        return bool(split.tests_field if what == "tests" else split.direction_field)
    return source.kind == {"tests": "human_eval", "pairs": "django"}[what]


def task_evaluations(name: str, kind: str, tc, source: Source) -> dict[str, str]:
    """A task's reward, code evaluation and translation evaluation: as written, or its kind's default (code: pass@k on
    the held-out rows and the unit_tests reward where the data carry tests; translation: BLEU/chrF++ and chrF; text:
    none). One sentence for a setting its data cannot serve."""
    where = f"tasks.{name}"
    tests = {side: _data_has(source, side, "tests") for side in ("train", "heldout")}
    pairs = {side: _data_has(source, side, "pairs") for side in ("train", "heldout")}
    default = {
        "code": {"reward": "unit_tests" if tests["train"] else "none",
                 "code_eval": "heldout" if tests["heldout"] else "none", "translation_eval": "none"},
        "text": {"reward": "none", "code_eval": "none", "translation_eval": "none"},
        "translation": {"reward": "chrf", "code_eval": "none", "translation_eval": "heldout"},
    }[kind]  # fmt: skip
    chosen = {key: getattr(tc, key) if getattr(tc, key) is not None else value for key, value in default.items()}
    said = {key: f"is {value!r}" if getattr(tc, key) is not None else f"is {value!r} (the default of kind {kind})"
            for key, value in chosen.items()}  # fmt: skip
    fix = "or set kind: text" if kind != "text" else "or leave it out"
    if chosen["code_eval"] == "heldout" and not tests["heldout"]:
        raise ConfigError(f"{where}.code_eval {said['code_eval']} but its held-out rows carry no unit tests (no "
                          f"tests_field in its source); map the tests column, set code_eval to 'none' or "
                          f"'human_eval', {fix}.")  # fmt: skip
    if chosen["reward"] == "unit_tests" and not tests["train"]:
        raise ConfigError(f"{where}.reward {said['reward']} but its training rows carry no unit tests (no tests_field "
                          f"in source.train); map the tests column, set reward to 'none', {fix}.")  # fmt: skip
    if chosen["translation_eval"] != "none" and not pairs["heldout"]:
        raise ConfigError(f"{where}.translation_eval {said['translation_eval']} but its held-out data are not "
                          f"translation pairs (source kind {source.kind!r} without a direction_field); map the "
                          f"direction column, set translation_eval to 'none', {fix}.")  # fmt: skip
    if chosen["reward"] == "chrf" and not pairs["train"]:
        raise ConfigError(f"{where}.reward {said['reward']} but its training data are not translation pairs (source "
                          f"kind {source.kind!r} without a direction_field); map the direction column, set reward to "
                          f"'none', {fix}.")  # fmt: skip
    return chosen


def load_study(raw: dict) -> Study:
    """Type a raw profile and resolve its tasks; every mistake is one ConfigError sentence naming the key."""
    if not isinstance(raw, dict):
        raise ConfigError("a profile must be a mapping of settings; start from config/cpu.yaml.")
    profile = build(Profile, raw, "")
    tasks = {}
    for name, tc in profile.tasks.items():
        if tc.model not in profile.models:
            raise ConfigError(f"tasks.{name}.model is {tc.model!r}, which is not defined under 'models' "
                              f"(defined: {', '.join(profile.models)}); add it or fix the name.")  # fmt: skip
        merged = {}
        for key, cls in OVERRIDES.items():
            overrides = getattr(tc, key) or {}
            where = f"tasks.{name}.{key}" if overrides else key
            merged[key] = build(cls, deep_merge(plain(getattr(profile, key)), overrides), where)
        launch = profile.launch
        if tc.launch:
            if "memory_mb" in tc.launch:
                raise ConfigError(f"tasks.{name}.launch sets memory_mb, which is set once for the profile; write it "
                                  f"as launch.memory_mb: {{'train_ebft/{name}': …}}.")  # fmt: skip
            launch = build(LaunchConfig, deep_merge(plain(profile.launch), tc.launch), f"tasks.{name}.launch")
        ebft = merged["ebft"]
        try:
            layout.num_blocks(tc.chunk_length, ebft.c, ebft.s, ebft.G)
        except ValueError as e:
            raise ConfigError(f"tasks.{name}: the strided layout does not fit its chunks ({e}); change "
                              f"chunk_length or ebft.c/s/G.") from None  # fmt: skip
        source = tc.source
        if source.kind == "hub" and source.heldout is None:  # the default fraction, written out in the settings
            source = dataclasses.replace(source, heldout_fraction=source.heldout_fraction or DEFAULT_HELDOUT_FRACTION)
        if (source.kind == "hub" and source.heldout is not None
                and split_identity(source.train) == split_identity(source.heldout)):  # fmt: skip
            held = source.heldout
            raise ConfigError(f"tasks.{name}.source.heldout reads the training side's data ({held.path!r}, split "
                              f"{held.split!r}); point it at another split or folder, or leave heldout out to hold "
                              f"out a fraction of the training rows.")  # fmt: skip
        kind = profile.task_kind(name)
        evaluations = task_evaluations(name, kind, tc, source)
        tasks[name] = Task(name=name, model_name=tc.model, model=profile.models[tc.model], source=source,
                           chunk_length=tc.chunk_length, kind=kind, launch=launch, **evaluations,
                           **merged)  # fmt: skip
    study = Study(profile, tasks, _sweep_points(profile, tasks))
    if "rlvr" in profile.methods and not any(t.reward != "none" for t in tasks.values()):
        raise ConfigError("methods lists rlvr but no task sets a 'reward'; set tasks.<task>.reward or drop rlvr.")
    for name, spec in tasks.items():
        if spec.ebft.init == "sft" and {"ebft", "rlvr"} & set(profile.methods) and "sft" not in profile.methods:
            where = f"tasks.{name}.ebft.init" if (profile.tasks[name].ebft or {}).get("init") else "ebft.init"
            raise ConfigError(f"{where} is 'sft' but methods does not list sft; add it or set it to 'base'.")
    _check_launch(study)
    return study


def _check_launch(study: Study) -> None:
    """launch.processes (the task's) must split every global batch of the SFT and EBFT jobs it launches evenly."""
    for name, spec in study.tasks.items():
        P = spec.launch.processes
        if P == 1:
            continue
        where = f"tasks.{name}.launch.processes" if study.profile.tasks[name].launch else "launch.processes"
        sizes = {"sft": ("sft.batch_size", spec.sft.batch_size), "ebft": ("ebft.batch_size", spec.ebft.batch_size)}
        batches = [sizes[m] for m in ("sft", "ebft") if m in study.trained(name)]
        batches += [(f"ebft.batch_size of sweep run {p.id}", p.ebft.batch_size) for p in study.points(name)]
        for key, size in batches:
            if size % P:
                raise ConfigError(f"tasks.{name}: {key} is {size}, which {where} ({P}) cannot split evenly; make "
                                  f"it a multiple of {P} or change {where}.")  # fmt: skip


def read_study(spec: str) -> Study:
    """A study from a profile file (or a profile's JSON)."""
    from ebft.config import read_profile_file

    return load_study(read_profile_file(spec))
