"""Typed configs from plain values: a dataclass from a dict (YAML, JSON, ``asdict``) and ``key=value`` overrides.

pydantic does the type checks and coercion (``"3"`` -> 3, ``"yes"`` -> True, lists -> tuples; 1.5 is no int) and
refuses unknown keys; this module turns its errors into one-line ValueErrors that name the field. Every config
dataclass (PudNetConfig, TrainConfig, EvalConfig and the ones nested in them) sets
``__pydantic_config__ = CONFIG``, or pydantic would silently drop an unknown key in it.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import typing

from pydantic import ConfigDict, TypeAdapter, ValidationError

CONFIG = ConfigDict(extra="forbid", coerce_numbers_to_str=True)   # YAML `name: 123` is the string "123"


@functools.cache
def _adapter(cls) -> TypeAdapter:
    return TypeAdapter(cls)


def _known(cls, path: tuple) -> list[str]:
    """The field names of the dataclass nested at ``path`` in ``cls``."""
    for part in path:
        cls = typing.get_type_hints(cls)[part]
    return sorted(f.name for f in dataclasses.fields(cls))


def _message(cls, error: dict) -> str:
    """One pydantic error as ``field=value: what is wrong``, with the dotted field name."""
    loc = tuple(error["loc"])
    field = ".".join(map(str, loc))
    if error["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
        return f"unknown {cls.__name__} key {field!r}; known: {_known(cls, loc[:-1])}"
    if error["type"] == "value_error":            # raised by a __post_init__: its message names the fields
        return f"{field}: {error['ctx']['error']}" if field else str(error["ctx"]["error"])
    if error["type"] == "missing":                # a fixed-length tuple given too few items
        return f"{field}: {error['msg']}"
    return f"{field}={error['input']!r}: {error['msg']}"


def from_dict(cls, values: dict):
    """Build dataclass ``cls`` from a plain dict (YAML, JSON, asdict), checking types and names.

    Nested dataclass fields take a nested dict. An unknown key raises, listing the known ones.
    """
    try:
        return _adapter(cls).validate_python(values)
    except ValidationError as exc:
        raise ValueError("; ".join(_message(cls, e) for e in exc.errors())) from None


def _parse(value: str, current):
    """A command-line string for a field whose value is now ``current``: lists as ``a,b`` or JSON, dicts as JSON."""
    if isinstance(current, (tuple, list)):
        return json.loads(value) if value.strip().startswith("[") else [v for v in value.split(",") if v]
    if isinstance(current, dict):
        return json.loads(value)
    return value


def apply_overrides(cfg, overrides: list[str]):
    """Return ``cfg`` with ``key=value`` strings applied; ``a.b=v`` reaches a nested dataclass field."""
    values = dataclasses.asdict(cfg)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r}: expected key=value")
        *path, leaf = key.strip().split(".")
        node = values
        for part in path:
            if not isinstance(node.get(part), dict):
                raise ValueError(f"override {item!r}: {part!r} is not a nested config")
            node = node[part]
        if leaf not in node:
            raise ValueError(f"override {item!r}: unknown key {key!r}; known: {sorted(node)}")
        try:
            node[leaf] = _parse(value, node[leaf])
        except json.JSONDecodeError as exc:
            raise ValueError(f"override {item!r}: not JSON ({exc.msg})") from None
    return from_dict(type(cfg), values)
