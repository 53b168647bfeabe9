"""Local stand-ins for the paper's hub datasets: a few rows each, in the real styles, with exactly the real schemas.

The columns and splits are those of the released datasets (the authors' code, sjelassi/ebft_openrlhf, and the dataset
cards); `datasets.load_dataset(<folder>)` reads each folder's `<split>.parquet` files as those splits.

| dataset | columns | splits |
|---|---|---|
| sjelassi/opencode-instruct_100k_200tok | question, answer, unit_tests, source | train, test |
| sjelassi/swallow_code_20m | question, answer | train, test |
| sjelassi/alma | question, answer, source-target | train, test |
| sjelassi/wmt22_test | question, answer, source (the direction) | test |
"""

from __future__ import annotations

import copy
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parent.parent

SUM_EVEN = {
    "question": "Write a Python function `sum_even(nums)` that returns the sum of the even integers in the list `nums`.",
    "answer": "Here is a solution:\n\n```python\ndef sum_even(nums):\n    return sum(x for x in nums if x % 2 == 0)\n```\n"
    "\nIt adds each even number once.",
    "unit_tests": "['assert sum_even([1, 2, 3, 4]) == 6', 'assert sum_even([]) == 0', 'assert sum_even([1, 3]) == 0']",
    "source": "algorithmic",
}
CLAMP = {
    "question": "Implement `clamp(x, low, high)`, which limits `x` to the closed interval [low, high].",
    "answer": "```python\ndef clamp(x, low, high):\n    return max(low, min(x, high))\n\n\nprint(clamp(5, 0, 3))\n"
    "assert clamp(-1, 0, 3) == 0\n```",
    "unit_tests": "['assert clamp(5, 0, 3) == 3', 'assert clamp(-1, 0, 3) == 0', 'assert clamp(2, 0, 3) == 2']",
    "source": "generic",
}
REVERSE_WORDS = {
    "question": "Given a sentence, return its words in reverse order, separated by single spaces.",
    "answer": "```python\ndef reverse_words(s):\n    return ' '.join(reversed(s.split()))\n```",
    "unit_tests": "[\"assert reverse_words('a b c') == 'c b a'\", \"assert reverse_words('') == ''\"]",
    "source": "algorithmic",
}
# the training side answers its problems in other words: prepare-data refuses a held-out row that repeats a training
# row (the same question and answer)
LOOPED = {"sum_even": "```python\ndef sum_even(nums):\n    total = 0\n    for x in nums:\n        if x % 2 == 0:\n"
                      "            total += x\n    return total\n```",
          "reverse_words": "```python\ndef reverse_words(s):\n    return ' '.join(s.split()[::-1])\n```"}  # fmt: skip
OPENCODE = {
    "train": [{**SUM_EVEN, "answer": LOOPED["sum_even"]}, {**REVERSE_WORDS, "answer": LOOPED["reverse_words"]}],
    "test": [SUM_EVEN, CLAMP, REVERSE_WORDS],
}

SWALLOW = {
    split: [
        {"question": "", "answer": f"import math\n\n\ndef area_{i}(r):\n    return math.pi * r * r\n"}
        for i in range(first, first + rows)
    ]
    + [
        {"question": "# utilities\n", "answer": f"def twice_{i}(x):\n    return 2 * x\n"}
        for i in range(first, first + rows)
    ]
    for split, first, rows in (("train", 0, 4), ("test", 4, 2))  # no file on both sides
}

ALMA_PROMPT = "Translate this from {src} to {tgt}:\n{src}: {text}\n{tgt}:"


def alma(src: str, tgt: str, source: str, reference: str, names=("German", "English")) -> dict:
    return {"question": ALMA_PROMPT.format(src=names[0], tgt=names[1], text=source), "answer": f" {reference}"}


ALMA = {
    "train": [
        {**alma("de", "en", "Guten Morgen.", "Good morning."), "source-target": "de-en"},
        {**alma("en", "de", "Thank you.", "Danke.", ("English", "German")), "source-target": "en-de"},
        {**alma("cs", "en", "Dobrý den.", "Good day.", ("Czech", "English")), "source-target": "cs-en"},
    ],
    "test": [{**alma("de", "en", "Die Katze schläft.", "The cat is sleeping."), "source-target": "de-en"}],
}
WMT22 = {
    "test": [
        {**alma("de", "en", "Das Wetter ist heute schön.", "The weather is nice today."), "source": "de-en"},
        {**alma("en", "de", "Where is the station?", "Wo ist der Bahnhof?", ("English", "German")), "source": "en-de"},
        {**alma("zh", "en", "我喜欢读书。", "I like reading.", ("Chinese", "English")), "source": "zh-en"},
        {**alma("en", "zh", "Good night.", "晚安。", ("English", "Chinese")), "source": "en-zh"},
        {**alma("de", "en", "Ich habe Hunger.", "I am hungry."), "source": "de-en"},
    ]
}

DATASETS = {
    "sjelassi/opencode-instruct_100k_200tok": OPENCODE,
    "sjelassi/swallow_code_20m": SWALLOW,
    "sjelassi/alma": ALMA,
    "sjelassi/wmt22_test": WMT22,
}


def write_datasets(root: Path) -> dict[str, Path]:
    """Each dataset as a folder of `<split>.parquet` files under ``root``; returns {hub id: folder}."""
    folders = {}
    for hub_id, splits in DATASETS.items():
        folder = root / hub_id
        folder.mkdir(parents=True, exist_ok=True)
        for split, rows in splits.items():
            pd.DataFrame(rows).to_parquet(folder / f"{split}.parquet", index=False)
        folders[hub_id] = folder
    return folders


def paper_profile_on_fixtures(root: Path) -> dict:
    """config/paper.yaml with every dataset path pointing at its local stand-in, offline, and the smoke profile's tiny
    model in place of the hub models (the data and the protocol are what is under test)."""
    folders = write_datasets(root / "hub")
    raw = yaml.safe_load((REPO / "config/paper.yaml").read_text())
    smoke = yaml.safe_load((REPO / "config/smoke.yaml").read_text())
    raw = copy.deepcopy(raw)
    raw.update(offline=True, results_dir=str(root / "results"), precision="auto")
    tiny = next(iter(smoke["models"].values()))
    raw["models"] = {name: dict(tiny, prompt_format=cfg.get("prompt_format", "raw"))
                     for name, cfg in raw["models"].items()}  # fmt: skip
    for task in raw["tasks"].values():
        for side in ("train", "heldout"):
            split = task["source"][side]
            split["path"] = str(folders[split["path"]])
    return raw
