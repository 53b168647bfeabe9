"""Sharded training (``launch.strategy: fsdp``, :mod:`ebft.sharding`) with two CPU processes over gloo: against one
process, against DDP under bf16, resumed across process counts and strategies, and a forward-count mismatch failing
fast. Each run is the CLI's (``ebft train … --processes 2 --strategy fsdp``), as the workflow starts it."""

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from ebft.config import HumanEvalSource
from ebft.data import human_eval_split
from ebft.models import autocast_dtype, load_causal_lm

ROOT = Path(__file__).parent.parent
EBFT_METRICS = ["loss", "reward", "alignment", "diversity", "ce", "policy_loss", "grad_norm", "valid_blocks", "lr"]
SFT_METRICS = ["loss", "grad_norm", "targets", "lr"]
FSDP = ["--processes", "2", "--threads", "2", "--strategy", "fsdp"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Profiles (LoRA and full fine-tuning, fp32 and bf16) of three SFT and EBFT steps whose learning rate changes at
    every step, and a task's data."""
    tmp = tmp_path_factory.mktemp("fsdp")
    train, heldout, _ = human_eval_split(HumanEvalSource(heldout=64), 43)
    data = tmp / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train[:6]))
    (data / "heldout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in heldout[:3]))
    profiles = {}
    for mode in ("lora", "full"):
        for precision in ("fp32", "bf16"):
            cfg = yaml.safe_load((ROOT / "config/smoke.yaml").read_text())
            cfg.update(precision=precision)
            cfg["finetune"]["mode"] = mode
            cfg["sft"].update(max_steps=3, epochs=1, batch_size=4, scheduler="linear", warmup_ratio=0.5)
            cfg["ebft"].update(max_steps=3, epochs=1, batch_size=2, scheduler="cosine", warmup_ratio=0.5,
                               checkpoint_every=1)  # fmt: skip
            for section in ("sft", "ebft", "rlvr"):
                for key in ("eval_every", "downstream_every"):
                    cfg[section].pop(key, None)
            path = tmp / f"{mode}-{precision}.yaml"
            path.write_text(yaml.safe_dump(cfg))
            profiles[mode, precision] = path
    return {"profiles": profiles, "data": data, "tmp": tmp, "runs": {}}


def start(study, model_dir, env, method, mode, out, launch=(), precision="fp32", extra_env=None):
    """An `ebft train` command as the workflow runs it, started in the background."""
    args = [sys.executable, "-m", "ebft.cli", "train", "--config", str(study["profiles"][mode, precision]),
            "--method", method, "--task", "qa_code", "--model-dir", str(model_dir), "--data-dir",
            str(study["data"]), "--out", str(out), *launch]  # fmt: skip
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**env, **(extra_env or {})})  # fmt: skip


def finish(proc) -> str:
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-4000:]
    return err


def reference(study, model_dir, env, method, mode):
    """The one-process run of (method, mode), made once per module."""
    key = (method, mode)
    if key not in study["runs"]:
        out = study["tmp"] / f"one-{method}-{mode}"
        finish(start(study, model_dir, env, method, mode, out))
        study["runs"][key] = out
    return study["runs"][key]


def rows(out: Path) -> list[dict]:
    return list(csv.DictReader((out / "train_metrics.csv").open()))


def assert_same_run(a: Path, b: Path, metrics: list[str]) -> None:
    """The same steps, per-step metrics within 1e-4 and final weights within 1e-5 (absolute) / 1e-4 (relative)."""
    ra, rb = rows(a), rows(b)
    assert [r["step"] for r in ra] == [r["step"] for r in rb] == ["1", "2", "3"]
    for name in metrics:
        assert [float(r[name]) for r in ra] == pytest.approx([float(r[name]) for r in rb], rel=1e-4, abs=1e-6), name
    assert len({r["lr"] for r in ra}) == 3  # the schedule moves at every step
    wa, wb = load_causal_lm(a / "model").state_dict(), load_causal_lm(b / "model").state_dict()
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-5, rtol=1e-4), k


@pytest.mark.parametrize(("method", "mode"), [("ebft", "lora"), ("ebft", "full"), ("sft", "lora"), ("sft", "full")])
def test_fsdp_over_two_processes_computes_the_update_of_one(study, tiny_model_dir, cli_env, method, mode):
    """Two FSDP processes against one: the same losses, learning rates and gradient norms at every step (EBFT also
    the same rewards, so the same rollouts, CE and valid blocks) and the same final weights, while each process
    holds half of the weights (without the sharding it would hold all of them)."""
    sharded = study["tmp"] / f"fsdp-{method}-{mode}"
    proc = start(study, tiny_model_dir, cli_env, method, mode, sharded, FSDP)
    one = reference(study, tiny_model_dir, cli_env, method, mode)
    finish(proc)
    assert_same_run(one, sharded, EBFT_METRICS if method == "ebft" else SFT_METRICS)
    s1, s2 = (json.loads((out / "train_summary.json").read_text()) for out in (one, sharded))
    assert (s1["strategy"], s1["processes"], s2["strategy"], s2["processes"]) == ("ddp", 1, "fsdp", 2)
    assert s2["parameters_per_process"] <= s1["parameters_per_process"] // 2 + 64 * 64  # half, up to a row per tensor
    assert yaml.safe_load((sharded / "resolved_config.yaml").read_text())["strategy"] == "fsdp"
    assert (sharded / "model/config.json").is_file() and not (sharded / "model").joinpath(
        "adapter_config.json"
    ).exists()


