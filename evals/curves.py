"""Training curves: the per-step metrics of every training run, collected into ``curves.csv`` beside ``metrics.csv``
and drawn as ``figures/training_curves.png`` (a row per task, a column per method), from that file alone.

Series drawn: EBFT's reward, alignment, diversity and CE on its ground-truth chunks; SFT's loss (the same teacher-forced
CE on its training chunks); RLVR's mean reward (unit tests passed, or sentence chrF / 100).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ebft.errors import UserError

SERIES = {"ebft": ["reward", "alignment", "diversity", "ce"], "sft": ["loss"], "rlvr": ["reward"]}
COLUMNS = ["task", "method", "step", "series", "value"]


def collect_curves(files: list[Path]) -> pd.DataFrame:
    """Tidy rows from runs/<method>/<task>/train_metrics.csv files (the method and task are read from the path)."""
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
    if not frames:
        return pd.DataFrame(columns=COLUMNS)
    return pd.concat(frames, ignore_index=True)


def read_curves(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"task": str, "method": str, "series": str})


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
