"""Baseline checkpoints: a folder with config.json (what the weights are, constructor arguments) and
model.safetensors, like the Matching Network checkpoints; nothing is unpickled.

They ship under assets/baselines/<name>/, not assets/<name>/: the loaders of assets/* expect Matching Networks.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..atomic import write_text, write_with

FORMAT = 1


def save_weights(module: nn.Module, folder: str | os.PathLike, kind: str, config: dict[str, Any],
                 info: dict[str, Any] | None = None) -> Path:
    """Write folder/model.safetensors and folder/config.json = {kind, config, info}; each replaced atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    meta = {"matchnet_baseline": FORMAT, "kind": kind, "config": config, **({"info": info} if info else {})}
    write_with(folder / "model.safetensors", lambda p: save_file(state, p, metadata={"format": "pt"}))
    write_text(folder / "config.json", json.dumps(meta, indent=2) + "\n")
    return folder


def read_meta(folder: str | os.PathLike) -> dict[str, Any]:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; a baseline checkpoint holds config.json and model.safetensors")
    meta = json.loads(path.read_text())
    if meta.get("matchnet_baseline") != FORMAT:
        raise ValueError(f"{path}: not a matchnet baseline checkpoint (format {FORMAT})")
    return meta


def load_weights(module: nn.Module, folder: str | os.PathLike, kind: str,
                 device: str | torch.device = "cpu") -> nn.Module:
    """Load folder's weights into `module` (built by the caller from read_meta(folder)["config"]); eval mode."""
    meta = read_meta(folder)
    if meta["kind"] != kind:
        raise ValueError(f"{folder}: holds a {meta['kind']!r}, not a {kind!r}")
    module.load_state_dict(load_file(str(Path(folder) / "model.safetensors")))
    return module.to(device).eval()


def folder_size(folder: str | os.PathLike) -> int:
    return sum(p.stat().st_size for p in Path(folder).iterdir() if p.is_file())
