"""The paper's claims as paired comparisons: per task and metric, each method's difference to SFT and to the base
model on the same units (chunks, problems), with a paired bootstrap interval, and a verdict per claim.

The per-unit values come from the evaluation records (``unit_num``/``unit_den``) and are collected into
``units.csv`` beside ``metrics.csv``, so these tables rebuild from the collected files alone.

Verdicts at 95 %: a claim "A better than B" is *supported* when the paired interval of A − B lies wholly on A's
better side, *contradicted* when it lies wholly on the other side, *inconclusive* otherwise. "A ≈ B" is supported when
the interval lies within ± the metric's equivalence margin (:data:`MARGINS`), contradicted when it lies wholly beyond
the margin, inconclusive otherwise.

Every claim also states the smallest difference the comparison could have detected (:func:`detectable`): at 95 %
confidence (two-sided) and 80 % power, (z₀.₉₇₅ + z₀.₈₀) · SE, with the standard error of the paired difference read
from the spread of its bootstrap interval, SE = (high − low) / (2 · z₀.₉₇₅). An inconclusive claim thus reads
"no difference as large as this was ruled in or out", not "no difference".
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from evals import metrics
from evals.stats import paired_ratio_diff_ci

UNIT_COLUMNS = ["profile", "task", "method", "metric", "unit", "num", "den", "stats"]
CORPUS_SCORES = ("bleu", "chrf")  # corpus-level: compared on re-summed sentence statistics, not ratios
REFERENCES = ("sft", "base")
MARGINS = {"pass@": 0.02, "bleu": 1.0, "chrf": 1.0, "val_ce": 0.01, "fm_loss": 0.01}  # "≈" within ± this


Z_CONFIDENCE, Z_POWER = 1.959964, 0.841621  # two-sided 95 %, and 80 % power


def detectable(low: float, high: float) -> float:
    """The smallest true difference a paired comparison with the 95 % interval [low, high] detects 80 % of the time:
    (z₀.₉₇₅ + z₀.₈₀) · SE, SE = (high − low) / (2 · z₀.₉₇₅) (the interval read as normal)."""
    return (Z_CONFIDENCE + Z_POWER) * (high - low) / (2 * Z_CONFIDENCE)


def margin(metric: str) -> float | None:
    return next((v for k, v in MARGINS.items() if metric.startswith(k)), None)


def collect_units(eval_files: list[Path], profile: str) -> pd.DataFrame:
    """One row per (task, method, metric, unit) from the records that keep per-unit values."""
    rows = []
    for path in eval_files:
        rec = json.loads(Path(path).read_text())
        for m in rec["metrics"]:
            rows += unit_rows(profile, rec["task"], rec["method"], m)
    return pd.DataFrame(rows, columns=UNIT_COLUMNS)


def unit_rows(profile: str, task: str, method: str, m: dict) -> list[dict]:
    """The units.csv rows of one metric row that keeps per-unit values (none where it keeps none)."""
    if m.get("unit_stats"):  # translation: one unit per sentence, its sacreBLEU statistics
        return [{"profile": profile, "task": task, "method": method, "metric": m["metric"], "unit": f"{d}:{i}",
                 "num": None, "den": None, "stats": json.dumps(st)}
                for d, sentences in m["unit_stats"].items() for i, st in enumerate(sentences)]  # fmt: skip
    if m.get("unit_num") is None:
        return []
    ids = m.get("unit_ids") or list(range(len(m["unit_num"])))
    return [{"profile": profile, "task": task, "method": method, "metric": m["metric"], "unit": str(u), "num": n,
             "den": d, "stats": None} for u, n, d in zip(ids, m["unit_num"], m["unit_den"], strict=True)]  # fmt: skip


def read_units(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"profile": str, "task": str, "method": str, "metric": str, "unit": str,
                                    "stats": str})  # fmt: skip


def differences(units: pd.DataFrame, *, resamples: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Paired differences method − reference (SFT, base) per task and metric, on the units both were scored on."""
    out = []
    for (task, metric), sub in units.groupby(["task", "metric"], sort=False):
        methods = list(dict.fromkeys(sub["method"]))
        for ref in (r for r in REFERENCES if r in methods):
            for method in (m for m in methods if m != ref):
                d = paired(units, task, metric, method, ref, resamples=resamples, seed=seed)
                if d is not None:
                    out.append({"task": task, "metric": metric, "method": method, "reference": ref, "diff": d[0],
                                "ci_low": d[1], "ci_high": d[2],
                                "units": int((sub.method == method).sum())})  # fmt: skip
    return pd.DataFrame(out, columns=["task", "metric", "method", "reference", "diff", "ci_low", "ci_high", "units"])


