"""Held-out evaluation during training for SFT and RLVR (EBFT's is in test_api.py), the budgets on each evaluation,
and the steps at which SFT and EBFT are matched on ground-truth tokens and on compute."""

import csv
import json

import pytest
import torch
from safetensors.torch import load_file

from baselines.rlvr import train_rlvr
from baselines.sft import train_sft
from ebft import during
from ebft.config import (
    CEEvalConfig,
    EBFTConfig,
    FinetuneConfig,
    FMEvalConfig,
    HumanEvalSource,
    LoraSettings,
    RLVRConfig,
    SFTConfig,
)
from ebft.data import human_eval_split
from ebft.models import autocast_dtype


@pytest.fixture(scope="module")
def split():
    train, heldout, _ = human_eval_split(HumanEvalSource(heldout=64), 43)
    return train[:12], heldout[:6]


def settings(heldout, every, sft=None, layout=None) -> during.Settings:
    return during.Settings(heldout, CEEvalConfig(max_chunks=4, bootstrap=50), FMEvalConfig(max_chunks=2, n=3,
                           bootstrap=50), layout or EBFTConfig(), every, sft=sft)  # fmt: skip


def table(path) -> list[dict]:
    return list(csv.DictReader(path.open()))


def without_time(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if "time" not in k and "per_s" not in k and k != "train_wall_s"} for r in rows]


