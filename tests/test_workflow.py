"""The Snakemake DAG on the smoke profile: dry runs, a single target, a full run, idempotence, partial rebuilds."""

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from ebft.trainer import TIMINGS

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


def job_priorities(output: str) -> dict[str, set[int]]:
    """The priorities of a dry run's jobs, by rule: {rule: {priority, …}} (Snakemake prints none for priority 0)."""
    found: dict[str, set[int]] = {}
    for block in re.split(r"^(?=(?:local)?rule \w+:)", output, flags=re.M):
        rule = re.match(r"(?:local)?rule (\w+):", block)
        if rule:
            priority = re.search(r"^\s+priority: (\d+)$", block, flags=re.M)
            found.setdefault(rule[1], set()).add(int(priority[1]) if priority else 0)
    return found


FIGURES = ["val_ce", "fm_loss", "pass_at_1", "tradeoff", "training_curves"]
TRANSLATION_FIGURES = ["bleu", "chrf", "translation_directions"]
# per profile: prepared models, and the evaluations of each kind (base, the methods' runs and the sweep runs)
DAGS = {
    # a sweep of γ on qa_code: gamma-0.03 is the ebft run (its evaluations copied), gamma-0.0 one more run
    "cpu": ({"prepare_model": 1, "train_sweep": 1, "eval_ce": 13, "eval_fm": 13, "eval_code": 9, "eval_translation": 4},
            [*FIGURES, "pass_at_4", *TRANSLATION_FIGURES, "sweep_gamma"]),
    # a sweep of two runs on unstructured_code, one of which is the ebft run (copied, not retrained)
    "smoke": ({"prepare_model": 1, "train_sweep": 1, "eval_ce": 13, "eval_fm": 13, "eval_code": 9,
               "eval_translation": 4}, [*FIGURES, "pass_at_2", *TRANSLATION_FIGURES, "sweep_ablate", "heldout_gt_tokens",
                                        "heldout_compute"]),  # it evaluates during training
    # the paper's 27 EBFT runs per task, 81 in all: the 3 ebft runs and 78 sweep runs; and the 7B task's SFT and EBFT
    # runs (no RLVR, no sweep) with their base model, data and evaluations
    "paper": ({"prepare_model": 3, "prepare_data": 4, "train_sft": 4, "train_ebft": 4, "train_sweep": 78,
               "eval_ce": 95, "eval_fm": 95, "eval_code": 64, "eval_translation": 31},
              [*FIGURES, "pass_at_4", *TRANSLATION_FIGURES, "sweep_set1", "sweep_set2"]),
}  # fmt: skip


