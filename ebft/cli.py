"""The ``ebft`` command: the one composition root the workflow's rules call.

Every subcommand runs one job of the study from its typed settings (:class:`ebft.resolve.Job`): resolved from a
profile (``--config config/cpu.yaml``, the default) or passed by the workflow as JSON (``--job``). Both give the same
job and the same provenance hash. Output paths default to the layout of ``ebft.paths``. Errors a user can cause print
one sentence and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

from ebft.config import METHODS, STRATEGIES, LaunchConfig, plain
from ebft.errors import UserError
from ebft.paths import Layout, atomic_write
from ebft.resolve import EVAL_KINDS, Job, job_from_json, read_study

REPO = Path(__file__).resolve().parent.parent
TASK_HELP = "a task of the profile (built-in: qa_code, unstructured_code, translation; or one of its own)"


def git_sha() -> str:
    """The commit the code ran at, with '-dirty' when the code (not the results) has uncommitted changes."""

    def git(*args):
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()

    try:
        sha = git("rev-parse", "--short=10", "HEAD")
        dirty = git("status", "--porcelain", "--", "ebft", "baselines", "evals", "workflow", "Snakefile", "config")
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def peak_rss_mb() -> int:
    """This process's peak resident memory so far, in MB (10⁶ bytes): what launch.memory_mb sizes."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 // 10**6  # ru_maxrss is in KiB on Linux


def _threads(n: int | None) -> None:
    if n is not None:
        import torch

        torch.set_num_threads(n)


def stop_with_parent(poll_s: float = 1.0) -> None:
    """Stop this process (SIGTERM) when the process that started it goes away.

    The workflow's rules ``exec`` the CLI, so its parent is Snakemake itself: a Snakemake that is killed (not just
    interrupted, which stops its jobs) then leaves no trainer running on. An EBFT run stopped this way resumes from its
    last checkpoint when the job runs again.
    """
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(poll_s)
        print(f"ebft: the process that started this job ({parent}) has gone; stopping.", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="ebft-stop-with-parent", daemon=True).start()


