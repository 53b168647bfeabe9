"""EBFT on your own model and data, in about ten lines (docs/custom.md).

    python examples/ebft_own_data.py [MODEL]     # MODEL: a hub id or a local folder (default: SmolLM2-135M-Instruct)

The data are prompt-completion rows, one of the forms TRL defines; the run writes ebft-own-data/ in the current
folder. Its budget is sized for a CPU; c = s = G = 8 and n = 4 are the paper's defaults, and a real run keeps the
others too (EBFTConfig()) on more data.
"""

import sys
from pathlib import Path

from datasets import load_dataset
from peft import LoraConfig

from ebft import EBFTConfig, EBFTTrainer

model = sys.argv[1] if len(sys.argv) > 1 else "HuggingFaceTB/SmolLM2-135M-Instruct"
data = load_dataset("json", data_files=str(Path(__file__).parent / "data/prompt_completion.jsonl"), split="train")
args = EBFTConfig(
    output_dir="ebft-own-data", chunk_length=64, batch_size=2, micro_batch_size=None, max_steps=3, lr=1e-4
)
lora = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM")
trainer = EBFTTrainer(model=model, args=args, train_dataset=data, peft_config=lora)
trainer.train()
trainer.save_model()  # ebft-own-data/model: a plain Hugging Face folder (LoRA merged); ebft-own-data/adapter
