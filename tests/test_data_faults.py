"""A user's own data (``kind: hub`` with a local folder), as an adversarial review fed it (issue 29, faults 9, 10, 12, 13
and 14): held-out data that is the training data by another path or by content, an edit that keeps a file's size and
modification time, rows the training would refuse, bytes that are not UTF-8, empty files, columns of two types, and a
metrics.csv whose numbers cannot be drawn. Each is one sentence naming the file (and line) and the fix, before anything
is written; an edit reaches the job's settings and the prepared rows."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import yaml

from ebft.cli import main
from ebft.config import HubSource, HubSplit
from ebft.data import write_task_data
from ebft.errors import ConfigError, UserError
from ebft.resolve import load_study

REPO = Path(__file__).resolve().parent.parent


def jsonl(*rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def qa(i: int) -> dict:
    return {"question": f"What is {i} plus 1? ", "answer": f"{i} plus 1 is {i + 1}."}


def folder(root: Path, name: str = "my_task", train: str | bytes | None = None, test: str | bytes | None = None,
           **files) -> Path:  # fmt: skip
    """A local dataset folder: train.jsonl and test.jsonl (distinct rows unless given), and any other files."""
    out = root / name
    out.mkdir(parents=True)
    files = {"train.jsonl": jsonl(qa(1), qa(2), qa(3)) if train is None else train,
             "test.jsonl": jsonl(qa(10), qa(11)) if test is None else test, **files}  # fmt: skip
    for file, content in files.items():
        (out / file).write_bytes(content if isinstance(content, bytes) else content.encode())
    return out


def source(train: Path | str, heldout: Path | str | None = None, *, split="test", **fields) -> HubSource:
    return HubSource(train=HubSplit(path=str(train), split="train", **fields),
                     heldout=HubSplit(path=str(heldout or train), split=split, **fields))  # fmt: skip


def refused(tmp_path, src, match, task="unstructured_code"):
    """prepare-data refuses ``src`` in one sentence matching ``match`` and writes nothing."""
    out = tmp_path / "out"
    with pytest.raises(UserError, match=match) as e:
        write_task_data(task, src, 43, out)
    assert "\n" not in str(e.value) and not out.exists()
    return str(e.value)


def profile(data: Path, heldout: str | None = None) -> dict:
    """The smoke profile's tiny model with one task on a local folder."""
    raw = yaml.safe_load((REPO / "config/smoke.yaml").read_text())
    raw["tasks"] = {"unstructured_code": {"model": "tiny", "chunk_length": 64, "source": {
        "kind": "hub", "train": {"path": str(data), "split": "train"},
        "heldout": {"path": heldout or str(data), "split": "test" if heldout is None else "train"}}}}  # fmt: skip
    raw["methods"] = ["sft", "ebft"]
    return raw


# --------------------------------------------------------------------------------------------------
# Fault 9: a held-out split that is the training split by another path, or repeats its rows
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spelling", ["same", "trailing slash", "dot slash", "symlink"])
def test_a_heldout_split_naming_the_training_split_by_another_path_is_refused(tmp_path, monkeypatch, spelling):
    """Regression: 'd/' (or './d', or a link to d) as the held-out side of d's training split was accepted, so the
    held-out evaluations scored the training rows; the same spelling failed with a RuntimeError traceback."""
    data = folder(tmp_path)
    monkeypatch.chdir(tmp_path)
    if spelling == "symlink":
        (tmp_path / "link").symlink_to(data, target_is_directory=True)
    other = {"same": str(data), "trailing slash": f"{data}/", "dot slash": "./my_task", "symlink": "link"}[spelling]
    refused(tmp_path, source(data, other, split="train"), r"^the held-out side reads the training side's data "
            r"\(.*split 'train'\); point source.heldout at another split or folder\.$")  # fmt: skip
    with pytest.raises(ConfigError, match=r"^tasks.unstructured_code.source.heldout reads the training side's data"):
        load_study(profile(data, other))  # `ebft check` and the workflow refuse it before any job


