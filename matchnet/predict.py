"""Predictions for your own images with any checkpoint: the support set embedded once, queries in batches.

    import matchnet
    p = matchnet.predict("omniglot-vinyals", "my_support/", ["q1.png", "q2.png"])  # my_support/<class>/*.png
    p.labels, p.probabilities, p.attention                                      # [Q], [Q, N], [Q, S]

Images go through the checkpoint's own preprocessing (matchnet.inference.prepare): an Omniglot-style model (one
channel, e.g. 1x28x28) gets the demo's drawing preprocessing at its own side (any polarity, size or stroke width,
as an Omniglot page); any other model gets photos made square as its training data was (train_config.json's data
option `resize`: "crop" or "stretch").
The input rules, and the errors (one InputError, a ValueError, naming the file and what is wrong), are the
demo's (matchnet.inputs), without its web-page limits.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .checkpoint import load_model
from .hub import resolve
from .inference import EmbeddedSupport, ImageSource, prepare, training_resize
from .inputs import (InputError, check_queries, check_request, check_support, is_path, query_files, read_all,
                     support_folder)
from .model import MatchingNetwork

Support = Union[str, os.PathLike, Mapping[str, Union[ImageSource, Sequence[ImageSource]]]]
Queries = Union[ImageSource, Iterable[ImageSource]]
BATCH = 64  # queries per forward pass: memory stays flat however many there are


@dataclass
class Predictions:
    """Q queries against one support set. Columns of `probabilities` follow `classes`; columns of `attention`
    and `cosine` follow `support` (the support images in the order they were given: a folder's classes and
    files sorted by name, a mapping's in its own order)."""

    classes: list[str]  # N class names
    support: list[str]  # S support images: their paths as given, else "<class>[<index in its class>]"
    support_labels: list[str]  # S class names, one per support image
    queries: list[str]  # Q query names: paths as given, else "query[<index>]"
    labels: list[str]  # Q predicted classes
    probabilities: np.ndarray  # [Q, N] float32, rows sum to 1
    attention: np.ndarray  # [Q, S] float32 a(x̂, x_i), rows sum to 1
    cosine: np.ndarray  # [Q, S] float32; attention = softmax(scale * cosine) over each row
    scale: float  # the model's softmax scale

    def __len__(self) -> int:
        return len(self.queries)

    def record(self, i: int) -> dict[str, Any]:
        """Query i as plain Python (one JSON line of `train/run.py predict --json`): its label, the
        probability of each class, the attention and cosine of each support image, the most attended one."""
        best = int(self.attention[i].argmax())
        return {
            "query": self.queries[i], "label": self.labels[i],
            "probability": float(self.probabilities[i].max()), "most_attended": self.support[best],
            "probabilities": {c: float(p) for c, p in zip(self.classes, self.probabilities[i])},
            "attention": {s: float(a) for s, a in zip(self.support, self.attention[i])},
            "cosine": {s: float(c) for s, c in zip(self.support, self.cosine[i])},
        }

    def records(self) -> list[dict[str, Any]]:
        return [self.record(i) for i in range(len(self))]

    def to_json(self) -> dict[str, Any]:
        """The demo's /classify reply for the same input (without its model and support_cached keys)."""
        r6 = (lambda m: [[round(float(v), 6) for v in row] for row in m])
        return {"labels": self.labels, "classes": self.classes, "probabilities": r6(self.probabilities),
                "support_labels": self.support_labels, "attention": r6(self.attention),
                "similarity": r6(self.cosine)}


def load_for_predict(model: MatchingNetwork | str | os.PathLike,
                     device: str | torch.device | None) -> tuple[MatchingNetwork, Path | None]:
    """(the model in eval mode, its checkpoint folder when it was named)."""
    if isinstance(model, MatchingNetwork):
        return (model if device is None else model.to(device)).eval(), None
    if not is_path(model):
        raise InputError(f"model: expected a MatchingNetwork, a checkpoint folder, a shipped model's name or a "
                         f"Hub repo id; got {type(model).__name__}")
    folder = resolve(model)  # CheckpointError naming what is wrong
    return load_model(folder, device or "cpu"), folder


def _unique(names: list[str]) -> list[str]:
    """The same file given twice keeps one key per support image in Predictions.record: "#2" on the second."""
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}#{seen[n]}")
    return out


def _name(source: object, fallback: str) -> str:
    return str(source) if is_path(source) else fallback


