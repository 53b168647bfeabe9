import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from ebft.errors import UserError
from evals.report import COLUMNS, collect, markdown_tables, read_metrics, write_outputs


def eval_record(path, task, method, value, metric="val_ce"):
    path.write_text(json.dumps({"task": task, "method": method, "config_hash": "abc", "git_sha": "123",
                                "metrics": [{"metric": metric, "value": value, "n": 100, "units": 4,
                                             "ci_low": value - 0.1, "ci_high": value + 0.1}]}))  # fmt: skip
    return path


def test_collect_builds_the_tidy_table_in_a_fixed_order(tmp_path):
    files = [eval_record(tmp_path / f"{t}_{m}.json", t, m, v) for t, m, v in
             [("translation", "sft", 2.0), ("qa_code", "sft", 1.5), ("qa_code", "base", 1.8)]]  # fmt: skip
    df = collect(files, "cpu")
    assert list(df.columns) == COLUMNS
    assert list(zip(df.task, df.method, strict=True)) == [
        ("qa_code", "base"),
        ("qa_code", "sft"),
        ("translation", "sft"),
    ]
    table = markdown_tables(df)
    assert "### qa_code\n\n| method | CE ↓ |" in table  # the paper's form: a table per task, a row per method
    assert "| base | 1.8000 [1.7000, 1.9000] |\n| sft | 1.5000 [1.4000, 1.6000] |" in table
    assert "### translation\n\n| method | CE ↓ |\n|---|---|\n| sft | 2.0000 [1.9000, 2.1000] |" in table


