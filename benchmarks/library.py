"""What the library adds around EBFT's steps: setting a trainer up, and saving its model.

    python -m benchmarks.library [--model DIR] [--repeats 3]

On SmolLM2-135M-Instruct (converted from the GGUF wheel unless ``--model`` names a prepared folder) with the ``cpu``
profile's LoRA and the 100 training problems of its qa_code task in chunks of 256 tokens, side by side in one process:

- **set-up**: ``EBFTTrainer(model_dir, args, records, peft_config)`` (load, LoRA, packing, the fingerprints of the
  starting weights and the data that a checkpoint carries) against the reference, the same steps by hand without the
  fingerprints (``load_causal_lm``, ``get_peft_model``, ``pack_records``), as the loop before the library did them;
- **save**: ``save_model`` (the adapter merged into a copy, so the trainer's model stays as it is) against the
  reference, merging in place (``merge_and_unload``) before saving, as ``save_checkpoint`` did.

Each is timed ``--repeats`` times (median); the save's peak memory above the resident memory before it is read from
the kernel's high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs`` before each run).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_above_start_mb(fn) -> float:
    """Peak resident memory while ``fn`` runs, above the resident memory before it, in MB (10⁶ bytes)."""
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _status_kb("VmRSS")
    fn()
    return (_status_kb("VmHWM") - before) * 1024 / 1e6


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a prepared model folder (default: SmolLM2 from the GGUF wheel)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    from peft import LoraConfig, get_peft_model

    from ebft import EBFTConfig, EBFTTrainer
    from ebft.config import HumanEvalSource, ModelConfig
    from ebft.data import human_eval_split
    from ebft.models import load_causal_lm, load_tokenizer, prepare_model, save_checkpoint
    from ebft.packing import pack_records

    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="ebft-bench-library-"))
    model_dir = Path(args.model) if args.model else work / "smollm2"
    if not args.model:
        prepare_model(ModelConfig(source="smollm2-gguf"), model_dir, offline=True)
    records = human_eval_split(HumanEvalSource(heldout=64), 43)[0]
    lora = lambda: LoraConfig(r=16, lora_alpha=32, target_modules=LLAMA_TARGETS, task_type="CAUSAL_LM")  # noqa: E731
    config = EBFTConfig(output_dir=str(work / "run"), chunk_length=256, precision="fp32", seed=43)

    def setup_reference():
        tok = load_tokenizer(model_dir)
        model = load_causal_lm(model_dir)
        torch.manual_seed(43)
        pack_records(records, tok, 256)
        return get_peft_model(model, lora())

    def setup_library():
        return EBFTTrainer(str(model_dir), args=config, train_dataset=records, peft_config=lora())

    rows = {}
    for name, fn in (("set-up: reference", setup_reference), ("set-up: EBFTTrainer", setup_library)):
        rows[name] = [timed(fn) for _ in range(args.repeats)]
    trainer = setup_library()
    with torch.no_grad():  # a trained adapter, so that merging changes the weights
        for n, p in trainer.model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=1e-3)
    saves = {"save: in place (reference)": [], "save: save_model (a copy)": []}
    peaks = {name: [] for name in saves}
    for i in range(args.repeats):
        fresh = setup_reference()
        fresh.load_state_dict(trainer.model.state_dict())
        out = work / f"save{i}"
        reference = lambda m=fresh, o=out: save_checkpoint(m.merge_and_unload(), trainer.processing_class, o, "full")  # noqa: E731
        library = lambda o=out: trainer.save_model(o)  # noqa: E731
        for name, fn in (("save: in place (reference)", reference), ("save: save_model (a copy)", library)):
            start = time.perf_counter()
            peaks[name].append(peak_above_start_mb(fn))
            saves[name].append(time.perf_counter() - start)
    rows.update(saves)

    print(f"SmolLM2-135M, LoRA r = 16 on the 7 projections, {len(records)} records in chunks of 256, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")  # fmt: skip
    print("| | time (s) | ratio to reference | peak memory above start (MB) |")
    print("|---|---|---|---|")
    pairs = {"set-up: EBFTTrainer": "set-up: reference", "save: save_model (a copy)": "save: in place (reference)"}
    for name, values in rows.items():
        median = statistics.median(values)
        ref = pairs.get(name, name)
        ratio = median / statistics.median(rows[ref])
        peak = f"{statistics.median(peaks[name]):.0f}" if name in peaks else ""
        print(f"| {name} | {median:.2f} | {ratio:.2f}× | {peak} |")


if __name__ == "__main__":
    main()
