# The study as the resolver reads it (ebft.resolve): the only place the raw profile is read. Rules ask it which tasks,
# methods, evaluations and files exist, and pass each job's resolved settings to the `ebft` CLI as JSON (`--job`):
# a job reruns when, and only when, a setting that defines it changes (Snakemake's params rerun trigger).
import os
import re
import shlex
import sys
from pathlib import Path

from ebft.errors import ConfigError
from snakemake.exceptions import WorkflowError
from ebft.resolve import load_study
from evals.metrics import report_figures

try:
    STUDY = load_study(config)
except ConfigError as error:
    sys.exit(f"Config error: {error}")

# The `ebft` command of the environment running Snakemake, so `.venv/bin/snakemake` works without activating it.
# Rules `exec` it with --stop-with-parent: Snakemake is then its parent, and a killed Snakemake leaves no job running.
_ebft = Path(sys.executable).parent / "ebft"
EBFT = shlex.quote(str(_ebft)) if _ebft.exists() else "ebft"
L = STUDY.layout
TASKS = list(STUDY.tasks)
# How each task's SFT and EBFT training jobs run (the profile's `launch`, or the task's own): processes and
# strategy. Outside the jobs' settings, so a change reruns nothing: P processes, DDP or FSDP, compute the update of
# one. Passed as the `launch` resource (a string Snakemake neither counts nor compares) and read by the shell command.
_launch = STUDY.profile.launch


def launch_flags(task):
    """The `ebft train` flags of a task's SFT and EBFT jobs: processes (with accelerate's configuration) and strategy;
    empty for one DDP process."""
    launch = STUDY.tasks[task].launch
    flags = []
    if launch.processes > 1:
        flags += ["--processes", str(launch.processes), "--accelerate-config", shlex.quote(launch.accelerate_config)]
    if launch.strategy != "ddp":
        flags += ["--strategy", launch.strategy]
        flags += ["--cpu-offload"] if launch.cpu_offload else []
        flags += [] if launch.reshard_after_forward else ["--no-reshard-after-forward"]
    return " ".join(flags)


def train_launch(wildcards):
    return launch_flags(wildcards.task)


def train_gpus(wildcards):
    """A GPU per process of the task's launch, where a cluster executor reads `gpu` (profiles/slurm)."""
    return STUDY.tasks[wildcards.task].launch.processes


def memory(rule):
    """A model rule's `mem_mb` resource, per task, where the profile's launch.memory_mb sizes the rule (unpacked into
    `resources`; nothing where it does not)."""
    if not any(key.split("/", 1)[0] == rule for key in _launch.memory_mb):
        return {}
    return {"mem_mb": lambda wildcards: _launch.memory(rule, getattr(wildcards, "task", None))}


def available_mb():
    """The memory this machine has available now (Linux's MemAvailable), in MB; None where it cannot be read."""
    try:
        with open("/proc/meminfo") as meminfo:
            kib = next(int(line.split()[1]) for line in meminfo if line.startswith("MemAvailable:"))
        return kib * 1024 // 10**6
    except (OSError, StopIteration, ValueError, IndexError):
        return None


# A local run whose profile sizes its jobs' memory starts a job only while it and the running jobs fit in the memory
# available now (a job that needs more runs alone), unless --resources mem_mb=N gives the limit. Clusters: no limit.
if _launch.memory_mb and workflow.local_exec and "mem_mb" not in workflow.global_resources and available_mb():
    workflow.global_resources["mem_mb"] = available_mb()


SWEEP_RUNS = sorted({p.id for task in TASKS for p in STUDY.points(task)})  # evaluated as runs/<sweep>/<point>/<task>
TRAINED_SWEEP_RUNS = sorted({p.id for task in TASKS for p in STUDY.points(task) if not p.same_as})


wildcard_constraints:
    task="|".join(re.escape(t) for t in TASKS),  # the profile's tasks: built-in names or its own
    method="|".join(re.escape(m) for m in ["base", *STUDY.profile.methods, *SWEEP_RUNS]),
    run="|".join(re.escape(r) for r in TRAINED_SWEEP_RUNS) or "(?!)",
    model="|".join(STUDY.models),


def model_job(wildcards):
    return STUDY.job("prepare-model", model=wildcards.model).to_json()


def data_job(wildcards):
    return STUDY.job("prepare-data", task=wildcards.task).to_json()


def train_job(method):
    """The params function of one training rule: the resolved settings of `method` on the wildcard's task."""
    return lambda wildcards: STUDY.job("train", task=wildcards.task, method=method).to_json()


def eval_job(kind):
    """The params function of one evaluation rule."""
    return lambda wildcards: STUDY.job("eval", task=wildcards.task, method=wildcards.method, kind=kind).to_json()


def task_base_model(wildcards):
    return L.model_dir(STUDY.task(wildcards.task).model_name)


