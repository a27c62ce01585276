"""A few-shot split: every image of a dataset as one uint8 tensor, plus the list of classes a split may use."""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch


@dataclass
class FewShotSplit:
    """Classes are (source, rotation) pairs: class c shows images[source[c]] rotated by 90° x rotation[c].

    images: uint8 [num_sources, per_source, H, W] (or [.., C, H, W]); 255 = ink for Omniglot, RGB for natural
    images (rotation 0: they are never rotated into new classes). The whole
    dataset is one tensor so that it can live on the GPU and episodes can be gathered with torch ops.
    Several splits may share one images tensor.
    """

    images: torch.Tensor
    source: torch.Tensor  # long [num_classes]
    rotation: torch.Tensor  # long [num_classes], 0..3
    names: list[str]
    # Per-channel mean / std of the training images in [0, 1] units (natural images; None for Omniglot). The
    # model normalises with the training split's values, so every split of a dataset carries the same ones.
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if not (len(self.source) == len(self.rotation) == len(self.names)):
            raise ValueError("source, rotation and names must have one entry per class")
        if (self.mean is None) != (self.std is None):
            raise ValueError("mean and std go together: give both or neither")

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def per_class(self) -> int:
        return self.images.shape[1]

    @property
    def device(self) -> torch.device:
        return self.images.device

    def to(self, device: torch.device | str) -> "FewShotSplit":
        """This split on `device`. The images are copied there once: splits that share a tensor (a dataset's
        train / val / test) share its copy on the device too (1.27 GB for miniImageNet, not once per split)."""
        return FewShotSplit(shared_copy(self.images, device), self.source.to(device), self.rotation.to(device),
                            self.names, self.mean, self.std)

    def class_images(self, c: int) -> torch.Tensor:
        """All images of class c as uint8 [per_class, (C,) H, W], rotated."""
        return torch.rot90(self.images[self.source[c]], int(self.rotation[c]), dims=(-2, -1))


# id(source tensor) -> (a weak reference to it, {device: a weak reference to its copy there}). Kept here, not on
# the tensor, so a tensor still pickles and deep-copies as before; an entry goes when its source tensor does.
_COPIES: dict[int, tuple[weakref.ref, dict[str, weakref.ref]]] = {}


def shared_copy(images: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """images on `device`, copied at most once per device while a copy is in use (held weakly: the device memory
    is freed with the last split that uses it)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())  # "cuda" and "cuda:0" are one copy
    if images.device == device:
        return images
    key = id(images)
    entry = _COPIES.get(key)
    if entry is None or entry[0]() is not images:
        entry = (weakref.ref(images, lambda _, key=key: _COPIES.pop(key, None)), {})
        _COPIES[key] = entry
    ref = entry[1].get(str(device))
    moved = ref() if ref is not None else None
    if moved is None:
        moved = images.to(device)
        entry[1][str(device)] = weakref.ref(moved)
    return moved