def paired(units: pd.DataFrame, task: str, metric: str, a: str, b: str, *, resamples: int = 1000, seed: int = 0):
    """(difference, low, high) of method a − method b on their shared units; None when either lacks them."""
    sub = units[(units.task == task) & (units.metric == metric)]
    ga, gb = sub[sub.method == a].set_index("unit"), sub[sub.method == b].set_index("unit")
    if ga.empty or gb.empty or list(ga.index) != list(gb.index):
        return None
    score = unmatched(metric).split("[")[0].removesuffix("_greedy")  # bleu, chrf_greedy[de-en]@gt_tokens → …
    if score in CORPUS_SCORES:
        from evals.translation import paired_macro_diff

        return paired_macro_diff(score, _by_direction(ga), _by_direction(gb), resamples=resamples,
                                 seed=seed)  # fmt: skip
    return paired_ratio_diff_ci(ga["num"], ga["den"], gb["num"], gb["den"], resamples=resamples, seed=seed)


def _by_direction(g: pd.DataFrame) -> dict[str, list]:
    out: dict[str, list] = {}
    for unit, stats in g["stats"].items():
        out.setdefault(unit.rsplit(":", 1)[0], []).append(json.loads(stats))
    return out


def verdict_better(d, lower_is_better: bool) -> str:
    if d is None:
        return "not measured"
    diff, low, high = d
    good, bad = (high < 0, low > 0) if lower_is_better else (low > 0, high < 0)
    return "supported" if good else "contradicted" if bad else "inconclusive"


def verdict_equal(d, metric: str) -> str:
    if d is None:
        return "not measured"
    _, low, high = d
    m = margin(metric)
    if m is None:  # no margin declared: the interval can only show a difference
        return "contradicted" if low > 0 or high < 0 else "inconclusive"
    if -m <= low and high <= m:
        return "supported"
    return "contradicted" if low > m or high < -m else "inconclusive"


def claims(metrics_df: pd.DataFrame, units: pd.DataFrame) -> pd.DataFrame:
    """The paper's claims, per task: the verdict and the paired difference it rests on."""
    rows = []
    lower_ce = metrics.metric("val_ce").lower_is_better
    for task in dict.fromkeys(metrics_df["task"]):
        names = set(metrics_df[metrics_df.task == task]["metric"])
        down = [m for m in metrics.table_metrics(names) if metrics.metric(m).kind in metrics.DOWNSTREAM_KINDS]
        down = [m for m in down if not units[(units.task == task) & (units.metric == m)].empty]
        checks = []
        if down:
            d = down[0]
            lower = metrics.metric(d).lower_is_better
            e_s = paired(units, task, d, "ebft", "sft")
            checks.append((f"EBFT > SFT on {d}", e_s, verdict_better(e_s, lower)))
            e_r = paired(units, task, d, "ebft", "rlvr")
            checks.append((f"EBFT ≈ RLVR on {d}", e_r, verdict_equal(e_r, d)))
        if "val_ce" in names:
            for claim, a, b, lower in (("EBFT CE < SFT CE", "ebft", "sft", lower_ce),
                                       ("EBFT CE < RLVR CE", "ebft", "rlvr", lower_ce),
                                       ("RLVR CE > base CE", "rlvr", "base", not lower_ce)):  # fmt: skip
                d = paired(units, task, "val_ce", a, b)
                checks.append((claim, d, verdict_better(d, lower)))
        for claim, d, verdict in checks:
            rows.append({"task": task, "claim": claim, "verdict": verdict,
                         "diff": None if d is None else d[0], "ci_low": None if d is None else d[1],
                         "ci_high": None if d is None else d[2],
                         "detectable": None if d is None else detectable(d[1], d[2])})  # fmt: skip
    return pd.DataFrame(rows, columns=["task", "claim", "verdict", "diff", "ci_low", "ci_high", "detectable"])


