"""lm-eval interoperability: the exported tasks run in lm-eval offline on the smoke model, and lm-eval's answer
log-likelihoods agree with this project's teacher-forced NLL on the same documents."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from ebft.cli import main
from ebft.config import DjangoSource, HumanEvalSource
from ebft.data import django_split, read_records, write_task_data
from ebft.losses import token_nll
from ebft.models import load_causal_lm, load_tokenizer
from evals.lm_eval_export import export_tasks

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def qa_records(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "qa_code"
    write_task_data("qa_code", HumanEvalSource(heldout=64), 43, out)
    return out, read_records(out / "heldout.jsonl")[:6]


def our_answer_nll(model_dir, records) -> list[float]:
    """The summed NLL of each answer given its question, as this project computes it (question and answer tokenised
    separately, as packing does; no special tokens)."""
    tok, model = load_tokenizer(model_dir), load_causal_lm(model_dir).eval()
    out = []
    for r in records:
        q = tok(r["question"], add_special_tokens=False)["input_ids"]
        a = tok(r["answer"], add_special_tokens=False)["input_ids"]
        ids = torch.tensor([q + a])
        mask = torch.tensor([[False] * len(q) + [True] * len(a)])
        with torch.no_grad():
            nll, _ = token_nll(model(input_ids=ids).logits, ids, mask)
        out.append(float(nll.sum()))
    return out


def test_lm_evals_answer_log_likelihood_agrees_with_ours_within_one_percent(tiny_model_dir, qa_records, tmp_path):
    import lm_eval
    from lm_eval.tasks import TaskManager

    _, records = qa_records
    files = export_tasks("smoke", "qa_code", records, tmp_path / "tasks")
    assert [f.name for f in files] == ["ebft_smoke_qa_code_answer_nll.yaml"]
    result = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={tiny_model_dir},dtype=float32",
                                     tasks=["ebft_smoke_qa_code_answer_nll"], batch_size=2, device="cpu",
                                     task_manager=TaskManager(include_path=str(tmp_path / "tasks")),
                                     log_samples=True)  # fmt: skip
    samples = sorted(result["samples"]["ebft_smoke_qa_code_answer_nll"], key=lambda s: s["doc_id"])
    theirs = [-s["filtered_resps"][0][0] for s in samples]
    ours = our_answer_nll(tiny_model_dir, records)
    assert len(theirs) == len(ours) == 6
    for a, b in zip(theirs, ours, strict=True):
        assert a == pytest.approx(b, rel=0.01)
    mean = result["results"]["ebft_smoke_qa_code_answer_nll"]["answer_nll,none"]
    assert mean == pytest.approx(sum(ours) / len(ours), rel=0.01)


def test_the_command_writes_offline_tasks_for_each_kind_of_record(capsys, qa_records, tmp_path):
    data, _ = qa_records
    assert main(["export-lm-eval", "--config", str(REPO / "config/smoke.yaml"), "--task", "qa_code", "--data-dir",
                 str(data), "--out", str(tmp_path / "qa")]) == 0  # fmt: skip
    assert "--tasks ebft_smoke_qa_code_answer_nll" in capsys.readouterr().out
    spec = yaml.safe_load((tmp_path / "qa/ebft_smoke_qa_code_answer_nll.yaml").read_text().replace("!function", ""))
    copy = Path(spec["dataset_kwargs"]["data_files"]["test"])
    assert spec["dataset_path"] == "json" and copy.is_absolute() and copy.is_file()
    assert len(copy.read_text().splitlines()) == 64
    _, heldout, _ = django_split(DjangoSource(languages=["de"], heldout_fraction=0.1), 43)
    files = export_tasks("smoke", "translation", heldout, tmp_path / "mt")
    assert [f.stem for f in files] == ["ebft_smoke_translation_answer_nll", "ebft_smoke_translation_generate"]
    gen = yaml.safe_load(files[1].read_text())
    assert gen["generation_kwargs"]["until"] == ["\n"] and [m["metric"] for m in gen["metric_list"]] == ["bleu", "chrf"]
    raw = [{"id": "f.py", "question": "", "answer": "x = 1\n", "meta": {}}]
    assert [f.stem for f in export_tasks("smoke", "unstructured_code", raw, tmp_path / "raw")] == [
        "ebft_smoke_unstructured_code_text_nll"
    ]
    first = json.loads((tmp_path / "mt/ebft_smoke_translation_heldout.jsonl").read_text().splitlines()[0])
    assert first["reference"] == heldout[0]["meta"]["reference"]


def test_the_translation_task_generates_and_scores_in_lm_eval(tiny_model_dir, tmp_path):
    import lm_eval
    from lm_eval.tasks import TaskManager

    _, heldout, _ = django_split(DjangoSource(languages=["de"], heldout_fraction=0.1), 43)
    export_tasks("smoke", "translation", heldout, tmp_path)
    result = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={tiny_model_dir},dtype=float32",
                                     tasks=["ebft_smoke_translation_generate"], batch_size=4, device="cpu", limit=4,
                                     gen_kwargs="max_gen_toks=16",
                                     task_manager=TaskManager(include_path=str(tmp_path)))  # fmt: skip
    scores = result["results"]["ebft_smoke_translation_generate"]
    assert scores["sample_len"] == 4 and {"bleu,none", "chrf,none"} <= scores.keys()