def start_model(wildcards):
    """EBFT's and RLVR's starting policy: the base model, the task's SFT checkpoint when its ebft.init is 'sft', or
    for a sweep run its own start (a warm-start model, SFT or the base model)."""
    start = STUDY.start(wildcards.task, STUDY.point(wildcards.task, getattr(wildcards, "run", None)))
    if start.startswith("sft:"):
        return L.checkpoint("sft", wildcards.task)
    if start.startswith("model:"):
        return L.model_dir(start.split(":", 1)[1])
    return task_base_model(wildcards)


def run_job(wildcards):
    """The params function of train_sweep: one sweep run's resolved settings."""
    return STUDY.job("train", task=wildcards.task, method=wildcards.run).to_json()


def cli_method(wildcards):
    """How an evaluation names what it scores: --method, and for a sweep run --method ebft --run <id>."""
    if wildcards.method in SWEEP_RUNS:
        return f"--method ebft --run {shlex.quote(wildcards.method)}"
    return f"--method {wildcards.method}"


def eval_model(wildcards):
    if wildcards.method == "base":
        return task_base_model(wildcards)
    return L.checkpoint(STUDY.checkpoint_of(wildcards.task, wildcards.method), wildcards.task)


def copied_from(kind):
    """An evaluation the study has already computed elsewhere (the base model's pass@k on problems another task
    shares; the records of the method's run a sweep point is): the record and samples it copies, and waits for."""

    def inputs(wildcards):
        job = STUDY.job("eval", task=wildcards.task, method=wildcards.method, kind=kind)
        if not job.same_as:
            return []
        task, run = job.same_as.split(":", 1)[0].split("/", 1)
        return [L.eval_file(kind, task, run)] + ([L.samples_file(task, run, kind)] if kind in ("code", "translation")
                                                 else [])  # fmt: skip

    return inputs


def same_as_flag(wildcards, input):
    return f"--same-as {shlex.quote(input.same_as[0])}" if input.same_as else ""


def eval_threads(kind):
    """A real evaluation's threads are a model job's (job_threads); a copy takes one."""
    return lambda wildcards: 1 if copied_from(kind)(wildcards) else job_threads(wildcards)


def job_threads(wildcards):
    """A model job's CPU threads: the profile's launch.threads where it sets them (then --cores N runs N / threads
    jobs at once, and the numbers do not depend on N), else every core Snakemake was given (all_cores)."""
    return _launch.threads or all_cores(wildcards)


def train_threads(wildcards):
    """An SFT or EBFT training job's threads: launch.threads for each of its task's launch.processes processes."""
    launch = STUDY.tasks[wildcards.task].launch
    return launch.threads * launch.processes if launch.threads else all_cores(wildcards)


def all_cores(wildcards):
    """Without launch.threads, model jobs take every core Snakemake was given (--cores) and run one after another.
    Under a cluster executor there is no --cores: a job the profile's set-threads does not size (the local rules)
    takes the local cores (--local-cores, by default every core of the machine Snakemake runs on)."""
    try:
        return workflow.cores
    except WorkflowError:  # a cluster executor: no total number of cores
        return workflow.resource_settings.local_cores or os.cpu_count() or 1


def eval_records():
    """Every evaluation record the report collects: CE and FM everywhere, pass@k on the code tasks."""
    return [L.eval_file(kind, task, m) for task in TASKS for kind in STUDY.eval_kinds(task) for m in STUDY.evaluated(task)]


def train_metrics_files():
    """Every training run's per-step metrics: the report draws the training curves from them."""
    return [L.run_dir(m, task) / "train_metrics.csv" for task in TASKS for m in STUDY.trained(task)]


def eval_during_files():
    """Every method's evaluations during training (empty where its eval_every is null): the report's held-out curves
    and matched-budget claims come from them."""
    return [L.run_dir(m, task) / "eval_metrics.csv" for task in TASKS for m in STUDY.trained(task)]


def figures():
    """The report's figures: one per drawn metric the study produces, and the rest (declared in evals.metrics)."""
    return [L.figure(name) for name in report_figures(STUDY)]


def study_products():
    """Every file the study produces. `all` asks for each of them, so deleting any one output rebuilds it and
    then only what depends on it (Snakemake otherwise skips a missing intermediate whose consumers are current)."""
    products = [L.model_dir(m) for m in STUDY.models]
    for task in TASKS:
        products += [L.data_dir(task) / name for name in ("train.jsonl", "heldout.jsonl", "manifest.json")]
        products += [L.checkpoint(m, task) for m in STUDY.runs(task)]
        for kind in [k for k in ("code", "translation") if k in STUDY.eval_kinds(task)]:
            products += [L.samples_file(task, m, kind) for m in STUDY.evaluated(task)]
    return products + eval_records()  # the report's files are asked for by `all` itself


onstart:
    # A real run (not a dry run) first checks that every hub model and dataset can be fetched from here: a gated model
    # without a token, or a hub out of reach, stops the run before any job starts, in one sentence.
    from ebft.errors import UserError
    from ebft.hub import preflight

    try:
        preflight(STUDY)
    except UserError as error:
        sys.exit(f"Hub error: {error}")
