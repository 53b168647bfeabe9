import json

import pytest

from ebft.config import DjangoSource, HumanEvalSource, StdlibSource
from ebft.data import PLACEHOLDER, django_pairs, hash_fraction, write_task_data


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
    from ebft.errors import UserError

    split = HubSplit(path="sjelassi/opencode-instruct_100k_200tok")
    started = time.time()
    with pytest.raises(UserError, match="could not load dataset 'sjelassi/opencode-instruct_100k_200tok'"):
        write_task_data("qa_code", HubSource(train=split, heldout=split), 43, tmp_path)
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
        write_task_data("translation", HubSource(train=split, heldout=split), 43, tmp_path)
