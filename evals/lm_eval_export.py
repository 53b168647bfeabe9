"""lm-eval task files over a task's held-out records, so that any checkpoint of the study (or any other model) can be
scored by EleutherAI's lm-evaluation-harness, offline:

    ebft export-lm-eval --task translation --out lm_eval_tasks/
    lm_eval --model hf --model_args pretrained=results/cpu/runs/ebft/translation/model \\
            --include_path lm_eval_tasks/ --tasks ebft_cpu_translation_answer_nll,ebft_cpu_translation_generate

Each task reads a local JSON Lines copy of the held-out records (``dataset_path: json``), never a hub:

- ``ebft_<profile>_<task>_answer_nll`` (records with a question): log-likelihood of each answer given its question,
  the teacher-forced quantity behind ``val_ce_answer``; lm-eval reports its ``perplexity``.
- ``ebft_<profile>_<task>_text_nll`` (records without a question, raw code): the rolling log-likelihood of each
  document; lm-eval reports word and byte perplexity and bits per byte.
- ``ebft_<profile>_<task>_generate`` (translation): greedy generation until the first newline, scored by lm-eval's
  corpus BLEU and chrF against the references.

Code tasks get no generation task: lm-eval would run the model's programs outside this project's sandbox.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from ebft.errors import UserError
from ebft.paths import atomic_write

UTILS = "ebft_lm_eval_utils"
PROCESS_RESULTS = f"!function {UTILS}.answer_nll"
UTILS_SOURCE = '''"""Written by `ebft export-lm-eval`: per-document results of the answer log-likelihood task."""


def answer_nll(doc, results):
    """The answer's negative log-likelihood given its question, in nats (the mean over documents is reported)."""
    loglikelihood, _ = results[0]
    return {"answer_nll": -loglikelihood}
'''


def task_names(profile: str, task: str, records: list[dict]) -> list[str]:
    """The lm-eval task names :func:`export_tasks` writes for these records."""
    prefix = f"ebft_{profile}_{task}"
    names = [f"{prefix}_answer_nll"] if any(r["question"] for r in records) else []
    names += [f"{prefix}_text_nll"] if any(not r["question"] for r in records) else []
    if any((r.get("meta") or {}).get("reference") for r in records):
        names.append(f"{prefix}_generate")
    return names


def export_tasks(profile: str, task: str, records: list[dict], out: Path) -> list[Path]:
    """Write the JSON Lines copy and one YAML per lm-eval task under ``out``; return the YAML files."""
    if not records:
        raise UserError(f"{task} has no held-out records to export; run prepare-data first.")
    out = Path(out).resolve()
    prefix = f"ebft_{profile}_{task}"
    data = out / f"{prefix}_heldout.jsonl"
    rows = [{"id": r["id"], "question": r["question"], "answer": r["answer"],
             "reference": (r.get("meta") or {}).get("reference") or r["answer"].strip()} for r in records]  # fmt: skip
    atomic_write(data, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    common = {"dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}}, "test_split": "test",
              "metadata": {"version": 1.0, "source": "ebft export-lm-eval"}}  # fmt: skip
    specs = {
        f"{prefix}_answer_nll": {**common, "output_type": "loglikelihood", "doc_to_text": "{{question}}",
                                 "doc_to_target": "{{answer}}", "process_results": PROCESS_RESULTS,
                                 "metric_list": [{"metric": "answer_nll", "aggregation": "mean",
                                                  "higher_is_better": False}]},
        f"{prefix}_text_nll": {**common, "output_type": "loglikelihood_rolling", "doc_to_text": "",
                               "doc_to_target": "{{answer}}",
                               "metric_list": [{"metric": m} for m in ("word_perplexity", "byte_perplexity",
                                                                        "bits_per_byte")]},
        f"{prefix}_generate": {**common, "output_type": "generate_until", "doc_to_text": "{{question}}",
                               "doc_to_target": "{{reference}}",
                               "generation_kwargs": {"until": ["\n"], "do_sample": False, "max_gen_toks": 256},
                               "metric_list": [{"metric": m, "aggregation": m, "higher_is_better": True}
                                               for m in ("bleu", "chrf")]},
    }  # fmt: skip
    atomic_write(out / f"{UTILS}.py", UTILS_SOURCE)
    written = []
    for name in task_names(profile, task, records):
        text = yaml.safe_dump({"task": name, **specs[name]}, sort_keys=False, allow_unicode=True)
        path = out / f"{name}.yaml"
        atomic_write(path, text.replace(f"'{PROCESS_RESULTS}'", PROCESS_RESULTS))  # a YAML tag lm-eval resolves
        written.append(path)
    return written
