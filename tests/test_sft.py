import csv
import math
from pathlib import Path

import pytest
import torch

from baselines.sft import train_sft
from ebft.config import FinetuneConfig, HumanEvalSource, SFTConfig
from ebft.data import human_eval_split
from ebft.models import load_causal_lm


@pytest.fixture(scope="module")
def records():
    train, _, _ = human_eval_split(HumanEvalSource(heldout=64), 43)
    return train[:12]


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_two_step_sft_changes_trainable_weights_and_writes_outputs(tmp_path, tiny_model_dir, records, mode):
    sft = SFTConfig(lr=1e-2, scheduler="constant", warmup_ratio=0.0, batch_size=4, max_steps=2)
    summary = train_sft(model_dir=tiny_model_dir, train_records=records, chunk_length=64,
                        finetune=FinetuneConfig(mode=mode), sft=sft, precision="fp32", seed=0,
                        out=tmp_path)  # fmt: skip
    assert summary["steps"] == 2
    rows = list(csv.DictReader((tmp_path / "train_metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2]
    assert all(math.isfinite(float(r["loss"])) and float(r["loss"]) > 0 for r in rows)
    assert (tmp_path / "train_summary.json").is_file()
    assert (tmp_path / "adapter").is_dir() == (mode == "lora")
    base = load_causal_lm(tiny_model_dir).state_dict()
    tuned = load_causal_lm(tmp_path / "model").state_dict()
    assert base.keys() == tuned.keys()  # the merged checkpoint is a plain model
    changed = [k for k in base if not torch.equal(base[k], tuned[k])]
    assert any("q_proj" in k for k in changed)
    if mode == "lora":  # only adapted projections move; embeddings and norms stay frozen
        assert not any("embed_tokens" in k or "norm" in k for k in changed)
    else:
        assert any("embed_tokens" in k for k in changed)


def test_sft_is_reproducible_for_a_seed(tmp_path, tiny_model_dir, records):
    sft = SFTConfig(lr=1e-2, scheduler="constant", warmup_ratio=0.0, batch_size=4, max_steps=2)
    losses = []
    for run in ("a", "b"):
        train_sft(model_dir=tiny_model_dir, train_records=records, chunk_length=64, finetune=FinetuneConfig(),
                  sft=sft, precision="fp32", seed=5, out=tmp_path / run)  # fmt: skip
        losses.append([r["loss"] for r in csv.DictReader((tmp_path / run / "train_metrics.csv").open())])
    assert losses[0] == losses[1]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["sft", "ebft"])
def test_training_runs_data_parallel_under_torchrun(tmp_path, tiny_model_dir, cli_env, method):
    """Two CPU processes (gloo): one optimiser step per batch on each shard, files written once."""
    import json
    import shutil
    import subprocess

    torchrun = shutil.which("torchrun", path=cli_env["PATH"])
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records_for_ddp()))
    cmd = [torchrun, "--nproc_per_node", "2", "-m", "ebft.cli", "train", "--config", "config/smoke.yaml",
           "--method", method, "--task", "qa_code", "--model-dir", str(tiny_model_dir), "--data-dir", str(data),
           "--out", str(tmp_path / "run")]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=cli_env, cwd=Path(__file__).parent.parent)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "run/train_summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 2
    assert [r["step"] for r in csv.DictReader((tmp_path / "run/train_metrics.csv").open())] == ["1", "2"]
    assert (tmp_path / "run/model/config.json").is_file()


def records_for_ddp():
    train, _, _ = human_eval_split(HumanEvalSource(heldout=64), 43)
    return train[:20]
