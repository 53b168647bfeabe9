"""The library: ``from ebft import EBFTConfig, EBFTTrainer`` in TRL's conventions, on the same loop as the CLI.

Regression tests of the faults a new user met (issue 30): a finished run in the output folder continued with other
data of the same length (stale weights), saving merged LoRA into the caller's model, and bare TypeErrors/KeyErrors on
a model object, a list of strings or a record without a question.
"""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from library_helpers import lora, same_weights, weights

from ebft import EBFTConfig, EBFTTrainer
from ebft.config import EBFTConfig as EBFTSection
from ebft.config import FinetuneConfig, HumanEvalSource, LoraSettings
from ebft.data import human_eval_split
from ebft.errors import ConfigError, UserError
from ebft.formats import to_records
from ebft.models import load_causal_lm, load_tokenizer, lora_config
from ebft.trainer import TIMINGS

REPO = Path(__file__).resolve().parent.parent
SMALL = {"c": 8, "s": 8, "G": 8, "n": 3, "beta": 0.5, "lr": 1e-3, "batch_size": 2, "micro_batch_size": None,
         "max_steps": 2, "checkpoint_every": 1, "chunk_length": 64, "seed": 7, "precision": "fp32"}  # fmt: skip


@pytest.fixture(scope="module")
def records():
    return human_eval_split(HumanEvalSource(heldout=64), 43)[0][:10]


def rows_of(out: Path) -> list[dict]:
    return [
        {k: v for k, v in r.items() if k not in TIMINGS} for r in csv.DictReader((out / "train_metrics.csv").open())
    ]


def fit(model, out, data, **kw):
    trainer = EBFTTrainer(model, args=EBFTConfig(output_dir=str(out), **{**SMALL, **kw.pop("args", {})}),
                          train_dataset=data, peft_config=kw.pop("peft_config", lora()), **kw)  # fmt: skip
    trainer.train()
    trainer.save_model()
    return trainer


# ------------------------------------------------------------------------------------------------
# Faults of issue 30


def test_fault_1_the_api_never_resumes_silently(tiny_model_dir, records, tmp_path):
    fit(str(tiny_model_dir), tmp_path, records, args={"max_steps": 1})
    with pytest.raises(UserError, match="holds a checkpoint of an earlier run; pass resume_from_checkpoint=True"):
        EBFTTrainer(str(tiny_model_dir), args=EBFTConfig(output_dir=str(tmp_path), **{**SMALL, "max_steps": 1}),
                    train_dataset=records, peft_config=lora()).train()  # fmt: skip
    other = EBFTTrainer(str(tiny_model_dir), args=EBFTConfig(output_dir=str(tmp_path), **{**SMALL, "max_steps": 1}),
                        train_dataset=records[:8], peft_config=lora())  # fmt: skip
    with pytest.raises(UserError, match="cannot be continued by this run: it was written for other training data"):
        other.train(resume_from_checkpoint=True)
    changed = EBFTTrainer(str(tiny_model_dir), args=EBFTConfig(output_dir=str(tmp_path), **{**SMALL, "lr": 2e-3}),
                          train_dataset=records, peft_config=lora())  # fmt: skip
    with pytest.raises(UserError, match="written for other settings"):
        changed.train(resume_from_checkpoint=str(tmp_path / "checkpoint"))
    fresh = EBFTTrainer(str(tiny_model_dir), args=EBFTConfig(output_dir=str(tmp_path / "empty"), **SMALL),
                        train_dataset=records, peft_config=lora())  # fmt: skip
    with pytest.raises(UserError, match="holds no checkpoint; pass None to start afresh"):
        fresh.train(resume_from_checkpoint=True)


