"""Regression tests of the faults a new user of the library met (issue 30), written against what the previous main
already had (``train_ebft``, ``save_checkpoint``), so that each fails there: a finished run in the output folder
continued with other data of the same length (stale weights), saving merged LoRA into the caller's model, and bare
TypeErrors/KeyErrors on a model object, a list of strings or a record without a question."""

import csv
from pathlib import Path

import pytest
import torch
from library_helpers import lora, same_weights, weights

from ebft.config import EBFTConfig, FinetuneConfig, HumanEvalSource
from ebft.data import human_eval_split
from ebft.errors import UserError
from ebft.models import load_causal_lm, load_tokenizer, save_checkpoint
from ebft.trainer import train_ebft


@pytest.fixture(scope="module")
def records():
    return human_eval_split(HumanEvalSource(heldout=64), 43)[0][:10]


def steps_logged(out: Path) -> list[str]:
    return [r["step"] for r in csv.DictReader((out / "train_metrics.csv").open())]


def test_fault_1_a_finished_run_is_not_continued_with_other_data_of_the_same_length(tiny_model_dir, records, tmp_path,
                                                                                   capfd):  # fmt: skip
    """Regression: the default settings hash covered the data's length, not its content, so a second run into the same
    folder with other records of the same number printed 'resuming from step 2 of 2' and returned the first run's
    weights."""
    settings = EBFTConfig(c=8, s=8, G=8, n=3, lr=1e-3, batch_size=2, max_steps=2, checkpoint_every=1)
    common = dict(base_dir=tiny_model_dir, start_dir=tiny_model_dir, chunk_length=64, finetune=FinetuneConfig(),
                  cfg=settings, precision="fp32", seed=7, out=tmp_path / "run")  # fmt: skip
    train_ebft(train_records=records, **common)
    first = weights(tmp_path / "run")
    other = [{**r, "answer": r["answer"].replace("return", "return  ")} for r in records]  # same count, new content
    capfd.readouterr()
    train_ebft(train_records=other, **common)
    err = capfd.readouterr().err
    assert "resuming" not in err and "it was written for other training data; starting afresh" in err
    assert steps_logged(tmp_path / "run") == ["1", "2"]
    assert not same_weights(first, weights(tmp_path / "run"))


def test_fault_2_saving_leaves_the_callers_peft_model_as_it_was(tiny_model_dir, tmp_path):
    """Regression: save_checkpoint merged LoRA into the caller's model (merge_and_unload in place)."""
    from peft import get_peft_model

    model = get_peft_model(load_causal_lm(tiny_model_dir), lora())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()  # a trained adapter: merging changes the base weights
    before = {k: v.clone() for k, v in model.state_dict().items()}
    save_checkpoint(model, load_tokenizer(tiny_model_dir), tmp_path, "lora")
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    merged = load_causal_lm(tmp_path / "model")
    x = torch.tensor([[1, 2, 3, 4, 5]])
    torch.testing.assert_close(merged(input_ids=x).logits, model(input_ids=x).logits, rtol=1e-4, atol=1e-5)


def test_fault_3_natural_inputs_get_one_sentence_or_work(tiny_model_dir, records, tmp_path):
    """Regression: a model object where a folder was expected gave 'TypeError: expected str, bytes or os.PathLike', a
    list of strings 'TypeError: string indices must be integers', a record without a question 'KeyError'."""
    settings = EBFTConfig(c=8, s=8, G=8, n=3, lr=1e-3, batch_size=2, max_steps=1)
    common = dict(base_dir=tiny_model_dir, chunk_length=64, finetune=FinetuneConfig(), cfg=settings, precision="fp32",
                  seed=7)  # fmt: skip
    with pytest.raises(UserError, match=r"a model folder was expected, but got a LlamaForCausalLM; .*EBFTTrainer"):
        train_ebft(start_dir=load_causal_lm(tiny_model_dir), train_records=records, out=tmp_path / "a", **common)
    texts = [r["question"] + r["answer"] for r in records]
    assert train_ebft(start_dir=tiny_model_dir, train_records=texts, out=tmp_path / "b", **common)["steps"] == 1
    no_question = [{"answer": r["answer"]} for r in records]
    with pytest.raises(UserError, match="row 0 has 'answer' but no 'question'; give both columns"):
        train_ebft(start_dir=tiny_model_dir, train_records=no_question, out=tmp_path / "c", **common)


# ------------------------------------------------------------------------------------------------
# One core: the CLI's run is the API's run
