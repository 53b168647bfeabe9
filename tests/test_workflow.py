"""The Snakemake DAG on the smoke profile: dry runs, a single target, a full run, idempotence, partial rebuilds."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parent.parent


def snakemake(env, results, *args, profile="smoke"):
    configfile = profile if str(profile).endswith(".yaml") else f"config/{profile}.yaml"
    cmd = [sys.executable, "-m", "snakemake", *args, "--cores", "2", "--configfile", str(configfile),
           "--config", f"results_dir={results}"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def job_stats(output: str) -> dict[str, int]:
    """The 'Job stats' table Snakemake prints: {rule: count}, without the total."""
    block = output.split("Job stats:", 1)[1]
    return {m[0]: int(m[1]) for m in re.findall(r"^(\w+)\s+(\d+)$", block, flags=re.M) if m[0] != "total"}


@pytest.mark.parametrize(
    "profile,models",
    [("cpu", 1), ("smoke", 1), ("paper", 2)],
)
def test_dry_run_lists_the_expected_jobs(tmp_path, cli_env, profile, models):
    stats = job_stats(snakemake(cli_env, tmp_path, "-n", profile=profile))
    # RLVR on the two tasks with a verifier (qa_code, translation); pass@k on the two code tasks for every
    # checkpoint: base, sft, ebft on both, rlvr on qa_code only
    assert stats == {"prepare_model": models, "prepare_data": 3, "train_sft": 3, "train_ebft": 3, "train_rlvr": 2,
                     "eval_ce": 11, "eval_fm": 11, "eval_code": 7, "report": 1, "all": 1}  # fmt: skip


def test_a_per_task_sft_init_makes_that_tasks_ebft_and_rlvr_start_from_its_sft_checkpoint(tmp_path, cli_env):
    """Regression: the workflow read only the global ebft.init, so a per-task `init: sft` started from the base model
    while resolved_config.yaml recorded sft."""
    cfg = yaml.safe_load((REPO / "config/smoke.yaml").read_text())
    cfg["tasks"]["translation"]["ebft"]["init"] = "sft"
    path = tmp_path / "init.yaml"
    path.write_text(yaml.safe_dump(cfg))
    root = tmp_path / "smoke"
    for method in ("ebft", "rlvr"):
        out = snakemake(cli_env, tmp_path, "-n", str(root / f"runs/{method}/translation/model"), profile=path)
        assert job_stats(out) == {"prepare_model": 1, "prepare_data": 1, "train_sft": 1, f"train_{method}": 1}
    out = snakemake(cli_env, tmp_path, "-n", str(root / "runs/ebft/qa_code/model"), profile=path)
    assert "train_sft" not in job_stats(out)  # the other tasks still start from the base model


def resolved_hash(path: Path) -> str:
    return yaml.safe_load(path.read_text())["config_hash"]


@pytest.mark.slow
def test_smoke_dag_end_to_end(tmp_path, cli_env):
    root = tmp_path / "smoke"
    # 1. One target alone: a single task's SFT checkpoint builds only what it needs.
    out = snakemake(cli_env, tmp_path, str(root / "runs/sft/qa_code/model"))
    assert job_stats(out) == {"prepare_model": 1, "prepare_data": 1, "train_sft": 1}
    assert (root / "runs/sft/qa_code/model/config.json").is_file()
    assert not (root / "data/translation").exists()

    # 2. The whole DAG completes and reports base, SFT, RLVR and EBFT on every task; RLVR on unstructured code is
    # "n/a (no verifier)"; pass@k on both code tasks.
    snakemake(cli_env, tmp_path)
    df = pd.read_csv(root / "metrics.csv", keep_default_na=False, na_values=[""])
    assert set(zip(df.task, df.method, strict=True)) == {
        (t, m) for t in ("qa_code", "unstructured_code", "translation") for m in ("base", "sft", "ebft", "rlvr")
    }
    assert set(df.metric) == {"val_ce", "val_ce_answer", "fm_loss", "pass@1", "pass@2"}
    na = df[df.value.isna()]
    assert set(na.task) == {"unstructured_code"} and set(na.method) == {"rlvr"}
    assert (na.note == "n/a (no verifier)").all()
    code = df[df.metric.str.startswith("pass@") & df.value.notna()]
    assert set(zip(code.task, code.method, strict=True)) == {
        ("qa_code", m) for m in ("base", "sft", "ebft", "rlvr")
    } | {("unstructured_code", m) for m in ("base", "sft", "ebft")}
    assert ((code.ci_low <= code.value) & (code.value <= code.ci_high)).all()
    table = (root / "tables/main.md").read_text()
    assert "| translation |" in table and "n/a (no verifier)" in table
    for figure in ("val_ce", "fm_loss", "pass_at_1", "pass_at_2"):
        assert (root / f"figures/{figure}.png").stat().st_size > 1000
    samples = (root / "eval/code/qa_code/rlvr.samples.jsonl").read_text().splitlines()
    assert len(samples) == 4 * 2  # max_problems × n
    assert (root / "runs/rlvr/translation/rlvr_settings.yaml").is_file()
    resolved = (root / "runs/ebft/translation/resolved_config.yaml").read_text()
    assert "c: 4" in resolved and "s: 2" in resolved and "pooling: mean" in resolved  # the task's layout

    # 3. A second run has nothing to do.
    assert "Nothing to be done" in snakemake(cli_env, tmp_path, "-n")

    # 4. Deleting one output rebuilds only what depends on it.
    (root / "eval/ce/translation/sft.json").unlink()
    assert job_stats(snakemake(cli_env, tmp_path, "-n")) == {"eval_ce": 1, "report": 1, "all": 1}
    snakemake(cli_env, tmp_path)
    assert "Nothing to be done" in snakemake(cli_env, tmp_path, "-n")
    shutil.rmtree(root / "runs/sft/unstructured_code/model")
    assert job_stats(snakemake(cli_env, tmp_path, "-n")) == {"train_sft": 1, "eval_ce": 1, "eval_fm": 1,
                                                             "eval_code": 1, "report": 1, "all": 1}  # fmt: skip

    # 5. Snakemake's HTML report contains the figure.
    snakemake(cli_env, tmp_path, "--report", str(tmp_path / "report.html"))
    html = (tmp_path / "report.html").read_text(errors="replace")
    assert "val_ce.png" in html and "pass_at_1.png" in html

    # 6. Provenance: the hash the DAG's jobs recorded is the one the resolver gives a person running the command.
    from ebft.resolve import load_study

    raw = yaml.safe_load((REPO / "config/smoke.yaml").read_text())
    study = load_study({**raw, "results_dir": str(tmp_path)})
    assert resolved_hash(root / "runs/ebft/qa_code/resolved_config.yaml") == study.job(
        "train", task="qa_code", method="ebft").hash  # fmt: skip
    record = json.loads((root / "eval/fm/translation/ebft.json").read_text())
    job = study.job("eval", task="translation", method="ebft", kind="fm")
    assert record["config_hash"] == job.hash and record["trained_config_hash"] == job.trained

    # 7. Regression: after a config edit, train_ebft reran but resumed its finished checkpoint, trained zero steps and
    # saved the old weights under the new settings. Now the checkpoint carries its settings' hash: the rerun trains
    # every step.
    before = safetensors(root / "runs/ebft/qa_code/adapter/adapter_model.safetensors")
    raw["ebft"]["lr"] = 5 * raw["ebft"]["lr"]
    edited = tmp_path / "edited.yaml"
    edited.write_text(yaml.safe_dump(raw))
    target = str(root / "runs/ebft/qa_code/model")
    assert job_stats(snakemake(cli_env, tmp_path, "-n", target, profile=edited)) == {"train_ebft": 1}
    snakemake(cli_env, tmp_path, target, profile=edited)
    log = (root / "logs/train_ebft/qa_code.log").read_text()
    assert "written under other settings" in log and "starting afresh" in log
    rows = (root / "runs/ebft/qa_code/train_metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2"]
    after = safetensors(root / "runs/ebft/qa_code/adapter/adapter_model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert resolved_hash(root / "runs/ebft/qa_code/resolved_config.yaml") == load_study(raw).job(
        "train", task="qa_code", method="ebft").hash  # fmt: skip


def safetensors(path):
    from safetensors.torch import load_file

    return load_file(path)