def test_the_api_run_equals_the_cli_run_bit_for_bit(tiny_model_dir, tmp_path, cli_env):
    """`ebft train --method ebft` (what every workflow job runs) and EBFTTrainer given the same model folder, records
    and settings: identical weights and every logged metric but timings."""
    from ebft.data import read_records
    from ebft.resolve import read_study

    profile = REPO / "config/smoke.yaml"
    data = tmp_path / "data"
    subprocess.run(["ebft", "prepare-data", "--config", str(profile), "--task", "qa_code", "--out", str(data)],
                   env=cli_env, check=True, capture_output=True)  # fmt: skip
    cli = tmp_path / "cli"
    subprocess.run(["ebft", "train", "--config", str(profile), "--task", "qa_code", "--method", "ebft", "--model-dir",
                    str(tiny_model_dir), "--data-dir", str(data), "--out", str(cli)], env=cli_env, check=True,
                   capture_output=True)  # fmt: skip
    job = read_study(str(profile)).job("train", task="qa_code", method="ebft")
    args = EBFTConfig.from_section(job.ebft_config(), output_dir=str(tmp_path / "api"), chunk_length=job.chunk_length,
                                   seed=job.seed, precision=job.precision, attention=job.attention)  # fmt: skip
    trainer = EBFTTrainer(str(tiny_model_dir), args=args, train_dataset=read_records(data / "train.jsonl"),
                          eval_dataset=read_records(data / "heldout.jsonl"),
                          peft_config=lora_config(job.finetune))  # fmt: skip
    trainer.train()
    trainer.save_model()
    assert rows_of(tmp_path / "api") == rows_of(cli) and len(rows_of(cli)) == job.ebft_config().max_steps
    # the smoke profile evaluates during training, the workflow's way (its evaluation settings, the steps matched to
    # SFT's budgets); the library evaluates every chunk: the same steps, the training unchanged by either
    assert {r["step"] for r in eval_rows(cli)} == {r["step"] for r in eval_rows(tmp_path / "api")} == {"0", "1", "2"}
    assert same_weights(weights(tmp_path / "api"), weights(cli))
    assert (cli / "adapter").is_dir() and (tmp_path / "api/adapter").is_dir()


def test_a_model_object_trains_to_the_same_weights_as_its_folder(tiny_model_dir, records, tmp_path):
    fit(str(tiny_model_dir), tmp_path / "folder", records)
    trainer = fit(load_causal_lm(tiny_model_dir), tmp_path / "object", records,
                  processing_class=load_tokenizer(tiny_model_dir))  # fmt: skip
    assert same_weights(weights(tmp_path / "folder"), weights(tmp_path / "object"))
    assert rows_of(tmp_path / "folder") == rows_of(tmp_path / "object")
    # the trained model stays in memory, a peft model, unchanged by saving
    assert hasattr(trainer.model, "peft_config") and any("lora_A" in k for k in trainer.model.state_dict())


def test_full_fine_tuning_and_a_given_peft_model(tiny_model_dir, records, tmp_path):
    from peft import get_peft_model

    full = fit(str(tiny_model_dir), tmp_path / "full", records, peft_config=None, args={"max_steps": 1})
    assert full.feature_source == "frozen copy of the start" and not (tmp_path / "full/adapter").exists()
    torch.manual_seed(7)
    given = get_peft_model(load_causal_lm(tiny_model_dir), lora())
    trainer = fit(given, tmp_path / "peft", records, peft_config=None, processing_class=load_tokenizer(tiny_model_dir),
                  args={"max_steps": 1})  # fmt: skip
    assert trainer.model is given and trainer.feature_source == "policy with adapter disabled"
    with pytest.raises(UserError, match="already a peft model"):
        EBFTTrainer(given, args=EBFTConfig(**SMALL), train_dataset=records, peft_config=lora(),
                    processing_class=load_tokenizer(tiny_model_dir))  # fmt: skip


