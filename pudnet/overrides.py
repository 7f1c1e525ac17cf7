"""Typed configs from plain values: a dataclass from a dict (YAML, JSON, ``asdict``) and ``key=value`` overrides,
with type checks and errors that name the field. Used by every config: PudNetConfig, TrainConfig, EvalConfig."""
from __future__ import annotations

import dataclasses
import json
import typing


def _coerce(name: str, value, kind):
    """Turn a command-line or YAML value into the field's declared type, or raise naming the field."""
    origin = typing.get_origin(kind)
    try:
        if kind is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            if not isinstance(value, bool):
                raise ValueError(value)
            return value
        if kind in (int, float):
            if isinstance(value, bool) or (kind is int and isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return kind(value)
        if kind is str:
            if not isinstance(value, (str, int, float)):
                raise ValueError(value)
            return str(value)
        if origin in (tuple, list):
            if isinstance(value, str):
                value = json.loads(value) if value.strip().startswith("[") else [v for v in value.split(",") if v]
            args = typing.get_args(kind)
            item = args[0] if args else str
            return tuple(_coerce(name, v, item) for v in value)
        if kind is dict or origin is dict:
            value = json.loads(value) if isinstance(value, str) else value
            if not isinstance(value, dict):
                raise ValueError(value)
            return dict(value)
        if dataclasses.is_dataclass(kind):
            if isinstance(value, kind):
                return value
            if not isinstance(value, dict):
                raise ValueError(value)
            return from_dict(kind, value)
    except (TypeError, ValueError, json.JSONDecodeError) as exc:
        raise ValueError(f"{name}={value!r}: expected {getattr(kind, '__name__', kind)}") from exc
    raise TypeError(f"{name}: unsupported field type {kind}")


def from_dict(cls, values: dict):
    """Build dataclass ``cls`` from a plain dict (YAML, JSON, asdict), checking types and names.

    Nested dataclass fields take a nested dict. An unknown key raises, listing the known ones.
    """
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {sorted(unknown)}; known: {sorted(known)}")
    return cls(**{k: _coerce(k, v, hints[k]) for k, v in values.items()})


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
        node[leaf] = value
    return from_dict(type(cfg), values)