def test_heldout_rows_that_repeat_training_rows_are_refused_by_content(tmp_path):
    """Regression: a held-out file holding training rows (or a copy of the training file in another folder) was
    accepted; overlap is decided by the rows' question and answer, not by the path."""
    data = folder(tmp_path, test=jsonl(qa(10), qa(2), qa(11)))
    refused(tmp_path, source(data), rf"^1 of the 3 held-out rows repeat a training row \(the same question and answer; "
            rf"the first is {re.escape(str(data / 'test.jsonl'))} line 2\); remove them from one side")  # fmt: skip
    copy = folder(tmp_path, "copy", train=jsonl(qa(7)), test=(data / "train.jsonl").read_text())
    refused(tmp_path, HubSource(train=HubSplit(path=str(data)), heldout=HubSplit(path=str(copy), split="test")),
            r"^3 of the 3 held-out rows repeat a training row")  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Fault 10: an edited local file reruns its jobs and is read afresh
# --------------------------------------------------------------------------------------------------


def edit_keeping_size_and_mtime(path: Path, old: str, new: str) -> None:
    stat = path.stat()
    text = path.read_text()
    assert len(old) == len(new) and old in text
    path.write_text(text.replace(old, new))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)


def test_a_local_sources_content_is_part_of_its_jobs_settings(tmp_path):
    """Regression: the jobs' settings held only the folder's path, so after an edit the workflow said 'Nothing to be
    done' and trained on the old rows. Now prepare_data's params (and every job of the task) change with the content."""
    data = folder(tmp_path)
    study = load_study(profile(data))
    before = {c: study.job(c, task="unstructured_code", **m) for c, m in (("prepare-data", {}),
                                                                          ("train", {"method": "sft"}))}  # fmt: skip
    assert set(json.loads(before["prepare-data"].to_json())["local_data"]) == {"train", "heldout"}
    edit_keeping_size_and_mtime(data / "train.jsonl", "2 plus 1 is 3.", "2 plus 1 is 4.")
    study = load_study(profile(data))
    after = {c: study.job(c, task="unstructured_code", **m) for c, m in (("prepare-data", {}),
                                                                         ("train", {"method": "sft"}))}  # fmt: skip
    assert after["prepare-data"].to_json() != before["prepare-data"].to_json()
    assert after["train"].hash != before["train"].hash  # and the training reruns on the new rows


def test_the_built_in_data_carry_no_content_hash_so_the_committed_settings_stand():
    study = load_study(yaml.safe_load((REPO / "config/cpu.yaml").read_text()))
    for task in study.tasks:
        assert "local_data" not in json.loads(study.job("prepare-data", task=task).to_json())


def test_reading_after_an_edit_that_keeps_size_and_mtime_returns_the_new_rows(tmp_path):
    """Regression: `datasets` served the edited file's old rows from its cache (keyed by path and modification time)."""
    data = folder(tmp_path)
    first = write_task_data("unstructured_code", source(data), 43, tmp_path / "a")
    edit_keeping_size_and_mtime(data / "train.jsonl", "2 plus 1 is 3.", "2 plus 1 is 4.")
    second = write_task_data("unstructured_code", source(data), 43, tmp_path / "b")
    answers = [json.loads(x)["answer"] for x in (tmp_path / "b" / "train.jsonl").read_text().splitlines()]
    assert answers == ["1 plus 1 is 2.", "2 plus 1 is 4.", "3 plus 1 is 4."]
    assert first["provenance"]["local"]["train"] != second["provenance"]["local"]["train"]  # the manifest says so


# --------------------------------------------------------------------------------------------------
# Fault 12: every row is checked when the data are prepared
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "row,said",
    [
        ({"question": "q", "answer": None}, r"line 2: its answer \('answer'\) is null, not text; make it a string"),
        ({"question": "q", "answer": 42}, r"line 2: its answer \('answer'\) is a number, not text"),
        ({"question": "q", "answer": {"text": "a"}}, r"line 2: its answer \('answer'\) is a record, not text"),
        ({"question": "q", "answer": ["a"]}, r"line 2: its answer \('answer'\) is a list, not text"),
        ({"question": "q"}, r"line 2 has no 'answer' \(the answer column\); give every row one"),
        ({"question": None, "answer": "a"}, r"line 2: its question \('question'\) is null, not text"),
        ({"question": 7, "answer": "a"}, r"line 2: its question \('question'\) is a number, not text"),
    ],
)
def test_a_row_training_would_refuse_is_refused_when_the_data_are_prepared(tmp_path, row, said):
    """Regression: such rows were written (exit 0); training then refused the file and said to rerun prepare-data,
    which wrote it again."""
    data = folder(tmp_path, train=jsonl(qa(1), row, qa(3)))
    refused(tmp_path, source(data), f"^{re.escape(str(data / 'train.jsonl'))} {said}")


