"""Collect per-run evaluation records into one tidy table, then tables and figures as pure functions of it.

``metrics.csv`` has one row per (task, method, metric): value, n (units the value averages over: tokens for CE,
problems for pass@k), ci_low/ci_high (95 % bootstrap), the hash of the config that produced it, the git commit, and a
note where a method has no value by design (RLVR on a task without a verifier: "n/a (no verifier)").
Regenerate tables and figures from that file alone with ``ebft report --from-csv``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from ebft.errors import UserError
from ebft.paths import atomic_write
from evals import metrics
from evals.metrics import metric_order, table_metrics

COLUMNS = ["profile", "task", "method", "metric", "value", "n", "ci_low", "ci_high", "config_hash", "git_sha", "note"]
NO_VERIFIER = "n/a (no verifier)"
METHOD_ORDER = ["base", "sft", "rlvr", "ebft"]
TASK_ORDER = ["qa_code", "unstructured_code", "translation"]  # the built-in tasks first; a profile's own follow by name


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
        sweep = _sweep_columns(rec.get("sweep"))
        for m in rec["metrics"]:
            rows.append({"profile": profile, "task": rec["task"], "method": rec["method"], "metric": m["metric"],
                         "value": m["value"], "n": m["n"], "ci_low": m["ci_low"], "ci_high": m["ci_high"],
                         "config_hash": rec["config_hash"], "git_sha": rec["git_sha"],
                         "note": m.get("note", ""), **sweep})  # fmt: skip
    for task in no_verifier:
        for metric in sorted({r["metric"] for r in rows if r["task"] == task}):
            rows.append({"profile": profile, "task": task, "method": "rlvr", "metric": metric, "value": float("nan"),
                         "n": 0, "ci_low": float("nan"), "ci_high": float("nan"), "config_hash": "", "git_sha": "",
                         "note": NO_VERIFIER})  # fmt: skip
    extra = list(dict.fromkeys(k for r in rows for k in r if k not in COLUMNS))  # a sweep's name and settings
    return _ordered(pd.DataFrame(rows, columns=COLUMNS + extra))


def _sweep_columns(sweep: dict | None) -> dict:
    """A sweep run's columns: ``sweep`` (its name) and one per swept setting (lists joined by '+')."""
    if not sweep:
        return {}
    text = {k: "+".join(map(str, v)) if isinstance(v, list) else v for k, v in sweep.items() if k != "name"}
    return {"sweep": sweep["name"], **{f"sweep.{k}": v for k, v in text.items()}}


def main_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The methods' rows, without the sweep runs' (the main table, its figures and the claims compare methods)."""
    if "sweep" not in df.columns:
        return df
    return df[df["sweep"].isna() | (df["sweep"] == "")].reset_index(drop=True)


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
            "sweep": str,
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
    _check_numbers(df, path)
    return _ordered(df)


def _check_numbers(df: pd.DataFrame, path: Path) -> None:
    """Every value, n and interval bound of a metrics.csv a number (or empty), and every value inside its interval;
    else one sentence naming the file's line (the header is line 1) and the column."""
    for column in ("value", "n", "ci_low", "ci_high"):
        numbers = pd.to_numeric(df[column], errors="coerce")
        bad = numbers.isna() & df[column].notna()
        if bad.any():
            i = int(bad.to_numpy().nonzero()[0][0])
            raise UserError(f"{path} line {i + 2}: {column} is {df[column].iloc[i]!r}, not a number; fix that cell or "
                            f"regenerate the file with the report rule.")  # fmt: skip
        df[column] = numbers
    slack = 1e-9 * np.maximum(1.0, df["value"].abs())
    outside = (df["value"] < df["ci_low"] - slack) | (df["value"] > df["ci_high"] + slack)
    if outside.any():
        i = int(outside.to_numpy().nonzero()[0][0])
        r = df.iloc[i]
        raise UserError(f"{path} line {i + 2}: the value {r.value:g} of {r.task}/{r.method} {r.metric} lies outside "
                        f"its own interval [{r.ci_low:g}, {r.ci_high:g}]; fix that row or regenerate the file with the "
                        f"report rule.")  # fmt: skip


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


def _cell(r, digits: int, low_high=("[", "]")) -> str:
    if r.note:
        return r.note
    return f"{r.value:.{digits}f} {low_high[0]}{r.ci_low:.{digits}f}, {r.ci_high:.{digits}f}{low_high[1]}"


def _task_rows(df: pd.DataFrame):
    """Per task, in order: (task, its main-table metrics, its methods, {(method, metric): row})."""
    shown = df[df["metric"].map(lambda m: metrics.metric(m).table)]
    for task in _present(shown["task"], TASK_ORDER):
        sub = shown[shown["task"] == task]
        cells = {(r.method, r.metric): r for r in sub.itertuples()}
        yield task, table_metrics(sub["metric"]), _present(sub["method"], METHOD_ORDER), cells


