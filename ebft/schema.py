"""The JSON schema of a profile, generated from the typed settings of :mod:`ebft.config`.

Each field's type becomes its JSON type, its bounds (field metadata) the same JSON-schema keywords, its description
the schema's. ``workflow/schemas/config.schema.yaml`` is this module's output (``ebft schema``); a test fails when the
file and the dataclasses differ, and another probes every bound on both sides.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from ebft.config import OVERRIDES, TASK_NAME, ModelConfig, Profile, TaskConfig
from ebft.errors import ConfigError

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "config.schema.yaml"


def profile_schema() -> dict:
    """The JSON schema of a profile, generated from :class:`Profile` and the sections it holds."""
    defs: dict[str, dict] = {}
    root = _class_schema(Profile, defs)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "description": "An EBFT reproduction profile (config/cpu.yaml, config/smoke.yaml, config/paper.yaml). "
                           "Generated from ebft/config.py by `ebft schema`; do not edit by hand.",
            **root, "$defs": dict(sorted(defs.items()))}  # fmt: skip


def _class_schema(cls, defs: dict) -> dict:
    hints = typing.get_type_hints(cls)
    props, required = {}, []
    for f in dataclasses.fields(cls):
        sub = _type_schema(hints[f.name], defs, f.name, cls)
        sub.update(f.metadata.get("bounds", {}))
        if f.metadata.get("items"):
            sub["items"] = {**sub.get("items", {}), **f.metadata["items"]}
        if f.metadata.get("doc"):
            sub["description"] = f.metadata["doc"]
        props[f.name] = sub
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            required.append(f.name)
    out = {"type": "object", "additionalProperties": False}
    if required:
        out["required"] = required
    out["properties"] = props
    return out


def _ref(cls, defs: dict) -> dict:
    if cls.__name__ not in defs:
        defs[cls.__name__] = {}  # placeholder against recursion
        defs[cls.__name__] = _class_schema(cls, defs)
    return {"$ref": f"#/$defs/{cls.__name__}"}


def _type_schema(tp, defs: dict, name: str, owner) -> dict:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if owner is TaskConfig and name in OVERRIDES:  # a partial section: the global one's keys, merged later
        return {"anyOf": [{"type": "null"}, _ref(OVERRIDES[name], defs)]}
    if owner is Profile and name == "tasks":
        return {"type": "object", "minProperties": 1, "propertyNames": {"pattern": TASK_NAME},
                "additionalProperties": _ref(TaskConfig, defs)}  # fmt: skip
    if owner is Profile and name == "models":
        return {"type": "object", "minProperties": 1, "additionalProperties": _ref(ModelConfig, defs)}
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) > 1 and all(dataclasses.is_dataclass(a) for a in inner):  # sections told apart by `kind`
            return {"type": "object", "required": ["kind"], "oneOf": [_ref(c, defs) for c in inner]}
        if len(inner) > 1:  # other forms (a list of names or 'all-linear'): the first that reads the value
            forms = [_type_schema(a, defs, name, owner) for a in inner]
            return {"anyOf": [*forms, {"type": "null"}] if type(None) in args else forms}
        sub = _type_schema(inner[0], defs, name, owner)
        if type(None) not in args:
            return sub
        if "type" in sub and "$ref" not in sub:
            return {**sub, "type": [sub["type"], "null"]}
        return {"anyOf": [{"type": "null"}, sub]}
    if origin is Literal:
        return {"enum": list(args)}
    if origin is list:
        return {"type": "array", "items": _type_schema(args[0], defs, name, owner)}
    if origin is dict:
        return {"type": "object", "additionalProperties": _type_schema(args[1], defs, name, owner)}
    if dataclasses.is_dataclass(tp):
        return _ref(tp, defs)
    scalar = {bool: "boolean", int: "integer", float: "number", str: "string"}
    if tp in scalar:
        return {"type": scalar[tp]}
    if tp is Any:
        return {}
    raise TypeError(f"no schema for {tp!r} ({owner.__name__}.{name})")


def schema_text() -> str:
    """The schema file's text (``workflow/schemas/config.schema.yaml``)."""
    return yaml.safe_dump(profile_schema(), sort_keys=False, allow_unicode=True, width=120)


def check_schema(config: dict) -> None:
    """Validate raw data against the generated schema with jsonschema; one-sentence ConfigError on the first problem.

    The typed builder refuses the same values; this is what Snakemake-style validation and editors see.
    """
    import jsonschema

    validator = jsonschema.Draft202012Validator(profile_schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(e.absolute_path), list(map(str, e.path))))
    if not errors:
        return
    err = errors[0]
    where = ".".join(str(p) for p in err.absolute_path) or "the top level"
    if err.validator == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        extra = sorted(set(err.instance) - set(allowed))
        key = ".".join([*map(str, err.absolute_path), extra[0]]) if extra else where
        raise ConfigError(f"unknown config key '{key}'; allowed keys there: {', '.join(allowed)}.")
    if err.validator == "enum":
        raise ConfigError(
            f"config key '{where}' is {err.instance!r}; allowed values: {', '.join(map(repr, err.validator_value))}."
        )
    raise ConfigError(f"config key '{where}' is invalid: {err.message}.")
