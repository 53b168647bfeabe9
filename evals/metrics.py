"""Metrics: the unbiased pass@k estimator (Chen et al., 2021; docs/method.md §6) and the declaration of every metric."""

from __future__ import annotations

from dataclasses import dataclass
from math import comb


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n (c correct) is correct.

    ``1 − C(n−c, k) / C(n, k)``: unbiased for pass@k when the n samples are i.i.d. With ``k = n`` it is "any of the n
    passes"; with ``k = 1`` it is c / n. Refuses k > n, which the estimator cannot give (best-of-n is not pass@k).
    """
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k needs 0 ≤ c ≤ n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass@{k} needs 1 ≤ k ≤ n = {n} samples per problem; draw more samples or lower k")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


# --------------------------------------------------------------------------------------------------
# Which metrics exist: declared once, for the evaluations, the report and the workflow's figures
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    name: str
    label: str
    lower_is_better: bool
    kind: str  # the evaluation that produces it: ce, fm, code or translation
    figure: bool = True  # whether the report draws it (val_ce_answer is in the table only: its bars repeat val_ce's)
    table: bool = True  # whether the main table shows it (a translation direction's score is in metrics.csv only)
    short: str = ""  # column header of the paper-form table
    digits: int = 4  # decimals in the tables


METRICS = {
    "val_ce": Metric("val_ce", "Validation CE, all tokens (nats/token)", True, "ce", short="CE"),
    "val_ce_answer": Metric("val_ce_answer", "Validation CE, answer tokens (nats/token)", True, "ce", figure=False,
                            short="CE (answer)"),
    "fm_loss": Metric("fm_loss", "Held-out feature-matching loss", True, "fm", short="FM loss"),
    "fm_loss_whitened": Metric("fm_loss_whitened", "Held-out feature-matching loss, training whitening (the released "
                               "online eval)", True, "fm", figure=False, short="FM loss (whitened)"),
    "bleu": Metric("bleu", "Translation BLEU (one sample at T = 0.6, macro over directions)", False, "translation",
                   short="BLEU", digits=2),
    "chrf": Metric("chrf", "Translation chrF++ (one sample at T = 0.6, macro over directions)", False, "translation",
                   short="chrF++", digits=2),
    "comet": Metric("comet", "Translation COMET-22 (one sample at T = 0.6)", False, "translation", figure=False,
                    short="COMET"),
    "bleu_greedy": Metric("bleu_greedy", "Translation BLEU (greedy, macro over directions)", False, "translation",
                          figure=False, short="BLEU (greedy)", digits=2),
    "chrf_greedy": Metric("chrf_greedy", "Translation chrF++ (greedy, macro over directions)", False, "translation",
                          figure=False, short="chrF++ (greedy)", digits=2),
    "comet_greedy": Metric("comet_greedy", "Translation COMET-22 (greedy)", False, "translation", figure=False,
                           short="COMET (greedy)"),
}  # fmt: skip
DOWNSTREAM_KINDS = ("code", "translation")  # the paper's downstream accuracy
GROUP_NAMES = {"en-xx": "English into the other languages", "xx-en": "the other languages into English"}


def metric(name: str) -> Metric:
    """The declaration of a metric; pass@k metrics are named by their k."""
    if name.startswith("pass@") and name[5:].isdigit():
        return Metric(name, f"Code {name} (unbiased estimator, fraction of problems)", False, "code", short=name)
    if name.endswith("]") and "[" in name and name.split("[", 1)[0] in METRICS:  # bleu[de-en], chrf_greedy[en-xx]
        base, group = name[:-1].split("[", 1)
        where = GROUP_NAMES.get(group, group.replace("-", " → "))
        return Metric(
            name,
            f"{METRICS[base].label}, {where}",
            False,
            "translation",
            figure=False,
            table=False,
            short=f"{METRICS[base].short} {group}",
            digits=METRICS[base].digits,
        )
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; known: {', '.join(METRICS)}, pass@<k>")
    return METRICS[name]


def metric_order(names) -> list[str]:
    """Declared metrics first, in declaration order, then pass@k by k."""
    names = set(names)
    passes = sorted((m for m in names if m.startswith("pass@")), key=lambda m: int(m[5:]))
    return [m for m in METRICS if m in names] + passes + sorted(names - set(METRICS) - set(passes))


def table_metrics(names) -> list[str]:
    """The metrics of the main table, in order: downstream accuracy first, then validation CE and the FM loss."""
    shown = [m for m in metric_order(names) if metric(m).table]
    return [m for m in shown if metric(m).kind in DOWNSTREAM_KINDS] + [
        m for m in shown if metric(m).kind not in DOWNSTREAM_KINDS
    ]


def study_metrics(kinds, ks) -> list[str]:
    """The metrics a study produces from its evaluation kinds (ce, fm, code) and its pass@k values."""
    names = [m.name for m in METRICS.values() if m.kind in kinds]
    if "code" in kinds:
        names += [f"pass@{k}" for k in sorted(set(ks))]
    return names


def figure_metrics(kinds, ks) -> list[str]:
    """The metrics the report draws, one figure each."""
    return [m for m in study_metrics(kinds, ks) if metric(m).figure]


SUMMARY_FIGURES = {
    "tradeoff": "validation CE against downstream accuracy, a panel per task, a point per method",
    "translation_directions": "translation chrF++ per direction, a bar per method",
}


def summary_figures(kinds) -> list[str]:
    """The report's figures beyond one per metric, for a study with these evaluation kinds."""
    kinds = set(kinds)
    names = ["tradeoff"] if "ce" in kinds and kinds & set(DOWNSTREAM_KINDS) else []
    return names + (["translation_directions"] if "translation" in kinds else [])


def report_figures(study) -> list[str]:
    """Every figure the report draws for ``study`` (an :class:`ebft.resolve.Study`), one workflow job each: a figure
    per drawn metric, the summary figures, one per sweep, the training curves where anything is trained, and the
    held-out curves against the budgets where a method evaluates during training."""
    kinds = {kind for task in study.tasks for kind in study.eval_kinds(task)}
    names = figure_metrics(kinds, study.code_ks) + summary_figures(kinds)
    names += [f"sweep_{name}" for name in study.profile.sweeps]  # the ablation figure of each sweep
    names += ["training_curves"] if any(study.trained(task) for task in study.tasks) else []
    return names + (["heldout_gt_tokens", "heldout_compute"] if study.evaluates_during_training() else [])
