"""Per-step metrics as CSV (and optionally TensorBoard), written by the main process only."""

from __future__ import annotations

import csv
from pathlib import Path

from ebft.errors import UserError


class MetricsLog:
    """A CSV file with fixed columns, rewritten whole at open and flushed after every row; other processes of a
    distributed run write nothing.

    ``rows`` are the rows of the steps a resumed run already did (kept with its checkpoint): the file starts with
    them, so it lists every step once whatever happened to the file before. :attr:`rows` holds every row so far.
    """

    def __init__(self, path: Path, fields: list[str], *, enabled: bool, rows: list[dict] = (), tensorboard=None):
        self.path, self.fields, self.enabled = Path(path), fields, enabled
        self.rows = [dict(r) for r in rows]
        self.tb_dir = tensorboard
        self.tb = None

    def __enter__(self):
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fh = self.path.open("w", newline="")
            self.writer = csv.DictWriter(self.fh, fieldnames=self.fields)
            self.writer.writeheader()
            for row in self.rows:
                self.writer.writerow({k: row.get(k) for k in self.fields})
            self.fh.flush()
            if self.tb_dir is not None:
                try:
                    from torch.utils.tensorboard import SummaryWriter
                except ImportError:
                    msg = "TensorBoard logging needs the tensorboard package; install it or set tensorboard: false."
                    raise UserError(msg) from None
                self.tb = SummaryWriter(str(self.tb_dir))
        return self

    def write(self, row: dict) -> None:
        self.rows.append({k: row.get(k) for k in self.fields})
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
