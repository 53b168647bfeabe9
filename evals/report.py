"""Collect per-run evaluation records into one tidy table, then tables and figures as pure functions of it.

``metrics.csv`` has one row per (task, method, metric): value, n (units the value averages over: tokens for CE,
problems for pass@k), ci_low/ci_high (95 % bootstrap), the hash of the config that produced it, the git commit, and a
note where a method has no value by design (RLVR on a task without a verifier: "n/a (no verifier)").
Regenerate tables and figures from that file alone with ``ebft report --from-csv``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ebft.errors import UserError
from ebft.paths import atomic_write
from evals import metrics
from evals.metrics import metric_order, table_metrics

COLUMNS = ["profile", "task", "method", "metric", "value", "n", "ci_low", "ci_high", "config_hash", "git_sha", "note"]
NO_VERIFIER = "n/a (no verifier)"
METHOD_ORDER = ["base", "sft", "rlvr", "ebft"]
TASK_ORDER = ["qa_code", "unstructured_code", "translation"]


def metric_info(name: str) -> tuple[str, bool]:
    """(label, lower is better) of a declared metric."""
    m = metrics.metric(name)
    return m.label, m.lower_is_better


def collect(eval_files: list[Path], profile: str, no_verifier: list[str] = ()) -> pd.DataFrame:
    """Tidy rows from evaluation records; RLVR rows marked "n/a (no verifier)" for the ``no_verifier`` tasks."""
    rows = []
    for path in eval_files:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"evaluation record {path} is missing; run its eval rule first.")
        try:
            rec = json.loads(path.read_text())
            rec["task"], rec["method"], rec["metrics"]  # noqa: B018  (the fields every record has)
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UserError(f"{path} is not an evaluation record; delete it and rerun its eval rule.") from None
        if rec.get("profile", profile) != profile:
            raise UserError(f"{path} is a record of profile {rec['profile']!r}, not {profile!r}; collect each "
                            f"profile's records with its own --config.")  # fmt: skip
        for m in rec["metrics"]:
            rows.append({"profile": profile, "task": rec["task"], "method": rec["method"], "metric": m["metric"],
                         "value": m["value"], "n": m["n"], "ci_low": m["ci_low"], "ci_high": m["ci_high"],
                         "config_hash": rec["config_hash"], "git_sha": rec["git_sha"],
                         "note": m.get("note", "")})  # fmt: skip
    for task in no_verifier:
        for metric in sorted({r["metric"] for r in rows if r["task"] == task}):
            rows.append({"profile": profile, "task": task, "method": "rlvr", "metric": metric, "value": float("nan"),
                         "n": 0, "ci_low": float("nan"), "ci_high": float("nan"), "config_hash": "", "git_sha": "",
                         "note": NO_VERIFIER})  # fmt: skip
    return _ordered(pd.DataFrame(rows, columns=COLUMNS))


def _ordered(df: pd.DataFrame) -> pd.DataFrame:
    def rank(order):
        return lambda s: s.map(lambda v: order.index(v) if v in order else len(order))

    df = df.sort_values("metric").sort_values("method", key=rank(METHOD_ORDER), kind="stable")
    return df.sort_values("task", key=rank(TASK_ORDER), kind="stable").reset_index(drop=True)


def read_metrics(path: Path) -> pd.DataFrame:
    if not Path(path).is_file():
        raise UserError(f"{path} does not exist; run the workflow's report rule first.")
    df = pd.read_csv(
        path,
        keep_default_na=False,
        na_values=[""],
        dtype={
            "profile": str,
            "task": str,
            "method": str,
            "metric": str,
            "config_hash": str,
            "git_sha": str,
            "note": str,
        },
    )  # fmt: skip  (a hash of digits only must stay a string)
    if "note" not in df.columns:  # written before notes existed
        df["note"] = ""
    df["note"] = df["note"].fillna("")
    df[["config_hash", "git_sha"]] = df[["config_hash", "git_sha"]].fillna("")
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise UserError(f"{path} lacks the columns {', '.join(missing)}; regenerate it with the report rule.")
    if df.empty:
        raise UserError(f"{path} holds no metric rows, so there is nothing to draw; rerun the report rule.")
    return _ordered(df)


def check_destination(df: pd.DataFrame, target: Path) -> None:
    """Refuse to write ``df``'s tables or figures where another profile's results are: the folder of ``target`` (or
    the one above a ``tables/`` or ``figures/`` folder) holding a metrics.csv of other profiles."""
    target = Path(target)
    folder = target if target.suffix == "" else target.parent
    for root in (folder, folder.parent):
        existing = root / "metrics.csv"
        if not existing.is_file():
            continue
        try:
            theirs = set(pd.read_csv(existing, usecols=["profile"], dtype=str)["profile"].dropna())
        except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError):
            theirs = set()
        ours = set(df["profile"].astype(str))
        if theirs and theirs != ours:
            raise UserError(
                f"{target} is in the results of profile {', '.join(sorted(theirs))} ({existing}), but "
                f"these metrics are of {', '.join(sorted(ours))}; pass --out to write them elsewhere."
            )
        return


def _present(values, order):
    return [v for v in order if v in set(values)] + sorted(set(values) - set(order))


def markdown_tables(df: pd.DataFrame) -> str:
    """One table per metric: a row per task, a column per method, 'value [ci_low, ci_high]' in each cell."""
    parts = []
    for metric in table_metrics(df["metric"]):
        label, lower = metric_info(metric)
        sub = df[df["metric"] == metric]
        methods = _present(sub["method"], METHOD_ORDER)
        arrow = " (lower is better)" if lower else " (higher is better)"
        lines = [f"### {label}{arrow}", "", "| task | " + " | ".join(methods) + " |",
                 "|---|" + "---|" * len(methods)]  # fmt: skip
        for task in _present(sub["task"], TASK_ORDER):
            cells = []
            for method in methods:
                hit = sub[(sub["task"] == task) & (sub["method"] == method)]
                if hit.empty:
                    cells.append("–")
                elif hit.iloc[0].note:
                    cells.append(hit.iloc[0].note)
                else:
                    r = hit.iloc[0]
                    cells.append(f"{r.value:.4f} [{r.ci_low:.4f}, {r.ci_high:.4f}]")
            lines.append(f"| {task} | " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    hashes = ", ".join(sorted(set(df["git_sha"].astype(str)) - {""}))
    footer = f"Values with 95 % bootstrap intervals. Profile: {', '.join(sorted(set(df['profile'])))}; git: {hashes}."
    return "\n\n".join(parts) + "\n\n" + footer + "\n"


def plot_metric(df: pd.DataFrame, metric: str, path: Path) -> None:
    """Grouped bars (task × method) of one metric with its 95 % intervals; rows with a note are labelled instead."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    everything = df[df["metric"] == metric]
    sub = everything[everything["value"].notna()]
    if sub.empty:
        raise UserError(f"the results have no {metric!r} rows to plot; run the evaluations first.")
    tasks = _present(everything["task"], TASK_ORDER)
    methods = _present(everything["method"], METHOD_ORDER)
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(2.4 + 2.2 * len(tasks), 3.6))
    for j, method in enumerate(methods):
        xs, ys, lo, hi = [], [], [], []
        for i, task in enumerate(tasks):
            x = i + (j - (len(methods) - 1) / 2) * width
            hit = everything[(everything["task"] == task) & (everything["method"] == method)]
            if hit.empty:
                continue
            r = hit.iloc[0]
            if pd.isna(r.value):
                ax.text(x, 0, f" {r.note}", rotation=90, ha="center", va="bottom", fontsize=7, color="0.4")
                continue
            xs.append(x)
            ys.append(r.value)
            lo.append(r.value - r.ci_low)
            hi.append(r.ci_high - r.value)
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=method, color=f"C{METHOD_ORDER.index(method) % 10}"
               if method in METHOD_ORDER else None)  # fmt: skip
    ax.set_xticks(range(len(tasks)), tasks)
    label = metric_info(metric)[0]
    ax.set_ylabel(label if len(label) < 45 else metric)
    ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    partial = Path(path).with_name(Path(path).name + ".partial")
    fig.savefig(partial, dpi=120, format=Path(path).suffix.lstrip(".") or "png")
    plt.close(fig)
    partial.replace(path)


def write_outputs(df: pd.DataFrame, *, metrics_csv: Path | None, table: Path, figures_dir: Path) -> list[Path]:
    """Write the CSV (unless regenerating from it), the markdown tables and one figure per metric; return figures."""
    from ebft.paths import figure_name

    if metrics_csv is not None:
        atomic_write(Path(metrics_csv), df.to_csv(index=False))
    atomic_write(Path(table), markdown_tables(df))
    written = []
    for name in metric_order(df["metric"]):
        if metrics.metric(name).figure:
            plot_metric(df, name, Path(figures_dir) / figure_name(name))
            written.append(Path(figures_dir) / figure_name(name))
    return written