def _header(name: str) -> str:
    m = metrics.metric(name)
    return f"{m.short or name} {'↓' if m.lower_is_better else '↑'}"


def markdown_tables(df: pd.DataFrame) -> str:
    """The paper's form: one table per task, a row per method (base, SFT, RLVR, EBFT), a column per metric
    (downstream accuracy, then validation CE and the feature-matching loss), 'value [ci_low, ci_high]' in each cell."""
    parts, labels = [], {}
    for task, names, methods, cells in _task_rows(df):
        lines = [f"### {task}", "", "| method | " + " | ".join(_header(n) for n in names) + " |",
                 "|---|" + "---|" * len(names)]  # fmt: skip
        for method in methods:
            row = [_cell(cells[method, n], metrics.metric(n).digits) if (method, n) in cells else "–" for n in names]
            lines.append(f"| {method} | " + " | ".join(row) + " |")
        parts.append("\n".join(lines))
        labels.update({n: metrics.metric(n) for n in names})
    legend = "; ".join(f"{m.short or m.name}: {m.label}" for m in labels.values())
    hashes = ", ".join(sorted(set(df["git_sha"].astype(str)) - {""}))
    footer = (f"{legend}. ↓ lower is better, ↑ higher is better. Values with 95 % bootstrap intervals. "
              f"Profile: {', '.join(sorted(set(df['profile'])))}; git: {hashes}.")  # fmt: skip
    return "\n\n".join(parts) + "\n\n" + footer + "\n"


LATEX_METHODS = {"base": "Base", "sft": "SFT", "rlvr": "RLVR", "ebft": "EBFT"}


def _latex(text: str) -> str:
    return text.replace("_", r"\_").replace("%", r"\%").replace("↓", r"$\downarrow$").replace("↑", r"$\uparrow$")


def latex_table(df: pd.DataFrame) -> str:
    """The paper-form table for LaTeX (booktabs): one block per task, a row per method, intervals in small type."""
    blocks = []
    for task, names, methods, cells in _task_rows(df):
        lines = [r"\begin{tabular}{l" + "c" * len(names) + "}", r"\toprule",
                 rf"\multicolumn{{{len(names) + 1}}}{{l}}{{\textbf{{{_latex(task)}}}}} \\",
                 "Method & " + " & ".join(_latex(_header(n)) for n in names) + r" \\", r"\midrule"]  # fmt: skip
        for method in methods:
            row = []
            for n in names:
                if (method, n) not in cells:
                    row.append("--")
                    continue
                r = cells[method, n]
                small = (r"{\scriptsize [", "]}")
                row.append(_latex(r.note) if r.note else _latex(_cell(r, metrics.metric(n).digits, small)))
            lines.append(f"{LATEX_METHODS.get(method, _latex(method))} & " + " & ".join(row) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}"]
        blocks.append("\n".join(lines))
    body = "\n\\par\\medskip\n".join(blocks)
    return (
        "% Written by `ebft report` from metrics.csv; needs \\usepackage{booktabs}.\n\\begin{table}[t]\n"
        f"\\centering\\small\n{body}\n\\caption{{Values with 95\\% bootstrap intervals. Profile: "
        f"{_latex(', '.join(sorted(set(df['profile']))))}.}}\n\\end{{table}}\n"
    )


def plot_metric(df: pd.DataFrame, metric: str, path: Path) -> None:
    """Grouped bars (task × method) of one metric with its 95 % intervals; rows with a note are labelled instead."""
    plt = _pyplot()
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
    _save(fig, path)


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    partial = Path(path).with_name(Path(path).name + ".partial")
    fig.savefig(partial, dpi=120, format="png")
    plt.close(fig)
    partial.replace(path)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_tradeoff(df: pd.DataFrame, path: Path) -> None:
    """The paper's headline trade-off: validation CE (x) against the task's first downstream metric (y), one panel
    per task with one, one point per method with both intervals."""
    plt = _pyplot()
    panels = []
    for task, names, methods, cells in _task_rows(df):
        down = [n for n in names if metrics.metric(n).kind in metrics.DOWNSTREAM_KINDS]
        if down and "val_ce" in names:
            panels.append((task, down[0], methods, cells))
    if not panels:
        raise UserError("the results have no task with both validation CE and a downstream metric to plot.")
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels) + 1.2, 3.4), squeeze=False)
    for ax, (task, down, methods, cells) in zip(axes[0], panels, strict=True):
        for method in methods:
            ce, acc = cells.get((method, "val_ce")), cells.get((method, down))
            if ce is None or acc is None or ce.note or acc.note:
                continue
            color = f"C{METHOD_ORDER.index(method) % 10}" if method in METHOD_ORDER else None
            ax.errorbar(ce.value, acc.value, xerr=[[ce.value - ce.ci_low], [ce.ci_high - ce.value]],
                        yerr=[[acc.value - acc.ci_low], [acc.ci_high - acc.value]], fmt="o", capsize=3,
                        color=color, label=method)  # fmt: skip
        ax.set_title(task)
        ax.set_xlabel("validation CE (nats/token) ←")
        ax.set_ylabel(f"{metrics.metric(down).short} →")
        ax.spines[["top", "right"]].set_visible(False)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, frameon=False, loc="center right")
    fig.tight_layout(rect=(0, 0, 1 - 0.9 / fig.get_size_inches()[0], 1))
    _save(fig, path)


