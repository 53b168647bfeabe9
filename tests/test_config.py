import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ebft.config import SFTConfig, build, check_profile, load_profile_dict
from ebft.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
PROFILES = ["cpu", "smoke", "paper"]


def profile(name):
    return yaml.safe_load((REPO / "config" / f"{name}.yaml").read_text())


@pytest.mark.parametrize("name", PROFILES)
def test_every_profile_validates(name):
    check_profile(profile(name))


@pytest.mark.parametrize(
    "mutate,expected",
    [
        (lambda c: c["sft"].update(lrr=1.0), "unknown config key 'sft.lrr'; allowed keys there: batch_size"),
        (lambda c: c["finetune"].update(mode="qlora"), "config key 'finetune.mode' is 'qlora'; allowed values: 'lora', 'full'"),
        (lambda c: c.update(precision="fp16"), "config key 'precision' is 'fp16'; allowed values: 'auto', 'bf16', 'fp32'"),
        (lambda c: c["tasks"]["qa_code"].update(model="gpt2"), "tasks.qa_code.model is 'gpt2', which is not defined"),
        (lambda c: c["tasks"]["qa_code"]["source"].update(heldot=3), "unknown config key 'tasks.qa_code.source.heldot'"),
        (lambda c: c["tasks"]["qa_code"]["source"].update(kind="mbpp"), "'tasks.qa_code.source.kind' is 'mbpp'"),
        (lambda c: c["tasks"]["translation"]["source"].update(heldout_fraction=1.5), "heldout_fraction' is 1.5; it must lie strictly between 0 and 1"),
        (lambda c: c["sft"].update(max_steps=0), "config key 'sft.max_steps' is invalid"),
        (lambda c: c["eval"]["ce"].update(batch_size="8"), "'eval.ce.batch_size' is invalid"),
        (lambda c: c["tasks"].update(math={"model": "smollm2", "source": {"kind": "stdlib"}}), "tasks"),
        (lambda c: c["rlvr"].update(loss_type="ppo"), "config key 'rlvr.loss_type' is 'ppo'; allowed values: 'grpo'"),
        (lambda c: c["eval"]["code"].update(ks=[1, 8]), "config key 'eval.code.ks' is [1, 8]; every k must lie between 1 and n = 4"),
        (lambda c: c["eval"]["code"].update(greedy=True), "config key 'eval.code.n' is 4; greedy decoding gives one completion"),
        (lambda c: c["tasks"]["qa_code"].update(reward="bleu"), "config key 'tasks.qa_code.reward' is 'bleu'"),
        (lambda c: [t.pop("reward", None) for t in c["tasks"].values()], "methods lists rlvr but no task sets a 'reward'"),
        (lambda c: c["tasks"]["translation"]["rlvr"].update(num_generations=1), "'tasks.translation.rlvr.num_generations' is"),
    ],
)  # fmt: skip
def test_bad_profiles_fail_with_one_sentence_naming_the_key(mutate, expected):
    cfg = profile("cpu")
    mutate(cfg)
    with pytest.raises(ConfigError) as info:
        check_profile(cfg)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message and message.endswith(".")


def test_typed_sections_refuse_bad_values_the_schema_cannot_see():
    with pytest.raises(ConfigError, match=r"config key 'sft.betas' is \[0.9\]; give two numbers"):
        build(SFTConfig, {"betas": [0.9]}, "sft")
    with pytest.raises(ConfigError, match="must be a number"):
        build(SFTConfig, {"lr": "fast"}, "sft")
    assert build(SFTConfig, {"lr": "1e-4"}, "sft").lr == 1e-4  # YAML 1.1 reads 1e-4 as a string


def test_missing_profile_file_is_one_sentence():
    with pytest.raises(ConfigError, match="does not exist; pass a profile"):
        load_profile_dict("config/nope.yaml")


def test_cli_reports_a_bad_config_without_traceback(tmp_path, cli_env):
    cfg = profile("smoke")
    cfg["sft"]["warmup"] = 0.1
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-m", "ebft.cli", "prepare-data", "--config", str(path), "--task",
                           "qa_code"], capture_output=True, text=True, env=cli_env, cwd=REPO)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "ebft: error: unknown config key 'sft.warmup'; allowed keys there: batch_size, betas, epochs, grad_accum, "
        "grad_clip, log_every, loss_on, lr, max_steps, scheduler, warmup_ratio, weight_decay."
    ]


def test_snakemake_reports_a_bad_config_without_traceback(tmp_path, cli_env):
    cfg = profile("smoke")
    cfg["finetune"]["mode"] = "qlora"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile", str(path)],
                          capture_output=True, text=True, env=cli_env, cwd=REPO)  # fmt: skip
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "config key 'finetune.mode' is 'qlora'; allowed values: 'lora', 'full'." in out
    assert "Traceback" not in out


def test_task_sft_overrides_apply_on_top_of_the_global_section():
    from ebft.cli import _task_sft
    from ebft.config import TaskConfig, section

    raw = profile("paper")
    tc = section(raw, TaskConfig, "tasks.translation")
    sft = _task_sft(raw, tc)
    assert sft.lr == 3e-6 and sft.scheduler == "cosine" and sft.batch_size == 16
    raw["tasks"]["translation"]["sft"] = {"lrr": 1.0}
    with pytest.raises(ConfigError):
        check_profile(raw)
