"""The GPU memory estimates of `ebft check` (ebft.memory): the parameter counts they rest on, and how they move with
the strategy, the process count, offload, micro-batches and checkpointing."""

import dataclasses

import pytest
import torch

from ebft.config import EBFTConfig, FinetuneConfig, LaunchConfig, LoraSettings, SFTConfig
from ebft.memory import ARCHITECTURES, GiB, estimate, lora_params, shape_of

# the parameter counts the model cards publish
PUBLISHED = {"qwen2.5-0.5b": 0.494e9, "qwen2.5-1.5b": 1.54e9, "qwen2.5-7b": 7.62e9, "llama-3.2-1b": 1.24e9,
             "smollm2-135m": 134.5e6}  # fmt: skip


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_the_architecture_table_gives_each_models_published_parameter_count(name):
    assert shape_of(ARCHITECTURES[name]).params == pytest.approx(PUBLISHED[name], rel=0.01)


@pytest.mark.parametrize("name", ["qwen2.5-0.5b", "smollm2-135m"])
def test_the_parameter_and_lora_counts_are_those_of_the_built_model(name):
    """Built from the same config (two layers, to stay small), transformers and peft count what the formula does."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = {**ARCHITECTURES[name], "num_hidden_layers": 2}
    model_type = spec.pop("model_type")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **spec))
    shape = shape_of({**spec, "model_type": model_type})
    assert model.num_parameters() == shape.params
    lora = LoraSettings(r=8, alpha=16)
    peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    assert sum(p.numel() for p in peft.parameters() if p.requires_grad) == lora_params(shape, lora)


def paper_ebft(**launch):
    shape = shape_of(ARCHITECTURES["qwen2.5-7b"])
    section = EBFTConfig(batch_size=16, micro_batch_size=4, n=4)
    return lambda **kw: estimate(shape, method="ebft", finetune=kw.pop("finetune", FinetuneConfig(mode="full")),
                                 section=kw.pop("section", section), chunk_length=1024,
                                 launch=LaunchConfig(**{**launch, **kw}), bf16=True, has_frozen_copy=True)  # fmt: skip


def test_fsdp_divides_the_resident_memory_by_the_processes_and_offload_moves_it_to_the_host():
    run = paper_ebft()
    ddp = run(processes=8)
    fsdp = run(processes=8, strategy="fsdp")
    offload = run(processes=8, strategy="fsdp", cpu_offload=True)
    resident = ddp.parts["weights"] + ddp.parts["gradients and optimiser"]
    assert resident / GiB > 140 and not ddp.fits()  # 7B full fine-tuning with a frozen copy: no 80 GB GPU holds it
    assert fsdp.parts["weight and optimiser shards"] == pytest.approx(resident / 8)
    assert fsdp.fits() and fsdp.total < ddp.total / 2
    assert offload.parts["weight and optimiser shards"] == 0 and offload.total < fsdp.total
    assert run(processes=1, strategy="fsdp", cpu_offload=True).fits()  # the 7B runs on one 80 GB GPU with offload


def test_micro_batches_and_checkpointing_lower_the_activations():
    run = paper_ebft(processes=8, strategy="fsdp")
    base = run()
    halves = run(section=EBFTConfig(batch_size=16, micro_batch_size=2, n=4))
    checkpointed = run(finetune=FinetuneConfig(mode="full", gradient_checkpointing=True))
    assert halves.parts["activations"] < base.parts["activations"]
    assert checkpointed.parts["activations"] < base.parts["activations"] / 4


def test_lora_holds_no_optimiser_state_for_the_frozen_weights():
    shape = shape_of(ARCHITECTURES["qwen2.5-1.5b"])
    kw = dict(method="sft", section=SFTConfig(batch_size=8), chunk_length=1024, launch=LaunchConfig(), bf16=True,
              has_frozen_copy=False)  # fmt: skip
    full = estimate(shape, finetune=FinetuneConfig(mode="full"), **kw)
    lora = estimate(shape, finetune=FinetuneConfig(mode="lora"), **kw)
    assert lora.parts["gradients and optimiser"] < full.parts["gradients and optimiser"] / 50
    assert dataclasses.asdict(full)["parts"].keys() == dataclasses.asdict(lora)["parts"].keys()


def test_ebft_check_prints_every_training_jobs_estimate_with_its_strategy():
    from ebft.cli import check_profile

    text = check_profile("config/paper.yaml")
    lines = [line for line in text.splitlines() if line.startswith("  ")]
    sharded = next(line for line in lines if line.startswith("  qa_code_7b ebft "))
    assert "(qwen25_7b, fsdp × 8)" in sharded and "fits an 80 GB GPU" in sharded and "does not" not in sharded
    assert any(line.startswith("  qa_code ebft and 26 more (qwen25_15b, ddp × 1)") for line in lines)
    assert any(line.startswith("  qa_code rlvr ") and "not estimated" in line for line in lines)


def test_the_estimate_matches_the_one_gpu_measurement_of_the_whole_sequence_path():
    """benchmarks.gpu_check on an H200 (docs/benchmarks.md#gpu-check): Qwen2.5-1.5B, full fine-tuning, bf16, 2 chunks
    of 1,024 tokens; EBFT (n = 4) on the whole-sequence path with all logits at once peaked at 113.4 GiB, SFT at
    31.3 GiB. The estimate of the same shapes is within 20 % of both."""
    shape = shape_of(ARCHITECTURES["qwen2.5-1.5b"])
    full, launch = FinetuneConfig(mode="full"), LaunchConfig()
    ebft = EBFTConfig(c=8, s=8, G=8, n=4, batch_size=2, micro_batch_size=None, shared_prefix=False, logits_chunk=0)
    common = dict(finetune=full, chunk_length=1024, launch=launch, bf16=True)
    estimated_ebft = estimate(shape, method="ebft", section=ebft, has_frozen_copy=True, **common).total / GiB
    estimated_sft = estimate(shape, method="sft", section=SFTConfig(batch_size=2), has_frozen_copy=False, **common)
    assert estimated_ebft == pytest.approx(113.4, rel=0.2)
    assert estimated_sft.total / GiB == pytest.approx(31.3, rel=0.2)