def test_callbacks_see_every_event_and_a_stopped_run_resumes_exactly(tiny_model_dir, records, tmp_path):
    from transformers import TrainerCallback

    class Recorder(TrainerCallback):
        def __init__(self, stop_at=None):
            self.events, self.stop_at, self.logged = [], stop_at, []

        def on_train_begin(self, args, state, control, **kw):
            self.events.append("train_begin")

        def on_step_end(self, args, state, control, **kw):
            self.events.append(f"step_end {state.global_step}")
            if state.global_step == self.stop_at:
                control.should_training_stop = True

        def on_log(self, args, state, control, logs=None, **kw):
            self.logged.append(logs["step"])

        def on_save(self, args, state, control, **kw):
            self.events.append(f"save {state.global_step}")

        def on_train_end(self, args, state, control, **kw):
            self.events.append("train_end")

    kw = {"args": {"max_steps": 3, "checkpoint_every": 10}}
    straight = Recorder()
    fit(str(tiny_model_dir), tmp_path / "straight", records, callbacks=[straight], **kw)
    assert straight.events == ["train_begin", "step_end 1", "step_end 2", "step_end 3", "save 3", "train_end"]
    assert straight.logged == [1, 2, 3]
    stopper = Recorder(stop_at=1)
    args = EBFTConfig(output_dir=str(tmp_path / "stopped"), **{**SMALL, "max_steps": 3, "checkpoint_every": 10})
    trainer = EBFTTrainer(str(tiny_model_dir), args=args, train_dataset=records, peft_config=lora(),
                          callbacks=[stopper])  # fmt: skip
    out = trainer.train()
    assert out.global_step == 1 and out.metrics["halted"] and stopper.events[-2:] == ["save 1", "train_end"]
    assert [r["step"] for r in trainer.state.log_history] == [1]
    resumed = EBFTTrainer(str(tiny_model_dir), args=args, train_dataset=records, peft_config=lora())
    resumed.train(resume_from_checkpoint=True)
    resumed.save_model()
    assert same_weights(weights(tmp_path / "straight"), weights(tmp_path / "stopped"))
    assert rows_of(tmp_path / "straight") == rows_of(tmp_path / "stopped")
    assert [r["step"] for r in resumed.state.log_history] == [1, 2, 3]


def test_evaluate_gives_held_out_ce_and_fm_loss_with_intervals(tiny_model_dir, records, tmp_path):
    trainer = EBFTTrainer(str(tiny_model_dir), args=EBFTConfig(output_dir=str(tmp_path), **SMALL),
                          train_dataset=records[:6], eval_dataset=records[6:], peft_config=lora())  # fmt: skip
    metrics = trainer.evaluate()
    for name in ("eval_val_ce", "eval_val_ce_answer", "eval_fm_loss"):
        assert metrics[f"{name}_ci_low"] <= metrics[name] <= metrics[f"{name}_ci_high"], name
    assert 0 < metrics["eval_val_ce"] < 20
    again = trainer.evaluate(records[6:])
    assert again == metrics  # fixed seeds: the same rollouts and resamples
    with pytest.raises(UserError, match="no eval_dataset"):
        EBFTTrainer(str(tiny_model_dir), args=EBFTConfig(**SMALL), peft_config=lora()).evaluate()


# ------------------------------------------------------------------------------------------------
# Settings and data forms


def test_trl_names_and_wrong_values_get_one_sentence():
    with pytest.raises(ConfigError, match="no 'learning_rate' .*here it is lr"):
        EBFTConfig(learning_rate=1e-5)
    with pytest.raises(ConfigError, match="no 'num_generations' .*here it is n"):
        EBFTConfig(num_generations=8)
    with pytest.raises(ConfigError, match="did you mean 'gamma'"):
        EBFTConfig(gama=0.1)
    with pytest.raises(ConfigError, match="EBFTConfig.c' must be an integer"):
        EBFTConfig(c="8")
    with pytest.raises(ConfigError, match=r"EBFTConfig.n is 2; β > 0 needs n ≥ 3"):
        EBFTConfig(beta=0.5, n=2)
    with pytest.raises(ConfigError, match="keyword arguments only"):
        EBFTConfig("out")
    with pytest.raises(ConfigError, match="report_to names 'mlflow'"):
        EBFTConfig(report_to="mlflow")
    cfg = EBFTConfig(lr=1)
    assert cfg.lr == 1.0 and cfg.batch_size == 16 and cfg.chunk_length == 1024 and cfg.seed == 43  # released values
    assert cfg.section() == EBFTSection(**{k: getattr(cfg, k) for k in EBFTSection.__dataclass_fields__})