def plot_directions(df: pd.DataFrame, path: Path) -> None:
    """Translation chrF++ per direction (one sample at T = 0.6), a bar per method with its interval."""
    plt = _pyplot()
    rows = df[
        df["metric"].str.match(r"^chrf\[[a-zA-Z_]+-[a-zA-Z_]+\]$") & ~df["metric"].isin(["chrf[en-xx]", "chrf[xx-en]"])
    ]
    rows = rows[rows["value"].notna()]
    if rows.empty:
        raise UserError("the results have no per-direction translation scores to plot; run eval_translation first.")
    directions = sorted(set(rows["metric"].str.slice(5, -1)))
    methods = _present(rows["method"], METHOD_ORDER)
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(2.4 + 1.1 * len(directions) * max(1, len(methods) / 3), 3.4))
    for j, method in enumerate(methods):
        sub = rows[rows["method"] == method].set_index("metric")
        xs = [i + (j - (len(methods) - 1) / 2) * width for i, d in enumerate(directions) if f"chrf[{d}]" in sub.index]
        hit = [sub.loc[f"chrf[{d}]"] for d in directions if f"chrf[{d}]" in sub.index]
        ax.bar(xs, [h.value for h in hit], width, yerr=[[h.value - h.ci_low for h in hit],
               [h.ci_high - h.value for h in hit]], capsize=2, label=method,
               color=f"C{METHOD_ORDER.index(method) % 10}" if method in METHOD_ORDER else None)  # fmt: skip
    ax.set_xticks(range(len(directions)), [d.replace("-", "→") for d in directions])
    ax.set_ylabel("chrF++ (one sample, T = 0.6)")
    ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    _save(fig, path)


def plot_sweep(df: pd.DataFrame, sweep: str, path: Path) -> None:
    """A sweep's ablation figure: per task (rows) and metric (columns: validation CE, the first downstream metric, the
    FM loss), each run's value with its 95 % interval against the first swept setting, a line per combination of the
    others; the methods' EBFT, SFT and base values as dashed references."""
    plt = _pyplot()
    rows = df[(df.get("sweep") == sweep) & df["value"].notna()]
    if rows.empty:
        raise UserError(f"the results have no rows of sweep {sweep!r}; run its evaluations first.")
    keys = [c for c in df.columns if c.startswith("sweep.") and rows[c].notna().any()]
    varying = [k for k in keys if rows[k].nunique() > 1] or keys
    x_key, series_keys = varying[0], [k for k in varying[1:]]
    tasks = _present(rows["task"], TASK_ORDER)
    names = set(rows["metric"])
    down = [m for m in metric_order(names) if metrics.metric(m).kind in metrics.DOWNSTREAM_KINDS]
    columns = [m for m in ["val_ce", *down[:1], "fm_loss"] if m in names]
    fig, axes = plt.subplots(len(tasks), len(columns), figsize=(3.4 * len(columns) + 1.6, 2.9 * len(tasks)),
                             squeeze=False)  # fmt: skip
    reference = main_rows(df)
    for i, task in enumerate(tasks):
        for j, metric in enumerate(columns):
            ax = axes[i][j]
            sub = rows[(rows["task"] == task) & (rows["metric"] == metric)]
            values = sorted(sub[x_key].unique(), key=_sortable)
            xs = {v: k for k, v in enumerate(values)}
            groups = sub.groupby(series_keys, dropna=False) if series_keys else [((), sub)]
            for g, (label, part) in enumerate(groups):
                part = part.sort_values(x_key, key=lambda col: col.map(_sortable))
                name = ", ".join(f"{k.removeprefix('sweep.')} {v}" for k, v in zip(series_keys, np.atleast_1d(label),
                                                                                  strict=True)) or sweep  # fmt: skip
                offset = (g - (len(groups) - 1) / 2) * 0.06
                ax.errorbar([xs[v] + offset for v in part[x_key]], part["value"],
                            yerr=[part["value"] - part["ci_low"], part["ci_high"] - part["value"]], fmt="o-",
                            capsize=3, label=name)  # fmt: skip
            for method, color, dash in (("ebft", "0.2", "--"), ("sft", "0.45", ":"), ("base", "0.65", "-.")):
                hit = reference[(reference["task"] == task) & (reference["method"] == method)
                                & (reference["metric"] == metric) & reference["value"].notna()]  # fmt: skip
                if not hit.empty:
                    ax.axhline(hit.iloc[0].value, ls=dash, lw=1, color=color, label=f"{method} (method)")
            ax.set_xticks(range(len(values)), [str(v) for v in values])
            ax.set_xlabel(x_key.removeprefix("sweep."))
            ax.set_title(f"{task}: {metrics.metric(metric).short or metric}", fontsize=9)
            ax.spines[["top", "right"]].set_visible(False)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, frameon=False, loc="center right", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1 - 1.5 / fig.get_size_inches()[0], 1))
    _save(fig, path)