@pytest.mark.parametrize("profile", list(DAGS))
def test_dry_run_lists_the_expected_jobs(tmp_path, cli_env, profile):
    stats = job_stats(snakemake(cli_env, tmp_path, "-n", profile=profile))
    check = subprocess.run([sys.executable, "-m", "ebft.cli", "check", "--config", f"config/{profile}.yaml"], cwd=REPO,
                           env=cli_env, capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert f" {sum(stats.values())} jobs as `snakemake -n` counts them " in check  # `ebft check` counts alike
    counts, figures = DAGS[profile]
    assert {rule for rule in stats if rule.startswith("figure_")} == {f"figure_{name}" for name in figures}
    assert all(stats.pop(f"figure_{name}") == 1 for name in figures)  # one job per figure
    # RLVR on the two tasks with a verifier (qa_code, translation)
    expected = {"prepare_data": 3, "train_sft": 3, "train_ebft": 3, "train_rlvr": 2, "collect": 1, "tables": 1,
                "all": 1, **counts}  # fmt: skip
    assert stats == expected


def test_every_training_runs_before_the_evaluations_and_code_evaluations_before_the_rest(tmp_path, cli_env):
    """On 2 cores the study should end on short jobs: with a training left to the end (train_sft once had no
    priority, so SFT on unstructured_code ran last in the cpu study), its evaluations ran on while a core idled."""
    priorities = job_priorities(snakemake(cli_env, tmp_path, "-n", profile="cpu"))
    training = set().union(*(v for rule, v in priorities.items() if rule.startswith("train_")))
    code = priorities["eval_code"]
    others = set().union(*(v for rule, v in priorities.items() if rule.startswith("eval_") and rule != "eval_code"))
    assert {"train_sft", "train_ebft", "train_rlvr", "train_sweep"} <= set(priorities)
    assert min(training) > max(code) and min(code) > max(others), priorities
    assert (
        min(priorities["train_rlvr"])
        > max(priorities["train_ebft"])
        >= min(priorities["train_ebft"])
        > max(priorities["train_sft"] | priorities["train_sweep"])
    )  # the longest first: RLVR, EBFT, then SFT and the sweep


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
    everything = pd.read_csv(root / "metrics.csv", keep_default_na=False, na_values=[""])
    sweep = everything[everything["sweep"].notna()]
    df = everything[everything["sweep"].isna()]
    assert set(zip(df.task, df.method, strict=True)) == {
        (t, m) for t in ("qa_code", "unstructured_code", "translation") for m in ("base", "sft", "ebft", "rlvr")
    }
    # the sweep: two runs on unstructured_code with their setting as a column; the one that is the ebft run has the
    # ebft run's values (its records are copied, not recomputed)
    assert set(zip(sweep.method, sweep["sweep.whitening"], strict=True)) == {
        ("ablate/whitening-paper", "paper"), ("ablate/whitening-none", "none")}  # fmt: skip
    assert set(sweep.task) == {"unstructured_code"} and not (root / "runs/ablate/whitening-paper").exists()
    same = sweep[sweep.method == "ablate/whitening-paper"].set_index("metric")["value"]
    ebft = df[(df.task == "unstructured_code") & (df.method == "ebft")].set_index("metric")["value"]
    assert same.to_dict() == ebft.to_dict()
    translation = {
        f"{score}{decoding}{group}"
        for score in ("bleu", "chrf")
        for decoding in ("", "_greedy")
        for group in ("", "[de-en]", "[en-de]", "[en-xx]", "[xx-en]")
    } | {"comet", "comet_greedy"}
    assert set(df.metric) == {"val_ce", "val_ce_answer", "fm_loss", "pass@1", "pass@2"} | translation
    na = df[df.value.isna()]
    no_verifier = na[~na.metric.str.startswith("comet")]
    assert set(no_verifier.task) == {"unstructured_code"} and set(no_verifier.method) == {"rlvr"}
    assert (no_verifier.note == "n/a (no verifier)").all()
    comet = df[df.metric.str.startswith("comet")]  # offline: a note in every cell, never a number
    assert len(comet) == 8 and comet.value.isna().all() and (comet.note == "n/a (COMET model not available "
                                                                          "offline)").all()  # fmt: skip
    bleu = df[df.metric == "bleu"]
    assert set(bleu.method) == {"base", "sft", "ebft", "rlvr"} and set(bleu.task) == {"translation"}
    code = df[df.metric.str.startswith("pass@") & df.value.notna()]
    assert set(zip(code.task, code.method, strict=True)) == {
        ("qa_code", m) for m in ("base", "sft", "ebft", "rlvr")
    } | {("unstructured_code", m) for m in ("base", "sft", "ebft")}
    assert ((code.ci_low <= code.value) & (code.value <= code.ci_high)).all()
    table = (root / "tables/main.md").read_text()
    assert "### translation" in table and "| rlvr | n/a (no verifier) |" in table
    assert "Translation chrF++ (one sample at T = 0.6, macro over directions)" in table
    assert "[de-en]" not in table  # the directions are in metrics.csv, not in the main table
    assert (root / "tables/main.tex").read_text().count(r"\begin{tabular}") == 3
    claims = (root / "tables/claims.md").read_text()  # paired verdicts from units.csv
    for line in ("| qa_code | EBFT > SFT on pass@1 |", "| translation | EBFT > SFT on bleu |",
                 "| translation | RLVR CE > base CE |", "| unstructured_code | EBFT CE < SFT CE |"):  # fmt: skip
        assert line in claims, line
    units = pd.read_csv(root / "units.csv")
    assert {"val_ce", "fm_loss", "pass@1", "bleu", "chrf_greedy"} <= set(units.metric)
    curves = pd.read_csv(root / "curves.csv")
    assert set(curves.method) == {"sft", "ebft", "rlvr"}
    # evaluation during training (eval_every: 1): held-out CE and FM loss at every step of every run, with budgets
    held = curves[curves.series.isin(["val_ce", "fm_loss"])]
    assert set(zip(held.task, held.method, strict=True)) == {(t, m) for t in ("qa_code", "unstructured_code",
                                                             "translation") for m in ("sft", "ebft", "rlvr")} - {
        ("unstructured_code", "rlvr")}  # fmt: skip
    assert set(held.step) == {0, 1, 2} and held[["gt_tokens", "train_flops", "ci_low", "ci_high"]].notna().all().all()
    assert (held[held.step == 0].train_flops == 0).all() and (held[held.step == 2].train_flops > 0).all()
    for axis in ("gt_tokens", "train_flops"):  # SFT and EBFT each evaluated where the budgets match
        for method in ("sft", "ebft"):
            assert held[(held.method == method) & held.matched.fillna("").str.contains(axis)].task.nunique() == 3
        assert {f"val_ce@{axis}", f"fm_loss@{axis}", f"pass@1@{axis}", f"bleu@{axis}"} <= set(units.metric)
    for task, down in (("qa_code", "pass@1"), ("unstructured_code", "pass@1"), ("translation", "bleu")):
        for words in ("equal ground-truth tokens", "equal training compute"):  # downstream_every: 2
            for claim in (f"EBFT > SFT on {down}", "EBFT CE < SFT CE", "EBFT FM loss < SFT FM loss"):
                assert f"| {task} | {claim} at {words} |" in claims, (task, claim, words)
    figures = DAGS["smoke"][1]
    assert sorted(p.stem for p in (root / "figures").iterdir()) == sorted(figures)
    for figure in figures:
        assert (root / f"figures/{figure}.png").stat().st_size > 1000
    shared = json.loads((root / "eval/code/unstructured_code/base.json").read_text())  # the base model scored once
    assert shared["same_as"].startswith("qa_code/base:") and shared["metrics"] == json.loads(
        (root / "eval/code/qa_code/base.json").read_text())["metrics"]  # fmt: skip
    samples = (root / "eval/code/qa_code/rlvr.samples.jsonl").read_text().splitlines()
    assert len(samples) == 4 * 2  # max_problems × n
    translations = (root / "eval/translation/translation/ebft.samples.jsonl").read_text().splitlines()
    assert len(translations) == 6 * 2 * 2  # max_pairs × directions × (sampled, greedy)
    assert (root / "runs/rlvr/translation/rlvr_settings.yaml").is_file()
    record = json.loads((root / "eval/ce/qa_code/ebft.json").read_text())
    assert record["threads"] == 2 and record["peak_rss_mb"] > 100  # --cores 2, no launch.threads; a model loaded
    assert yaml.safe_load((root / "runs/rlvr/qa_code/resolved_config.yaml").read_text())["threads"] == 2
    resolved = (root / "runs/ebft/translation/resolved_config.yaml").read_text()
    assert "c: 4" in resolved and "s: 2" in resolved and "pooling: mean" in resolved  # the task's layout

    # 3. A second run has nothing to do.
    assert "Nothing to be done" in snakemake(cli_env, tmp_path, "-n")

    # 4. Deleting one output rebuilds only what depends on it: one figure rebuilds alone, from the collected files.
    (root / "figures/tradeoff.png").unlink()
    assert job_stats(snakemake(cli_env, tmp_path, "-n")) == {"figure_tradeoff": 1, "all": 1}
    snakemake(cli_env, tmp_path)
    assert (root / "figures/tradeoff.png").stat().st_size > 1000
    (root / "eval/ce/translation/sft.json").unlink()
    report = {"collect": 1, "tables": 1, **{f"figure_{name}": 1 for name in figures}, "all": 1}
    assert job_stats(snakemake(cli_env, tmp_path, "-n")) == {"eval_ce": 1, **report}
    snakemake(cli_env, tmp_path)
    assert "Nothing to be done" in snakemake(cli_env, tmp_path, "-n")
    shutil.rmtree(root / "runs/sft/unstructured_code/model")
    assert job_stats(snakemake(cli_env, tmp_path, "-n")) == {"train_sft": 1, "eval_ce": 1, "eval_fm": 1,
                                                             "eval_code": 1, **report}  # fmt: skip

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
    assert "it was written for other settings; starting afresh" in log
    rows = (root / "runs/ebft/qa_code/train_metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2"]
    after = safetensors(root / "runs/ebft/qa_code/adapter/adapter_model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert resolved_hash(root / "runs/ebft/qa_code/resolved_config.yaml") == load_study(raw).job(
        "train", task="qa_code", method="ebft").hash  # fmt: skip


def safetensors(path):
    from safetensors.torch import load_file

    return load_file(path)


def trainer_processes(marker: str) -> list[int]:
    """Live processes whose command line holds ``marker`` (zombies excluded)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if marker in cmd and " train " in cmd and state != "Z":
            found.append(int(proc.name))
    return found


def test_a_killed_snakemake_stops_its_trainer_and_the_rerun_resumes_ebft_exactly(tmp_path, cli_env):
    """Regression (interruption): a killed Snakemake left its trainer running, the rerun needed --rerun-incomplete,
    and the resumed EBFT run lost the per-step metrics of the steps before its checkpoint (Snakemake deletes a job's
    declared outputs before rerunning it). Now the trainer stops with Snakemake; after the README's `--unlock`, a plain
    rerun resumes from the checkpoint and ends with every step's metrics once and an uninterrupted run's weights, and
    with every evaluation during training (the smoke profile evaluates each step) once, equal to the uninterrupted run's.

    The workflow runs from a copy of its files, so that `--unlock` touches this test's locks only."""
    work = tmp_path / "workflow-copy"
    work.mkdir()
    shutil.copy(REPO / "Snakefile", work)
    shutil.copytree(REPO / "workflow", work / "workflow")
    shutil.copytree(REPO / "profiles", work / "profiles")
    raw = yaml.safe_load((REPO / "config/smoke.yaml").read_text())
    raw["tasks"] = {"qa_code": raw["tasks"]["qa_code"]}
    raw.pop("sweeps")  # its sweep is on unstructured_code
    raw["ebft"].update(max_steps=8, checkpoint_every=1)  # long enough that the trainer is caught running
    raw["ebft"].pop("downstream_every")  # held-out evaluations every step, no downstream scores: a shorter test
    (work / "profile.yaml").write_text(yaml.safe_dump(raw))

    def snakemake_cmd(results, *args):
        return [sys.executable, "-m", "snakemake", *args, "--cores", "2", "--configfile", "profile.yaml", "--config",
                f"results_dir={results}"]  # fmt: skip

    def run(results, *args):
        proc = subprocess.run(snakemake_cmd(results, *args), cwd=work, env=cli_env, capture_output=True, text=True,
                              timeout=900)  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout + proc.stderr

    target = "{}/smoke/runs/ebft/qa_code/model"
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run(straight, target.format(straight))

    run_dir = killed / "smoke/runs/ebft/qa_code"
    for prepared in ("models", "data"):  # the same prepared inputs, without building them twice
        shutil.copytree(straight / "smoke" / prepared, killed / "smoke" / prepared)
    proc = subprocess.Popen(snakemake_cmd(killed, target.format(killed)), cwd=work, env=cli_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 600
    while not (run_dir / "checkpoint/state.pt").is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.kill()  # SIGKILL: Snakemake gets no chance to stop its jobs
    proc.wait()
    assert trainer_processes(str(killed)), "the trainer should have been running when Snakemake was killed"
    deadline = time.time() + 15
    while trainer_processes(str(killed)) and time.time() < deadline:
        time.sleep(0.1)
    assert not trainer_processes(str(killed)), "the trainer ran on after Snakemake was killed"
    assert not (run_dir / "model").exists()
    done = torch.load(run_dir / "checkpoint/state.pt", weights_only=False)["step"]
    assert 1 <= done < 8

    with pytest.raises(AssertionError, match="LockException|locked"):
        run(killed, target.format(killed))
    run(killed, "--unlock")  # the README's recipe after a killed Snakemake
    run(killed, target.format(killed))  # rerun-incomplete comes from the workflow profile
    log = (killed / "smoke/logs/train_ebft/qa_code.log").read_text()
    resumed = int(re.search(r"ebft: resuming from step (\d+) of 8", log)[1])
    assert resumed >= done

    def rows(root):
        table = pd.read_csv(root / "smoke/runs/ebft/qa_code/train_metrics.csv")
        return table.drop(columns=TIMINGS)  # the wall-clock columns

    assert list(rows(killed)["step"]) == list(range(1, 9))
    pd.testing.assert_frame_equal(rows(killed), rows(straight))
    evals = [pd.read_csv(root / "smoke/runs/ebft/qa_code/eval_metrics.csv").drop(columns="train_wall_s")
             for root in (killed, straight)]  # fmt: skip
    assert sorted(set(evals[0]["step"])) == list(range(9))
    pd.testing.assert_frame_equal(*evals)
    a = safetensors(straight / "smoke/runs/ebft/qa_code/adapter/adapter_model.safetensors")
    b = safetensors(run_dir / "adapter/adapter_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_every_figure_the_report_can_draw_has_a_caption_for_snakemakes_html_report():
    """Regression: a figure without workflow/report/<caption>.rst makes `snakemake --report` fail."""
    from evals.metrics import figure_metrics, summary_figures

    kinds = {"ce", "fm", "code", "translation"}
    others = ["training_curves", "sweep_any", "heldout_gt_tokens", "heldout_compute"]
    for metric in figure_metrics(kinds, [1, 2, 4]) + summary_figures(kinds) + others:
        stem = "pass_at_k" if metric.startswith("pass@") else "sweep" if metric.startswith("sweep_") else metric
        assert (REPO / "workflow/report" / f"{stem}.rst").is_file(), metric


@pytest.mark.parametrize("processes", [1, 2])
def test_the_slurm_profile_validates_the_paper_study_in_a_dry_run(tmp_path, cli_env, processes):
    """`snakemake -n --profile profiles/slurm --configfile config/paper.yaml` on a machine without SLURM: every job
    is planned, the training jobs with their partition, memory, time and a GPU per process of the task's `launch`;
    SFT and EBFT start that many processes through accelerate, RLVR one. The 7B task's SFT and EBFT run sharded
    (FSDP) over a node of 8 GPUs whatever the global launch says, with their own host memory, and it has no RLVR."""
    launch = tmp_path / "launch.yaml"  # laid over the profile, as a user would: --configfile config/paper.yaml FILE
    launch.write_text(f"launch: {{processes: {processes}}}\n")
    cmd = [sys.executable, "-m", "snakemake", "-n", "--profile", "profiles/slurm", "--configfile", "config/paper.yaml",
           str(launch), "--config", f"results_dir={tmp_path}"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=cli_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert job_stats(out)["train_sweep"] == 78
    seen = set()
    for block in re.split(r"^(?=rule train_\w+:)", out, flags=re.M)[1:]:
        rule = re.match(r"rule (train_\w+):", block)[1]
        task = re.search(r"wildcards: .*\btask=(\w+)", block)[1]
        command = block.split("Shell command:", 1)[1].split("\n\n", 1)[0]
        seen.add((rule, task))
        big = task == "qa_code_7b"
        gpus = 1 if rule == "train_rlvr" else 8 if big else processes
        assert "slurm_partition=gpu" in block and "runtime=" in block, rule
        assert re.search(rf"\bgpu={gpus}\b", block), (rule, task)
        flags = f"--processes {gpus} --accelerate-config config/accelerate/ddp.yaml"
        assert (flags in command) == (gpus > 1), (rule, task)
        assert ("--strategy fsdp" in command) == big, (rule, task)
        if big:
            assert f"mem_mb={400000 if rule == 'train_sft' else 640000}" in block, rule
            assert "Qwen/Qwen2.5-7B" in command
    assert {("train_sft", "qa_code_7b"), ("train_ebft", "qa_code_7b")} <= seen
    assert ("train_rlvr", "qa_code_7b") not in seen and ("train_sweep", "qa_code_7b") not in seen


def test_the_cpu_profile_fixes_each_jobs_threads_and_sizes_its_memory(tmp_path, cli_env):
    """launch.threads: 1 gives every model job one thread whatever --cores is (so `--cores 2` runs two at once and
    the numbers do not depend on the machine's cores), and launch.memory_mb each rule's mem_mb, which a local run
    limits to the memory available."""
    from ebft.resolve import load_study

    launch = load_study(yaml.safe_load((REPO / "config/cpu.yaml").read_text())).profile.launch
    assert launch.threads == 1
    out = snakemake(cli_env, tmp_path, "-n", profile="cpu")
    sized = {}
    for block in out.split("\nrule ")[1:]:
        rule = block.split(":", 1)[0]
        task = re.search(r"wildcards: .*\btask=(\w+)", block)
        mb = launch.memory(rule, task and task[1])
        if mb is None:
            continue
        sized[(rule, task and task[1])] = mb
        assert re.search(r"threads: 1\b", block) or "threads:" not in block, rule  # Snakemake omits one thread
        assert re.search(rf"\bmem_mb={mb}\b", block), (rule, task and task[1])
    assert {rule for rule, _ in sized} == {"prepare_model", "train_sft", "train_ebft", "train_sweep", "train_rlvr",
                                           "eval_ce", "eval_fm", "eval_code", "eval_translation"}  # fmt: skip
    assert sized[("train_ebft", "translation")] > sized[("train_ebft", "qa_code")]  # a task's own value


FAKE_SLURM = {
    # sbatch runs the job at once, in the foreground, and records its arguments and final state
    "sbatch": """#!/bin/bash
echo "$@" >> "$FAKE_SLURM/sbatch.log"
id=$(( $(wc -l < "$FAKE_SLURM/sbatch.log") + 1000 ))
prev=""; out=/dev/null
for a in "$@"; do
  case "$a" in --wrap=*) wrap="${a#--wrap=}";; esac
  [ "$prev" = "--output" ] && out="${a//%j/$id}"; prev="$a"
done
mkdir -p "$(dirname "$out")"
if bash -c "$wrap" > "$out" 2>&1; then state=COMPLETED; else state=FAILED; fi
echo "$id|$state" >> "$FAKE_SLURM/states"
echo "$id"
""",
    "sacct": '#!/bin/bash\ncat "$FAKE_SLURM/states" 2>/dev/null\n',
    **{tool: "#!/bin/bash\n" for tool in ("squeue", "sinfo", "scontrol", "scancel")},  # present, silent
    # srun drops its own options (the jobstep plugin writes them as -n1 or --opt=value) and runs the rest
    "srun": """#!/bin/bash
echo "srun $*" >> "$FAKE_SLURM/srun.log"
while [ $# -gt 0 ] && [ "${1#-}" != "$1" ]; do shift; done
exec "$@"
""",
}


def test_the_slurm_profile_runs_a_training_job_through_sbatch_and_srun(tmp_path, cli_env):
    """A real (not dry) run of the SLURM profile against stand-ins for sbatch, sacct and srun that run each job here.

    Regression: under a cluster executor Snakemake has no --cores, and the rules that asked for "every core"
    (prepare_model, run where Snakemake runs) failed before the first job was submitted, which a dry run (cores = 1)
    never shows."""
    fake = tmp_path / "slurm"
    (fake / "bin").mkdir(parents=True)
    for name, text in FAKE_SLURM.items():
        (fake / "bin" / name).write_text(text)
        (fake / "bin" / name).chmod(0o755)
    env = {**cli_env, "FAKE_SLURM": str(fake), "PATH": f"{fake / 'bin'}:{cli_env['PATH']}"}
    results = tmp_path / "results"
    memory = tmp_path / "memory.yaml"  # a training job's host memory comes from the study profile, per task
    memory.write_text("launch: {memory_mb: {train_sft/qa_code: 123000, train_sft: 4000}}\n")
    cmd = [sys.executable, "-m", "snakemake", "--profile", "profiles/slurm", "--configfile", "config/smoke.yaml",
           str(memory), "--config", f"results_dir={results}", "--slurm-init-seconds-before-status-checks", "1",
           str(results / "smoke/runs/sft/qa_code/train_metrics.csv")]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (results / "smoke/runs/sft/qa_code/train_metrics.csv").is_file()
    assert (results / "smoke/models/tiny/config.json").is_file()  # prepare_model ran where Snakemake runs
    submitted = (fake / "sbatch.log").read_text().splitlines()
    assert len(submitted) == 1 and "rule_train_sft" in submitted[0], submitted  # only training went to the cluster
    for option in ("-p gpu", "--mem 123000", "--cpus-per-task=16", "--gpus=1", "-t 720"):
        assert option in submitted[0], option
    assert (fake / "states").read_text().split("|")[1].strip() == "COMPLETED"
    assert "--cpus-per-task=16" in (fake / "srun.log").read_text()
