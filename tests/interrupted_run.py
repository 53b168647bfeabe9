"""One EBFT training job of a profile, stopped as if killed right after a step's checkpoint: the interrupted runs of
tests/test_fsdp.py, under one process (``python tests/interrupted_run.py …``) or several
(``python -m torch.distributed.run --standalone --nproc_per_node 2 tests/interrupted_run.py …``).

It trains exactly as ``ebft train --config … --method ebft --task …`` does (the job's settings and hash, so that the
command resumes its checkpoint), with ``halt_after`` set."""

import argparse
from pathlib import Path

import torch

from ebft.data import read_records
from ebft.resolve import read_study
from ebft.sharding import Strategy
from ebft.trainer import train_ebft


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", required=True)
    p.add_argument("--task", required=True)
    p.add_argument("--model-dir", type=Path, required=True)
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--strategy", default="ddp")
    p.add_argument("--halt-after", type=int, required=True)
    a = p.parse_args()
    torch.set_num_threads(1)
    job = read_study(a.config).job("train", method="ebft", task=a.task)
    summary = train_ebft(base_dir=a.model_dir, start_dir=a.model_dir, train_records=read_records(a.data_dir / "train.jsonl"),
                         chunk_length=job.chunk_length, finetune=job.finetune, cfg=job.ebft_config(),
                         precision=job.precision, seed=job.seed, out=a.out, settings_hash=job.hash,
                         halt_after=a.halt_after, attention=job.attention, strategy=Strategy(a.strategy))  # fmt: skip
    assert summary["halted"], summary


if __name__ == "__main__":
    main()