@pytest.mark.skipif(autocast_dtype("auto", torch.device("cpu")) is None, reason="this CPU lacks bf16")
def test_fsdp_equals_ddp_under_bf16_autocast(study, tiny_model_dir, cli_env):
    """Under bf16 autocast the two strategies run the same mixed-precision computation on the same shares."""
    ddp, sharded = study["tmp"] / "bf16-ddp", study["tmp"] / "bf16-fsdp"
    procs = [start(study, tiny_model_dir, cli_env, "ebft", "full", out, launch, precision="bf16")
             for out, launch in ((ddp, ["--processes", "2", "--threads", "2"]), (sharded, FSDP))]  # fmt: skip
    for proc in procs:
        finish(proc)
    for out in (ddp, sharded):
        assert json.loads((out / "train_summary.json").read_text())["mixed_precision"] == "bf16"
    assert_same_run(ddp, sharded, EBFT_METRICS)


@pytest.mark.parametrize("order", ["one-then-fsdp", "fsdp-then-one"])
def test_a_run_resumes_exactly_across_process_counts_and_strategies(study, tiny_model_dir, cli_env, order):
    """A full fine-tuning run stopped after step 1's checkpoint under one launch and continued under the other (one
    process and two FSDP processes, either way round) equals the uninterrupted run: the checkpoint holds whole
    weights and AdamW moments, which the other launch shards or takes whole."""
    out = study["tmp"] / f"resumed-{order}"
    first = ["--strategy", "ddp"] if order.startswith("one") else ["--strategy", "fsdp"]
    halt = [str(ROOT / "tests/interrupted_run.py"), "--config", str(study["profiles"]["full", "fp32"]), "--task",
            "qa_code", "--model-dir", str(tiny_model_dir), "--data-dir", str(study["data"]), "--out", str(out),
            "--halt-after", "1", *first]  # fmt: skip
    runner = [] if order.startswith("one") else ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run([sys.executable, *runner, *halt], capture_output=True, text=True, cwd=ROOT, env=cli_env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert [r["step"] for r in rows(out)] == ["1"] and not (out / "model").exists()
    err = finish(start(study, tiny_model_dir, cli_env, "ebft", "full", out, FSDP if order.startswith("one") else ()))
    assert "resuming from step 1 of 3" in err, err
    assert_same_run(reference(study, tiny_model_dir, cli_env, "ebft", "full"), out, EBFT_METRICS)


def test_processes_that_would_make_other_forwards_fail_at_once_in_one_sentence(study, tiny_model_dir, cli_env):
    """Sharded processes that make different forwards would wait for each other for ever; a process that plans other
    micro-batches (injected) makes the step fail within seconds, naming the problem."""
    started = time.time()
    proc = start(study, tiny_model_dir, cli_env, "ebft", "lora", study["tmp"] / "skewed", FSDP,
                 extra_env={"EBFT_TEST_SKEW_RANK": "1"})  # fmt: skip
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert time.time() - started < 120
    assert "process 1 would make other forwards in an EBFT step than process 0" in err


def test_rlvr_refuses_the_fsdp_strategy_in_one_sentence(study, tiny_model_dir, capsys):
    from ebft.cli import main

    code = main(["train", "--config", str(study["profiles"]["lora", "fp32"]), "--method", "rlvr", "--task",
                 "qa_code", "--model-dir", str(tiny_model_dir), "--data-dir", str(study["data"]), "--out",
                 str(study["tmp"] / "rlvr"), "--strategy", "fsdp"])  # fmt: skip
    assert code == 2
    assert "--strategy fsdp applies to SFT and EBFT" in capsys.readouterr().err


LIBRARY_RUN = """
import json, sys
from ebft import EBFTConfig, EBFTTrainer
from ebft.models import load_causal_lm

model_dir, out, strategy = sys.argv[1:4]
rows = [{"question": f"q{i}", "answer": "def f(x):\\n    return x * %d\\n" % i * 3} for i in range(8)]
args = EBFTConfig(output_dir=out, chunk_length=64, c=4, s=4, G=4, n=2, batch_size=2, micro_batch_size=None,
                  max_steps=2, kl_coef=0.1, lr=1e-3, precision="fp32", strategy=strategy, report_to="none")
trainer = EBFTTrainer(load_causal_lm(model_dir), args=args, train_dataset=rows)
assert trainer.frozen is trainer.kl_ref  # full fine-tuning without a feature_model: one frozen copy serves both
trainer.train()
trainer.save_model()
if trainer.accelerator.is_main_process:
    print("LOSSES", json.dumps([r["loss"] for r in trainer.state.log_history if "loss" in r]))
"""


def test_the_library_trains_sharded_with_one_frozen_copy_as_features_and_kl_reference(
    tmp_path, tiny_model_dir, cli_env
):
    """EBFTTrainer(args=EBFTConfig(strategy="fsdp")) under torchrun, full fine-tuning with kl_coef and no feature_model,
    so that the frozen starting copy is both the feature network and the KL reference. Regression: that copy was
    sharded twice and the run failed ("fully_shard has already been applied"). Two FSDP processes equal one DDP
    process."""
    script = tmp_path / "library_run.py"
    script.write_text(LIBRARY_RUN)
    runs = {"one": [], "fsdp": ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]}
    losses = {}
    for name, runner in runs.items():
        strategy = "fsdp" if runner else "ddp"
        proc = subprocess.run([sys.executable, *runner, str(script), str(tiny_model_dir), str(tmp_path / name),
                               strategy], capture_output=True, text=True, cwd=ROOT, env=cli_env)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-4000:]
        losses[name] = json.loads(proc.stdout.split("LOSSES", 1)[1])
    assert len(losses["one"]) == 2 and losses["one"] == pytest.approx(losses["fsdp"], rel=1e-4, abs=1e-6)
    wa, wb = (load_causal_lm(tmp_path / name / "model").state_dict() for name in runs)
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5, rtol=1e-4) for k in wa)
