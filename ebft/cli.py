"""The ``ebft`` command: the one composition root the workflow's rules call.

Each subcommand takes ``--config``: a profile file (``config/cpu.yaml``, checked against the schema) or the JSON the
workflow passes (the profile's sections that rule needs). Output paths default to the layout of ``ebft.paths``.
Errors a user can cause print one sentence and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from ebft.config import (
    METHODS,
    TASKS,
    CEEvalConfig,
    CodeEvalConfig,
    EBFTConfig,
    FinetuneConfig,
    FMEvalConfig,
    ModelConfig,
    RLVRConfig,
    SFTConfig,
    TaskConfig,
    build,
    load_profile_dict,
    section,
    write_resolved,
)
from ebft.errors import UserError
from ebft.paths import Layout

REPO = Path(__file__).resolve().parent.parent


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


def _layout(raw: dict) -> Layout:
    if "profile" not in raw:
        raise UserError("the config names no 'profile'; every profile file must set one.")
    return Layout(raw.get("results_dir", "results"), raw["profile"])


def _task(raw: dict, task: str) -> TaskConfig:
    return section(raw, TaskConfig, f"tasks.{task}")


def _threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


# --------------------------------------------------------------------------------------------------
# Subcommands
# --------------------------------------------------------------------------------------------------


def cmd_prepare_model(args, raw):
    from ebft.models import prepare_model

    cfg = section(raw, ModelConfig, f"models.{args.model}")
    out = Path(args.out or _layout(raw).model_dir(args.model))
    info = prepare_model(cfg, out, offline=raw.get("offline", True))
    print(f"prepared model {args.model!r} ({info['source']}) in {out}")


def cmd_prepare_data(args, raw):
    from ebft.data import write_task_data

    tc = _task(raw, args.task)
    out = Path(args.out or _layout(raw).data_dir(args.task))
    manifest = write_task_data(args.task, tc.source, raw.get("seed", 43), out)
    sizes = ", ".join(f"{k} {v['records']}" for k, v in manifest["splits"].items())
    print(f"wrote {args.task} data to {out} ({sizes} records)")


def _task_sft(raw: dict, tc: TaskConfig) -> SFTConfig:
    """The global sft section with the task's overrides (``tasks.<task>.sft``) on top."""
    return build(SFTConfig, {**raw.get("sft", {}), **(tc.sft or {})}, "sft")


def _task_ebft(raw: dict, tc: TaskConfig) -> EBFTConfig:
    """The global ebft section with the task's overrides (``tasks.<task>.ebft``) on top."""
    return build(EBFTConfig, {**raw.get("ebft", {}), **(tc.ebft or {})}, "ebft")


def _task_rlvr(raw: dict, tc: TaskConfig) -> RLVRConfig:
    """The global rlvr section with the task's overrides (``tasks.<task>.rlvr``) on top."""
    return build(RLVRConfig, {**raw.get("rlvr", {}), **(tc.rlvr or {})}, "rlvr")


def _prompt_format(raw: dict, tc: TaskConfig) -> str:
    return section(raw, ModelConfig, f"models.{tc.model}").prompt_format