def test_every_trl_dataset_form_becomes_question_and_answer(tiny_model_dir):
    import datasets

    tok = load_tokenizer(tiny_model_dir)
    assert to_records(["def f(): pass"]) == [{"id": "0", "question": "", "answer": "def f(): pass"}]
    assert to_records([{"text": "x"}])[0]["answer"] == "x"
    assert to_records([{"prompt": "Q", "completion": "A"}])[0] | {"id": "0"} == {"id": "0", "question": "Q",
                                                                                  "answer": "A"}  # fmt: skip
    assert to_records([{"question": None, "answer": "A", "tests": "x"}])[0]["question"] == ""
    ds = datasets.Dataset.from_list([{"prompt": "Q1", "completion": "A1"}, {"prompt": "Q2", "completion": "A2"}])
    assert [r["answer"] for r in to_records(ds)] == ["A1", "A2"]
    chat = [{"role": "user", "content": "Add 2 and 3."}, {"role": "assistant", "content": "5"}]
    (rec,) = to_records([{"messages": chat}], tok)
    assert rec["question"].endswith("assistant\n") and rec["answer"].startswith("5")
    assert rec["question"] + rec["answer"] == tok.apply_chat_template(chat, tokenize=False)
    (pc,) = to_records([{"prompt": chat[:1], "completion": chat[1:]}], tok)
    assert pc == {**rec, "id": "0"}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([3], "train_dataset row 0 is a int; give each row as"),
        ([{"a": 1, "b": 2}], "row 0 has the columns 'a', 'b' but none of the accepted forms"),
        ([{"prompt": "Q"}], "row 0 has 'prompt' but no 'completion'"),
        ([{"text": "x"}, {"text": 5}], "row 1, column 'text' is a int, not text"),
        ([{"messages": "hi"}], "row 0, column 'messages' is not a list of messages"),
        ([], "train_dataset has no rows"),
        ({"text": "x"}, "is a single dict, not a dataset"),
        ([""], "row 0 is an empty string"),
    ],
)
def test_a_row_of_another_shape_is_named_in_one_sentence(data, message):
    with pytest.raises(UserError, match=message):
        to_records(data)


def test_a_dataset_dict_and_a_template_less_tokenizer_are_refused():
    import datasets

    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list([{"text": "x"}])})
    with pytest.raises(UserError, match="DatasetDict of splits 'train'; pass one split"):
        to_records(dd)
    with pytest.raises(UserError, match="the tokenizer has no chat template"):
        to_records([{"messages": [{"role": "user", "content": "hi"}]}], tokenizer=None)