def test_the_matched_steps_spend_the_smaller_total_budget_of_the_two_methods():
    """The default study's shapes: SFT 30 steps × 8 chunks of 256 tokens, EBFT 16 steps × 2 chunks × 4 rollouts with
    c = s = G = 8 (31 blocks, sequences of 256 + 31·8 tokens). Ground-truth chunks: EBFT's whole 32 = SFT's step 4.
    Compute: SFT's whole 30 · 8 · 256 · 6 = 368,640 per parameter = EBFT's 9.1 steps of 8 · 504 · 10."""
    sft = SFTConfig(batch_size=8, max_steps=30)
    ebft = EBFTConfig(c=8, s=8, G=8, n=4, batch_size=2, max_steps=16)
    steps = during.matched_steps(1000, 256, sft, ebft)
    assert steps == {"sft": {"gt_tokens": 4, "train_flops": 30}, "ebft": {"gt_tokens": 16, "train_flops": 9}}
    # bounded by epochs: 20 chunks give SFT ⌈20/8⌉ = 3 steps (24 chunk slots) and EBFT 10 steps (20 chunks)
    assert during.matched_steps(20, 256, sft, ebft)["ebft"]["gt_tokens"] == 10
    assert during.matched_steps(20, 256, sft, ebft)["sft"]["gt_tokens"] == 3
    plan = during.eval_steps(16, 4, steps["ebft"])
    assert plan == {0: "", 4: "", 8: "", 9: "train_flops", 12: "", 16: "gt_tokens"}
    assert during.eval_steps(30, None, steps["sft"]) == {0: "", 4: "gt_tokens", 30: "train_flops"}
    assert during.eval_steps(4, 4, {"gt_tokens": 4, "train_flops": 4})[4] == "gt_tokens+train_flops"


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_sft_evaluating_during_training_changes_nothing_in_training(tmp_path, tiny_model_dir, split, mode):
    """SFT with evaluations at 0, every 2 steps, the matched steps and the end: weights and every training row
    bit-identical to a run without them; each evaluation carries the budgets spent so far."""
    train, heldout = split
    sft = SFTConfig(lr=1e-2, scheduler="constant", warmup_ratio=0.0, batch_size=4, max_steps=3)
    ebft = EBFTConfig(n=3, batch_size=2, max_steps=3)  # EBFT's 6 chunks = SFT's step 1.5 → 2; compute: SFT's all
    kw = {"model_dir": tiny_model_dir, "train_records": train, "chunk_length": 64, "sft": sft, "precision": "fp32",
          "seed": 0, "finetune": FinetuneConfig(mode=mode, lora=LoraSettings(r=4, alpha=8))}  # fmt: skip
    train_sft(out=tmp_path / "plain", **kw)
    summary = train_sft(out=tmp_path / "evaluated", evaluation=settings(heldout, 2, sft=sft, layout=ebft), **kw)
    assert without_time(table(tmp_path / "plain/train_metrics.csv")) == without_time(
        table(tmp_path / "evaluated/train_metrics.csv")
    )
    a, b = (load_file(tmp_path / run / "model/model.safetensors") for run in ("plain", "evaluated"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = table(tmp_path / "evaluated/eval_metrics.csv")
    assert [(r["step"], r["metric"]) for r in rows] == [(s, m) for s in ("0", "2", "3")
                                                        for m in ("val_ce", "val_ce_answer", "fm_loss")]  # fmt: skip
    assert {r["step"]: r["matched"] for r in rows} == {"0": "", "2": "gt_tokens", "3": "train_flops"}
    first, last = rows[0], rows[-3]
    assert int(first["gt_tokens"]) == 0 and float(first["train_flops"]) == 0
    params = sum(p.numel() for p in _trainable_model(tiny_model_dir, mode).parameters())
    assert float(last["train_flops"]) == 3 * 4 * 64 * 6 * params  # 3 steps of 4 chunks of 64 positions
    assert 0 < int(last["gt_tokens"]) <= 3 * 4 * 64
    assert summary["budget"]["gt_tokens"] == int(last["gt_tokens"])
    assert float(last["value"]) != float(first["value"])  # the model moved
    units = json.loads((tmp_path / "evaluated/eval_units.json").read_text())
    assert [(u["step"], u["metric"]) for u in units] == [(int(r["step"]), r["metric"]) for r in rows]
    assert sum(units[0]["unit_num"]) / sum(units[0]["unit_den"]) == pytest.approx(float(first["value"]), rel=1e-6)


def _trainable_model(model_dir, mode):
    from ebft.models import load_causal_lm, make_trainable

    return make_trainable(load_causal_lm(model_dir), FinetuneConfig(mode=mode, lora=LoraSettings(r=4, alpha=8)))


def test_rlvr_evaluating_during_training_changes_nothing_in_training(tiny_model_dir, tmp_path):
    """RLVR (TRL's GRPO) with a callback that evaluates at 0, 1 and 2: the adapters and TRL's logged rows (times aside)
    are bit-identical to a run without it; rollout tokens are the completions' tokens, ground-truth tokens each
    step's prompt tokens once."""
    records = [{"id": f"t{i}", "question": f"Translate this from English to German:\nEnglish: Item {i}\nGerman:",
                "answer": f" Eintrag {i}", "meta": {"reference": f"Eintrag {i}"}} for i in range(6)]  # fmt: skip
    kw = {"start_dir": tiny_model_dir, "train_records": records, "reward": "chrf", "prompt_format": "raw",
          "chunk_length": 8, "finetune": FinetuneConfig(mode="lora", lora=LoraSettings(r=4, alpha=8)),
          "ebft": EBFTConfig(n=3, batch_size=2, max_steps=2, lr=1e-2, warmup_ratio=0.0),
          "cfg": RLVRConfig(max_completion_length=6, temperature=1.0), "precision": "fp32", "seed": 3}  # fmt: skip
    train_rlvr(out=tmp_path / "plain", **kw)
    layout = EBFTConfig(c=2, s=2, G=2)  # chunks of 8 tokens: 3 blocks
    summary = train_rlvr(out=tmp_path / "evaluated", evaluation=settings(records[:4], 1, layout=layout), **kw)
    a, b = (load_file(tmp_path / run / "adapter/adapter_model.safetensors") for run in ("plain", "evaluated"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert without_time(table(tmp_path / "plain/train_metrics.csv")) == without_time(
        table(tmp_path / "evaluated/train_metrics.csv")
    )
    rows = table(tmp_path / "evaluated/eval_metrics.csv")
    assert [r["step"] for r in rows if r["metric"] == "val_ce"] == ["0", "1", "2"]
    assert {r["metric"] for r in rows} == {"val_ce", "val_ce_answer", "fm_loss"}
    last = next(r for r in rows if r["step"] == "2" and r["metric"] == "val_ce")
    logged = table(tmp_path / "evaluated/train_metrics.csv")
    completions = sum(float(r["completions/mean_length"]) * 2 * 3 for r in logged)
    assert int(last["rollout_tokens"]) == round(completions)
    prompts = int(float(logged[-1]["num_tokens"])) - int(last["rollout_tokens"])
    assert int(last["gt_tokens"]) == prompts // 3 and int(last["gt_tokens"]) > 0
    assert float(last["train_flops"]) > 0 and summary["budget"] == {k: _number(last[k]) for k in during.BUDGETS}


def _number(text: str):
    value = float(text)
    return int(value) if value.is_integer() and "." not in text else value


def test_downstream_scores_during_training_change_nothing_in_training(tmp_path, tiny_model_dir, split):
    """downstream_every: pass@k of a merged copy of the policy at those steps (and the matched ones), by the code
    evaluation itself, beside the held-out rows; the training is bit-identical to a run without them."""
    from types import SimpleNamespace

    from ebft.config import CodeEvalConfig

    train, heldout = split
    data = tmp_path / "data"
    data.mkdir()
    (data / "heldout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in heldout))
    job = SimpleNamespace(code=CodeEvalConfig(n=2, ks=[1, 2], max_new_tokens=8, batch_size=4, max_problems=2,
                                              bootstrap=20), code_eval="heldout", translation=None,
                          prompt_format="raw", precision="fp32", seed=0, attention="sdpa")  # fmt: skip
    sft = SFTConfig(lr=1e-2, scheduler="constant", warmup_ratio=0.0, batch_size=4, max_steps=3)
    kw = {"model_dir": tiny_model_dir, "train_records": train, "chunk_length": 64, "sft": sft, "precision": "fp32",
          "seed": 0, "finetune": FinetuneConfig(lora=LoraSettings(r=4, alpha=8))}  # fmt: skip
    train_sft(out=tmp_path / "plain", **kw)
    evaluation = settings(heldout, 1)
    evaluation.downstream_every, evaluation.judge = 2, during.downstream_judge(job, data)
    train_sft(out=tmp_path / "evaluated", evaluation=evaluation, **kw)
    assert without_time(table(tmp_path / "plain/train_metrics.csv")) == without_time(
        table(tmp_path / "evaluated/train_metrics.csv")
    )
    a, b = (load_file(tmp_path / run / "model/model.safetensors") for run in ("plain", "evaluated"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = table(tmp_path / "evaluated/eval_metrics.csv")
    assert [r["step"] for r in rows if r["metric"] == "pass@1"] == ["2"]  # every 2 steps: step 2 of 3
    assert [r["step"] for r in rows if r["metric"] == "val_ce"] == ["0", "1", "2", "3"]
    units = json.loads((tmp_path / "evaluated/eval_units.json").read_text())
    scored = next(u for u in units if u["metric"] == "pass@1")
    assert len(scored["unit_ids"]) == 2 and all(0 <= v <= 1 for v in scored["unit_num"])
    assert (tmp_path / "evaluated/downstream_samples/step-2.code.jsonl").is_file()
    assert not list((tmp_path / "evaluated").glob(".downstream-*"))  # the merged copy is gone


@pytest.mark.skipif(autocast_dtype("auto", torch.device("cpu")) is None, reason="this CPU lacks bf16")
def test_evaluations_during_bf16_training_run_in_fp32(tmp_path, tiny_model_dir, split, fresh_accelerator_state):
    """Regression: accelerate wraps the prepared model's forward in bf16 autocast, so SFT's evaluations ran in bf16
    unless they call the unwrapped forward. At step 0 the LoRA policy is the base model, whose fp32 CE the evaluation
    must give exactly; training under bf16 is unchanged by the evaluations."""
    from ebft.models import load_causal_lm, load_tokenizer
    from ebft.packing import pack_records
    from evals.ce import ce_rows

    train, heldout = split
    sft = SFTConfig(lr=1e-2, scheduler="constant", warmup_ratio=0.0, batch_size=4, max_steps=1)
    kw = {"model_dir": tiny_model_dir, "train_records": train, "chunk_length": 64, "sft": sft, "precision": "bf16",
          "seed": 0, "finetune": FinetuneConfig(lora=LoraSettings(r=4, alpha=8))}  # fmt: skip
    train_sft(out=tmp_path / "plain", **kw)
    evaluation = settings(heldout, 1)
    summary = train_sft(out=tmp_path / "evaluated", evaluation=evaluation, **kw)
    assert summary["mixed_precision"] == "bf16"
    assert without_time(table(tmp_path / "plain/train_metrics.csv")) == without_time(
        table(tmp_path / "evaluated/train_metrics.csv")
    )
    chunks = pack_records(heldout, load_tokenizer(tiny_model_dir), 64)
    base = ce_rows(load_causal_lm(tiny_model_dir).eval(), chunks.subset(slice(0, 4)), evaluation.ce, seed=0,
                   device=torch.device("cpu"))  # fmt: skip
    first = next(r for r in table(tmp_path / "evaluated/eval_metrics.csv") if r["metric"] == "val_ce")
    assert float(first["value"]) == base[0]["value"]