def test_table_and_figure_regenerate_from_the_csv_alone(tmp_path, cli_env):
    files = [eval_record(tmp_path / f"{m}.json", "qa_code", m, v) for m, v in [("base", 1.8), ("sft", 1.5)]]
    csv = tmp_path / "metrics.csv"
    df = collect(files, "cpu")
    assert write_outputs(df, metrics_csv=csv, table=tmp_path / "t1.md", figures_dir=tmp_path / "f1") == [
        tmp_path / "f1" / "val_ce.png"
    ]
    for f in files:
        f.unlink()
    proc = subprocess.run([sys.executable, "-m", "ebft.cli", "report", "--from-csv", str(csv), "--table",
                           str(tmp_path / "t2.md"), "--figures", str(tmp_path / "f2")], capture_output=True, text=True,
                          env=cli_env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "t2.md").read_text() == (tmp_path / "t1.md").read_text()
    assert (tmp_path / "f2" / "val_ce.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pd.testing.assert_frame_equal(read_metrics(csv), df, check_dtype=False)


def test_missing_inputs_are_one_sentence(tmp_path):
    with pytest.raises(UserError, match="is missing; run its eval rule first"):
        collect([tmp_path / "nope.json"], "cpu")
    with pytest.raises(UserError, match="does not exist; run the workflow's report rule first"):
        read_metrics(tmp_path / "metrics.csv")


def test_pass_at_k_and_no_verifier_rows_survive_the_csv_round_trip(tmp_path):
    specs = [("qa_code", m, v, k) for m, v in [("base", 0.1), ("rlvr", 0.2)] for k in ("pass@1", "pass@4")]
    specs += [("unstructured_code", "base", 0.05, "pass@1"), ("unstructured_code", "base", 0.1, "pass@4")]
    files = [eval_record(tmp_path / f"{i}.json", t, m, v, k) for i, (t, m, v, k) in enumerate(specs)]
    df = collect(files, "cpu", no_verifier=["unstructured_code"])
    table = markdown_tables(df)
    assert "| method | pass@1 ↑ | pass@4 ↑ |" in table
    assert (
        "### unstructured_code\n\n| method | pass@1 ↑ | pass@4 ↑ |\n|---|---|---|\n| base | 0.0500 [-0.0500, "
        "0.1500] | 0.1000 [0.0000, 0.2000] |\n| rlvr | n/a (no verifier) | n/a (no verifier) |" in table
    )
    figures = write_outputs(df, metrics_csv=tmp_path / "m.csv", table=tmp_path / "t.md", figures_dir=tmp_path / "f")
    assert [f.name for f in figures] == ["pass_at_1.png", "pass_at_4.png"]  # no CE: no trade-off figure
    again = read_metrics(tmp_path / "m.csv")
    assert markdown_tables(again) == table


def test_redrawing_from_a_csv_writes_beside_it_without_a_profile(tmp_path, cli_env):
    """`ebft report --from-csv` needs no profile and never writes into another profile's folder (the default
    profile's results stay untouched)."""
    folder = tmp_path / "other"
    folder.mkdir()
    files = [eval_record(tmp_path / f"{m}.json", "qa_code", m, v) for m, v in [("base", 1.8), ("sft", 1.5)]]
    collect(files, "other").to_csv(folder / "metrics.csv", index=False)
    proc = subprocess.run([sys.executable, "-m", "ebft.cli", "report", "--from-csv", str(folder / "metrics.csv")],
                          capture_output=True, text=True, env=cli_env, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "### qa_code" in (folder / "tables/main.md").read_text()
    assert (folder / "figures/val_ce.png").is_file()
    assert not (tmp_path / "results").exists()


def test_outputs_selects_what_is_written_so_each_figure_rebuilds_alone(tmp_path):
    """The workflow draws each figure in its own job: `only` writes exactly the outputs it names, and refuses a name
    these results have no output for, listing the ones they have."""
    files = [eval_record(tmp_path / f"{m}.json", "qa_code", m, v) for m, v in [("base", 1.8), ("sft", 1.5)]]
    files += [eval_record(tmp_path / f"{m}_fm.json", "qa_code", m, v, "fm_loss") for m, v in [("base", -0.5)]]
    df = collect(files, "cpu")
    out = {"metrics_csv": tmp_path / "r/metrics.csv", "table": tmp_path / "r/tables/main.md",
           "figures_dir": tmp_path / "r/figures"}  # fmt: skip
    assert write_outputs(df, **out, only=["fm_loss"]) == [tmp_path / "r/figures/fm_loss.png"]
    assert sorted(p.name for p in (tmp_path / "r").rglob("*") if p.is_file()) == ["fm_loss.png"]
    assert write_outputs(df, **out, only=["tables"]) == []
    assert (tmp_path / "r/tables/main.tex").is_file() and not (tmp_path / "r/metrics.csv").exists()
    with pytest.raises(UserError, match="no output pass_at_1; choose from csv, tables, val_ce, fm_loss"):
        write_outputs(df, **out, only=["pass_at_1"])


def test_the_paper_form_in_latex_and_the_trade_off_and_direction_figures(tmp_path):
    specs = [("qa_code", m, "val_ce", v) for m, v in [("base", 1.9), ("sft", 1.8), ("ebft", 1.85)]]
    specs += [("qa_code", m, "pass@1", v) for m, v in [("base", 0.04), ("sft", 0.05), ("ebft", 0.06)]]
    specs += [("translation", m, k, v) for m in ("base", "sft") for k, v in [("val_ce", 2.1), ("bleu", 12.5),
              ("chrf[de-en]", 40.0), ("chrf[en-de]", 35.0), ("chrf[en-xx]", 35.0)]]  # fmt: skip
    files = [eval_record(tmp_path / f"{i}.json", t, m, v, k) for i, (t, m, k, v) in enumerate(specs)]
    df = collect(files, "cpu")
    figures = write_outputs(df, metrics_csv=None, table=tmp_path / "t/main.md", figures_dir=tmp_path / "f")
    assert [f.name for f in figures] == ["val_ce.png", "bleu.png", "pass_at_1.png", "tradeoff.png",
                                         "translation_directions.png"]  # fmt: skip
    assert all(f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in figures)
    tex = (tmp_path / "t/main.tex").read_text()
    assert tex.count(r"\begin{tabular}") == 2 and r"\usepackage{booktabs}" in tex
    assert r"Method & pass@1 $\uparrow$ & CE $\downarrow$ \\" in tex
    assert r"EBFT & 0.0600 {\scriptsize [-0.0400, 0.1600]} & 1.8500 {\scriptsize [1.7500, 1.9500]} \\" in tex
    assert r"\multicolumn{3}{l}{\textbf{translation}}" in tex and "BLEU $\\uparrow$" in tex
    table = (tmp_path / "t/main.md").read_text()
    assert "| method | BLEU ↑ | CE ↓ |" in table and "de-en" not in table  # directions: metrics.csv and figure


def unit_record(path, task, method, metric, num, den, ids=None):
    value = sum(num) / sum(den)
    row = {
        "metric": metric,
        "value": value,
        "n": sum(den),
        "units": len(num),
        "ci_low": value - 0.1,
        "ci_high": value + 0.1,
        "unit_num": num,
        "unit_den": den,
        **({"unit_ids": ids} if ids else {}),
    }
    path.write_text(json.dumps({"task": task, "method": method, "config_hash": "h", "git_sha": "g",
                                "metrics": [row]}))  # fmt: skip
    return path


def test_claims_are_paired_verdicts_and_rebuild_from_the_collected_files(tmp_path, cli_env):
    import numpy as np

    rng = np.random.default_rng(0)
    den = rng.integers(100, 256, size=40).tolist()
    base = (np.array(den) * rng.uniform(1.5, 2.5, size=40)).tolist()
    shifted = {"base": 0.0, "sft": -0.10, "ebft": -0.12, "rlvr": 0.01}  # nats/token on every chunk
    ce = {m: (np.array(base) + shift * np.array(den)).tolist() for m, shift in shifted.items()}
    passed = {"base": [0.0] * 30 + [1.0] * 10, "sft": [0.0] * 30 + [1.0] * 10, "ebft": [0.0] * 30 + [1.0] * 10,
              "rlvr": [0.0] * 30 + [1.0] * 10}  # fmt: skip
    files = []
    for m in ce:
        files.append(unit_record(tmp_path / f"ce_{m}.json", "qa_code", m, "val_ce", ce[m], den))
        files.append(unit_record(tmp_path / f"code_{m}.json", "qa_code", m, "pass@1", passed[m], [1.0] * 40,
                                 [f"HumanEval/{i}" for i in range(40)]))  # fmt: skip
    out = tmp_path / "results/cpu"
    proc = subprocess.run([sys.executable, "-m", "ebft.cli", "report", "--config", "config/cpu.yaml",
                           *map(str, files), "--metrics-csv", str(out / "metrics.csv"), "--table",
                           str(out / "tables/main.md"), "--figures", str(out / "figures")],
                          capture_output=True, text=True, env=cli_env, cwd=Path(__file__).parent.parent)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    claims = (out / "tables/claims.md").read_text()
    assert "| qa_code | EBFT CE < SFT CE | supported | -0.0200 [-0.0200, -0.0200] |" in claims
    assert "| qa_code | RLVR CE > base CE | supported | +0.0100 [+0.0100, +0.0100] |" in claims
    assert "| qa_code | EBFT > SFT on pass@1 | inconclusive | +0.0000 [+0.0000, +0.0000] |" in claims
    assert "| qa_code | EBFT ≈ RLVR on pass@1 | supported |" in claims
    assert "| qa_code | val_ce | ebft − sft | -0.0200" in claims and "| qa_code | val_ce | sft − base |" in claims
    units = pd.read_csv(out / "units.csv")
    assert len(units) == 4 * 2 * 40 and set(units.metric) == {"val_ce", "pass@1"}
    before = claims
    (out / "tables/claims.md").unlink()
    proc = subprocess.run([sys.executable, "-m", "ebft.cli", "report", "--from-csv", str(out / "metrics.csv")],
                          capture_output=True, text=True, env=cli_env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (out / "tables/claims.md").read_text() == before


def test_verdicts_at_the_edges():
    from evals.claims import verdict_better, verdict_equal

    assert verdict_better((-0.1, -0.2, -0.01), lower_is_better=True) == "supported"
    assert verdict_better((0.1, 0.01, 0.2), lower_is_better=True) == "contradicted"
    assert verdict_better((0.0, -0.1, 0.1), lower_is_better=False) == "inconclusive"
    assert verdict_better(None, lower_is_better=False) == "not measured"
    assert verdict_equal((0.0, -0.01, 0.015), "pass@1") == "supported"  # within ±0.02
    assert verdict_equal((0.1, 0.05, 0.15), "pass@1") == "contradicted"  # wholly beyond the margin
    assert verdict_equal((0.02, -0.01, 0.05), "pass@1") == "inconclusive"


def test_every_claim_states_the_difference_it_could_have_detected():
    """Power: (z₀.₉₇₅ + z₀.₈₀) standard errors, the standard error read from the paired interval; an inconclusive
    claim's reading names it."""
    import math

    import pandas as pd

    from evals.claims import claims_markdown, detectable

    assert math.isclose(detectable(-1.959964, 1.959964), 1.959964 + 0.841621, rel_tol=1e-9)
    assert math.isclose(detectable(0.1, 0.3), 0.1 * (1.959964 + 0.841621) / 1.959964, rel_tol=1e-9)
    table = pd.DataFrame([
        {"task": "t", "claim": "EBFT > SFT on pass@1", "verdict": "inconclusive", "diff": 0.0, "ci_low": -0.03,
         "ci_high": 0.03, "detectable": detectable(-0.03, 0.03)},
        {"task": "t", "claim": "EBFT CE < SFT CE", "verdict": "supported", "diff": -0.1, "ci_low": -0.12,
         "ci_high": -0.08, "detectable": detectable(-0.12, -0.08)},
        {"task": "t", "claim": "EBFT CE < RLVR CE", "verdict": "not measured", "diff": None, "ci_low": None,
         "ci_high": None, "detectable": None},
    ])  # fmt: skip
    diffs = pd.DataFrame(columns=["task", "metric", "method", "reference", "diff", "ci_low", "ci_high", "units"])
    text = claims_markdown(table, diffs)
    assert "| t | EBFT > SFT on pass@1 | inconclusive | +0.0000 [-0.0300, +0.0300] | ±0.0429 |" in text
    assert "| t | EBFT CE < SFT CE | supported | -0.1000 [-0.1200, -0.0800] | ±0.0286 |" in text
    assert "| t | EBFT CE < RLVR CE | not measured | – | – |" in text
    assert "- t, EBFT > SFT on pass@1: inconclusive; a true difference smaller than about 0.0429" in text
    assert "EBFT CE < SFT CE: inconclusive" not in text


def test_training_curves_are_collected_and_redrawn_from_curves_csv(tmp_path, cli_env):
    runs = tmp_path / "runs"
    (runs / "ebft/qa_code").mkdir(parents=True)
    (runs / "sft/qa_code").mkdir(parents=True)
    (runs / "rlvr/qa_code").mkdir(parents=True)
    pd.DataFrame({"step": [1, 2, 3], "reward": [0.1, 0.2, 0.3], "alignment": [0.5, 0.6, 0.7],
                  "diversity": [0.1, 0.1, 0.1], "ce": [2.0, 1.9, 1.8], "lr": [0, 1e-4, 1e-4]}).to_csv(
        runs / "ebft/qa_code/train_metrics.csv", index=False)  # fmt: skip
    pd.DataFrame({"step": [1, 2], "loss": [2.1, 1.7]}).to_csv(runs / "sft/qa_code/train_metrics.csv", index=False)
    pd.DataFrame({"step": [1, 2], "loss": [0.1, 0.2], "reward": [0.12, 0.24]}).to_csv(
        runs / "rlvr/qa_code/train_metrics.csv", index=False)  # fmt: skip
    record = eval_record(tmp_path / "ce.json", "qa_code", "base", 1.9)
    out = tmp_path / "results/cpu"
    cmd = [
        sys.executable,
        "-m",
        "ebft.cli",
        "report",
        "--config",
        "config/cpu.yaml",
        str(record),
        "--train-metrics",
        *(str(p) for p in sorted(runs.glob("*/qa_code/train_metrics.csv"))),
        "--metrics-csv",
        str(out / "metrics.csv"),
        "--table",
        str(out / "tables/main.md"),
        "--figures",
        str(out / "figures"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=cli_env, cwd=Path(__file__).parent.parent)
    assert proc.returncode == 0, proc.stderr
    curves = pd.read_csv(out / "curves.csv")
    assert len(curves) == 3 * 4 + 2 + 2  # EBFT's four series, SFT's loss, RLVR's reward (not its loss)
    assert set(curves[curves.method == "rlvr"].series) == {"reward"}
    figure = out / "figures/training_curves.png"
    first = figure.read_bytes()
    figure.unlink()
    proc = subprocess.run([sys.executable, "-m", "ebft.cli", "report", "--from-csv", str(out / "metrics.csv")],
                          capture_output=True, text=True, env=cli_env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert figure.read_bytes() == first  # from curves.csv alone


def test_sweep_runs_land_in_the_tidy_table_with_their_settings_and_get_an_ablation_figure(tmp_path):
    """A sweep run's record carries its sweep and settings: metrics.csv gets them as columns (and survives the CSV
    round trip); the main table, its figures and the claims keep to the methods; the sweep gets its own figure."""
    files = [eval_record(tmp_path / f"{m}.json", "qa_code", m, v) for m, v in [("base", 1.8), ("sft", 1.5),
                                                                                ("ebft", 1.6)]]  # fmt: skip
    for i, (whitening, gamma, value) in enumerate([("paper", 0.0, 1.7), ("paper", 0.1, 1.6), ("none", 0.0, 1.75),
                                                   ("none", 0.1, 1.65)]):  # fmt: skip
        for metric, v in (("val_ce", value), ("pass@1", value / 10)):
            path = eval_record(tmp_path / f"s{i}_{metric}.json", "qa_code", f"ab/whitening-{whitening}_gamma-{gamma}",
                               v, metric)  # fmt: skip
            rec = json.loads(path.read_text())
            rec["sweep"] = {"name": "ab", "whitening": whitening, "gamma": gamma}
            path.write_text(json.dumps(rec))
            files.append(path)
    df = collect(files, "cpu")
    assert list(df.columns)[-3:] == ["sweep", "sweep.whitening", "sweep.gamma"]
    sweep_rows = df[df["sweep"] == "ab"]
    assert len(sweep_rows) == 8 and set(sweep_rows["sweep.gamma"]) == {0.0, 0.1}
    out = {"metrics_csv": tmp_path / "r/metrics.csv", "table": tmp_path / "r/tables/main.md",
           "figures_dir": tmp_path / "r/figures"}  # fmt: skip
    written = write_outputs(df, **out)
    assert tmp_path / "r/figures/sweep_ab.png" in written
    assert (tmp_path / "r/figures/sweep_ab.png").stat().st_size > 1000
    table = (tmp_path / "r/tables/main.md").read_text()
    assert "ab/" not in table and "| ebft |" in table
    again = read_metrics(tmp_path / "r/metrics.csv")
    assert len(again[again["sweep"] == "ab"]) == 8 and again["sweep"].fillna("").eq("").sum() == 3
    assert write_outputs(again, **{**out, "metrics_csv": None}, only=["sweep_ab"]) == [
        tmp_path / "r/figures/sweep_ab.png"
    ]
