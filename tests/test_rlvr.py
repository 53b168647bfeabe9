"""RLVR baseline: TRL settings from EBFT's budget, sandboxed unit-test and chrF rewards, a 2-step GRPO run."""

import subprocess
import sys

import pytest
import torch
import yaml

from baselines.rlvr import chrf_reward, first_line, train_rlvr, trl_settings, unit_test_reward
from ebft.config import EBFTConfig, FinetuneConfig, LoraSettings, RLVRConfig

PROBLEM = {
    "question": 'def add(a, b):\n    """Sum."""\n',
    "tests": "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(0, 0) == 0\n"
    "    assert candidate(2, 2) == 4\n    assert candidate(5, 0) == 5\n",
    "entry_point": "add",
}


def test_trl_settings_take_ebfts_optimiser_and_budget():
    ebft = EBFTConfig(
        n=4,
        batch_size=2,
        max_steps=16,
        lr=3e-5,
        scheduler="constant",
        warmup_ratio=0.03,
        betas=[0.9, 0.95],
        grad_clip=1.0,
    )
    s = trl_settings(RLVRConfig(), ebft, steps=16, bf16=False, seed=43)
    assert s["num_generations"] == 4 and s["per_device_train_batch_size"] == 8  # 2 prompts × 4 completions
    assert (s["max_steps"], s["learning_rate"], s["lr_scheduler_type"]) == (16, 3e-5, "constant_with_warmup")
    assert (s["adam_beta1"], s["adam_beta2"], s["max_grad_norm"], s["warmup_steps"]) == (0.9, 0.95, 1.0, 0.03)
    assert (s["loss_type"], s["scale_rewards"], s["beta"], s["epsilon"]) == ("dapo", "group", 0.0, 0.2)
    rloo = trl_settings(RLVRConfig(algorithm="rloo", num_generations=3), ebft, steps=16, bf16=False, seed=43)
    assert rloo["num_generations"] == 3 and "loss_type" not in rloo and rloo["normalize_advantages"]


def test_unit_test_reward_is_the_fraction_of_tests_passed_in_the_sandbox():
    reward = unit_test_reward("raw", RLVRConfig(reward_timeout=5.0))
    completions = [
        "    return a + b\n",  # all 4
        "    return a + b if a else 1\n",  # candidate(0, 0) fails: 3 of 4
        "    return 3\n",  # only candidate(1, 2): 1 of 4
        "    while True: pass\n",  # times out: 0
        "    import os; os._exit(0)\n",  # exits before the tests: 0
        "    return (\n",  # syntax error: 0
    ]
    n = len(completions)
    got = reward([""] * n, completions, [PROBLEM["question"]] * n, [PROBLEM["tests"]] * n, [PROBLEM["entry_point"]] * n)
    assert got == [1.0, 0.75, 0.25, 0.0, 0.0, 0.0]


def test_chrf_reward_scores_the_first_line_against_the_reference():
    assert first_line("\n  Hallo Welt \nmore") == "Hallo Welt"
    got = chrf_reward(["", ""], [" Hallo Welt\nEnglish: x", "xyz"], ["Hallo Welt", "Hallo Welt"])
    assert got[0] == pytest.approx(1.0) and got[1] < 0.1


def test_two_grpo_steps_with_the_sandbox_reward_change_the_trainable_weights(tiny_model_dir, tmp_path):
    """The unit tests are coin flips, so rewards vary within each group and the policy gradient is non-zero."""
    flips = "    import random\n    assert random.random() < 0.5\n"
    records = [
        {
            "id": f"p{i}",
            "question": f"def f{i}():\n    return {i}  #",
            "answer": "",
            "entry_point": f"f{i}",
            "tests": "def check(candidate):\n" + flips * 3,
            "meta": {},
        }
        for i in range(4)
    ]
    ebft = EBFTConfig(n=4, batch_size=2, max_steps=2, lr=1e-2, warmup_ratio=0.0)
    cfg = RLVRConfig(num_generations=4, max_completion_length=4, temperature=1.0)
    finetune = FinetuneConfig(mode="lora", lora=LoraSettings(r=4, alpha=8))
    out = tmp_path / "rlvr"
    summary = train_rlvr(
        start_dir=tiny_model_dir,
        train_records=records,
        reward="unit_tests",
        prompt_format="raw",
        chunk_length=8,
        finetune=finetune,
        ebft=ebft,
        cfg=cfg,
        precision="fp32",
        seed=0,
        out=out,
    )
    assert summary["steps"] == 2
    from transformers import AutoModelForCausalLM

    before = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    after = AutoModelForCausalLM.from_pretrained(out / "model").state_dict()
    changed = [k for k in before if "proj" in k and not torch.equal(before[k], after[k])]
    assert changed, "no projection weight moved after two GRPO steps"
    settings = yaml.safe_load((out / "rlvr_settings.yaml").read_text())
    for key in (
        "num_generations",
        "beta",
        "epsilon",
        "loss_type",
        "scale_rewards",
        "temperature",
        "max_completion_length",
    ):
        assert key in settings, key
    assert settings["sampler"] == "decode"  # GRPO samples with the merged copy by default
    assert (out / "train_metrics.csv").read_text().count("\n") == 3  # header + 2 steps


