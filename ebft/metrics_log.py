"""Per-step metrics as CSV, and optionally to TensorBoard, Weights & Biases or Trackio; written by the main process
only."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from ebft.errors import UserError

INTEGRATIONS = ("tensorboard", "wandb", "trackio")


class MetricsLog:
    """A CSV file with fixed columns, rewritten whole at open and flushed after every row; other processes of a
    distributed run write nothing.

    ``rows`` are the rows of the steps a resumed run already did (kept with its checkpoint): the file starts with
    them, so it lists every step once whatever happened to the file before. :attr:`rows` holds every row so far.
    ``integrations`` (:data:`INTEGRATIONS`) get every numeric value of each row written from here on, at its step;
    TensorBoard's events go to ``<run_dir>/tensorboard``, and ``config`` is the run's settings for W&B and Trackio.
    """

    def __init__(self, path: Path, fields: list[str], *, enabled: bool, rows: list[dict] = (),
                 integrations: list[str] = (), run_dir: Path | None = None, config: dict | None = None):  # fmt: skip
        self.path, self.fields, self.enabled = Path(path), fields, enabled
        self.rows = [dict(r) for r in rows]
        self.integrations = list(integrations)
        unknown = [name for name in self.integrations if name not in INTEGRATIONS]
        if unknown:
            raise UserError(f"report_to names {unknown[0]!r}; choose from csv, {', '.join(INTEGRATIONS)} or none.")
        self.run_dir = Path(run_dir) if run_dir is not None else self.path.parent
        self.config = config or {}
        self.sinks = []

    def __enter__(self):
        if self.enabled:
            sinks = [_open(name, self.run_dir, self.config) for name in self.integrations]  # refused before any file
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fh = self.path.open("w", newline="")
            self.writer = csv.DictWriter(self.fh, fieldnames=self.fields)
            self.writer.writeheader()
            for row in self.rows:
                self.writer.writerow({k: row.get(k) for k in self.fields})
            self.fh.flush()
            self.sinks = sinks
        return self

    def write(self, row: dict) -> None:
        self.rows.append({k: row.get(k) for k in self.fields})
        if not self.enabled:
            return
        self.writer.writerow({k: row.get(k) for k in self.fields})
        self.fh.flush()
        scalars = {k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float))}
        for sink in self.sinks:
            sink.log(scalars, row["step"])

    def __exit__(self, *exc):
        if self.enabled:
            self.fh.close()
            for sink in self.sinks:
                sink.close()


def _missing(name: str, package: str) -> UserError:
    return UserError(f"report_to names {name}, but the {package} package is not installed; install it or drop {name} "
                     f"from report_to (for a profile: set tensorboard: false).")  # fmt: skip


def _open(name: str, run_dir: Path, config: dict):
    if name == "tensorboard":
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise _missing(name, "tensorboard") from None
        return _TensorBoard(SummaryWriter(str(run_dir / "tensorboard")))
    module = _import(name)
    run = module.init(project=os.environ.get("WANDB_PROJECT") or "ebft", name=run_dir.name, config=config)
    return _RunLogger(module, run)


def _import(name: str):
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        raise _missing(name, name) from None


class _TensorBoard:
    def __init__(self, writer):
        self.writer = writer

    def log(self, scalars: dict, step: int) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


class _RunLogger:
    """Weights & Biases or Trackio (whose API is W&B's): ``init``, ``log(metrics, step=)``, ``finish``."""

    def __init__(self, module, run):
        self.module, self.run = module, run

    def log(self, scalars: dict, step: int) -> None:
        self.module.log(scalars, step=step)

    def close(self) -> None:
        self.module.finish()