MATCHED = {"gt_tokens": "equal ground-truth tokens", "train_flops": "equal training compute"}
MATCHED_METRICS = (("val_ce", "EBFT CE < SFT CE"), ("fm_loss", "EBFT FM loss < SFT FM loss"))


def unmatched(metric: str) -> str:
    """The metric of a matched evaluation's units: 'pass@1@gt_tokens' → 'pass@1' (others unchanged)."""
    head, _, axis = metric.rpartition("@")
    return head if axis in MATCHED else metric


def matched_claims(units: pd.DataFrame, curves: pd.DataFrame | None = None) -> pd.DataFrame:
    """The claims at matched budgets, per task and budget axis: EBFT against SFT on held-out CE and FM loss, each at
    the evaluated steps where both have spent the same budget (:func:`ebft.during.matched_steps`; the per-chunk values
    are the units ``<metric>@<axis>``), judged like the end-of-training claims; ``budgets`` says what each spent."""
    rows = []
    lower = metrics.metric("val_ce").lower_is_better
    for task in dict.fromkeys(units["task"]):
        at = {unmatched(m) for m in units[units.task == task]["metric"] if unmatched(m) != m}
        down = [m for m in metrics.table_metrics(at) if metrics.metric(m).kind in metrics.DOWNSTREAM_KINDS]
        for axis, words in MATCHED.items():
            if down and not units[(units.task == task) & (units.metric == f"{down[0]}@{axis}")].empty:
                d = paired(units, task, f"{down[0]}@{axis}", "ebft", "sft")
                rows.append({"task": task, "claim": f"EBFT > SFT on {down[0]} at {words}",
                             "verdict": verdict_better(d, metrics.metric(down[0]).lower_is_better),
                             "diff": None if d is None else d[0], "ci_low": None if d is None else d[1],
                             "ci_high": None if d is None else d[2],
                             "detectable": None if d is None else detectable(d[1], d[2]),
                             "budgets": spent(curves, task, down[0], axis)})  # fmt: skip
            for metric, claim in MATCHED_METRICS:
                name = f"{metric}@{axis}"
                if units[(units.task == task) & (units.metric == name)].empty:
                    continue
                d = paired(units, task, name, "ebft", "sft")
                rows.append({"task": task, "claim": f"{claim} at {words}", "verdict": verdict_better(d, lower),
                             "diff": None if d is None else d[0], "ci_low": None if d is None else d[1],
                             "ci_high": None if d is None else d[2],
                             "detectable": None if d is None else detectable(d[1], d[2]),
                             "budgets": spent(curves, task, metric, axis)})  # fmt: skip
    return pd.DataFrame(rows, columns=["task", "claim", "verdict", "diff", "ci_low", "ci_high", "detectable",
                                       "budgets"])  # fmt: skip


def spent(curves: pd.DataFrame | None, task: str, metric: str, axis: str) -> str:
    """What EBFT and SFT had spent at their evaluations matched on ``axis``: 'EBFT step 16: 8,104; SFT step 4: …'."""
    if curves is None or "matched" not in curves.columns:
        return ""
    parts, values = [], []
    for method in ("ebft", "sft"):
        row = curves[(curves.task == task) & (curves.method == method) & (curves.series == metric)
                     & curves["matched"].fillna("").str.contains(axis)]  # fmt: skip
        if not row.empty:
            r = row.iloc[0]
            value = f"{int(r[axis]):,}" if axis == "gt_tokens" else f"{float(r[axis]):.3g}"
            parts.append(f"{method.upper()} step {int(r['step'])}: {value}")
            values.append(float(r[axis]))
    if len(values) == 2 and min(values) > 0:  # how close the match is: a step of one can exceed the other's run
        parts.append(f"ratio {values[0] / values[1]:.2f}")
    return "; ".join(parts)


