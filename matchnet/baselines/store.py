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

FORMAT = 1


def save_weights(module: nn.Module, folder: str | os.PathLike, kind: str, config: dict[str, Any],
                 info: dict[str, Any] | None = None) -> Path:
    """Write folder/model.safetensors and folder/config.json = {kind, config, info}; each replaced atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    meta = {"matchnet_baseline": FORMAT, "kind": kind, "config": config, **({"info": info} if info else {})}
    tmp = folder / "model.safetensors.tmp"
    save_file(state, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, folder / "model.safetensors")
    tmp = folder / "config.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, folder / "config.json")
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


# -- Conv-4 encoders (the baseline classifier's and the siamese net's features) ---------------------------------

ENCODER = "conv4-encoder"


def save_encoder(encoder: nn.Module, folder: str | os.PathLike, info: dict[str, Any]) -> Path:
    """A Conv4 (matchnet.model) alone: the part of a baseline that the table's matching uses."""
    config = {"in_channels": encoder.net[0][0].in_channels, "hidden": encoder.net[0][0].out_channels,
              "layers": len(encoder.net), "image_size": getattr(encoder, "image_size", 28)}
    return save_weights(encoder, folder, ENCODER, config, info)


def load_encoder(folder: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """The Conv4 of an encoder checkpoint, or of a whole siamese net's."""
    from ..model import Conv4

    meta = read_meta(folder)
    if meta["kind"] == "siamese":
        from .siamese import load_siamese

        return load_siamese(folder, device).encoder
    cfg = meta["config"]
    encoder = Conv4(cfg["in_channels"], cfg["hidden"], cfg["layers"], cfg["image_size"])
    return load_weights(encoder, folder, ENCODER, device)