def test_rlvr_on_a_task_without_a_verifier_is_refused_in_one_sentence(cli_env):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ebft.cli",
            "train",
            "--method",
            "rlvr",
            "--task",
            "unstructured_code",
            "--config",
            "config/smoke.yaml",
        ],
        capture_output=True,
        text=True,
        env=cli_env,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "has no verifiable reward" in proc.stderr


def test_rloo_option_trains_with_the_chrf_reward_for_exactly_ebfts_epoch_bounded_steps(tiny_model_dir, tmp_path):
    """RLVR takes EBFT's number of optimiser steps also where epochs bind (TRL's max_steps would override them)."""
    from ebft.models import load_tokenizer
    from ebft.packing import pack_records

    records = [{"id": f"t{i}", "question": f"Translate this from English to German:\nEnglish: Item {i}\nGerman:",
                "answer": f" Eintrag {i}", "meta": {"reference": f"Eintrag {i}"}} for i in range(4)]  # fmt: skip
    ebft = EBFTConfig(n=3, batch_size=2, max_steps=40, epochs=1, lr=1e-2, warmup_ratio=0.0)
    ebft_steps = len(pack_records(records, load_tokenizer(tiny_model_dir), 16)) // ebft.batch_size
    assert 1 <= ebft_steps < ebft.max_steps  # the epoch binds
    out = tmp_path / "rloo"
    summary = train_rlvr(start_dir=tiny_model_dir, train_records=records, reward="chrf", prompt_format="raw",
                         chunk_length=16, finetune=FinetuneConfig(mode="full"), ebft=ebft,
                         cfg=RLVRConfig(algorithm="rloo", max_completion_length=6, temperature=1.0),
                         precision="fp32", seed=0, out=out)  # fmt: skip
    assert summary["steps"] == ebft_steps
    settings = yaml.safe_load((out / "rlvr_settings.yaml").read_text())
    assert settings["algorithm"] == "rloo" and settings["num_generations"] == 3 and settings["reward"] == "chrf"
    assert settings["sampler"] == "generate"  # TRL's own generate: RLOO takes no rollout_func
    from transformers import AutoModelForCausalLM

    before = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    after = AutoModelForCausalLM.from_pretrained(out / "model").state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if "proj" in k)


def test_rlvr_runs_with_one_seed_end_with_identical_weights(tiny_model_dir, tmp_path):
    """Regression: the LoRA adapters were drawn before anything was seeded, so no two RLVR runs agreed (the committed
    default-profile RLVR rows could not be regenerated)."""
    from safetensors.torch import load_file

    records = [{"id": f"t{i}", "question": f"Translate this from English to German:\nEnglish: Item {i}\nGerman:",
                "answer": f" Eintrag {i}", "meta": {"reference": f"Eintrag {i}"}} for i in range(6)]  # fmt: skip
    weights = []
    for run in ("a", "b"):
        train_rlvr(start_dir=tiny_model_dir, train_records=records, reward="chrf", prompt_format="raw", chunk_length=8,
                   finetune=FinetuneConfig(mode="lora", lora=LoraSettings(r=4, alpha=8)),
                   ebft=EBFTConfig(n=3, batch_size=2, max_steps=2, lr=1e-2, warmup_ratio=0.0),
                   cfg=RLVRConfig(max_completion_length=6, temperature=1.0), precision="fp32", seed=3,
                   out=tmp_path / run)  # fmt: skip
        weights.append(load_file(tmp_path / run / "adapter/adapter_model.safetensors"))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


