"""Where every output of the study lives, shared by the Snakefile and the CLI's defaults.

Everything a profile produces is under ``<results_dir>/<profile>/``. Arguments may be wildcard patterns
such as ``"{task}"``: the Snakefile uses the same functions to declare its rules' files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    results_dir: str
    profile: str

    @property
    def root(self) -> Path:
        return Path(self.results_dir) / self.profile

    def model_dir(self, name: str) -> Path:
        """A prepared base model: a plain Hugging Face folder."""
        return self.root / "models" / name

    def data_dir(self, task: str) -> Path:
        """train.jsonl, heldout.jsonl and manifest.json of one task."""
        return self.root / "data" / task

    def run_dir(self, method: str, task: str) -> Path:
        """One training run: checkpoint, per-step metrics, resolved config."""
        return self.root / "runs" / method / task

    def checkpoint(self, method: str, task: str) -> Path:
        """The loadable (merged) Hugging Face checkpoint a training run ends with."""
        return self.run_dir(method, task) / "model"

    def eval_file(self, kind: str, task: str, method: str) -> Path:
        return self.root / "eval" / kind / task / f"{method}.json"

    def samples_file(self, task: str, method: str, kind: str = "code") -> Path:
        """Code evaluation: one JSONL record per (problem, sample); translation: one per (pair, decoding)."""
        return self.root / "eval" / kind / task / f"{method}.samples.jsonl"

    @property
    def figures_dir(self) -> Path:
        return self.root / "figures"

    def figure(self, metric: str) -> Path:
        """The figure of one metric, e.g. figures/pass_at_1.png for pass@1."""
        return self.figures_dir / figure_name(metric)

    def log(self, rule: str, *parts: str) -> Path:
        return self.root / "logs" / rule / ("_".join(parts) + ".log" if parts else "log.log")

    @property
    def metrics_csv(self) -> Path:
        return self.root / "metrics.csv"

    @property
    def main_table(self) -> Path:
        return self.root / "tables" / "main.md"

    @property
    def units_csv(self) -> Path:
        """Per-unit values (chunks, problems) of every metric that has them: the paired comparisons' input."""
        return self.root / "units.csv"

    @property
    def curves_csv(self) -> Path:
        """Every training run's per-step metrics, tidy: the training-curve figure's input."""
        return self.root / "curves.csv"

    @property
    def claims_table(self) -> Path:
        """The paper's claims with their verdicts, and the paired differences to SFT and to base."""
        return self.root / "tables" / "claims.md"

    @property
    def latex_table(self) -> Path:
        """The main table for LaTeX (booktabs)."""
        return self.root / "tables" / "main.tex"


def figure_name(metric: str) -> str:
    """File name of a metric's figure: val_ce.png, fm_loss.png, pass_at_1.png, …"""
    return metric.replace("@", "_at_") + ".png"


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all: through ``<name>.partial``, renamed once complete, so an
    interrupted or failed job never leaves half a file (or half-replaces a finished one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)
