"""Checkpoints as a folder: config.json (constructor arguments + format version) and model.safetensors.

Nothing here unpickles: weights are safetensors, everything else is JSON. The training state for resuming
(optimizer, step, random generators) is stored the same way.
"""
from __future__ import annotations

import inspect
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

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
    _atomic(folder / WEIGHTS, lambda p: save_file(state, p, metadata={"format": "pt"}))
    _atomic(folder / CONFIG, lambda p: Path(p).write_text(json.dumps(config, indent=2) + "\n"))
    return folder


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object beside a checkpoint, or None if the file is absent; CheckpointError if it is not one."""
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return value


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
    missing = sorted(k for k in known if k not in config)
    if unknown or missing:
        raise CheckpointError(f"{path}: unknown keys {unknown}, missing keys {missing}")
    return {k: config[k] for k in known}


def load_model(folder: str | os.PathLike, device: str | torch.device = "cpu") -> MatchingNetwork:
    """Load a checkpoint folder written by save_model; the model comes back in eval mode."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such checkpoint folder")
    config = read_config(folder)
    model = MatchingNetwork(**model_kwargs(config, folder / CONFIG))
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{weights}: missing")
    try:
        state = load_file(weights)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights}: unreadable or truncated ({e})") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{weights}: does not fit the model in {CONFIG} ({e})") from None
    return model.to(device).eval()


def save_state(path: str | os.PathLike, tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
    """Save a flat dict of tensors and a JSON-able dict in one safetensors file (info in its metadata)."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    _atomic(Path(path), lambda p: save_file(tensors, p, metadata={"info": json.dumps(info)}))


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


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(str(tmp))
    os.replace(tmp, path)
