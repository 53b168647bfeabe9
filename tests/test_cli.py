"""The `ebft` command under bad input and stray use: one sentence naming the fix, and nothing already computed lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from ebft.cli import main
from ebft.config import HumanEvalSource
from ebft.data import write_task_data

REPO = Path(__file__).resolve().parent.parent
SMOKE = str(REPO / "config/smoke.yaml")


def refused(capsys, argv) -> str:
    """Run the CLI in this process; it must exit with status 2 and one line on stderr, without a traceback."""
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's refusals
        code = e.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err
    assert len(err.splitlines()[-1]) > 20 and "error:" in err.splitlines()[-1], err
    return err.splitlines()[-1]


@pytest.mark.parametrize("value", ["-3", "0", "two"])
def test_threads_must_be_a_positive_whole_number(capsys, value):
    """Regression: --threads -3 died in torch with a traceback and --threads 0 was silently ignored."""
    line = refused(capsys, ["eval", "--config", SMOKE, "--kind", "ce", "--task", "qa_code", "--method", "base",
                            "--threads", value])  # fmt: skip
    assert f"--threads: expected a whole number of at least 1, got '{value}'" in line


@pytest.mark.parametrize("command", ["train", "eval"])
def test_an_unknown_method_is_named_with_the_choices(capsys, command):
    """Regression: `eval --method dpo` suggested prepare-model instead of naming the unknown method."""
    line = refused(
        capsys,
        [command, "--config", SMOKE, "--kind", "ce", "--task", "qa_code", "--method", "dpo"]
        if command == "eval"
        else [command, "--config", SMOKE, "--task", "qa_code", "--method", "dpo"],
    )
    assert "invalid choice: 'dpo'" in line and "'ebft'" in line


def test_a_missing_checkpoint_names_the_training_rule_that_has_not_run(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = refused(capsys, ["eval", "--config", SMOKE, "--kind", "ce", "--task", "qa_code", "--method", "sft"])
    assert "there is no sft checkpoint for qa_code at results/smoke/runs/sft/qa_code/model" in line
    assert "the workflow's train_sft rule" in line and "prepare-model" not in line


def test_a_shared_base_code_evaluation_copies_only_a_matching_record(capsys, tmp_path, monkeypatch):
    """unstructured_code's base pass@k is qa_code's record (the same HumanEval problems): copied and relabelled when
    its settings hash and problems match; refused in one sentence when the record is missing, stale or of other
    problems."""
    from ebft.data import human_eval_split
    from ebft.resolve import read_study

    monkeypatch.chdir(tmp_path)
    argv = ["eval", "--config", SMOKE, "--kind", "code", "--task", "unstructured_code", "--method", "base"]
    assert "is qa_code/base's, and" in refused(capsys, argv)
    study = read_study(SMOKE)
    owner = study.layout.eval_file("code", "qa_code", "base")
    owner.parent.mkdir(parents=True)
    ids = [r["id"] for r in human_eval_split(HumanEvalSource(heldout=64), study.profile.seed)[1]][:4]  # max_problems
    row = {"metric": "pass@1", "value": 0.25, "unit_ids": ids, "unit_num": [1.0, 0, 0, 0], "unit_den": [1.0] * 4}
    record = {"profile": "smoke", "task": "qa_code", "method": "base", "metrics": [row],
              "config_hash": study.job("eval", task="qa_code", method="base", kind="code").hash}  # fmt: skip
    owner.with_name("base.samples.jsonl").write_text('{"problem": "HumanEval/0"}\n')
    for stale, sentence in ((dict(config_hash="0" * 12), "rerun qa_code/base's code evaluation first"),
                            (dict(metrics=[{**row, "unit_ids": ids[::-1]}]), "scored other problems")):  # fmt: skip
        owner.write_text(json.dumps({**record, **stale}))
        assert sentence in refused(capsys, argv)
    owner.write_text(json.dumps(record))
    assert main(argv) == 0
    copied = json.loads(study.layout.eval_file("code", "unstructured_code", "base").read_text())
    job = study.job("eval", task="unstructured_code", method="base", kind="code")
    assert copied["metrics"] == [row] and copied["task"] == "unstructured_code" and copied["config_hash"] == job.hash
    assert copied["same_as"] == job.same_as
    assert study.layout.samples_file("unstructured_code", "base").read_text() == '{"problem": "HumanEval/0"}\n'


def test_a_sweep_run_is_named_with_method_ebft(capsys):
    line = refused(capsys, ["train", "--config", SMOKE, "--task", "unstructured_code", "--method", "sft", "--run",
                            "ablate/whitening-none"])  # fmt: skip
    assert "--run names an EBFT sweep run, but --method is 'sft'; pass --method ebft" in line
    line = refused(capsys, ["eval", "--config", SMOKE, "--kind", "ce", "--task", "qa_code", "--method", "ebft",
                            "--run", "ablate/whitening-none"])  # fmt: skip
    assert "or a sweep run of qa_code (0 in this profile)" in line


def test_a_yaml_syntax_error_names_the_file_line_and_column(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("profile: x\nseed: [1, 2\nmethods: [sft]\n")
    line = refused(capsys, ["train", "--config", str(bad), "--task", "qa_code", "--method", "sft"])
    assert f"config file {bad} is not valid YAML at line 3, column 8" in line


def test_a_malformed_job_is_one_sentence(capsys):
    line = refused(capsys, ["train", "--job", '{"command": "train",', "--task", "qa_code", "--method", "sft"])
    assert "--job is not valid JSON" in line


def test_version_and_choices_in_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("ebft 0.")
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--kind {ce,fm,code,translation}" in help_text and "--method {base,sft,ebft,rlvr}" in help_text


def test_a_failed_run_leaves_the_provenance_of_the_finished_run_in_its_folder(capsys, tmp_path):
    """Regression: a failed `ebft train` into a finished run's folder rewrote its resolved_config.yaml with the
    settings of the run that failed, while the old model stayed."""
    data = tmp_path / "data"
    write_task_data("qa_code", HumanEvalSource(heldout=64), 43, data)
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "model/config.json").write_text("{}")
    finished = yaml.safe_dump({"config_hash": "finished-run", "method": "sft"})
    (run / "resolved_config.yaml").write_text(finished)
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    line = refused(capsys, ["train", "--config", SMOKE, "--task", "qa_code", "--method", "sft", "--model-dir",
                            str(broken), "--data-dir", str(data), "--out", str(run)])  # fmt: skip
    assert "cannot be loaded" in line and str(broken) in line
    assert (run / "resolved_config.yaml").read_text() == finished
    assert not list(run.glob("*.partial"))


# --------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------


def metrics_csv(path: Path, profile: str, value: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame([{"profile": profile, "task": "qa_code", "method": "base", "metric": "val_ce", "value": value,
                   "n": 10, "ci_low": value - 0.1, "ci_high": value + 0.1, "config_hash": "h", "git_sha": "g",
                   "note": ""}]).to_csv(path, index=False)  # fmt: skip
    return path


@pytest.fixture
def two_profiles(tmp_path, monkeypatch):
    """results/cpu with finished results and results/smoke with a metrics.csv, in a scratch folder."""
    monkeypatch.chdir(tmp_path)
    cpu = metrics_csv(tmp_path / "results/cpu/metrics.csv", "cpu", 1.5)
    (tmp_path / "results/cpu/tables").mkdir()
    (tmp_path / "results/cpu/tables/main.md").write_text("finished cpu table\n")
    metrics_csv(tmp_path / "results/smoke/metrics.csv", "smoke", 9.0)
    return {p: p.read_bytes() for p in [cpu, tmp_path / "results/cpu/tables/main.md"]}


def test_report_with_nothing_to_collect_refuses_and_writes_nothing(capsys, two_profiles):
    """Regression: `ebft report` with no inputs exited 0 after emptying the profile's metrics.csv and table."""
    line = refused(capsys, ["report", "--config", str(REPO / "config/cpu.yaml")])
    assert "report got no evaluation records to collect, so it wrote nothing" in line
    assert all(path.read_bytes() == before for path, before in two_profiles.items())