def _as_list(images: object) -> list:
    """One image (a path, a PIL image, an array), a folder of images, or several (any other iterable)."""
    if is_path(images) and Path(images).expanduser().is_dir():
        return list(query_files(images))
    if is_path(images) or isinstance(images, (Image.Image, np.ndarray, bytes, bytearray)):
        return [images]
    if isinstance(images, torch.Tensor):  # a model input, not a picture: no guessing at its layout or scale
        raise InputError(f"a torch tensor {list(images.shape)} is not an image: pass an array (x.numpy(), HxW or "
                         "HxWx3), or call model.embed_support / classify with model inputs")
    if isinstance(images, Iterable):
        return list(images)
    return [images]  # read_all names it: "cannot read an image from ..."


class Predictor:
    """One support set embedded once by one checkpoint; predict(queries) as often as needed.

    model: a loaded MatchingNetwork, or a checkpoint folder, a shipped model's name ("omniglot-vinyals") or a
    Hub repo id (matchnet.load). support: a folder with one subfolder of images per class (the subfolder's
    name is the class), or a mapping {class name: an image, images or a folder of images}. Images are paths,
    PIL images or arrays (HxW, HxWx3, HxWx4; uint8, or floats in [0, 1]). resize: how a photo model makes
    images square, "crop" or "stretch"; default: what the checkpoint's run recorded (train_config.json), else
    "crop"; drawing models (one channel, e.g. 1x28x28) ignore it. device: where to run (default: the model's own, "cpu" for a
    named checkpoint). A model passed in is put in eval mode (BatchNorm then uses its trained statistics).
    """

    def __init__(self, model: MatchingNetwork | str | os.PathLike, support: Support, *, resize: str | None = None,
                 device: str | torch.device | None = None, batch_size: int = BATCH):
        if resize not in (None, "crop", "stretch"):
            raise InputError(f"resize must be 'crop' or 'stretch', not {resize!r}")
        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}")
        self.model, folder = load_for_predict(model, device)
        self.resize = resize or (training_resize(folder) if folder is not None else None) or "crop"
        self.batch_size = batch_size
        groups = support_folder(support) if is_path(support) else support
        if not isinstance(groups, Mapping):
            raise InputError(f"support: expected a folder (one subfolder per class) or a mapping "
                             f"{{class: images}}; got {type(groups).__name__}")
        sources, labels, names = [], [], []
        for cls, images in groups.items():
            items = _as_list(images)
            sources += items
            labels += [str(cls).strip()] * len(items)
            names += [_name(x, f"{str(cls).strip()}[{j}]") for j, x in enumerate(items)]
            if not items:
                raise InputError(f"class '{cls}' has no example: give at least one image")
        check_support(labels, [str(c).strip() for c in groups])  # names that only stripping tells apart
        classes = check_request(len(sources), labels)
        names = _unique(names)
        images = np.stack(read_all(sources, self.prepare, "support image", names))
        self.support, self.support_labels = names, labels
        with torch.inference_mode():
            self.embedded = EmbeddedSupport(self.model, images, labels, classes)
        self.classes = self.embedded.classes

    def prepare(self, source: ImageSource) -> np.ndarray:
        """One image as this model's input: the checkpoint's own preprocessing."""
        return prepare(source, self.model, self.resize)

    def predict(self, queries: Queries, *, progress: bool = False) -> Predictions:
        """queries: one image or several (paths, PIL images, arrays), or a folder of images (all of them,
        sorted). All are read first: one bad file refuses the call, naming it. progress: a tqdm bar on stderr."""
        sources = _as_list(queries)
        check_queries(len(sources))
        names = [_name(x, f"query[{i}]") for i, x in enumerate(sources)]
        bar = tqdm(total=len(sources), desc="predict", unit="query", disable=not progress, leave=False)
        try:
            def read(source: ImageSource) -> np.ndarray:
                x = self.prepare(source)
                bar.update(1)
                return x

            images = read_all(sources, read, "query image", names)
            parts = [self.embedded.classify(np.stack(images[i:i + self.batch_size]))
                     for i in range(0, len(images), self.batch_size)]
        finally:
            bar.close()
        probs = np.concatenate([r.probs for r in parts])
        return Predictions(self.classes, self.support, self.support_labels, names,
                           [self.classes[i] for i in probs.argmax(1)], probs,
                           np.concatenate([r.attention for r in parts]), np.concatenate([r.cosine for r in parts]),
                           parts[0].scale)


def predict(model: MatchingNetwork | str | os.PathLike, support: Support, queries: Queries, *,
            resize: str | None = None, device: str | torch.device | None = None,
            progress: bool = False) -> Predictions:
    """Predictor(model, support, resize=..., device=...).predict(queries): the one-call form. To classify
    several batches against one support set, keep the Predictor: its support set is embedded once."""
    return Predictor(model, support, resize=resize, device=device).predict(queries, progress=progress)
