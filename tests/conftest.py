"""Shared fixtures: offline Hugging Face settings and models built once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ebft.models import set_offline

set_offline(True)  # before any test imports a Hugging Face library
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama with SmolLM2's tokenizer, as the smoke profile prepares it."""
    from ebft.config import ModelConfig, TinyModelConfig
    from ebft.models import prepare_model

    out = tmp_path_factory.mktemp("models") / "tiny"
    prepare_model(ModelConfig(source="tiny-random", tiny=TinyModelConfig()), out, offline=True)
    return out


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct converted from the GGUF wheel to a plain HF folder (the cpu profile's model)."""
    from ebft.config import ModelConfig
    from ebft.models import prepare_model

    out = tmp_path_factory.mktemp("models") / "smollm2"
    prepare_model(ModelConfig(source="smollm2-gguf"), out, offline=True)
    return out


@pytest.fixture
def cli_env() -> dict:
    """Environment for subprocesses: this interpreter's bin first on PATH (the `ebft` command), offline."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(os.sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return env


@pytest.fixture
def fresh_accelerator_state():
    """accelerate keeps one precision per process: set up afresh for this test's and for the later tests' runs."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)
