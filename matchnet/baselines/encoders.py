"""The Conv-4 encoders of the baselines (the baseline classifier's and the siamese net's features), saved and
loaded on their own: the part of a baseline that the table's nearest-neighbour matching uses."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..model import Conv4
from .siamese import KIND as SIAMESE, load_siamese
from .store import load_weights, read_meta, save_weights

ENCODER = "conv4-encoder"


def save_encoder(encoder: nn.Module, folder: str | os.PathLike, info: dict[str, Any]) -> Path:
    """A Conv4 (matchnet.model) alone: the part of a baseline that the table's matching uses."""
    config = {"in_channels": encoder.net[0][0].in_channels, "hidden": encoder.net[0][0].out_channels,
              "layers": len(encoder.net), "image_size": getattr(encoder, "image_size", 28)}
    return save_weights(encoder, folder, ENCODER, config, info)


def load_encoder(folder: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """The Conv4 of an encoder checkpoint, or of a whole siamese net's."""
    meta = read_meta(folder)
    if meta["kind"] == SIAMESE:
        return load_siamese(folder, device).encoder
    cfg = meta["config"]
    encoder = Conv4(cfg["in_channels"], cfg["hidden"], cfg["layers"], cfg["image_size"])
    return load_weights(encoder, folder, ENCODER, device)