def _claim_rows(table: pd.DataFrame, unclear: list[str]) -> list[str]:
    """A claims table's rows (with the budgets spent where the table has them); each inconclusive claim's reading is
    appended to ``unclear``."""
    lines = []
    for r in table.itertuples():
        cell = "–" if pd.isna(r.diff) else f"{r.diff:+.4f} [{r.ci_low:+.4f}, {r.ci_high:+.4f}]"
        power = "–" if pd.isna(r.diff) else f"±{r.detectable:.4f}"
        budgets = f" {r.budgets} |" if hasattr(r, "budgets") else ""
        lines.append(f"| {r.task} | {r.claim} | {r.verdict} | {cell} | {power} |{budgets}")
        if r.verdict == "inconclusive":
            unclear.append(f"- {r.task}, {r.claim}: inconclusive; a true difference smaller than about "
                           f"{r.detectable:.4f} would most likely go undetected here.")  # fmt: skip
    return lines


def claims_markdown(table: pd.DataFrame, diffs: pd.DataFrame, matched: pd.DataFrame | None = None) -> str:
    """tables/claims.md: the claims with their verdicts (and, where SFT and EBFT evaluated during training, the claims
    at matched budgets), then every paired difference to SFT and to base."""
    if table.empty:
        return (
            "No per-unit values were collected (units.csv), so no paired comparison was made; rerun the "
            "evaluations with this version to get them.\n"
        )
    lines = ["### The paper's claims (paired bootstrap, 95 %)", "", "| task | claim | verdict | difference [95 % CI] | "
             "detectable difference |", "|---|---|---|---|---|"]  # fmt: skip
    unclear: list[str] = []
    lines += _claim_rows(table, unclear)
    if matched is not None and not matched.empty:
        lines += ["", "### At matched budgets (held-out, during training)", "", "| task | claim | verdict | difference "
                  "[95 % CI] | detectable difference | budget spent at the compared evaluations |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        lines += _claim_rows(matched, unclear)
        lines += ["", "Each method is compared at the evaluation where it had spent the budget the other spends in "
                  "its whole run (the nearest step; the one with the smaller total at its end)."]  # fmt: skip
        if not matched["claim"].str.startswith("EBFT > SFT").any():
            lines[-1] += (" Downstream scores were computed at the end of training only (no `downstream_every`), so "
                          "no downstream claim is made at matched budgets.")  # fmt: skip
    lines += ["", "The detectable difference is the smallest true difference a comparison detects with 80 % power "
              "at 95 % confidence: (1.96 + 0.84) × its standard error, read from the spread of its paired "
              "interval."]  # fmt: skip
    if unclear:
        lines += ["", "What the inconclusive claims could not see:", "", *unclear]
    lines += ["", "### Paired differences to SFT and to base", "", "| task | metric | method − reference | "
              "difference [95 % CI] | units |", "|---|---|---|---|---|"]  # fmt: skip
    for r in diffs.itertuples():
        lines.append(f"| {r.task} | {r.metric} | {r.method} − {r.reference} | {r.diff:+.4f} [{r.ci_low:+.4f}, "
                     f"{r.ci_high:+.4f}] | {r.units} |")  # fmt: skip
    margins = ", ".join(f"{k}{'k' if k.endswith('@') else ''} ±{v:g}" for k, v in MARGINS.items())
    lines += [
        "",
        f"A claim is supported when its paired interval lies on its side of zero (for ≈: within the margin: "
        f"{margins}), contradicted when it lies on the other side, inconclusive otherwise.",
    ]
    return "\n".join(lines) + "\n"