# --------------------------------------------------------------------------------------------------
# Fault 13: sentences, not tracebacks
# --------------------------------------------------------------------------------------------------


def test_a_file_that_is_not_utf8_is_one_sentence_naming_its_line(tmp_path, capsys):
    """Regression: a UnicodeDecodeError traceback, through `ebft prepare-data` too."""
    data = folder(tmp_path, train=jsonl(qa(1)).encode() + b'{"question": "q", "answer": "caf\xe9"}\n')
    refused(tmp_path, source(data), rf"^{re.escape(str(data / 'train.jsonl'))} line 2 is not UTF-8 text \(byte \d+\); "
            r"save the file as UTF-8\.$")  # fmt: skip
    config = tmp_path / "mine.yaml"
    config.write_text(yaml.safe_dump(profile(data)))
    args = ["prepare-data", "--config", str(config), "--task", "unstructured_code", "--out", str(tmp_path / "cli")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "line 2 is not UTF-8 text" in err and "Traceback" not in err


def test_a_translation_row_with_a_null_answer_is_one_sentence(tmp_path):
    """Regression: an AttributeError traceback from reading the reference of a null answer."""
    prompt = "Translate this from German to English:\nGerman: {}\nEnglish:"
    rows = [{"question": prompt.format(s), "answer": a, "direction": "de-en"}
            for s, a in (("Hallo.", " Hello."), ("Danke.", None))]  # fmt: skip
    test = jsonl({"question": prompt.format("Ja."), "answer": " Yes.", "direction": "de-en"})
    data = folder(tmp_path, train=jsonl(*rows), test=test)
    refused(tmp_path, source(data, direction_field="direction"), r"train.jsonl line 2: its answer \('answer'\) is null",
            task="translation")  # fmt: skip


def test_a_translation_record_without_a_text_reference_is_one_sentence():
    from evals.translation import select_pairs

    rec = {"id": "x:1", "meta": {"src_lang": "de", "tgt_lang": "en", "source": "Danke.", "reference": None}}
    with pytest.raises(UserError, match=r"^held-out record 'x:1' has a reference that is not text \(None\); fix"):
        select_pairs([rec], None)


def metrics_csv(tmp_path: Path, edit) -> Path:
    from evals.report import collect

    record = tmp_path / "base.json"
    record.write_text(json.dumps({"task": "qa_code", "method": "base", "config_hash": "abc", "git_sha": "123",
                                  "metrics": [{"metric": "val_ce", "value": 1.5, "n": 9, "ci_low": 1.4,
                                               "ci_high": 1.6}]}))  # fmt: skip
    csv = tmp_path / "r" / "metrics.csv"
    csv.parent.mkdir()
    lines = collect([record], "cpu").to_csv(index=False).splitlines()  # as the report rule writes it
    header, row = lines[0].split(","), lines[1].split(",")
    for column, value in edit.items():
        row[header.index(column)] = value
    csv.write_text("\n".join([lines[0], ",".join(row)]) + "\n")
    return csv


@pytest.mark.parametrize(
    "edit,said",
    [
        ({"value": "1.9"}, r"line 2: the value 1.9 of qa_code/base val_ce lies outside its own interval \[1.4, 1.6\]"),
        ({"ci_low": "1.7"}, r"line 2: the value 1.5 of qa_code/base val_ce lies outside its own interval \[1.7, 1.6\]"),
        ({"value": "abc"}, r"line 2: value is 'abc', not a number; fix that cell or regenerate the file"),
        ({"ci_high": "n/a"}, r"line 2: ci_high is 'n/a', not a number"),
    ],
)
def test_report_from_csv_with_numbers_it_cannot_draw_is_one_sentence(tmp_path, capsys, edit, said):
    """Regression: `ebft report --from-csv` raised matplotlib's "'yerr' must not contain negative values" or a format
    error, as a traceback."""
    csv = metrics_csv(tmp_path, edit)
    assert main(["report", "--from-csv", str(csv)]) == 2
    err = capsys.readouterr().err
    assert re.search(f"^ebft: error: {re.escape(str(csv))} {said}", err), err
    assert err.count("\n") == 1 and not (csv.parent / "figures").exists()


# --------------------------------------------------------------------------------------------------
# Fault 14: the real cause and the real fix
# --------------------------------------------------------------------------------------------------


def test_an_empty_data_file_is_named_with_its_fix(tmp_path):
    """Regression: '(StopIteration); fix the path or split in the profile.'"""
    data = folder(tmp_path, train="")
    message = refused(tmp_path, source(data), rf"^{re.escape(str(data / 'train.jsonl'))} is empty; add rows to it or "
                      r"remove it\.$")  # fmt: skip
    assert "StopIteration" not in message


def test_a_column_of_two_types_across_a_splits_files_is_named_with_both_files(tmp_path):
    """Regression: 'An error occurred while generating the dataset ... fix the path or split' (or, files the other way
    round, the number silently read as text)."""
    data = folder(tmp_path, train=None, **{"train-0.jsonl": jsonl(qa(1)), "train-1.jsonl": jsonl({"question": "q",
                                                                                                  "answer": 5})})  # fmt: skip
    (data / "train.jsonl").unlink()
    refused(tmp_path, source(data), rf"^column 'answer' is text in {re.escape(str(data / 'train-0.jsonl'))} but a "
            rf"number in {re.escape(str(data / 'train-1.jsonl'))}; make it text in every file\.$")  # fmt: skip


def test_a_null_in_an_assert_list_is_named_not_blamed_on_tests_form(tmp_path):
    """Regression: 'its tests are not a list of assert statements; set tests_form to their form.'"""
    rows = [{**qa(1), "tests": ["assert 1 + 1 == 2"]}, {**qa(2), "tests": ["assert True", None]}]
    data = folder(tmp_path, train=jsonl(*rows), test=jsonl({**qa(10), "tests": ["assert 10 + 1 == 11"]}))
    message = refused(tmp_path, source(data, tests_field="tests", tests_form="assert_list"),
                      r"train.jsonl line 2: item 2 of its tests list is null; remove it", task="qa_code")  # fmt: skip
    assert "tests_form" not in message


# --------------------------------------------------------------------------------------------------
# The formats a local folder is read in
# --------------------------------------------------------------------------------------------------


def test_csv_and_json_folders_are_read_row_by_row_with_text_cells(tmp_path):
    csv = folder(tmp_path, "csv", train="question,answer\nWhat is 1 plus 1? ,2\nWhat is 2 plus 2? ,4\n",
                 test="question,answer\nWhat is 3 plus 3? ,6\n")  # fmt: skip
    whole = folder(tmp_path, "json", train=json.dumps([qa(1), qa(2)]), test=json.dumps({"question": ["q"],
                                                                                      "answer": ["a"]}))  # fmt: skip
    for data, suffix in ((csv, ".csv"), (whole, ".json")):
        for name in ("train", "test"):
            (data / f"{name}.jsonl").rename(data / f"{name}{suffix}")
        write_task_data("unstructured_code", source(data), 43, tmp_path / suffix)
    train = [json.loads(x) for x in (tmp_path / ".csv" / "train.jsonl").read_text().splitlines()]
    assert [(r["question"], r["answer"]) for r in train] == [("What is 1 plus 1? ", "2"), ("What is 2 plus 2? ", "4")]
    held = [json.loads(x) for x in (tmp_path / ".json" / "heldout.jsonl").read_text().splitlines()]
    assert [(r["question"], r["answer"]) for r in held] == [("q", "a")]