def test_redrawing_another_profiles_csv_never_writes_into_these_results(capsys, two_profiles, tmp_path):
    """Regression: `report --from-csv results/smoke/metrics.csv` overwrote the cpu profile's table and figures."""
    assert main(["report", "--from-csv", "results/smoke/metrics.csv"]) == 0
    assert "9.0000" in (tmp_path / "results/smoke/tables/main.md").read_text()
    assert (tmp_path / "results/smoke/figures/val_ce.png").is_file()
    line = refused(capsys, ["report", "--from-csv", "results/smoke/metrics.csv", "--table",
                            "results/cpu/tables/main.md"])  # fmt: skip
    assert "is in the results of profile cpu" in line and "these metrics are of smoke" in line
    assert main(["report", "--from-csv", "results/smoke/metrics.csv", "--out", "elsewhere"]) == 0
    assert (tmp_path / "elsewhere/tables/main.md").is_file() and (tmp_path / "elsewhere/figures/val_ce.png").is_file()
    assert all(path.read_bytes() == before for path, before in two_profiles.items())


def test_records_of_another_profile_are_not_collected(capsys, two_profiles, tmp_path):
    record = tmp_path / "smoke_record.json"
    record.write_text(json.dumps({"profile": "smoke", "task": "qa_code", "method": "base", "config_hash": "h",
                                  "git_sha": "g", "metrics": []}))  # fmt: skip
    line = refused(capsys, ["report", "--config", str(REPO / "config/cpu.yaml"), str(record)])
    assert "is a record of profile 'smoke', not 'cpu'" in line
    assert all(path.read_bytes() == before for path, before in two_profiles.items())


