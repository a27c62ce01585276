"""Checkpoints as a folder: config.json (constructor arguments + format version) and model.safetensors.

Nothing here unpickles: weights are safetensors, everything else is JSON. The training state for resuming
(optimizer, step, random generators) is stored the same way.
"""
from __future__ import annotations

import inspect
import json
import math
import os
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .atomic import write_text, write_with
from .model import FORMAT_VERSION, MatchingNetwork

CONFIG, WEIGHTS = "config.json", "model.safetensors"


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be loaded; the message names the file and the problem."""


def save_model(model: MatchingNetwork, folder: str | os.PathLike) -> Path:
    """Write config.json + model.safetensors, each replaced atomically so a crash never leaves a half file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"matchnet_format": FORMAT_VERSION, **model.config}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write_with(folder / WEIGHTS, lambda p: save_file(state, p, metadata={"format": "pt"}))
    write_text(folder / CONFIG, json.dumps(config, indent=2) + "\n")
    return folder


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object beside a checkpoint, or None if the file is absent; CheckpointError if it is not one."""
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    except (RecursionError, ValueError) as e:  # nested thousands deep; a number of thousands of digits
        why = "nested too deeply" if isinstance(e, RecursionError) else str(e)[:120]
        raise CheckpointError(f"{path}: not a matchnet JSON file ({why})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: expected a JSON object {{...}}, got {_json_type(value)}")
    return value


def _json_type(value: Any) -> str:
    names = {list: "a list", str: "a string", bool: "true/false", type(None): "null", int: "a number",
             float: "a number", dict: "an object"}
    return names.get(type(value), type(value).__name__)


def read_config(folder: str | os.PathLike) -> dict[str, Any]:
    path = Path(folder) / CONFIG
    config = read_json(path)
    if config is None:
        raise CheckpointError(f"{path}: missing; a matchnet checkpoint folder holds {CONFIG} and {WEIGHTS}")
    return config


def model_kwargs(config: dict[str, Any], path: Path) -> dict[str, Any]:
    """The constructor arguments from a config, checked: format version, unknown and missing keys."""
    version = config.get("matchnet_format")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {version!r}, this matchnet reads format {FORMAT_VERSION}")
    params = inspect.signature(MatchingNetwork.__init__).parameters
    known = {k for k in params if k != "self"}
    unknown = sorted(k for k in config if k not in known and k != "matchnet_format")
    # A key the constructor has a default for may be absent: configs written before it existed (mean/std) load.
    missing = sorted(k for k in known if k not in config and params[k].default is inspect.Parameter.empty)
    if unknown or missing:
        raise CheckpointError(f"{path}: unknown keys {unknown}, missing keys {missing}")
    return {k: config[k] for k in known if k in config}


# Constructor arguments that must be positive; the rest of each type check comes from the signature.
_POSITIVE = {"in_channels", "image_size", "hidden", "layers", "fce_steps", "scale"}


def check_config(kwargs: dict[str, Any], path: Path) -> None:
    """Types and ranges of the constructor arguments (config.json is untrusted input: a Hub repo, a hand edit).

    An int key wants an int (not "64", not true), a bool key true/false, a float key a finite number; the sizes
    and scale must be positive and the image must survive the pooling. Raises CheckpointError naming the key."""
    try:
        params = inspect.signature(MatchingNetwork.__init__, eval_str=True).parameters
    except Exception:  # noqa: BLE001 -- an annotation that does not evaluate: check ranges only
        params = {}
    for key, value in kwargs.items():
        want = params[key].annotation if key in params else None  # type: ignore[union-attr]
        try:
            shown = json.dumps(value)  # as the user wrote it in config.json
        except (TypeError, ValueError):
            shown = repr(value)
        if want is bool and not isinstance(value, bool):
            raise CheckpointError(f"{path}: {key} must be true or false, got {shown} ({_json_type(value)})")
        if want is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise CheckpointError(f"{path}: {key} must be an integer, got {shown} ({_json_type(value)})")
        if want is float and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or not math.isfinite(value)):
            raise CheckpointError(f"{path}: {key} must be a finite number, got {shown} ({_json_type(value)})")
        if key in _POSITIVE and isinstance(value, (int, float)) and not value > 0:
            raise CheckpointError(f"{path}: {key} must be positive, got {shown}")
        if isinstance(value, list) and not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                               and math.isfinite(v) for v in value):
            raise CheckpointError(f"{path}: {key} must be a list of finite numbers, got {shown}")
    size, layers = kwargs.get("image_size"), kwargs.get("layers")
    if isinstance(size, int) and isinstance(layers, int) and size >> min(layers, 62) < 1:
        raise CheckpointError(f"{path}: image_size {size} cannot go through {layers} 2x2 poolings (at least "
                              f"{2 ** layers} wanted)")


def check_weights_header(weights: Path, model: MatchingNetwork) -> None:
    """Compare the tensors' names, shapes and dtypes in the safetensors header (read without loading the data)
    with what `model` (built on the meta device: no memory) expects. A config that does not match its weights
    is refused here, before a real model is built: a hostile `hidden: 200000` would otherwise allocate 1.4 TB."""
    try:
        with safe_open(str(weights), framework="pt") as f:
            header = {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights}: unreadable or truncated ({_first_line(e)})") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(header))
    unexpected = sorted(set(header) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{weights}: does not fit the model in {CONFIG} (tensors missing: {missing[:4]}"
                              f"{'...' if len(missing) > 4 else ''}; unexpected: {unexpected[:4]}"
                              f"{'...' if len(unexpected) > 4 else ''})")
    for name, tensor in expected.items():
        shape, dtype = header[name]
        if shape != tuple(tensor.shape):
            raise CheckpointError(f"{weights}: does not fit the model in {CONFIG}: tensor {name} is "
                                  f"{list(shape)}, {CONFIG} implies {list(tensor.shape)}")
        is_float = dtype in _FLOAT_DTYPES
        if is_float != tensor.dtype.is_floating_point:
            raise CheckpointError(f"{weights}: tensor {name} has dtype {dtype}, the model wants {tensor.dtype}")


_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}


def check_finite(state: dict[str, torch.Tensor], weights: Path) -> None:
    """NaN or infinite weights (a diverged run, a damaged file) would give NaN predictions; refuse them by name."""
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(f"{weights}: tensor {name} holds {bad} NaN or infinite value(s) of "
                                  f"{tensor.numel()}; the checkpoint is broken (a diverged training run?)")


Model = TypeVar("Model", bound=MatchingNetwork)


def load_model(folder: str | os.PathLike, device: str | torch.device = "cpu",
               cls: type[Model] = MatchingNetwork) -> Model:
    """Load a checkpoint folder written by save_model; the model comes back in eval mode.

    Checked in order of cost, so a bad folder fails before memory is spent: config.json's keys and types, the
    weights' header against the config (on the meta device), then the data itself (readable, finite).
    cls: MatchingNetwork or a subclass with the same constructor (matchnet.hub.HubMatchingNetwork)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such checkpoint folder")
    config = read_config(folder)
    kwargs = model_kwargs(config, folder / CONFIG)
    check_config(kwargs, folder / CONFIG)
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{weights}: missing")
    try:
        with torch.device("meta"):  # the architecture without memory: its constructor's own checks run here
            meta = cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{folder / CONFIG}: {_first_line(e)}") from None
    check_weights_header(weights, meta)
    model = cls(**kwargs)
    try:
        state = load_file(weights)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights}: unreadable or truncated ({_first_line(e)})") from None
    check_finite(state, weights)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{weights}: does not fit the model in {CONFIG} ({_first_line(e)})") from None
    return model.to(device).eval()


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:300] if text else type(error).__name__


def save_state(path: str | os.PathLike, tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
    """Save a flat dict of tensors and a JSON-able dict in one safetensors file (info in its metadata)."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    write_with(path, lambda p: save_file(tensors, p, metadata={"info": json.dumps(info)}))


def load_state(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        info = json.loads(f.metadata()["info"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return tensors, info


def optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """torch's optimizer state_dict without pickle: tensors flattened into keys, the rest as JSON."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, state in sd["state"].items():
        for name, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim.{pid}.{name}"] = value
            else:
                scalars[f"{pid}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                        info: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    for key, value in info["scalars"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": info["param_groups"]})