def positive_int(text: str) -> int:
    """An argparse type: a whole number ≥ 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def resolve_job(args) -> Job:
    """The job the arguments name: from ``--job`` (checked against the other arguments) or from the profile."""
    wanted = {k: getattr(args, k, None) for k in ("task", "method", "kind", "model")}
    run = getattr(args, "run", None)
    if args.job:
        job = job_from_json(args.job)
        if job.command != args.command:
            raise UserError(f"--job holds a {job.command!r} job, not {args.command!r}; pass the job of this command.")
        for key, value in wanted.items():
            have = job.model_name if key == "model" else getattr(job, key)
            if value is not None and have != value:
                raise UserError(f"--{key} is {value!r} but --job is for {have!r}; pass matching arguments.")
        if run is not None and job.run != run:
            raise UserError(f"--run is {run!r} but --job is for {job.run!r}; pass matching arguments.")
        return job
    if run is not None:
        if wanted["method"] not in (None, "ebft"):
            raise UserError(f"--run names an EBFT sweep run, but --method is {wanted['method']!r}; pass --method ebft.")
        wanted["method"] = run
    return read_study(args.config).job(args.command, **wanted)


def write_resolved(path: Path, job: Job, strategy: str | None = None, **paths) -> str:
    """Write the settings a run used (and the folders it read) next to its outputs, atomically; return their hash.

    Training calls it once the run's outputs are written, so a run that fails leaves the provenance of the outputs
    that are there (a finished earlier run's, or none) untouched.
    """
    import torch

    # the CPU threads, processes and strategy it ran with: outside the settings (and the hash), but they round
    # differently
    ran = {"threads": torch.get_num_threads(), "processes": int(os.environ.get("WORLD_SIZE", "1")),
           **({"strategy": strategy} if strategy else {}), "peak_rss_mb": peak_rss_mb()}  # fmt: skip
    record = {"config_hash": job.hash, **{k: str(v) for k, v in paths.items()}, **ran, **plain(job)}
    atomic_write(path, yaml.safe_dump(record, sort_keys=False, allow_unicode=True))
    return job.hash


def recorded_hash(run_dir: Path) -> str | None:
    """The settings hash a training run recorded next to its checkpoint, if it did."""
    file = Path(run_dir) / "resolved_config.yaml"
    if not file.is_file():
        return None
    return (yaml.safe_load(file.read_text()) or {}).get("config_hash")


# --------------------------------------------------------------------------------------------------
# Subcommands
# --------------------------------------------------------------------------------------------------


def cmd_prepare_model(args, job: Job):
    from ebft.models import prepare_model

    out = Path(args.out or job.layout.model_dir(job.model_name))
    info = prepare_model(job.model, out, offline=job.offline)
    print(f"prepared model {job.model_name!r} ({info['source']}) in {out}")


def cmd_prepare_data(args, job: Job):
    from ebft.data import write_task_data

    out = Path(args.out or job.layout.data_dir(job.task))
    manifest = write_task_data(job.task, job.source, job.seed, out)
    sizes = ", ".join(f"{k} {v['records']}" for k, v in manifest["splits"].items())
    print(f"wrote {job.task} data to {out} ({sizes} records)")


def launch_processes(args, job: Job, argv: list[str]) -> int:
    """Run this same `ebft train` command as ``args.processes`` data-parallel processes, through accelerate's
    launcher (torch's elastic agent, in this process): one per GPU, or CPU processes over gloo where there is none.

    The processes see WORLD_SIZE and run the command themselves; each takes ``--threads / processes`` CPU threads.
    This process stays their parent, so --stop-with-parent stops them with the workflow.
    """
    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    from ebft import optim

    if job.method == "rlvr":
        raise UserError("--processes applies to SFT and EBFT; RLVR (TRL's GRPOTrainer) runs as one process here, "
                        "so drop --processes or set launch.processes to 1 for it.")  # fmt: skip
    config = Path(args.accelerate_config)
    if not config.is_file():
        raise UserError(f"the accelerate configuration {config} does not exist; point --accelerate-config (the "
                        f"profile's launch.accelerate_config) at one, such as config/accelerate/ddp.yaml.")  # fmt: skip
    if job.method == "sft":
        optim.process_share(job.sft.batch_size, args.processes, "sft.batch_size")
    else:
        optim.process_share(job.ebft_config().batch_size, args.processes, "ebft.batch_size")
    launch = launch_command_parser().parse_args(["--config_file", str(config), "--num_processes",
                                                 str(args.processes), "--module", "ebft.cli", *argv])  # fmt: skip
    try:
        launch_command(launch)
    except ChildFailedError as e:
        failed = ", ".join(str(rank) for rank in sorted(e.failures))
        print(f"ebft: error: training process(es) {failed} of {args.processes} failed; their messages are above.",
              file=sys.stderr)  # fmt: skip
        return 1
    except SignalException as e:  # its processes were stopped with it (a stopped workflow): resumable
        print(f"ebft: stopped by signal {e.sigval.name}, with its {args.processes} training processes.",
              file=sys.stderr)  # fmt: skip
        return 128 + int(e.sigval)
    return 0


def worker_threads(threads: int | None) -> int | None:
    """A launched process's share of --threads: the job's cores are shared by the processes on its machine."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return None if threads is None else max(1, threads // local)


def cmd_train(args, job: Job):
    from ebft.data import read_records

    layout = job.layout
    model_dir = Path(args.model_dir or layout.model_dir(job.model_name))
    data_dir = Path(args.data_dir or layout.data_dir(job.task))
    out = Path(args.out or layout.run_dir(job.run_name, job.task))
    records = read_records(data_dir / "train.jsonl")
    common = {
        "finetune": job.finetune,
        "precision": job.precision,
        "seed": job.seed,
        "out": out,
        "attention": job.attention,
    }
    read = {"model_dir": model_dir, "data_dir": data_dir}
    from ebft.during import from_job
    from ebft.sharding import Strategy

    strategy = Strategy(args.strategy, not args.no_reshard_after_forward, args.cpu_offload)
    if job.method == "rlvr" and strategy.sharded:
        raise UserError("--strategy fsdp applies to SFT and EBFT; RLVR (TRL's GRPOTrainer) holds the whole model in "
                        "one process here, so set the task's launch.strategy to ddp or leave RLVR out "
                        "(reward: none).")  # fmt: skip

    common["evaluation"] = from_job(job, data_dir)  # held-out evaluations during training, where the profile asks
    if job.method == "sft":
        from baselines.sft import train_sft

        summary = train_sft(model_dir=model_dir, train_records=records, chunk_length=job.chunk_length, sft=job.sft,
                            strategy=strategy, **common)  # fmt: skip
    else:
        default_start = (layout.checkpoint("sft", job.task) if job.start.startswith("sft:")
                         else layout.model_dir(job.start.split(":", 1)[1]) if job.start.startswith("model:")
                         else model_dir)  # fmt: skip
        start_dir = Path(args.start_dir or default_start)
        if job.start.startswith("sft:") and not args.start_dir:
            _require_checkpoint(start_dir, "sft", job.task)
        read = {"model_dir": model_dir, "start_dir": start_dir, "data_dir": data_dir}
        if job.method == "rlvr":
            from baselines.rlvr import train_rlvr

            summary = train_rlvr(start_dir=start_dir, train_records=records, reward=job.reward,
                                 prompt_format=job.prompt_format, chunk_length=job.chunk_length,
                                 ebft=job.ebft_config(), cfg=job.rlvr, base_dir=model_dir, **common)  # fmt: skip
        else:
            from ebft.trainer import train_ebft

            summary = train_ebft(base_dir=model_dir, start_dir=start_dir, train_records=records,
                                 chunk_length=job.chunk_length, cfg=job.ebft_config(), settings_hash=job.hash,
                                 strategy=strategy, **common)  # fmt: skip
    if common["evaluation"] is None and int(os.environ.get("RANK", "0")) == 0:
        from ebft.during import EvalLog

        EvalLog(out).write()  # the workflow's outputs: no evaluation during training, so none listed
    # with the outputs it describes, once they exist
    write_resolved(out / "resolved_config.yaml", job, strategy=strategy.name if job.method != "rlvr" else None, **read)
    print(f"{job.method} on {job.task}: {summary['steps']} steps in {summary['wall_time_s']} s → {out} "
          f"(config {job.hash})")  # fmt: skip


def cmd_eval(args, job: Job):
    import torch

    from ebft.data import read_records

    layout = job.layout
    base_dir = Path(args.base_dir or layout.model_dir(job.model_name))
    trained_dir = None if job.method == "base" else layout.checkpoint(job.run_name, job.task)
    model_dir = Path(args.model_dir or trained_dir or base_dir)
    data_dir = Path(args.data_dir or layout.data_dir(job.task))
    out = Path(args.out or layout.eval_file(job.kind, job.task, job.run_name))
    if job.method != "base" and not args.model_dir:
        _require_checkpoint(model_dir, job.run_name, job.task)
    if job.trained is not None:
        found = recorded_hash(model_dir.parent)
        if found is not None and found != job.trained:
            raise UserError(f"the checkpoint {model_dir} was trained under settings {found}, but the profile now "
                            f"gives {job.trained}; retrain it (the workflow does) or pass --model-dir "
                            f"explicitly.")  # fmt: skip
    started = time.time()
    extra = {}
    if job.same_as:
        return _copy_record(job, args, data_dir, out)
    if job.kind in ("code", "translation"):
        from ebft.during import score_downstream

        samples = Path(args.samples or layout.samples_file(job.task, job.run_name, job.kind))
        rows, extra = score_downstream(job.kind, job, model_dir, data_dir, samples)
    elif job.kind == "ce":
        from evals.ce import evaluate_ce

        records = read_records(data_dir / "heldout.jsonl")
        rows = evaluate_ce(model_dir, records, job.chunk_length, job.ce, seed=job.seed, attention=job.attention)
    else:
        from evals.fm import evaluate_fm

        heldout = read_records(data_dir / "heldout.jsonl")
        rows = evaluate_fm(model_dir, base_dir, heldout, job.chunk_length, job.ebft_config(), job.fm, seed=job.seed,
                           attention=job.attention)  # fmt: skip
    record = {
        "profile": job.profile, "task": job.task, "method": job.run_name, "model_dir": str(model_dir),
        "config_hash": job.hash, "trained_config_hash": job.trained, "git_sha": git_sha(),
        "wall_time_s": round(time.time() - started, 2), "threads": torch.get_num_threads(),
        "peak_rss_mb": peak_rss_mb(), **extra,
        **({"sweep": job.sweep} if job.sweep else {}),
        "metrics": rows,
    }  # fmt: skip
    atomic_write(out, json.dumps(record, indent=2))
    print(f"{job.kind} {job.task}/{job.run_name}: " + ", ".join(f"{r['metric']}={r['value']:.4f}" for r in rows))


def cmd_report(args, job: Job | None):
    """Collect records into metrics.csv, tables and figures; or, with --from-csv, redraw tables and figures from a
    metrics.csv alone (no profile needed: they go beside the CSV, or under --out, unless --table/--figures say
    otherwise). Refuses to run with nothing to collect and to write into the results of another profile."""
    import pandas as pd

    from evals.claims import collect_units, read_units
    from evals.curves import collect_curves, held_out_units, read_curves
    from evals.report import check_destination, collect, read_metrics, write_outputs

    if args.from_csv:
        if args.inputs:
            raise UserError("pass evaluation records or --from-csv, not both; the CSV already holds the records.")
        csv = Path(args.from_csv)
        df = read_metrics(csv)
        units = read_units(csv.with_name("units.csv")) if csv.with_name("units.csv").is_file() else None
        curves = read_curves(csv.with_name("curves.csv")) if csv.with_name("curves.csv").is_file() else None
        root = Path(args.out) if args.out else csv.parent
        layout, csv_out, units_out, curves_out = Layout(str(root.parent), root.name), None, None, None
    else:
        if not args.inputs:
            raise UserError(
                "report got no evaluation records to collect, so it wrote nothing; pass the records "
                "(results/<profile>/eval/**/*.json) or --from-csv <metrics.csv> to redraw from a table."
            )
        df = collect([Path(p) for p in args.inputs], job.profile, job.no_verifier)
        units = collect_units([Path(p) for p in args.inputs], job.profile)
        matched = held_out_units(args.eval_metrics, job.profile)  # the matched steps' per-chunk values
        if not matched.empty:
            units = pd.concat([units, matched], ignore_index=True)
        curves = (collect_curves(args.train_metrics, args.eval_metrics) if args.train_metrics is not None
                  else None)  # fmt: skip
        layout = Layout(str(Path(args.out).parent), Path(args.out).name) if args.out else job.layout
        csv_out = Path(args.metrics_csv or layout.metrics_csv)
        units_out = csv_out.with_name("units.csv")
        curves_out = csv_out.with_name("curves.csv") if curves is not None else None
    table = Path(args.table or layout.main_table)
    latex, claims = table.with_suffix(".tex"), table.with_name("claims.md")
    figures_dir = Path(args.figures or layout.figures_dir)
    for target in (csv_out, units_out, curves_out, table, latex, claims, figures_dir):
        if target is not None:
            check_destination(df, target)
    figures = write_outputs(df, metrics_csv=csv_out, table=table, latex=latex, figures_dir=figures_dir,
                            units=units, units_csv=units_out, claims_table=claims, curves=curves,
                            curves_csv=curves_out, only=args.outputs)  # fmt: skip
    wanted = set(args.outputs or ("csv", "tables"))
    wrote = ([f"{csv_out} (with units.csv, curves.csv)"] if csv_out is not None and "csv" in wanted else []) + (
        [f"{table} and {latex.name}"] if "tables" in wanted else [])  # fmt: skip
    print(f"report: {len(df)} metric rows → {', '.join(wrote) or 'no table'}; {len(figures)} figures")


def check_profile(spec: str, runs: bool = False) -> str:
    """Read a profile and resolve every job of its study (what the workflow will run); a line saying what it holds.

    A problem raises the same one-sentence ConfigError/UserError that the workflow or the command would give.
    """
    study = read_study(spec)
    jobs = [study.job("prepare-model", model=m) for m in study.models]
    for task in study.tasks:
        jobs.append(study.job("prepare-data", task=task))
        jobs += [study.job("train", task=task, method=m) for m in study.runs(task)]
        jobs += [study.job("eval", task=task, method=m, kind=k) for k in study.eval_kinds(task)
                 for m in study.evaluated(task)]  # fmt: skip
    study.job("report")  # resolved for its checks, like every other job; the report runs as the jobs counted below
    from evals.metrics import report_figures

    figures = report_figures(study)
    total = len(jobs) + 2 + len(figures) + 1  # the report's collect, tables and figure jobs, and Snakemake's `all`
    tasks = f"{len(study.tasks)} task" + ("s" if len(study.tasks) != 1 else "")
    line = (f"{spec}: profile {study.profile.profile!r}, {tasks}, {total} jobs as `snakemake -n` counts them "
            f"({len(jobs)} to prepare, train and evaluate; collect, tables and {len(figures)} figures; all); no "
            f"problem found.")  # fmt: skip
    if runs:
        line += "".join(f"\n{task}: " + " ".join(study.runs(task)) for task in study.tasks)
    return line + memory_lines(study)


def memory_lines(study) -> str:
    """Each SFT and EBFT training job's estimated peak GPU memory per process under its launch (ebft.memory), one
    line per task and run, identical lines of a task's sweep runs folded."""
    from ebft.memory import job_estimate

    lines = ["\npeak GPU memory per training process (estimates, docs/cluster.md#gpu-memory-before-submitting):"]
    for task in study.tasks:
        launch = study.task(task).launch
        how = f"{launch.strategy} × {launch.processes}" + (", cpu offload" if launch.cpu_offload else "")
        model_dir = study.layout.model_dir(study.task(task).model_name)
        seen: dict[str, list[str]] = {}
        for run in study.runs(task):
            found = job_estimate(study, task, run, model_dir)
            if found is not None:
                text = found.line()
            else:
                text = f"not estimated ({'RLVR runs TRL' if run == 'rlvr' else 'the architecture is unknown here'})"
            seen.setdefault(text, []).append(run)
        for text, runs in seen.items():
            names = runs[0] if len(runs) == 1 else f"{runs[0]} and {len(runs) - 1} more"
            lines.append(f"  {task} {names} ({study.task(task).model_name}, {how}): {text}")
    return "\n".join(lines)


def export_lm_eval(args) -> str:
    """`ebft export-lm-eval`: lm-eval task files over one task's held-out records."""
    from ebft.data import read_records
    from evals.lm_eval_export import export_tasks

    study = read_study(args.config)
    study.task(args.task)  # refuses a task the profile does not have
    data_dir = Path(args.data_dir or study.layout.data_dir(args.task))
    files = export_tasks(study.profile.profile, args.task, read_records(data_dir / "heldout.jsonl"), Path(args.out))
    names = ",".join(f.stem for f in files)
    return (
        f"wrote {len(files)} lm-eval tasks to {args.out}; run: lm_eval --model hf --model_args pretrained=<model "
        f"folder> --include_path {args.out} --tasks {names}"
    )


def _copy_record(job: Job, args, data_dir: Path, out: Path) -> None:
    """An evaluation already computed elsewhere (``job.same_as``): the base model's pass@k on problems another task
    shares, or the records of the method's run a sweep point is. That record and its samples, relabelled, once its
    settings (and for code its problems) are checked to be this job's."""
    layout = job.layout
    where, source_hash = job.same_as.split(":", 1)
    task, run = where.split("/", 1)
    source = Path(args.same_as or layout.eval_file(job.kind, task, run))
    if not source.is_file():
        raise UserError(f"{job.task}/{job.run_name}'s {job.kind} evaluation is {task}/{run}'s, and {source} does not "
                        f"exist yet; evaluate that first ('ebft eval --kind {job.kind} --task {task} --method {run}', "
                        f"or the workflow's eval_{job.kind} rule).")  # fmt: skip
    record = json.loads(source.read_text())
    if record.get("config_hash") != source_hash:
        raise UserError(f"{source} was computed under settings {record.get('config_hash')}, but the profile now gives "
                        f"{source_hash}; rerun {task}/{run}'s {job.kind} evaluation first.")  # fmt: skip
    if job.kind == "code":
        from evals.code import load_problems

        ids = [p["id"] for p in load_problems(job.code_eval, data_dir / "heldout.jsonl", job.code, job.seed)]
        if any(row.get("unit_ids") != ids for row in record["metrics"]):
            raise UserError(f"{source} scored other problems than {job.task}'s code evaluation holds; delete it and "
                            f"rerun {task}/{run}'s code evaluation.")  # fmt: skip
    if job.kind in ("code", "translation"):
        samples = Path(args.samples or layout.samples_file(job.task, job.run_name, job.kind))
        atomic_write(samples, source.with_name(f"{Path(run).name}.samples.jsonl").read_text())  # beside it (Layout)
        record["samples_file"] = str(samples)
    record.update(task=job.task, method=job.run_name, config_hash=job.hash, same_as=job.same_as,
                  **({"sweep": job.sweep} if job.sweep else {}))  # fmt: skip
    atomic_write(out, json.dumps(record, indent=2))
    print(f"{job.kind} {job.task}/{job.run_name}: {task}/{run}'s record (the same evaluation), not recomputed")


def _require_checkpoint(model_dir: Path, method: str, task: str) -> None:
    """Name the training job that has not run, instead of the loader's 'not a prepared model folder'."""
    if not (Path(model_dir) / "config.json").is_file():
        raise UserError(f"there is no {method} checkpoint for {task} at {model_dir}; train it first ('ebft train "
                        f"--method {method} --task {task}', or the workflow's train_{method} rule).")  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ebft", description="Energy-Based Fine-Tuning reproduction harness.")
    p.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, func, help_text):
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.add_argument("--config", default="config/cpu.yaml", help="profile YAML (default config/cpu.yaml)")
        sp.add_argument("--job", help="the job's settings as JSON, as the workflow passes them (instead of --config)")
        sp.add_argument(
            "--stop-with-parent",
            action="store_true",
            help="stop when the process that started this one exits (the workflow's rules set it)",
        )
        sp.add_argument("--threads", type=positive_int, default=None,
                        help="torch CPU threads, at least 1 (default: torch's choice)")  # fmt: skip
        sp.set_defaults(func=func)
        return sp

    sp = command("prepare-model", cmd_prepare_model, "Write a profile's model as a plain Hugging Face folder.")
    sp.add_argument("--model", required=True, help="a key of the profile's 'models'")
    sp.add_argument("--out", help="output folder (default results/<profile>/models/<model>)")

    sp = command("prepare-data", cmd_prepare_data, "Build one task's train and held-out splits.")
    sp.add_argument("--task", required=True, help=TASK_HELP)
    sp.add_argument("--out", help="output folder (default results/<profile>/data/<task>)")

    sp = command("train", cmd_train, "Fine-tune a model on one task with one method.")
    sp.add_argument("--method", required=True, choices=METHODS, help="training method")
    sp.add_argument("--task", required=True, help=TASK_HELP)
    sp.add_argument("--run", help="a sweep run of EBFT, such as set1/whitening-none_gamma-0.03_beta-0.5 (the profile's "
                                  "`sweeps`; `ebft check --runs` lists them); with --method ebft")  # fmt: skip
    sp.add_argument("--model-dir", help="the task's base model (default: its prepared folder); EBFT's features")
    sp.add_argument("--start-dir", help="EBFT's and RLVR's starting policy (default: the base model, or the SFT "
                                        "checkpoint when the task's ebft.init is sft)")  # fmt: skip
    sp.add_argument("--data-dir", help="task data folder (default results/<profile>/data/<task>)")
    sp.add_argument("--out", help="run folder (default results/<profile>/runs/<method>/<task>)")
    sp.add_argument("--processes", type=positive_int, default=1,
                    help="SFT and EBFT: data-parallel processes started through `accelerate launch` (one per GPU, "
                         "or CPU processes over gloo); they share --threads (default 1)")  # fmt: skip
    sp.add_argument("--accelerate-config", default=LaunchConfig.accelerate_config,
                    help=f"accelerate's configuration file for --processes > 1 (default "
                         f"{LaunchConfig.accelerate_config})")  # fmt: skip
    sp.add_argument("--strategy", choices=STRATEGIES, default="ddp",
                    help="SFT and EBFT: ddp (each process holds the whole model) or fsdp (FSDP2 shards weights, "
                         "gradients and optimiser state over the processes); default ddp")  # fmt: skip
    sp.add_argument(
        "--cpu-offload", action="store_true", help="with --strategy fsdp: keep the shards in host memory between uses"
    )
    sp.add_argument(
        "--no-reshard-after-forward",
        action="store_true",
        help="with --strategy fsdp: keep each layer's gathered weights from its forward to its backward",
    )

    sp = command("eval", cmd_eval, "Evaluate one model on one task.")
    sp.add_argument("--kind", required=True, choices=EVAL_KINDS, help="validation cross-entropy, held-out "
                    "feature-matching loss, pass@k or BLEU/chrF++/COMET")  # fmt: skip
    sp.add_argument("--task", required=True, help=TASK_HELP)
    sp.add_argument("--method", required=True, choices=("base", *METHODS),
                    help="the base model or a training method's checkpoint")  # fmt: skip
    sp.add_argument("--run", help="a sweep run's checkpoint (with --method ebft), such as "
                                  "set1/whitening-none_gamma-0.03_beta-0.5")  # fmt: skip
    sp.add_argument("--model-dir", help="model to score (default: base model or the method's checkpoint)")
    sp.add_argument("--base-dir", help="the task's base model: the feature network for fm (default: prepared)")
    sp.add_argument("--data-dir", help="task data folder (default results/<profile>/data/<task>)")
    sp.add_argument("--out", help="record file (default results/<profile>/eval/<kind>/<task>/<method>.json)")
    sp.add_argument("--samples", help="code, translation: per-sample JSONL (default …/eval/<kind>/<task>/<method>"
                                      ".samples.jsonl)")  # fmt: skip
    sp.add_argument("--same-as", help="the record this evaluation copies, where the profile says it is already "
                                      "computed (default: its place under results/<profile>/eval)")  # fmt: skip

    sp = command("report", cmd_report, "Collect evaluation records into metrics.csv, a markdown table and figures.")
    sp.add_argument("inputs", nargs="*", help="evaluation record files (JSON)")
    sp.add_argument("--from-csv", help="redraw the tables and figures from an existing metrics.csv alone (beside it)")
    sp.add_argument("--out", help="folder for metrics.csv, tables/ and figures/ (default: the profile's results, or "
                                  "beside the --from-csv file)")  # fmt: skip
    sp.add_argument("--train-metrics", nargs="*", help="training runs' train_metrics.csv files, for curves.csv and "
                                                       "figures/training_curves.png")  # fmt: skip
    sp.add_argument("--eval-metrics", nargs="*", default=[], help="training runs' eval_metrics.csv files (held-out "
                    "evaluations during training, with eval_units.json beside each), for curves.csv, units.csv and "
                    "the matched-budget claims")  # fmt: skip
    sp.add_argument("--metrics-csv", help="tidy table to write (default results/<profile>/metrics.csv)")
    sp.add_argument("--table", help="markdown table (default results/<profile>/tables/main.md)")
    sp.add_argument("--figures", help="folder of the per-metric figures (default results/<profile>/figures)")
    sp.add_argument("--outputs", nargs="+", metavar="OUTPUT",
                    help="write only these: csv (metrics, units and curves CSVs), tables (main.md, main.tex, "
                         "claims.md), or figure names such as val_ce (default: all)")  # fmt: skip

    sp = sub.add_parser(
        "check",
        help="Check a profile: type every setting and resolve every job of its study.",
        description="Check a profile: type every setting and resolve every job of its study; the "
        "first problem is one sentence naming the key (or the file's line and column).",
    )
    sp.add_argument("--config", default="config/cpu.yaml", help="profile YAML (default config/cpu.yaml)")
    sp.add_argument("--runs", action="store_true", help="also list every trained run per task (methods and sweeps)")
    sp.set_defaults(func=None)

    sp = sub.add_parser("export-lm-eval", help="Write lm-eval task files over a task's held-out records (offline).",
                        description="Write lm-eval task YAMLs over a local JSON Lines copy of a task's held-out "
                                    "records, for `lm_eval --include_path OUT`.")  # fmt: skip
    sp.add_argument("--config", default="config/cpu.yaml", help="profile YAML (default config/cpu.yaml)")
    sp.add_argument("--task", required=True, help=TASK_HELP)
    sp.add_argument("--data-dir", help="task data folder (default results/<profile>/data/<task>)")
    sp.add_argument("--out", required=True, help="folder for the task files (an lm-eval --include_path)")
    sp.set_defaults(func=None)

    sp = sub.add_parser("schema", help="Print the profile's JSON schema (workflow/schemas/config.schema.yaml), "
                                       "generated from the typed settings.")  # fmt: skip
    sp.add_argument("--markdown", action="store_true", help="print the configuration reference instead "
                    "(docs/configuration.md), generated from the same settings")  # fmt: skip
    sp.set_defaults(func=None)
    return p


def version() -> str:
    import importlib.metadata

    try:
        return f"{importlib.metadata.version('ebft-repro')} (git {git_sha()})"
    except importlib.metadata.PackageNotFoundError:
        return f"unknown (git {git_sha()})"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if args.command == "schema":
        from ebft.reference import reference_markdown
        from ebft.schema import schema_text

        sys.stdout.write(reference_markdown() if args.markdown else schema_text())
        return 0
    if getattr(args, "stop_with_parent", False):
        stop_with_parent()
    try:
        if args.command in ("check", "export-lm-eval"):  # they read a profile, not one of its jobs
            print(check_profile(args.config, args.runs) if args.command == "check" else export_lm_eval(args))
            return 0
        redraw = args.command == "report" and args.from_csv and not args.job  # from a metrics.csv alone
        job = None if redraw else resolve_job(args)
        from ebft.models import set_offline

        set_offline(True if job is None else job.offline)  # before any Hugging Face library is imported
        if args.command == "train" and args.processes > 1:
            if "WORLD_SIZE" not in os.environ:
                return launch_processes(args, job, argv)
            if int(os.environ["WORLD_SIZE"]) != args.processes:
                raise UserError(f"--processes is {args.processes} but this command was launched as one of "
                                f"{os.environ['WORLD_SIZE']} processes; give one of the two.")  # fmt: skip
        _threads(worker_threads(args.threads))
        args.func(args, job)
    except UserError as e:
        print(f"ebft: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
