"""A user's own tasks: any task name with a `kind`, the kind's default evaluations and reward, sources given as one
local file, held-out rows split off by content hash, and examples/own_task.yaml run end to end through the workflow."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_workflow import snakemake

from ebft.cli import main
from ebft.config import HubSource, HubSplit
from ebft.data import write_task_data
from ebft.errors import ConfigError, UserError
from ebft.resolve import load_study, read_study
from ebft.schema import check_schema

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples/own_task.yaml"


def example() -> dict:
    return yaml.safe_load(EXAMPLE.read_text())


def with_task(name: str, task: dict, methods=("sft", "ebft")) -> dict:
    """The example profile with one task in place of its own."""
    raw = example()
    raw["tasks"] = {name: {"model": "tiny", "chunk_length": 64, **task}}
    raw["methods"] = list(methods)
    return raw


def hub(path, **fields) -> dict:
    return {"kind": "hub", "train": {"path": str(path), **fields}}


def refused(raw: dict, said: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_study(raw)
    message = str(info.value)
    assert said in message and "\n" not in message and message.endswith("."), message
    return message


# --------------------------------------------------------------------------------------------------
# Names and kinds
# --------------------------------------------------------------------------------------------------


def test_the_example_profile_resolves_with_its_own_task_names_and_meets_the_schema():
    check_schema(example())
    study = read_study(str(EXAMPLE))
    assert {t: (s.kind, s.reward, s.code_eval, s.translation_eval) for t, s in study.tasks.items()} == {
        "my_code": ("code", "unit_tests", "heldout", "none"),
        "my_text": ("text", "none", "none", "none"),
    }
    assert study.eval_kinds("my_code") == ["ce", "fm", "code"] and study.eval_kinds("my_text") == ["ce", "fm"]
    assert study.runs("my_code") == ["sft", "ebft", "rlvr"] and study.runs("my_text") == ["sft", "ebft"]
    assert study.task("my_code").source.heldout_fraction == 0.25


def test_a_task_name_that_is_not_built_in_needs_a_kind_in_one_sentence():
    raw = with_task("my_code", {"source": hub(REPO / "examples/data/functions.jsonl")})
    refused(raw, "tasks.my_code is not a built-in task (qa_code, unstructured_code, translation), so it needs a "
                 "kind; set tasks.my_code.kind to code, text or translation.")  # fmt: skip
    raw["tasks"]["my_code"]["kind"] = "prose"
    refused(raw, "config key 'tasks.my_code.kind' is 'prose'; allowed values: 'code', 'text', 'translation'.")


@pytest.mark.parametrize("name", ["my task", "a/b", "données", "x.y"])
def test_a_task_name_that_cannot_name_a_folder_is_refused(name):
    raw = with_task(name, {"kind": "text", "source": hub(REPO / "examples/data/notes.csv")})
    refused(raw, f"tasks.{name} is not a usable task name")


def test_the_kind_decides_the_evaluations_and_reward_unless_they_are_written():
    functions = REPO / "examples/data/functions.jsonl"
    tests = {"tests_field": "tests", "tests_form": "assert_list"}
    rlvr = ("sft", "ebft", "rlvr")

    def task(kind, source, **written):
        study = load_study(with_task("t", {"kind": kind, "source": source, **written}, methods=("sft",)))
        spec = study.task("t")
        return spec.reward, spec.code_eval, spec.translation_eval

    assert task("code", hub(functions, **tests)) == ("unit_tests", "heldout", "none")
    assert task("code", hub(functions)) == ("none", "none", "none")  # no tests column: CE and FM only
    assert task("text", hub(functions, **tests)) == ("none", "none", "none")
    assert task("code", hub(functions, **tests), reward="none") == ("none", "heldout", "none")  # written wins
    assert task("text", hub(functions, **tests), code_eval="heldout") == ("none", "heldout", "none")
    assert task("code", hub(functions), code_eval="human_eval") == ("none", "human_eval", "none")
    pairs = {"kind": "django", "languages": ["de"]}
    assert task("translation", pairs) == ("chrf", "none", "heldout")
    assert task("text", pairs, translation_eval="heldout") == ("none", "none", "heldout")
    # a text task trains no RLVR: its report cells read 'n/a (no verifier)'
    study = load_study(with_task("t", {"kind": "code", "source": hub(functions, **tests)}, methods=rlvr))
    assert study.trained("t") == list(rlvr)
    raw = with_task("t", {"kind": "text", "source": hub(functions, **tests)}, methods=rlvr)
    raw["tasks"]["u"] = {"kind": "code", "model": "tiny", "chunk_length": 64, "source": hub(functions, **tests)}
    study = load_study(raw)
    assert study.trained("t") == ["sft", "ebft"] and study.no_verifier == ["t"]


def test_the_built_in_tasks_keep_their_kind_and_settings_without_one():
    study = read_study(str(REPO / "config/cpu.yaml"))
    assert {t: (s.kind, s.reward, s.code_eval, s.translation_eval) for t, s in study.tasks.items()} == {
        "qa_code": ("code", "unit_tests", "heldout", "none"),
        "unstructured_code": ("code", "none", "human_eval", "none"),
        "translation": ("translation", "chrf", "none", "heldout"),
    }


@pytest.mark.parametrize(
    "kind,written,source,said",
    [
        ("text", {"code_eval": "heldout"}, {}, "tasks.t.code_eval is 'heldout' but its held-out rows carry no unit "
                                               "tests (no tests_field in its source); map the tests column"),
        ("code", {"reward": "unit_tests"}, {}, "tasks.t.reward is 'unit_tests' but its training rows carry no unit "
                                               "tests"),
        ("translation", {}, {}, "tasks.t.translation_eval is 'heldout' (the default of kind translation) but its "
                                "held-out data are not translation pairs"),
        ("text", {"reward": "chrf"}, {}, "tasks.t.reward is 'chrf' but its training data are not translation pairs"),
    ],
)  # fmt: skip
def test_a_setting_the_tasks_data_cannot_serve_is_one_sentence(kind, written, source, said):
    raw = with_task("t", {"kind": kind, "source": hub(REPO / "examples/data/functions.jsonl", **source), **written})
    refused(raw, said)


def test_memory_sizes_name_the_profiles_own_tasks():
    raw = example()
    raw["launch"]["memory_mb"] = {"train_ebft/my_code": 3000, "eval_ce": 2000}
    assert load_study(raw).profile.launch.memory("train_ebft", "my_code") == 3000
    raw["launch"]["memory_mb"] = {"train_ebft/qa_code": 3000}
    refused(raw, "train_ebft/qa_code is not a rule that loads a model, or such a rule and a task ('rule/task'); the "
                 "tasks: my_code, my_text.")  # fmt: skip


def test_the_cli_takes_a_profiles_own_task_and_refuses_one_it_lacks(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)  # the example's paths are relative to the repository root
    out = tmp_path / "data"
    assert main(["prepare-data", "--config", str(EXAMPLE), "--task", "my_text", "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"]["train"]["records"] + manifest["splits"]["heldout"]["records"] == 32
    assert main(["prepare-data", "--config", str(EXAMPLE), "--task", "qa_code", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "the profile 'own_task' has no task 'qa_code'; it has my_code, my_text." in err and err.count("\n") == 1


# --------------------------------------------------------------------------------------------------
# Sources: one file, and a held-out fraction split by content
# --------------------------------------------------------------------------------------------------


def qa_rows(numbers) -> list[dict]:
    return [{"question": f"What is {i} times 3? ", "answer": f"{i} times 3 is {3 * i}.", "tests": f"['assert {i}']"}
            for i in numbers]  # fmt: skip


def jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def split(path: Path, tmp_path: Path, fraction=0.3, seed=43, **fields) -> tuple[list[dict], list[dict]]:
    out = tmp_path / f"out-{path.stem}-{len(list(tmp_path.iterdir()))}"
    source = HubSource(train=HubSplit(path=str(path), **fields), heldout_fraction=fraction)
    write_task_data("my_task", source, seed, out)
    return tuple([json.loads(line) for line in (out / f"{side}.jsonl").read_text().splitlines()]
                 for side in ("train", "heldout"))  # fmt: skip


def sides(records) -> dict[str, str]:
    train, heldout = records
    return {**{r["question"]: "train" for r in train}, **{r["question"]: "heldout" for r in heldout}}


def test_a_heldout_fraction_splits_by_content_so_adding_a_row_moves_no_other(tmp_path):
    rows = qa_rows(range(60))
    before = sides(split(jsonl(tmp_path / "a.jsonl", rows), tmp_path))
    assert 10 <= list(before.values()).count("heldout") <= 26  # about 0.3 of 60
    grown = [*qa_rows(range(100, 120)), *reversed(rows)]  # new rows first, the old ones reordered
    after = sides(split(jsonl(tmp_path / "b.jsonl", grown), tmp_path))
    assert {q: after[q] for q in before} == before
    assert sides(split(tmp_path / "a.jsonl", tmp_path, seed=44)) != before  # the seed decides the split


def test_identical_rows_always_fall_on_one_side(tmp_path):
    rows = qa_rows(range(40))
    twice = rows + [dict(r, question=r["question"].strip() + "  ") for r in rows]  # end spaces aside: the same row
    train, heldout = split(jsonl(tmp_path / "twice.jsonl", twice), tmp_path)
    questions = {side: {r["question"].strip() for r in records} for side, records in (("t", train), ("h", heldout))}
    assert questions["t"] and questions["h"] and not questions["t"] & questions["h"]
    assert len(train) + len(heldout) == 80


def test_without_a_heldout_fraction_a_tenth_is_held_out_and_written_in_the_settings(tmp_path):
    raw = with_task("t", {"kind": "text", "source": hub(jsonl(tmp_path / "d.jsonl", qa_rows(range(50))))})
    job = load_study(raw).job("prepare-data", task="t")
    assert job.source.heldout_fraction == 0.1
    assert json.loads(job.to_json())["source"]["heldout_fraction"] == 0.1


def test_a_csv_file_and_a_parquet_file_are_sources_of_their_own(tmp_path):
    frame = pd.DataFrame(qa_rows(range(30)))
    frame.to_csv(tmp_path / "rows.csv", index=False)
    frame.to_parquet(tmp_path / "rows.parquet", index=False)
    from_csv = split(tmp_path / "rows.csv", tmp_path, tests_field="tests", tests_form="assert_list")
    from_parquet = split(tmp_path / "rows.parquet", tmp_path, tests_field="tests", tests_form="assert_list")
    from_jsonl = split(jsonl(tmp_path / "rows.jsonl", qa_rows(range(30))), tmp_path, tests_field="tests",
                       tests_form="assert_list")  # fmt: skip
    assert sides(from_csv) == sides(from_parquet) == sides(from_jsonl)
    assert all(len(r["tests"]) == 1 and r["tests"][0].startswith("assert ") for side in from_csv for r in side)
    assert [len(s) for s in from_csv] == [len(s) for s in from_parquet] and sum(map(len, from_csv)) == 30


def test_a_file_holds_out_another_file(tmp_path):
    train, heldout = jsonl(tmp_path / "train.jsonl", qa_rows(range(20))), jsonl(tmp_path / "test.jsonl", qa_rows([99]))
    source = HubSource(train=HubSplit(path=str(train)), heldout=HubSplit(path=str(heldout)))
    manifest = write_task_data("my_task", source, 43, tmp_path / "out")
    assert (manifest["splits"]["train"]["records"], manifest["splits"]["heldout"]["records"]) == (20, 1)
    raw = with_task("t", {"kind": "text", "source": {"kind": "hub", "train": {"path": str(train)},
                                                     "heldout": {"path": str(tmp_path / "." / "train.jsonl")}}})  # fmt: skip
    refused(raw, "tasks.t.source.heldout reads the training side's data")


def test_an_unknown_column_of_a_file_is_named_in_one_sentence(tmp_path):
    path = jsonl(tmp_path / "rows.jsonl", qa_rows(range(10)))
    source = HubSource(train=HubSplit(path=str(path), answer_field="solution"))
    with pytest.raises(UserError) as info:
        write_task_data("my_task", source, 43, tmp_path / "out")
    assert str(info.value) == (f"dataset {str(path)!r} has no column 'solution' (columns: question, answer, tests); "
                               f"set the train split's answer_field in the profile to one of them.")  # fmt: skip
    text = tmp_path / "rows.txt"
    text.write_text("one line\n")
    with pytest.raises(UserError, match=r"rows.txt is not a JSON Lines, JSON, CSV or Parquet file .*; convert it"):
        write_task_data("my_task", HubSource(train=HubSplit(path=str(text))), 43, tmp_path / "out")


def test_an_edited_file_changes_the_settings_of_its_tasks_jobs(tmp_path):
    path = jsonl(tmp_path / "rows.jsonl", qa_rows(range(20)))
    raw = with_task("t", {"kind": "text", "source": hub(path)})
    before = load_study(copy.deepcopy(raw)).job("prepare-data", task="t")
    assert set(before.local_data) == {"train"}
    jsonl(path, qa_rows(range(21)))
    after = load_study(raw).job("prepare-data", task="t")
    assert before.hash != after.hash and before.local_data != after.local_data


# --------------------------------------------------------------------------------------------------
# The example, end to end
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_own_task_example_runs_end_to_end(tmp_path, cli_env):
    snakemake(cli_env, tmp_path, profile=str(EXAMPLE.relative_to(REPO)))
    root = tmp_path / "own_task"
    df = pd.read_csv(root / "metrics.csv", keep_default_na=False, na_values=[""])
    assert set(zip(df.task, df.method, strict=True)) == {(t, m) for t in ("my_code", "my_text")
                                                         for m in ("base", "sft", "ebft", "rlvr")}  # fmt: skip
    assert set(df[df.task == "my_text"].metric) == {"val_ce", "val_ce_answer", "fm_loss"}
    assert set(df[df.task == "my_code"].metric) == {"val_ce", "val_ce_answer", "fm_loss", "pass@1"}
    no_verifier = (df.task == "my_text") & (df.method == "rlvr")  # a text task has no reward: its RLVR cells say so
    assert (df[no_verifier].note == "n/a (no verifier)").all() and df[no_verifier].value.isna().all()
    assert df[~no_verifier].value.notna().all()
    assert (root / "runs/rlvr/my_code/model/config.json").is_file()
    table = (root / "tables/main.md").read_text()
    assert "### my_code" in table and "### my_text" in table
    held = json.loads((root / "data/my_code/manifest.json").read_text())
    assert held["provenance"]["heldout_fraction"] == 0.25 and held["splits"]["heldout"]["records"] > 0
