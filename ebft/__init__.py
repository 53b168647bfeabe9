"""EBFT: energy-based fine-tuning of language models (feature matching on strided rollouts).

The library's entry points, in the conventions of Hugging Face TRL::

    from ebft import EBFTConfig, EBFTTrainer

    trainer = EBFTTrainer(model="path/or/hub-id", args=EBFTConfig(output_dir="out"), train_dataset=rows)
    trainer.train()
    trainer.save_model()

Imported lazily, so that ``import ebft`` (and the CLI) stays light.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ebft-repro")
except PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0+unknown"

__all__ = ["EBFTConfig", "EBFTTrainer", "__version__"]


def __getattr__(name: str):
    if name == "EBFTConfig":
        from ebft.ebft_config import EBFTConfig

        return EBFTConfig
    if name == "EBFTTrainer":
        from ebft.trainer import EBFTTrainer

        return EBFTTrainer
    raise AttributeError(f"module 'ebft' has no attribute {name!r}")
