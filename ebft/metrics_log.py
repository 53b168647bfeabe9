"""Per-step metrics as CSV (and optionally TensorBoard), written by the main process only."""

from __future__ import annotations

import csv
from pathlib import Path

from ebft.errors import UserError


class MetricsLog:
    """A CSV file with fixed columns, flushed after every row; other processes of a distributed run write nothing.

    Opened in append mode when resuming, so rows already written survive a restart.
    """

    def __init__(self, path: Path, fields: list[str], *, enabled: bool, append: bool = False, tensorboard=None):
        self.path, self.fields, self.enabled, self.append = Path(path), fields, enabled, append
        self.tb_dir = tensorboard
        self.tb = None

    def __enter__(self):
        if self.enabled:
            exists = self.append and self.path.is_file()
            self.fh = self.path.open("a" if exists else "w", newline="")
            self.writer = csv.DictWriter(self.fh, fieldnames=self.fields)
            if not exists:
                self.writer.writeheader()
            if self.tb_dir is not None:
                try:
                    from torch.utils.tensorboard import SummaryWriter
                except ImportError:
                    msg = "TensorBoard logging needs the tensorboard package; install it or set tensorboard: false."
                    raise UserError(msg) from None
                self.tb = SummaryWriter(str(self.tb_dir))
        return self

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        self.writer.writerow({k: row.get(k) for k in self.fields})
        self.fh.flush()
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, row["step"])

    def __exit__(self, *exc):
        if self.enabled:
            self.fh.close()
            if self.tb is not None:
                self.tb.close()
