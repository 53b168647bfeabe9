"""The configuration reference, ``docs/configuration.md``, generated from the typed settings of :mod:`ebft.config`.

The page walks the same declarations as :mod:`ebft.schema` (and treats models, tasks, per-task overrides and source
kinds as it does), so the reference, the JSON schema and the code cannot disagree: ``ebft schema --markdown`` prints
it, and a test fails when the committed page differs.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

from ebft.config import OVERRIDES, TASKS, Profile, TaskConfig, variant_kinds

REFERENCE_PATH = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"

_INTRO = """\
# Configuration reference

This page is the reference of every setting of a profile (`config/cpu.yaml`, `config/smoke.yaml`,
`config/paper.yaml`, or one of your own): its key, type, default, allowed values and what it does. It is generated
from the typed settings in [`ebft/config.py`](../ebft/config.py) by `ebft schema --markdown`, as the JSON schema
[`workflow/schemas/config.schema.yaml`](../workflow/schemas/config.schema.yaml) is by `ebft schema`, and a test
fails when either differs from the code. To change a setting, its default, its bounds or its description, edit its
dataclass there and regenerate this page (`.venv/bin/ebft schema --markdown > docs/configuration.md`); do not edit
this page by hand.

A key left out takes its default; *required* marks the keys that have none. A task's `tasks.<task>.sft`,
`tasks.<task>.ebft`, `tasks.<task>.rlvr` and `tasks.<task>.eval` hold any keys of the global [`sft`](#sft),
[`ebft`](#ebft), [`rlvr`](#rlvr) and [`eval`](#eval) sections, and are merged over them key by key, for that task
only. Nested sections merge key by key too (`eval: {code: {max_problems: 128}}` changes that one key of
`eval.code`); any other value, a list included, replaces the global one whole. The merged sections are checked like
the global ones.

An unknown key, a value of the wrong type or out of bounds, or a broken rule that involves several settings (β > 0
needs n ≥ 3, every pass@k needs k ≤ n, …) stops the run with one sentence naming the key, before any job starts.
`ebft check --config FILE` checks a profile that way (every setting typed, every job of its study resolved) and
runs nothing; `make reproduce` and `make dry-run` run it first.

Types: `int`, `float` (`1.0e-4` is read as a number), `bool` (`true` or `false`), `str`, `list[…]` and mappings;
"or null" means that `null` is allowed too; a *section* is a nested mapping with a table of its own below. Defaults
are written as in YAML.
"""


@dataclasses.dataclass
class _Part:
    """One section of the reference: a dataclass and the dotted key(s) it sits at."""

    cls: type
    keys: list[str]
    kind: str | None = None  # the `kind` that selects it, for one of a union of sections
    within: str | None = None  # the `kind` of the section it lies in
    depth: int = 0
    heading: str = ""
    anchor: str = ""


def reference_markdown() -> str:
    """The text of ``docs/configuration.md``: every setting of a profile, generated from :mod:`ebft.config`."""
    parts: list[_Part] = []
    _plan(Profile, "", parts)
    counts: dict[str, int] = {}
    for title in ("Configuration reference", "Contents"):
        unique_anchor(title, counts)
    for part in parts:
        part.heading = "Top-level keys" if part.cls is Profile else _heading(part)
        part.anchor = unique_anchor(part.heading, counts)
    anchors = {(key, part.cls): part.anchor for part in parts for key in part.keys}
    out = [_INTRO, "## Contents\n"]
    out += [f"{'  ' * part.depth}- [{part.heading}](#{part.anchor})" for part in parts]
    out.append("")
    for part in parts:
        out.append(f"## {part.heading}\n")
        intro = _doc_paragraph(part.cls)
        if intro:
            out.append(_markdown(intro) + "\n")
        out += ["| key | type | default | allowed | description |", "|---|---|---|---|---|"]
        hints = typing.get_type_hints(part.cls)
        fields = dataclasses.fields(part.cls)
        if part.kind:  # the key that selects the section first
            fields = sorted(fields, key=lambda f: f.name != "kind")
        for f in fields:
            if part.kind and f.name == "kind":
                row = ["`kind`", f"`{part.kind}`", "required", "", "selects this section"]
            else:
                key = _join_key(part.keys[0], f.name)
                row = [f"`{f.name}`", _type_text(hints[f.name], f.name, part.cls, key, anchors),
                       _default_text(f), _allowed_text(f, part.cls), _description(f, hints[f.name])]  # fmt: skip
            out.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
        out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


def _join_key(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def _children(owner, name: str, tp, key: str) -> list[tuple[str, type, str | None]]:
    """The sections a field holds: (dotted key, dataclass, kind); none for a plain setting or a task's overrides."""
    if owner is TaskConfig and name in OVERRIDES:
        return []
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is dict and dataclasses.is_dataclass(args[1]):
        placeholder = "<task>" if owner is Profile and name == "tasks" else "<name>"
        return [(f"{_join_key(key, name)}.{placeholder}", args[1], None)]
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) > 1 and all(dataclasses.is_dataclass(a) for a in inner):
            return [(_join_key(key, name), cls, kind) for kind, cls in variant_kinds(inner).items()]
        if len(inner) > 1:  # other forms (a list of names or 'all-linear'): a plain setting
            return []
        tp = inner[0]
    if dataclasses.is_dataclass(tp):
        return [(_join_key(key, name), tp, None)]
    return []


def _plan(cls, key: str, parts: list[_Part], kind=None, within=None, depth=0) -> None:
    """Append the sections of ``cls`` at ``key`` and of every section it holds, depth first in field order."""
    parts.append(_Part(cls, [key], kind, within, depth))
    hints = typing.get_type_hints(cls)
    placed: dict[tuple, _Part] = {}
    for f in dataclasses.fields(cls):
        for child_key, child, child_kind in _children(cls, f.name, hints[f.name], key):
            same = placed.get((child, child_kind))
            if same is not None:  # a second field of the same section (a hub source's train and heldout)
                same.keys.append(child_key)
                continue
            _plan(child, child_key, parts, child_kind, kind, depth + (cls is not Profile))
            placed[child, child_kind] = parts[-1]


def _heading(part: _Part) -> str:
    first, *more = part.keys
    text = f"`{first}`" + "".join(f" and `.{k.rsplit('.', 1)[1]}`" for k in more)
    if part.kind:
        text += f", kind `{part.kind}`"
    if part.within:
        text += f" (kind `{part.within}`)"
    return text


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: a link's text kept, HTML tags dropped outside code spans, lower case, only
    letters, digits, spaces, '-' and '_', spaces as '-'."""
    pieces = re.split(r"(`+[^`]*`+)", heading)  # code spans are text as written; elsewhere <b> is a tag
    text = "".join(p if i % 2 else re.sub(r"<[^<>]+>", "", re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", p))
                   for i, p in enumerate(pieces)).lower()  # fmt: skip
    return "".join(c for c in text if c.isalnum() or c in " -_").replace(" ", "-")


def unique_anchor(heading: str, counts: dict[str, int]) -> str:
    """``heading``'s anchor on a page whose earlier anchors ``counts`` holds: a repeated one gets -1, -2, …"""
    base = github_anchor(heading)
    n = counts.get(base, 0)
    counts[base] = n + 1
    return base if n == 0 else f"{base}-{n}"


def _doc_paragraph(cls) -> str:
    """The first paragraph of a class's own docstring (not the signature dataclass writes where there is none)."""
    doc = cls.__dict__.get("__doc__") or ""
    if not doc or doc.startswith(f"{cls.__name__}("):
        return ""
    return " ".join(inspect.cleandoc(doc).split("\n\n")[0].split())


_PLACEHOLDER_WORD = re.compile(r"[\w./:'-]*<\w+>[\w./<>:'-]*")


def _markdown(text: str) -> str:
    """Docstring or description text as Markdown: reST roles and literals as code, words with ``<name>`` too."""
    text = re.sub(r":\w+:`([^`]+)`", r"``\1``", text)
    pieces = re.split(r"(``[^`]+``|`[^`]+`)", text)
    for i, piece in enumerate(pieces):
        if i % 2:
            pieces[i] = f"`{piece.strip('`')}`"
        else:
            pieces[i] = _PLACEHOLDER_WORD.sub(lambda m: f"`{m.group(0)}`", piece)
    return "".join(pieces)


def _type_text(tp, name: str, owner, key: str, anchors: dict) -> str:
    def link(k: str, cls) -> str:
        return f"[`{k}`](#{anchors[k, cls]})"

    if owner is TaskConfig and name in OVERRIDES:
        return f"partial {link(name, OVERRIDES[name])} section, or null"
    children = _children(owner, name, tp, key.rpartition(".")[0])
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    nullable = " or null" if type(None) in args else ""
    if origin is dict and children:
        return f"mapping: {children[0][0].rsplit('.', 1)[1].strip('<>')} → {link(*children[0][:2])}"
    if len(children) > 1:
        return "section, by `kind`: " + ", ".join(f"[`{kind}`](#{anchors[k, c]})" for k, c, kind in children)
    if children:
        return f"section: {link(*children[0][:2])}{nullable}"
    return _plain_type(tp)


def _plain_type(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return " or ".join(_plain_type(a) for a in inner) + (" or null" if type(None) in args else "")
    if origin is list:
        item = args[0]
        if typing.get_origin(item) is Literal:
            return "list, each one of " + ", ".join(f"`{a}`" for a in typing.get_args(item))
        return f"list[{_plain_type(item)}]"
    if origin is dict:
        value = _plain_type(args[1])
        return "mapping" if value == "any" else f"mapping: str → {value}"
    names = {bool: "bool", int: "int", float: "float", str: "str", Any: "any"}
    if tp in names:
        return names[tp]
    raise TypeError(f"no reference type for {tp!r}")


def _default_text(f) -> str:
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
        return "required"
    value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    if dataclasses.is_dataclass(value):
        return "its defaults"
    return f"`{_literal(value)}`"


_YAML_WORDS = ("null", "true", "false", "yes", "no", "on", "off", "y", "n", "~")  # strings YAML reads as other values


def _literal(value) -> str:
    """A value as a profile's YAML writes it (flow style)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value != 0 and abs(value) < 1e-3:  # 1.0e-5, as the profiles write it (YAML 1.1 reads 1e-5 as a string)
            mantissa, exponent = f"{value:.15e}".split("e")
            mantissa = mantissa.rstrip("0")
            return f"{mantissa}{'0' if mantissa.endswith('.') else ''}e{int(exponent)}"
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):
        plain = re.fullmatch(r"[A-Za-z_/][\w./-]*", value) and value.lower() not in _YAML_WORDS
        return value if plain else json.dumps(value)
    return str(value)


_BOUND_TEXT = {"minimum": "≥ {}", "exclusiveMinimum": "> {}", "maximum": "≤ {}", "exclusiveMaximum": "< {}"}


def _bounds_text(bounds: dict) -> list[str]:
    out = [_BOUND_TEXT[k].format(_literal(v)) for k, v in bounds.items() if k in _BOUND_TEXT]
    low, high = bounds.get("minItems"), bounds.get("maxItems")
    if low is not None and high is not None:
        out.append(f"exactly {low} items" if low == high else f"{low}–{high} items")
    elif low is not None:
        out.append(f"at least {low} item{'s' if low != 1 else ''}")
    elif high is not None:
        out.append(f"at most {high} item{'s' if high != 1 else ''}")
    if "minLength" in bounds:
        out.append("not empty" if bounds["minLength"] == 1 else f"at least {bounds['minLength']} characters")
    if "pattern" in bounds:
        out.append(f"matches `{bounds['pattern']}`")
    return out


def _allowed_text(f, owner) -> str:
    out = _bounds_text(f.metadata.get("bounds", {}))
    items = _bounds_text(f.metadata.get("items", {}))
    if items:
        out.append("each " + ", ".join(items))
    if owner is Profile and f.name == "tasks":  # the bounds profile_schema writes for these two mappings
        built_in = ", ".join(f"`{t}`" for t in TASKS)
        out.append(f"keys: task names (letters, digits, `_`, `-`): {built_in} or any other name with a `kind`; at "
                   f"least one")  # fmt: skip
    elif owner is Profile and f.name == "models":
        out.append("at least one")
    return ", ".join(out)


def _description(f, tp) -> str:
    doc = f.metadata.get("doc", "")
    if not doc and dataclasses.is_dataclass(tp):  # a section without a description: its class's first sentence,
        doc = re.split(r"(?<=\.)\s", _doc_paragraph(tp), maxsplit=1)[0].rstrip(".")  # to a colon if long
        doc = re.split(r"[:;]\s", doc, maxsplit=1)[0] if len(doc) > 100 else doc
    return _markdown(doc)