class _Trainer:
    """What TRL's GRPOTrainer hands a rollout_func and the sampler reads: its step, policy and tokenizer."""

    def __init__(self, model, tokenizer, step=0):
        from types import SimpleNamespace

        self.model, self.processing_class = model, tokenizer
        self.state = SimpleNamespace(global_step=step)
        self.accelerator = SimpleNamespace(process_index=0, unwrap_model=lambda m: m)


def _lora_policy(tiny_model_dir):
    from ebft.models import load_causal_lm, make_trainable

    torch.manual_seed(0)
    policy = make_trainable(load_causal_lm(tiny_model_dir, dropout=0.0),
                            FinetuneConfig(mode="lora", lora=LoraSettings(r=4, alpha=8)))  # fmt: skip
    with torch.no_grad():  # LoRA's B starts at zero: give every adapter a delta
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return policy


def test_the_merged_copy_computes_what_the_lora_policy_computes_and_leaves_the_policy_as_it_was(tiny_model_dir):
    from baselines.rlvr import MergedPolicySampler
    from ebft.models import load_causal_lm, load_tokenizer

    policy = _lora_policy(tiny_model_dir).eval()
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    engine = load_causal_lm(tiny_model_dir)
    ids = torch.randint(0, 100, (2, 12))
    sampler = MergedPolicySampler(engine, load_tokenizer(tiny_model_dir), RLVRConfig(), None, seed=0)
    with torch.no_grad():
        assert not torch.allclose(engine(input_ids=ids).logits, policy(input_ids=ids).logits, atol=1e-4)
        sampler.sync(policy)
        torch.testing.assert_close(engine(input_ids=ids).logits, policy(input_ids=ids).logits, atol=1e-5, rtol=1e-5)
    after = policy.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # no merge-and-unmerge rounding left behind


def test_the_rollout_samples_each_row_of_its_prompts_from_the_current_policy_and_stops_where_told(tiny_model_dir):
    """One completion per prompt row, prompt ids as TRL tokenises text, the same completions for the same seed and
    step and others at the next step, a resync when the step moves on, and the stop rule applied."""
    from baselines.rlvr import MergedPolicySampler
    from ebft.models import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    policy = _lora_policy(tiny_model_dir).eval()
    prompts = ["def f():"] * 3 + ["def g(x):"] * 3  # GRPO's layout: each prompt num_generations times in a row
    cfg = RLVRConfig(max_completion_length=6, temperature=1.0)

    def rollout(step, done=None):
        sampler = MergedPolicySampler(load_causal_lm(tiny_model_dir), tokenizer, cfg, done, seed=5)
        return sampler, sampler(prompts, _Trainer(policy, tokenizer, step))

    sampler, out = rollout(2)
    assert out["prompt_ids"] == tokenizer(text=prompts)["input_ids"] and out["logprobs"] is None
    assert len(out["completion_ids"]) == 6 and all(1 <= len(c) <= 6 for c in out["completion_ids"])
    assert out["completion_ids"][0] != out["completion_ids"][1] or out["completion_ids"][1] != out["completion_ids"][2]
    assert rollout(2)[1] == out and rollout(3)[1] != out
    assert sampler.synced_step == 2
    with torch.no_grad():
        next(p for n, p in policy.named_parameters() if "lora_B" in n).add_(1.0)
    sampler(prompts, _Trainer(policy, tokenizer, 3))
    assert sampler.synced_step == 3  # the copy took the policy's new weights
    with torch.no_grad():
        ids = torch.tensor([out["prompt_ids"][0]])
        torch.testing.assert_close(sampler.engine(input_ids=ids).logits, policy(input_ids=ids).logits, atol=1e-5,
                                   rtol=1e-5)  # fmt: skip
    _, stopped = rollout(2, done=lambda text: len(text) > 0)
    assert all(len(tokenizer.decode(c, skip_special_tokens=True)) > 0 or len(c) == 6 for c in stopped["completion_ids"])
    assert sum(map(len, stopped["completion_ids"])) < sum(map(len, out["completion_ids"]))


def test_the_decode_sampler_is_refused_for_rloo_in_one_sentence():
    from ebft.config import FieldError

    with pytest.raises(FieldError, match="GRPO only"):
        RLVRConfig(algorithm="rloo", sampler="decode")
    assert RLVRConfig().sampler_name == "decode" and RLVRConfig(algorithm="rloo").sampler_name == "generate"
