"""Helpers of the library's tests (tests/test_api.py, tests/test_library_faults.py): a small LoRA on a tiny Llama, and
the weights a run saved."""

from pathlib import Path

import torch

LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def lora():
    """A rank-4 LoRA on the seven projections of a Llama (as the smoke profile's)."""
    from peft import LoraConfig

    return LoraConfig(r=4, lora_alpha=8, target_modules=LLAMA_TARGETS, task_type="CAUSAL_LM")


def weights(out: Path) -> dict:
    """The merged model a run saved in ``out/model``."""
    from safetensors.torch import load_file

    return load_file(out / "model" / "model.safetensors")


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