def test_push_to_hub_offline_and_missing_reporters_are_one_sentence(tiny_model_dir, records, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    trainer = EBFTTrainer(str(tiny_model_dir), args=EBFTConfig(output_dir=str(tmp_path), report_to=["wandb"], **SMALL),
                          train_dataset=records, peft_config=lora())  # fmt: skip
    with pytest.raises(UserError, match="push_to_hub .* needs the Hugging Face hub, but this profile is offline"):
        trainer.push_to_hub()
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(UserError, match="report_to names wandb, but the wandb package is not installed"):
        trainer.train()
    assert not (tmp_path / "train_metrics.csv").exists()  # refused before anything was written


def test_the_example_trains_on_its_own_data(tiny_model_dir, tmp_path, cli_env):
    """examples/ebft_own_data.py, as a user runs it, on the tiny model."""
    proc = subprocess.run([sys.executable, str(REPO / "examples/ebft_own_data.py"), str(tiny_model_dir)],
                          cwd=tmp_path, env=cli_env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "ebft-own-data"
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] >= 2 and (out / "model/config.json").is_file() and (out / "adapter").is_dir()
    assert load_causal_lm(out / "model") is not None


def test_lora_settings_of_a_profile_map_to_peft():
    cfg = lora_config(FinetuneConfig(lora=LoraSettings(r=8, alpha=16, target_modules=["q_proj"])))
    assert cfg.r == 8 and cfg.lora_alpha == 16 and set(cfg.target_modules) == {"q_proj"}
    assert lora_config(FinetuneConfig(mode="full")) is None


@pytest.mark.parametrize("name", ["wandb", "trackio"])
def test_report_to_sends_every_logged_row_to_wandb_or_trackio(tiny_model_dir, records, tmp_path, monkeypatch, name):
    import types

    calls = []
    fake = types.SimpleNamespace(init=lambda **kw: calls.append(("init", kw["name"], kw["config"]["lr"])),
                                 log=lambda metrics, step: calls.append(("log", step, "reward" in metrics)),
                                 finish=lambda: calls.append(("finish",)))  # fmt: skip
    monkeypatch.setitem(sys.modules, name, fake)
    fit(str(tiny_model_dir), tmp_path / "run", records, args={"report_to": [name]})
    assert calls == [("init", "run", SMALL["lr"]), ("log", 1, True), ("log", 2, True), ("finish",)]


def eval_rows(out: Path) -> list[dict]:
    return [
        {k: v for k, v in r.items() if k != "train_wall_s"} for r in csv.DictReader((out / "eval_metrics.csv").open())
    ]


def test_evaluating_during_training_changes_nothing_in_training(tiny_model_dir, records, tmp_path):
    """eval_every: held-out CE and FM loss at step 0, every eval_every steps and at the end, with the budgets spent so
    far; the weights and every logged training metric are bit-identical to a run without them."""
    fit(str(tiny_model_dir), tmp_path / "plain", records[:8], args={"max_steps": 3})
    evaluated = fit(str(tiny_model_dir), tmp_path / "evaluated", records[:8], eval_dataset=records[8:],
                    args={"max_steps": 3, "eval_every": 2})  # fmt: skip
    assert same_weights(weights(tmp_path / "plain"), weights(tmp_path / "evaluated"))
    assert rows_of(tmp_path / "plain") == rows_of(tmp_path / "evaluated")
    rows = eval_rows(tmp_path / "evaluated")
    assert [(r["step"], r["metric"]) for r in rows] == [(s, m) for s in ("0", "2", "3")
                                                        for m in ("val_ce", "val_ce_answer", "fm_loss")]  # fmt: skip
    first, last = (next(r for r in rows if r["step"] == s and r["metric"] == "val_ce") for s in ("0", "3"))
    assert int(first["gt_tokens"]) == 0 and float(first["train_flops"]) == 0
    assert 0 < int(last["gt_tokens"]) <= 3 * 2 * 64 and int(last["rollout_tokens"]) == 3 * 2 * 3 * 7 * 8
    assert float(last["value"]) != float(first["value"])  # the model moved
    assert evaluated.evaluate()["eval_val_ce"] == pytest.approx(float(last["value"]), rel=1e-6)
    assert [h["step"] for h in evaluated.state.log_history if "eval_val_ce" in h][:3] == [0, 2, 3]
    with pytest.raises(UserError, match="eval_every is set but the trainer has no eval_dataset"):
        fit(str(tiny_model_dir), tmp_path / "none", records, args={"eval_every": 1})
    with pytest.raises(ConfigError, match="no 'eval_steps' .*here it is eval_every"):
        EBFTConfig(eval_steps=10)


@pytest.mark.parametrize("steps, every, halt, deleted", [(4, 2, 3, False), (2, 1, 2, True)])
def test_an_interrupted_run_resumes_with_every_evaluation_once(tiny_model_dir, records, tmp_path, steps, every, halt,
                                                               deleted):  # fmt: skip
    """Killed after step 3 with its last checkpoint at step 2, then resumed: the evaluations after the checkpoint are
    made again, and the run lists each step's evaluation once, equal to an uninterrupted run's. Regression (killed
    after its last step's checkpoint, eval_metrics.csv deleted as Snakemake deletes a failed job's outputs): the
    resumed run had no step left to evaluate and wrote no eval_metrics.csv; now it writes what its checkpoint kept."""
    kw = {"args": {"max_steps": steps, "checkpoint_every": every, "eval_every": 1}, "eval_dataset": records[8:]}
    fit(str(tiny_model_dir), tmp_path / "straight", records[:8], **kw)
    args = EBFTConfig(output_dir=str(tmp_path / "killed"), **{**SMALL, **kw["args"]})
    trainers = [EBFTTrainer(str(tiny_model_dir), args=args, train_dataset=records[:8], eval_dataset=records[8:],
                            peft_config=lora()) for _ in range(2)]  # fmt: skip
    trainers[0]._halt_after = halt
    trainers[0].train()
    assert [r["step"] for r in eval_rows(tmp_path / "killed")][::3] == [str(k) for k in range(halt + 1)]
    if deleted:
        (tmp_path / "killed/eval_metrics.csv").unlink()
    trainers[1].train(resume_from_checkpoint=True)
    assert eval_rows(tmp_path / "killed") == eval_rows(tmp_path / "straight")
    assert [r["step"] for r in eval_rows(tmp_path / "straight")][::3] == [str(k) for k in range(steps + 1)]


TWO_PROCESS_RUN = """
import json, sys
from ebft import EBFTConfig, EBFTTrainer
from ebft.config import HumanEvalSource
from ebft.data import human_eval_split
from peft import LoraConfig

model, out = sys.argv[1], sys.argv[2]
records = human_eval_split(HumanEvalSource(heldout=64), 43)[0][:10]
settings = json.loads(sys.argv[3])
lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
trainer = EBFTTrainer(model, args=EBFTConfig(output_dir=out, **settings), train_dataset=records[:8],
                      eval_dataset=records[8:], peft_config=lora)
trainer.train()
trainer.save_model()
"""


@pytest.mark.slow
def test_two_processes_train_and_evaluate_as_one(tiny_model_dir, tmp_path, cli_env):
    """The library under `accelerate launch` with 2 CPU processes (gloo) against 1 process, evaluating during training:
    the same training rows, evaluations and budgets (each process takes half of every global batch; every process
    evaluates, the first writes)."""
    script = tmp_path / "run.py"
    script.write_text(TWO_PROCESS_RUN)
    settings = json.dumps({**SMALL, "max_steps": 2, "eval_every": 1, "eval_max_chunks": 2})
    for procs in (1, 2):
        launch = ["-m", "accelerate.commands.launch", "--config_file", str(REPO / "config/accelerate/ddp.yaml"),
                  "--num_processes", "2"] if procs == 2 else []  # fmt: skip
        proc = subprocess.run([sys.executable, *launch, str(script), str(tiny_model_dir), str(tmp_path / f"p{procs}"),
                               settings], capture_output=True, text=True, env=cli_env, timeout=600)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = (tmp_path / "p1", tmp_path / "p2")
    assert json.loads((two / "train_summary.json").read_text())["processes"] == 2
    for a, b in zip(rows_of(one), rows_of(two), strict=True):
        assert a["step"] == b["step"]
        for key in ("reward", "ce", "loss", "grad_norm", "lr"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-4, abs=1e-6), key
    ev1, ev2 = eval_rows(one), eval_rows(two)
    assert [(r["step"], r["metric"]) for r in ev1] == [(r["step"], r["metric"]) for r in ev2]
    assert {r["step"] for r in ev1} == {"0", "1", "2"} and {"val_ce", "fm_loss"} <= {r["metric"] for r in ev1}
    for a, b in zip(ev1, ev2, strict=True):
        assert (a["gt_tokens"], a["rollout_tokens"], a["train_flops"]) == (b["gt_tokens"], b["rollout_tokens"],
                                                                           b["train_flops"])  # fmt: skip
        assert float(a["value"]) == pytest.approx(float(b["value"]), rel=1e-4, abs=1e-5), (a["step"], a["metric"])