# --------------------------------------------------------------------------------------------------
# Interruption
# --------------------------------------------------------------------------------------------------


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has exited; nobody may be reaping it in a container


@pytest.mark.parametrize("flag", [True, False])
def test_a_job_stops_when_the_process_that_started_it_is_killed(flag):
    """With --stop-with-parent (as the rules pass it) a killed Snakemake leaves no job running; without it, the job
    runs on (the control that shows the test can fail)."""
    job = ("import time; from ebft.cli import stop_with_parent; " + ("stop_with_parent(0.05); " if flag else "")
           + "print('ready', flush=True); time.sleep(60)")  # fmt: skip
    driver = (f"import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', {job!r}]); "
              "print(p.pid, flush=True); p.wait()")  # fmt: skip
    parent = subprocess.Popen([sys.executable, "-c", driver], stdout=subprocess.PIPE, text=True, cwd=REPO)
    child = int(parent.stdout.readline())
    assert parent.stdout.readline().strip() == "ready"
    parent.kill()
    parent.wait()
    deadline = time.time() + (10 if flag else 3)  # the watchdog polls every 0.05 s: 3 s is ample for the control
    while alive(child) and time.time() < deadline:
        time.sleep(0.05)
    try:
        assert alive(child) is not flag
    finally:
        if alive(child):
            os.kill(child, 9)


def test_check_resolves_every_job_of_a_profile_or_names_the_problem(capsys, tmp_path):
    assert main(["check", "--config", SMOKE]) == 0
    assert (
        "profile 'smoke', 3 tasks, 67 jobs as `snakemake -n` counts them (52 to prepare, train and evaluate; "
        "collect, tables and 12 figures; all); no problem found."
    ) in capsys.readouterr().out
    raw = yaml.safe_load(Path(SMOKE).read_text())
    raw["tasks"]["translation"]["chunk_length"] = 8  # fits its own override c = 4, s = 2, G = 4: one block
    raw["tasks"]["qa_code"]["chunk_length"] = 8  # the global c = s = G = 8 need L ≥ 16
    edited = tmp_path / "edited.yaml"
    edited.write_text(yaml.safe_dump(raw))
    line = refused(capsys, ["check", "--config", str(edited)])
    assert "tasks.qa_code: the strided layout does not fit its chunks" in line
    bad = tmp_path / "bad.yaml"
    bad.write_text("profile: x\n  seed: 1\n")
    assert "is not valid YAML at line 2, column 7" in refused(capsys, ["check", "--config", str(bad)])


def test_launch_processes_must_split_every_batch_they_launch(capsys, tmp_path):
    raw = yaml.safe_load(Path(SMOKE).read_text())
    raw["launch"] = {"processes": 3}
    edited = tmp_path / "three.yaml"
    edited.write_text(yaml.safe_dump(raw))
    line = refused(capsys, ["check", "--config", str(edited)])
    assert "batch_size is" in line and "which launch.processes (3) cannot split evenly" in line
    raw["launch"] = {"processes": 2}
    edited.write_text(yaml.safe_dump(raw))
    assert main(["check", "--config", str(edited)]) == 0


def test_several_processes_are_refused_where_they_cannot_run(capsys, tmp_path, monkeypatch):
    """RLVR runs as one process; a missing accelerate configuration, or a launch of another size, is one sentence
    before any process starts."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    train = ["train", "--config", SMOKE, "--task", "qa_code", "--processes", "2"]
    assert "RLVR (TRL's GRPOTrainer) runs as one process" in refused(capsys, [*train, "--method", "rlvr"])
    line = refused(capsys, [*train, "--method", "sft", "--accelerate-config", str(tmp_path / "none.yaml")])
    assert "none.yaml does not exist" in line and "--accelerate-config" in line
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert "launched as one of 4 processes" in refused(capsys, [*train, "--method", "ebft"])


@pytest.mark.parametrize("kind", ["FSDP", "DEEPSPEED"])
def test_the_trainers_refuse_accelerates_own_sharding(kind):
    """The trainers shard the model themselves (launch.strategy: fsdp, ebft.sharding); accelerate's FSDP or DeepSpeed
    plugins would wrap it in another way, so a configuration that asks for them is refused, naming the setting."""
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from ebft import optim
    from ebft.errors import UserError

    optim.require_data_parallel(SimpleNamespace(distributed_type=DistributedType.MULTI_CPU))
    with pytest.raises(UserError, match="shard the model themselves.*set launch.strategy to fsdp"):
        optim.require_data_parallel(SimpleNamespace(distributed_type=getattr(DistributedType, kind)))