def _sortable(value):
    """Numbers in numeric order before words."""
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


def figure_drawers(df: pd.DataFrame, curves: pd.DataFrame | None = None) -> dict[str, Callable[[Path], None]]:
    """Every figure these results give, by file stem: one per drawn metric, the summary figures and, with curves,
    the training curves. Each draws from the collected tables alone."""
    from ebft.paths import figure_name

    drawers = {}
    methods = main_rows(df)
    for name in metric_order(methods["metric"]):
        if metrics.metric(name).figure:
            drawers[figure_name(name).removesuffix(".png")] = partial(plot_metric, methods, name)
    kinds = {metrics.metric(m).kind for m in methods["metric"]}
    for name in metrics.summary_figures(kinds):
        drawers[name] = partial({"tradeoff": plot_tradeoff, "translation_directions": plot_directions}[name], methods)
    if "sweep" in df.columns:
        for sweep in sorted(df["sweep"].dropna().unique()):
            if sweep:
                drawers[f"sweep_{sweep}"] = partial(plot_sweep, df, sweep)
    if curves is not None and not curves.empty:
        from evals.curves import plot_curves

        drawers["training_curves"] = partial(plot_curves, curves)
    from evals.curves import has_held_out, plot_held_out

    if has_held_out(curves):
        drawers["heldout_gt_tokens"] = partial(plot_held_out, curves, "gt_tokens")
        drawers["heldout_compute"] = partial(plot_held_out, curves, "train_flops")
    return drawers


def write_outputs(df: pd.DataFrame, *, metrics_csv: Path | None, table: Path, figures_dir: Path,
                  latex: Path | None = None, units: pd.DataFrame | None = None, units_csv: Path | None = None,
                  claims_table: Path | None = None, curves: pd.DataFrame | None = None,
                  curves_csv: Path | None = None, only: Sequence[str] | None = None) -> list[Path]:  # fmt: skip
    """Write the CSVs (unless regenerating from them), the markdown table (and its LaTeX twin, by default beside it as
    main.tex) with the claims table, and every figure; return the figures. ``only`` selects: 'csv', 'tables' and
    figure names (the workflow builds each in its own job, so one deleted figure rebuilds alone)."""
    drawers = figure_drawers(df, curves)
    wanted = set(only) if only is not None else {"csv", "tables", *drawers}
    unknown = wanted - {"csv", "tables", *drawers}
    if unknown:
        raise UserError(f"these results have no output {', '.join(sorted(unknown))}; choose from csv, tables, "
                        f"{', '.join(drawers)}.")  # fmt: skip
    if "csv" in wanted:
        for path, frame in ((metrics_csv, df), (units_csv, units), (curves_csv, curves)):
            if path is not None and frame is not None:
                atomic_write(Path(path), frame.to_csv(index=False))
    if "tables" in wanted:
        methods = main_rows(df)
        atomic_write(Path(table), markdown_tables(methods))
        atomic_write(Path(latex) if latex else Path(table).with_suffix(".tex"), latex_table(methods))
        if units is not None and claims_table is not None:
            from evals.claims import claims, claims_markdown, differences, matched_claims

            atomic_write(Path(claims_table), claims_markdown(claims(methods, units), differences(units),
                                                             matched_claims(units, curves)))  # fmt: skip
    written = []
    for name, draw in drawers.items():
        if name in wanted:
            draw(Path(figures_dir) / f"{name}.png")
            written.append(Path(figures_dir) / f"{name}.png")
    return written
