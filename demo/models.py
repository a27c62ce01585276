"""Which checkpoints the demo serves, and what kind of input they take.

Default: the two shipped Omniglot checkpoints (with and without FCE), so the page can compare them. With
`--checkpoint PATH_OR_HUB_ID`: that one model. A one-channel model with no input normalisation (1x28x28, or
an Omniglot model trained at another size) is served as Omniglot-style (drawing pads, stroke preprocessing to its
side); any other (RGB 3x84x84, ...) gets upload slots and photo preprocessing.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from matchnet import inference as inf
from matchnet.model import MatchingNetwork

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = {"base": ROOT / "assets" / "omniglot-vinyals", "fce": ROOT / "assets" / "omniglot-vinyals-fce"}


@dataclass
class Served:
    """The served models ("base", and "fce" when there is one to compare with), shared read-only."""

    models: dict[str, MatchingNetwork]
    ids: dict[str, str] = field(default_factory=dict)  # what /classify reports as "model"
    names: dict[str, str] = field(default_factory=dict)  # how the page names each model
    resize: str = "crop"  # photos: "crop" (centre square) or "stretch", as the checkpoint's training data was

    def __post_init__(self) -> None:
        shapes = {inf.input_shape(m) for m in self.models.values()}
        if "base" not in self.models or len(shapes) != 1:
            raise ValueError(f"need a 'base' model, and all served models must take one input shape: {shapes}")
        for key, model in self.models.items():
            self.ids.setdefault(key, SHIPPED[key].name if key in SHIPPED else key)
            self.names.setdefault(key, "Matching Net + FCE" if getattr(model, "fce", False) else "Matching Net")

    @property
    def base(self) -> MatchingNetwork:
        return self.models["base"]

    @property
    def drawing(self) -> bool:
        """Omniglot-style: drawing pads and stroke preprocessing."""
        return inf.is_drawing_model(self.base)

    @property
    def shape(self) -> tuple[int, int, int]:
        return inf.input_shape(self.base)

    def prepare(self, source: inf.ImageSource) -> np.ndarray:
        return inf.prepare(source, self.base, self.resize)


def load(checkpoint: str | os.PathLike | None = None, resize: str | None = None) -> Served:
    """The shipped pair, or one checkpoint (a folder, a shipped name or a Hub repo id). resize: how photos
    are made square; default: what the run's train_config.json says (data option resize), else "crop"."""
    if checkpoint is None:
        return Served({key: inf.load_checkpoint(path) for key, path in SHIPPED.items()})
    model = inf.load_checkpoint(checkpoint)
    folder = Path(checkpoint)
    name = folder.name if folder.is_dir() else str(checkpoint)  # a folder, or a Hub id
    return Served({"base": model}, ids={"base": name}, resize=resize or inf.training_resize(folder) or "crop")
