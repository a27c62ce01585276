"""One config reader for every training recipe: a TOML file into a dataclass, checked before step 1.

Unknown keys and wrong types are errors that name the file and the key; a dataclass may add its own checks
in a `check()` method. `--set key=value` overrides are parsed against the field's type, so `--set name=2024`
stays a string where the key is a string.

`LoopConfig` holds the fields the training loop (matchnet.engine.fit) reads; every task's config inherits it
and adds its own (a subclass may give a loop field another default by declaring it again).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, packaged as tomli
    import tomli as tomllib

T = TypeVar("T")


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file and the key."""


def read_toml(path: str | os.PathLike) -> dict[str, Any]:
    """A TOML file as a dict; a missing file, a folder or invalid TOML is a ConfigError naming the path."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder; --config wants a .toml file (see train/configs/)")
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file (see train/configs/)")
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None


def parse_value(text: str) -> Any:
    """A --set value as TOML (true, 3, 1e-3, [[20, 1]], "x"); anything else is a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_sets(pairs: list[str], cls: type | None = None) -> dict[str, Any]:
    """`key=value` strings into overrides; with `cls`, a value for a string field stays the text as typed."""
    kinds = {f.name: type(getattr(cls(), f.name)) for f in fields(cls)} if cls is not None else {}
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set wants key=value, got {pair!r}")
        key, text = pair.split("=", 1)
        key = key.strip()
        value = parse_value(text)
        if kinds.get(key) is str and not isinstance(value, str):
            value = text.strip().strip('"')
        out[key] = value
    return out


def part_sets(text: str, parts: set[str], variable: str = "TABLE_SET") -> dict[str, dict[str, Any]]:
    """"part.key=value ..." (a table's TABLE_SET) -> {"part": {"key": value}}; values are TOML."""
    out: dict[str, dict[str, Any]] = {}
    for item in text.split():
        key, _, value = item.partition("=")
        part, _, option = key.partition(".")
        if not option or not value:
            raise ConfigError(f"{variable} wants part.key=value items, got {item!r}")
        out.setdefault(part, {})[option] = parse_value(value)
    unknown = sorted(set(out) - parts)
    if unknown:
        raise ConfigError(f"{variable} names unknown part(s) {unknown}; use {', '.join(sorted(parts))}")
    return out


def _check_type(source: str, key: str, value: Any, default: Any) -> Any:
    want = type(default)
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)  # TOML writes 1 for 1.0
    if not isinstance(value, want) or (want is int and isinstance(value, bool)):
        raise ConfigError(f"{source}: {key} should be {want.__name__}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{source}: {key} should be a finite number, got {value!r}")
    return value


def config_from_dict(cls: type[T], values: dict[str, Any], source: str = "config") -> T:
    """Build dataclass `cls` from `values`: unknown keys, wrong types and failed checks name the source."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown option(s) {unknown}; known: {sorted(known)}")
    default = cls()
    checked = {k: _check_type(source, k, v, getattr(default, k)) for k, v in values.items()}
    cfg = cls(**checked)
    check = getattr(cfg, "check", None)
    if check is not None:
        try:
            check()
        except ConfigError:
            raise
        except ValueError as e:
            raise ConfigError(f"{source}: {e}") from None
    return cfg


def config_from_toml(cls: type[T], path: str | os.PathLike, **overrides: Any) -> T:
    return config_from_dict(cls, {**read_toml(path), **overrides}, source=str(path))


def check_positive(cfg: Any, *keys: str) -> None:
    """ValueError naming the first of `keys` that is below 1 (counts: steps, episodes, queries...)."""
    for key in keys:
        if getattr(cfg, key) < 1:
            raise ValueError(f"{key} must be at least 1, got {getattr(cfg, key)}")


def check_pairs(name: str, value: Any) -> None:
    """A list of [way, shot] pairs of positive ints (val_tasks)."""
    ok = isinstance(value, list) and value and all(
        isinstance(t, list) and len(t) == 2 and all(isinstance(x, int) and not isinstance(x, bool) and x >= 1
                                                    for x in t) for t in value)
    if not ok:
        raise ValueError(f"{name} should be a list of [way, shot] pairs of positive integers, got {value!r}")


SCHEDULES = ("cosine", "step", "constant")


@dataclass
class LoopConfig:
    """What the one training loop reads from a config; every task's config inherits it.

    The learning rate warms up linearly over `warmup_steps`, then follows `schedule`: cosine (to 0), step (halved
    four times, at 1/5, 2/5, 3/5 and 4/5 of `steps`) or constant. `amp` (bf16 autocast) acts on GPUs and on
    CPUs with bf16 units (matchnet.cpu), `sync_bn` on GPUs only; `grad_clip` 0 and `time_limit` 0 mean none;
    `seed` seeds the training draws (per rank, see matchnet.distributed.rank_seed).

    `time_limit` counts the whole run from process start (data loading included) and keeps room for the final
    validation: the run stops early enough that its last validation, as long as the one before it took, ends
    inside the limit. Until one validation has been timed there is nothing to keep room for, so a limit reached
    before the first validation can be overrun by that one validation.
    """

    name: str = "run"
    steps: int = 1000
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "cosine"  # cosine | step | constant
    warmup_steps: int = 0
    val_every: int = 1000
    log_every: int = 100
    checkpoint_every: int = 1000  # steps between resume points (a crash loses at most this many)
    grad_clip: float = 0.0  # max gradient norm (0: no clipping)
    amp: bool = False  # bf16 autocast (GPUs; CPUs with AVX512-BF16 or AMX)
    sync_bn: bool = False  # with torchrun on GPUs: SyncBatchNorm (see matchnet.engine)
    time_limit: float = 0.0  # seconds for the whole run, final validation included (0: none); best/ is kept
    seed: int = 0
    progress: bool = True

    @classmethod
    def from_toml(cls: type[T], path: str | os.PathLike, **overrides: Any) -> T:
        return config_from_toml(cls, path, **overrides)

    @classmethod
    def from_dict(cls: type[T], values: dict[str, Any], source: str = "config") -> T:
        return config_from_dict(cls, values, source)

    def check(self) -> None:
        """The loop's own checks; a subclass's check() calls super().check() first."""
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, not {self.schedule!r}")
        check_positive(self, "steps", "val_every", "log_every", "checkpoint_every")
        if not self.lr > 0 or self.weight_decay < 0 or self.warmup_steps < 0:
            raise ValueError("lr must be positive and weight_decay, warmup_steps not negative")
        if self.grad_clip < 0 or self.time_limit < 0:
            raise ValueError("grad_clip and time_limit must not be negative (0: none)")