def cmd_train(args, raw):
    from ebft.data import read_records

    if args.method not in METHODS:
        raise UserError(f"training method {args.method!r} is not available; choose one of {', '.join(METHODS)}.")
    layout = _layout(raw)
    tc = _task(raw, args.task)
    if args.method == "rlvr" and tc.reward == "none":
        raise UserError(f"{args.task} has no verifiable reward (tasks.{args.task}.reward is 'none'), so RLVR "
                        f"cannot train on it; set a reward or drop rlvr for this task.")  # fmt: skip
    finetune = section(raw, FinetuneConfig, "finetune")
    precision = raw.get("precision", "auto")
    seed = raw.get("seed", 43)
    model_dir = Path(args.model_dir or layout.model_dir(tc.model))
    data_dir = Path(args.data_dir or layout.data_dir(args.task))
    out = Path(args.out or layout.run_dir(args.method, args.task))
    records = read_records(data_dir / "train.jsonl")
    resolved = {"profile": raw["profile"], "task": args.task, "method": args.method, "seed": seed,
                "precision": precision, "model_dir": str(model_dir), "task_config": tc,
                "finetune": finetune}  # fmt: skip
    if args.method == "sft":
        from baselines.sft import train_sft

        sft = _task_sft(raw, tc)
        config_hash = write_resolved(out / "resolved_config.yaml", {**resolved, "sft": sft})
        summary = train_sft(model_dir=model_dir, train_records=records, chunk_length=tc.chunk_length,
                            finetune=finetune, sft=sft, precision=precision, seed=seed, out=out)  # fmt: skip
    else:
        ebft = _task_ebft(raw, tc)
        default_start = layout.checkpoint("sft", args.task) if ebft.init == "sft" else model_dir
        start_dir = Path(args.start_dir or default_start)
    if args.method == "rlvr":
        from baselines.rlvr import train_rlvr

        rlvr, prompt_format = _task_rlvr(raw, tc), _prompt_format(raw, tc)
        config_hash = write_resolved(out / "resolved_config.yaml", {**resolved, "start_dir": str(start_dir),
                                     "ebft": ebft, "rlvr": rlvr, "prompt_format": prompt_format})  # fmt: skip
        summary = train_rlvr(start_dir=start_dir, train_records=records, reward=tc.reward,
                             prompt_format=prompt_format, chunk_length=tc.chunk_length, finetune=finetune,
                             ebft=ebft, cfg=rlvr, precision=precision, seed=seed, out=out)  # fmt: skip
    elif args.method == "ebft":
        from ebft.trainer import train_ebft

        config_hash = write_resolved(out / "resolved_config.yaml",
                                     {**resolved, "start_dir": str(start_dir), "ebft": ebft})  # fmt: skip
        summary = train_ebft(base_dir=model_dir, start_dir=start_dir, train_records=records,
                             chunk_length=tc.chunk_length, finetune=finetune, cfg=ebft, precision=precision,
                             seed=seed, out=out)  # fmt: skip
    print(f"{args.method} on {args.task}: {summary['steps']} steps in {summary['wall_time_s']} s → {out} "
          f"(config {config_hash})")  # fmt: skip


def cmd_eval(args, raw):
    from ebft.config import config_hash
    from ebft.data import read_records

    if args.kind not in ("ce", "fm", "code"):
        raise UserError(f"evaluation {args.kind!r} is not available; choose 'ce' (validation cross-entropy), "
                        f"'fm' (held-out feature-matching loss) or 'code' (pass@k).")  # fmt: skip
    layout = _layout(raw)
    tc = _task(raw, args.task)
    base_dir = Path(args.base_dir or layout.model_dir(tc.model))
    default_model = base_dir if args.method == "base" else layout.checkpoint(args.method, args.task)
    model_dir = Path(args.model_dir or default_model)
    data_dir = Path(args.data_dir or layout.data_dir(args.task))
    out = Path(args.out or layout.eval_file(args.kind, args.task, args.method))
    seed = raw.get("seed", 43)
    started = time.time()
    extra = {}
    if args.kind == "code":
        from evals.code import evaluate_code, load_problems

        if tc.code_eval == "none":
            raise UserError(f"{args.task} has no code evaluation (tasks.{args.task}.code_eval is 'none'); set it to "
                            f"heldout or human_eval.")  # fmt: skip
        cfg = section(raw, CodeEvalConfig, "eval.code")
        problems = load_problems(tc.code_eval, data_dir / "heldout.jsonl", cfg, seed)
        samples = Path(args.samples or layout.samples_file(args.task, args.method))
        rows, extra = evaluate_code(model_dir, problems, _prompt_format(raw, tc), cfg,
                                    precision=raw.get("precision", "auto"), seed=seed, samples_out=samples)  # fmt: skip
        extra.update(problems=len(problems), samples_file=str(samples))
    elif args.kind == "ce":
        from evals.ce import evaluate_ce

        records = read_records(data_dir / "heldout.jsonl")
        rows = evaluate_ce(model_dir, records, tc.chunk_length, section(raw, CEEvalConfig, "eval.ce"), seed=seed)
    else:
        from evals.fm import evaluate_fm

        heldout = read_records(data_dir / "heldout.jsonl")
        rows = evaluate_fm(model_dir, base_dir, heldout, tc.chunk_length, _task_ebft(raw, tc),
                           section(raw, FMEvalConfig, "eval.fm"), seed=seed)  # fmt: skip
    trained = model_dir.parent / "resolved_config.yaml"
    record = {
        "task": args.task, "method": args.method, "model_dir": str(model_dir),
        "config_hash": config_hash({"eval": raw.get("eval"), "task": raw["tasks"][args.task],
                                    "model": raw.get("models", {}).get(tc.model),
                                    "trained": trained.read_text() if trained.is_file() else None}),
        "git_sha": git_sha(), "wall_time_s": round(time.time() - started, 2), **extra, "metrics": rows,
    }  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    print(f"{args.kind} {args.task}/{args.method}: " + ", ".join(f"{r['metric']}={r['value']:.4f}" for r in rows))


