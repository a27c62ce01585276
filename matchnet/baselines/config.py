"""Configs for the baselines: plain dataclasses read from TOML, checked the way matchnet.train checks its own."""
from __future__ import annotations

import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def config_from_dict(cls: type[T], values: dict[str, Any], source: str = "config") -> T:
    """Build dataclass `cls` from `values`: unknown keys and wrong types are errors naming the source."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{source}: unknown option(s) {unknown}; known: {sorted(known)}")
    default = cls()
    checked = {}
    for key, value in values.items():
        want = type(getattr(default, key))
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)  # TOML writes 1 for 1.0
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            raise ValueError(f"{source}: {key} should be {want.__name__}, got {value!r}")
        checked[key] = value
    cfg = cls(**checked)
    check = getattr(cfg, "check", None)
    if check is not None:
        check()
    return cfg


def config_from_toml(cls: type[T], path: str | Path, **overrides: Any) -> T:
    with open(path, "rb") as f:
        values = tomllib.load(f)
    return config_from_dict(cls, {**values, **overrides}, source=str(path))
