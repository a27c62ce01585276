"""The classifier backbones of Table 3: torchvision's Inception-v3 (the paper's "Inception") or ResNet-50, or a
tiny CNN for tests. Weights start random, or from a local safetensors file: nothing is downloaded.

A Backbone maps images [B, 3, S, S] in [0, 1] (normalised inside with ImageNet's statistics) to its pooled
features [B, out_dim], the layer before the softmax: the classifier's features for nearest-neighbour matching
and the Matching Network's f' = g'. Classifier adds the linear layer over the training classes.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .data import MEAN, STD

ARCHS = ("inception_v3", "resnet50", "tiny")
IMAGE_SIZE = {"inception_v3": 299, "resnet50": 224}  # torchvision's train crop sizes for these models


def _body(arch: str, hidden: int) -> tuple[nn.Module, int]:
    if arch == "tiny":  # 3 x [conv, BN, ReLU, pool], global average pool: seconds on a CPU
        layers, width = [], 3
        for _ in range(3):
            layers += [nn.Conv2d(width, hidden, 3, padding=1), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            width = hidden
        return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten()), hidden
    import torchvision

    if arch == "resnet50":
        net = torchvision.models.resnet50(weights=None)
    elif arch == "inception_v3":  # no auxiliary head: its loss is not in the paper, and fc is replaced below
        net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=True)
    else:
        raise ValueError(f"arch must be one of {', '.join(ARCHS)}, not {arch!r}")
    dim = net.fc.in_features
    net.fc = nn.Identity()  # the pooled features (Inception: after its dropout, a no-op in eval mode)
    return net, dim


class Backbone(nn.Module):
    def __init__(self, arch: str = "resnet50", hidden: int = 32):
        super().__init__()
        self.arch = arch
        self.body, self.out_dim = _body(arch, hidden)
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)
        self.channels_last = False

    def use_channels_last(self) -> "Backbone":
        self.channels_last = True
        return self.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.body(x).flatten(1)


class Classifier(nn.Module):
    """Backbone + a linear layer over `num_classes`: logits [B, num_classes]."""

    def __init__(self, arch: str, num_classes: int, hidden: int = 32):
        super().__init__()
        self.backbone = Backbone(arch, hidden)
        self.head = nn.Linear(self.backbone.out_dim, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))


def load_local_weights(model: Classifier, path: str | Path) -> list[str]:
    """Backbone (and, where the shapes fit, head) weights from a safetensors file: this project's own, or a
    torchvision state dict saved as safetensors (keys without the "backbone.body." prefix; "fc." is the head).
    Returns the keys of `model` left as they were. Never unpickles."""
    from safetensors.torch import load_file

    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        raise ValueError(f"{path}: weights must be a .safetensors file (this project never unpickles .pth files)")
    state = load_file(str(path))
    if not any(k.startswith("backbone.") for k in state):  # a torchvision state dict
        if model.backbone.arch == "inception_v3":  # its ImageNet weights were ported from TensorFlow and expect
            model.backbone.body.transform_input = True  # inputs rescaled as there (torchvision does the same)
        state = {("head." + k[3:]) if k.startswith("fc.") else "backbone.body." + k: v for k, v in state.items()
                 if not k.startswith("AuxLogits.")}
    own = model.state_dict()
    fits = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not any(k.startswith("backbone.") for k in fits):
        raise ValueError(f"{path}: no weight fits the {model.backbone.arch} backbone; is it another architecture?")
    model.load_state_dict(fits, strict=False)
    return sorted(set(own) - set(fits))
