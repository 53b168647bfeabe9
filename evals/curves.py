"""Training curves: the per-step metrics of every training run, collected into ``curves.csv`` beside ``metrics.csv``
and drawn as ``figures/training_curves.png`` (a row per task, a column per method), from that file alone.

Series drawn: EBFT's reward, alignment, diversity and CE on its ground-truth chunks; SFT's loss (the same teacher-forced
CE on its training chunks); RLVR's mean reward (unit tests passed, or sentence chrF / 100).

Held-out curves: where a method evaluates during training (its ``eval_every``, :mod:`ebft.during`), ``curves.csv``
also holds its held-out validation CE and FM loss at each evaluated step, with their 95 % intervals and the budgets
spent (:data:`ebft.during.BUDGETS`), drawn against ground-truth tokens (``figures/heldout_gt_tokens.png``) and
against training compute (``figures/heldout_compute.png``), every method on one plot per task and metric. The
per-chunk values of the evaluations at matched budgets go into ``units.csv`` as the metrics ``<metric>@<budget>``
(:func:`held_out_units`), for the matched-budget claims of :mod:`evals.claims`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ebft.during import BUDGETS
from ebft.errors import UserError

SERIES = {"ebft": ["reward", "alignment", "diversity", "ce"], "sft": ["loss"], "rlvr": ["reward"]}
COLUMNS = ["task", "method", "step", "series", "value"]
HELD_OUT_COLUMNS = ["ci_low", "ci_high", *BUDGETS, "matched"]  # only where some method evaluates during training
HELD_OUT = ("val_ce", "fm_loss")  # drawn against the budgets
DOWNSTREAM = ("pass@1", "bleu", "chrf")  # the first scored during training is drawn too
AXES = {"gt_tokens": "ground-truth tokens seen", "train_flops": "training compute (FLOPs, estimated)"}


def collect_curves(files: list[Path], eval_files: list[Path] = ()) -> pd.DataFrame:
    """Tidy rows from runs/<method>/<task>/train_metrics.csv files (the method and task are read from the path), and
    the held-out evaluations of the runs/<method>/<task>/eval_metrics.csv files (none where a run did not evaluate)."""
    frames = []
    for path in map(Path, files):
        if not path.is_file():
            raise UserError(f"training metrics {path} are missing; run the training rule that writes them first.")
        method, task = path.parent.parent.name, path.parent.name
        table = pd.read_csv(path)
        keep = [s for s in SERIES.get(method, []) if s in table.columns]
        if "step" not in table.columns or not keep:
            continue
        long = table[["step", *keep]].melt(id_vars="step", var_name="series", value_name="value")
        frames.append(long.assign(task=task, method=method)[COLUMNS])
    train = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)
    held = [_held_out(Path(p)) for p in eval_files]
    held = [h for h in held if not h.empty]
    if not held:
        return train
    out = pd.concat([train, *held], ignore_index=True)[COLUMNS + HELD_OUT_COLUMNS]
    return out.astype({"gt_tokens": "Int64", "rollout_tokens": "Int64"})


def _held_out(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise UserError(f"evaluations during training {path} are missing; run the training rule that writes them "
                        f"first.")  # fmt: skip
    table = pd.read_csv(path, dtype={"matched": str}, keep_default_na=False, na_values={"value": [""]})
    if table.empty:
        return table
    method, task = path.parent.parent.name, path.parent.name
    return table.rename(columns={"metric": "series"}).assign(task=task, method=method)[COLUMNS + HELD_OUT_COLUMNS]


def held_out_units(eval_files: list[Path], profile: str) -> pd.DataFrame:
    """units.csv rows of the evaluations at matched budgets: per chunk, the metric as ``<metric>@<budget axis>``."""
    from evals.claims import UNIT_COLUMNS, unit_rows

    rows = []
    for path in map(Path, eval_files):
        units = path.with_name("eval_units.json")
        if not units.is_file():
            raise UserError(f"{units} is missing beside {path.name}; rerun the training rule that writes both.")
        method, task = path.parent.parent.name, path.parent.name
        for u in json.loads(units.read_text()):
            for axis in filter(None, u.get("matched", "").split("+")):
                rows += unit_rows(profile, task, method, {**u, "metric": f"{u['metric']}@{axis}"})
    return pd.DataFrame(rows, columns=UNIT_COLUMNS)


def read_curves(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"task": str, "method": str, "series": str, "matched": str})


def has_held_out(curves: pd.DataFrame | None) -> bool:
    return curves is not None and "gt_tokens" in curves.columns and curves["gt_tokens"].notna().any()


def plot_held_out(curves: pd.DataFrame, axis: str, path: Path) -> None:
    """Per task (rows): every method's held-out CE and FM loss during training against ``axis`` (a budget), and its
    first downstream score where one was scored during training, with their 95 % intervals; the evaluations matched
    on ``axis`` ringed."""
    from evals.report import METHOD_ORDER, TASK_ORDER, _present, _pyplot, _save

    held = curves[curves["gt_tokens"].notna()]
    if held[held["series"].isin(HELD_OUT)].empty:
        raise UserError("no method evaluated during training; set eval_every for sft, ebft or rlvr and rerun.")
    plt = _pyplot()
    tasks = _present(held["task"], TASK_ORDER)
    columns = [s for s in HELD_OUT if s in set(held["series"])]
    downstream = {t: next((s for s in DOWNSTREAM if s in set(held[held.task == t]["series"])), None) for t in tasks}
    width = len(columns) + (1 if any(downstream.values()) else 0)
    fig, axes = plt.subplots(len(tasks), width, figsize=(4.2 * width, 2.8 * len(tasks)), squeeze=False)
    for i, task in enumerate(tasks):
        for j, name in enumerate([*columns, downstream[task]][:width]):
            ax = axes[i][j]
            sub = held[(held.task == task) & (held.series == name)]
            if name is None or sub.empty:
                ax.axis("off")
                continue
            for method in _present(sub["method"], METHOD_ORDER):
                m = sub[sub.method == method].sort_values(axis)
                color = f"C{METHOD_ORDER.index(method) % 10}" if method in METHOD_ORDER else None
                line = ax.plot(m[axis], m["value"], marker=".", label=method, color=color)[0]
                ax.fill_between(m[axis], m["ci_low"], m["ci_high"], color=line.get_color(), alpha=0.15, linewidth=0)
                ring = m[m["matched"].fillna("").str.contains(axis)]
                ax.scatter(ring[axis], ring["value"], s=60, facecolors="none", edgecolors=line.get_color())
            ax.set_title(f"{task} · {'held-out ' if name in HELD_OUT else ''}{name}", fontsize=9)
            ax.spines[["top", "right"]].set_visible(False)
            ax.legend(frameon=False, fontsize=7)
            if i == len(tasks) - 1:
                ax.set_xlabel(AXES[axis])
    fig.tight_layout()
    _save(fig, path)


def plot_curves(curves: pd.DataFrame, path: Path) -> None:
    """A panel per (task, method): each of the method's series against the optimiser step."""
    from evals.report import METHOD_ORDER, TASK_ORDER, _present, _pyplot, _save

    if curves.empty:
        raise UserError("there are no training curves to draw; run the training rules first.")
    plt = _pyplot()
    tasks = _present(curves["task"], TASK_ORDER)
    methods = [m for m in _present(curves["method"], METHOD_ORDER) if m in SERIES]
    fig, axes = plt.subplots(len(tasks), len(methods), figsize=(3.2 * len(methods), 2.4 * len(tasks)),
                             squeeze=False, sharex="col")  # fmt: skip
    for i, task in enumerate(tasks):
        for j, method in enumerate(methods):
            ax = axes[i][j]
            sub = curves[(curves.task == task) & (curves.method == method)]
            if sub.empty:
                ax.axis("off")
                continue
            for series in SERIES[method]:
                s = sub[sub.series == series].sort_values("step")
                if not s.empty:
                    ax.plot(s["step"], s["value"], marker=".", label=series)
            ax.set_title(f"{task} · {method}", fontsize=9)
            ax.spines[["top", "right"]].set_visible(False)
            ax.legend(frameon=False, fontsize=7)
            if i == len(tasks) - 1:
                ax.set_xlabel("optimiser step")
    fig.tight_layout()
    _save(fig, path)
