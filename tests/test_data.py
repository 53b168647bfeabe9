import json
import re

import pytest

from ebft.config import DjangoSource, HumanEvalSource, StdlibSource
from ebft.data import PLACEHOLDER, django_pairs, hash_fraction, read_records, write_task_data
from ebft.errors import UserError


def ids(rows):
    return [r["id"] for r in rows]


@pytest.mark.parametrize(
    "task,source",
    [
        ("qa_code", HumanEvalSource(heldout=64)),
        ("unstructured_code", StdlibSource(train_files=30, heldout_files=10, max_chars=4000)),
        ("translation", DjangoSource(languages=["de", "zh_Hans"])),
    ],
)
def test_splits_are_deterministic_disjoint_and_recorded(tmp_path, task, source):
    a = write_task_data(task, source, 43, tmp_path / "a")
    b = write_task_data(task, source, 43, tmp_path / "b")
    assert a["splits"] == b["splits"]  # same records, same content hash
    train = [json.loads(x) for x in (tmp_path / "a" / "train.jsonl").read_text().splitlines()]
    held = [json.loads(x) for x in (tmp_path / "a" / "heldout.jsonl").read_text().splitlines()]
    assert train and held and not set(ids(train)) & set(ids(held))
    assert a["splits"]["train"]["records"] == len(train) and a["splits"]["heldout"]["records"] == len(held)
    other = write_task_data(task, source, 7, tmp_path / "c")
    assert other["splits"]["heldout"]["sha256"] != a["splits"]["heldout"]["sha256"]  # the seed matters


def test_human_eval_split_sizes_and_fields(tmp_path):
    write_task_data("qa_code", HumanEvalSource(heldout=64), 43, tmp_path)
    held = [json.loads(x) for x in (tmp_path / "heldout.jsonl").read_text().splitlines()]
    train = [json.loads(x) for x in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert (len(train), len(held)) == (100, 64)
    r = held[0]
    assert r["id"].startswith("HumanEval/") and "def check" in r["tests"] and r["entry_point"]
    assert r["question"].rstrip().endswith('"""') or "def " in r["question"]


def test_stdlib_split_is_by_file_and_excludes_tests(tmp_path):
    write_task_data("unstructured_code", StdlibSource(train_files=40, heldout_files=10), 43, tmp_path)
    rows = [json.loads(x) for f in ("train", "heldout") for x in (tmp_path / f"{f}.jsonl").read_text().splitlines()]
    assert all(r["question"] == "" and r["id"].endswith(".py") for r in rows)
    assert not any(part.startswith("test") for r in rows for part in r["id"].split("/"))
    assert all(len(r["answer"]) <= 16000 for r in rows)


def test_translation_pairs_are_filtered_and_both_directions_share_a_side(tmp_path):
    pairs = django_pairs("de", 1)
    assert len(pairs) > 300
    assert all(src and tgt and src != tgt for src, tgt in pairs.items())
    assert not any(PLACEHOLDER.search(s) or PLACEHOLDER.search(t) for s, t in pairs.items())
    write_task_data("translation", DjangoSource(languages=["de"]), 43, tmp_path)
    sides = {}
    for side in ("train", "heldout"):
        for line in (tmp_path / f"{side}.jsonl").read_text().splitlines():
            r = json.loads(line)
            english = r["meta"]["source"] if r["meta"]["src_lang"] == "en" else r["meta"]["reference"]
            sides.setdefault(english, set()).add(side)
            assert r["question"].endswith(":") and r["answer"].startswith(" ")
    assert all(len(s) == 1 for s in sides.values())  # no English sentence on both sides
    assert all(hash_fraction(en, 43) < 0.1 for en, s in sides.items() if s == {"heldout"})


def test_placeholder_filter_catches_format_strings():
    for text in ("%s items", "%(name)s", "{count} files", "100%% sure", "<b>bold</b>", "%d"):
        assert PLACEHOLDER.search(text), text
    assert not PLACEHOLDER.search("Save and continue editing")


def test_hub_dataset_offline_fails_at_once_naming_it(tmp_path):
    import time

    from ebft.config import HubSource, HubSplit

    split = HubSplit(path="sjelassi/opencode-instruct_100k_200tok")
    started = time.time()
    with pytest.raises(UserError, match="could not load dataset 'sjelassi/opencode-instruct_100k_200tok'"):
        source = HubSource(train=split, heldout=HubSplit(path=split.path, split="test"))  # not the training split
        write_task_data("qa_code", source, 43, tmp_path)
    assert time.time() - started < 20
    assert not (tmp_path / "train.jsonl").exists()


def test_hub_dataset_with_unreachable_hub_is_one_sentence(tmp_path, monkeypatch):
    import ebft.hub
    from ebft.config import HubSource, HubSplit
    from ebft.errors import UserError

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(ebft.hub, "hub_reachable", lambda host, timeout=3.0: False)
    split = HubSplit(path="sjelassi/alma")
    with pytest.raises(UserError, match="dataset 'sjelassi/alma' needs the Hugging Face hub, which is unreachable"):
        source = HubSource(train=split, heldout=HubSplit(path=split.path, split="test"))
        write_task_data("translation", source, 43, tmp_path)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "qa_code"
    write_task_data("qa_code", HumanEvalSource(heldout=64), 43, out)
    return out


def edited(prepared, tmp_path, edit, *, manifest=False):
    """A copy of the prepared folder with train.jsonl edited (and its manifest dropped unless ``manifest``)."""
    out = tmp_path / "qa_code"
    out.mkdir()
    lines = (prepared / "train.jsonl").read_text().splitlines(keepends=True)
    (out / "train.jsonl").write_text("".join(edit(lines)))
    if manifest:
        (out / "manifest.json").write_text((prepared / "manifest.json").read_text())
    return out / "train.jsonl"


def test_prepared_data_reads_back_checked_against_its_manifest(prepared):
    assert len(read_records(prepared / "train.jsonl")) == 164 - 64


@pytest.mark.parametrize(
    "edit,expected",
    [
        (lambda ls: ls[:2] + ['{"question": "q", "answer": "a",\n'] + ls[2:], r"line 3 is not a JSON record \("),
        (lambda ls: ls[:1] + ['{"question": "q", "tests": null}\n'], r"line 2 has no 'answer'"),
        (lambda ls: ['{"answer": "a"}\n'], r"line 1 has no 'question'"),
        (lambda ls: ls[:4] + ['{"question": "q", "answer": 3}\n'], r"line 5: 'answer' is a int, not a string"),
        (lambda ls: ["[1, 2]\n"], r"line 1 is a JSON list, not a record"),
        (lambda ls: ["\n"], r"holds no records"),
    ],
)
def test_a_bad_data_file_is_one_sentence_naming_file_and_line(prepared, tmp_path, edit, expected):
    """Regression: a malformed line 3 was reported as 'line 1 column 35' with no file name; a record without an
    answer or with a non-string one, and an empty file, failed later with a traceback."""
    path = edited(prepared, tmp_path, edit)
    with pytest.raises(UserError, match=f"^{re.escape(str(path))} .*{expected}") as e:
        read_records(path)
    assert "prepare-data" in str(e.value)


def test_a_data_file_that_is_not_the_one_prepare_data_wrote_is_refused(prepared, tmp_path):
    path = edited(prepared, tmp_path, lambda ls: ls[:-1], manifest=True)  # one record lost
    with pytest.raises(
        UserError, match=r"is not the file prepare-data wrote \(its SHA-256 differs from manifest.json\)"
    ):
        read_records(path)