def cmd_report(args, raw):
    from evals.report import collect, read_metrics, write_outputs

    layout = _layout(raw)
    if args.from_csv:
        df = read_metrics(Path(args.from_csv))
        csv_out = None
    else:
        tasks = raw.get("tasks", {})
        no_verifier = [t for t, tc in tasks.items() if tc.get("reward", "none") == "none"]
        df = collect([Path(p) for p in args.inputs], raw["profile"],
                     no_verifier if "rlvr" in raw.get("methods", []) else [])  # fmt: skip
        csv_out = Path(args.metrics_csv or layout.metrics_csv)
    figures = write_outputs(df, metrics_csv=csv_out, table=Path(args.table or layout.main_table),
                            figures_dir=Path(args.figures or layout.figures_dir))  # fmt: skip
    print(f"report: {len(df)} metric rows → {args.table or layout.main_table}; {len(figures)} figures")


# --------------------------------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ebft", description="Energy-Based Fine-Tuning reproduction harness.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, func, help_text):
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.add_argument("--config", default="config/cpu.yaml",
                        help="profile YAML (default config/cpu.yaml) or the JSON the workflow passes")  # fmt: skip
        sp.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
        sp.set_defaults(func=func)
        return sp

    sp = command("prepare-model", cmd_prepare_model, "Write a profile's model as a plain Hugging Face folder.")
    sp.add_argument("--model", required=True, help="a key of the profile's 'models'")
    sp.add_argument("--out", help="output folder (default results/<profile>/models/<model>)")

    sp = command("prepare-data", cmd_prepare_data, "Build one task's train and held-out splits.")
    sp.add_argument("--task", required=True, choices=TASKS)
    sp.add_argument("--out", help="output folder (default results/<profile>/data/<task>)")

    sp = command("train", cmd_train, "Fine-tune a model on one task with one method.")
    sp.add_argument("--method", required=True, help="training method: sft, ebft or rlvr")
    sp.add_argument("--task", required=True, choices=TASKS)
    sp.add_argument("--model-dir", help="the task's base model (default: its prepared folder); EBFT's features")
    sp.add_argument("--start-dir", help="EBFT's and RLVR's starting policy (default: the base model, or the SFT "
                                        "checkpoint when ebft.init is sft)")  # fmt: skip
    sp.add_argument("--data-dir", help="task data folder (default results/<profile>/data/<task>)")
    sp.add_argument("--out", help="run folder (default results/<profile>/runs/<method>/<task>)")

    sp = command("eval", cmd_eval, "Evaluate one model on one task.")
    sp.add_argument("--kind", required=True,
                    help="ce (validation cross-entropy), fm (feature-matching loss) or code (pass@k)")  # fmt: skip
    sp.add_argument("--task", required=True, choices=TASKS)
    sp.add_argument("--method", required=True, help="'base' or a training method (names the checkpoint)")
    sp.add_argument("--model-dir", help="model to score (default: base model or the method's checkpoint)")
    sp.add_argument("--base-dir", help="the task's base model: the feature network for fm (default: prepared)")
    sp.add_argument("--data-dir", help="task data folder (default results/<profile>/data/<task>)")
    sp.add_argument("--out", help="record file (default results/<profile>/eval/<kind>/<task>/<method>.json)")
    sp.add_argument("--samples", help="code: per-sample JSONL (default …/eval/code/<task>/<method>.samples.jsonl)")

    sp = command("report", cmd_report, "Collect evaluation records into metrics.csv, a markdown table and figures.")
    sp.add_argument("inputs", nargs="*", help="evaluation record files (JSON)")
    sp.add_argument("--from-csv", help="regenerate table and figure from an existing metrics.csv only")
    sp.add_argument("--metrics-csv", help="tidy table to write (default results/<profile>/metrics.csv)")
    sp.add_argument("--table", help="markdown table (default results/<profile>/tables/main.md)")
    sp.add_argument("--figures", help="folder of the per-metric figures (default results/<profile>/figures)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        raw = load_profile_dict(args.config)
        from ebft.models import set_offline

        set_offline(raw.get("offline", True))  # before any Hugging Face library is imported
        _threads(args.threads)
        args.func(args, raw)
    except UserError as e:
        print(f"ebft: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
