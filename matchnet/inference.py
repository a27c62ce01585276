"""Inference for the demo, without gradio: read any image, turn it into the input a checkpoint expects, and
classify queries against a support set that is embedded once.

Two kinds of checkpoint: Omniglot-style (one channel, no input normalisation: drawings, see below; 1x28x28 for
every shipped model) and any other (photos: e.g. RGB 3x84x84, with their training images' mean/std; centre-cropped
and resized as the image datasets are, no stroke processing). `prepare` picks the
right one for a model; `input_shape` says what a model takes. The rules for what a user hands in (class
names, all-or-none reading of files) are matchnet.inputs, shared with the predict API (matchnet.predict).

Preprocessing rebuilds what a drawing would look like as an Omniglot page (105x105, the character at
Omniglot's median size and position, strokes at Omniglot's median width) and then shrinks it exactly as
training did (PIL LANCZOS to the model's side, 28x28 by default, ink = 1). The constants below were measured on 800 Omniglot drawings
(python tests/test_preprocess.py --stats); docs/APP.md gives the accuracy this buys on distorted inputs.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from .data.fewshot import FewShotSplit
from .data.files import NotRegularFileError, open_regular
from .inputs import InputError, check_support, class_order  # noqa: F401 (the demo's names for the shared rules)
from .model import MatchingNetwork, SupportSet

IMAGE_SIZE = 28
PAGE = 105  # Omniglot's canvas
CHAR_SIDE = 64  # median long side of a character's bounding box on the 105-px page
CENTER = 50.0  # median centre of that box (x and y agree to within half a pixel)
STROKE_RADIUS = 2.5  # strokes are redrawn as the skeleton dilated by this disk: Omniglot's ~5.6 px width
MAX_PIXELS = 60_000_000  # refused before decoding: bigger images cost seconds and gigabytes for nothing
MAX_BYTES = 32 * 1024 * 1024
WORK_SIDE = 512  # larger images are box-downscaled first; the 105-px page needs no more detail
MIN_WORK_SHORT = 16  # ... but never below this many pixels on the short side (thin strips keep their rows)
MIN_CONTRAST = 0.15  # darkest ink vs paper, as a fraction of full scale; below this the image is blank
INK_LEVEL = 0.5  # fraction of the strongest ink that counts as ink (chosen on distorted Omniglot, docs/APP.md)
# Photos are resized like the image datasets' loader (matchnet.data.decode.decode_image) does.
PHOTO_RESAMPLE = Image.LANCZOS

ImageSource = Union[str, os.PathLike, bytes, Image.Image, np.ndarray]


DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "assets" / "omniglot-vinyals"


def load_checkpoint(name_or_path: str | os.PathLike = DEFAULT_CHECKPOINT, device: str = "cpu") -> MatchingNetwork:
    """The one place the demo loads weights: a shipped name, a folder, or a Hub repo id (matchnet.load)."""
    from .hub import load

    return load(name_or_path, device)


# --------------------------------------------------------------------------------------------- decoding

def open_image(source: ImageSource) -> Image.Image:
    """Decode an upload, a path, an array or a PIL image; refuse non-images, corrupt files and giants.
    Returns a drawing's modes (L, RGBA or F), at most WORK_SIDE px on each side."""
    return _normalise_mode(decode(source))


def decode(source: ImageSource) -> Image.Image:
    """The image as decoded, in its own mode and (for JPEG, roughly) size; the checks of open_image."""
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, np.ndarray):
        return _from_array(source)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        name = path.name
        try:  # the data loaders' own opener: a folder, FIFO or device is refused on the open descriptor, no hang
            with open_regular(path) as f:
                if os.fstat(f.fileno()).st_size > MAX_BYTES:
                    raise InputError(f"{name}: file too large (limit {MAX_BYTES // 2**20} MB)")
                data = f.read()
        except NotRegularFileError:
            raise InputError(f"{name}: not a regular file") from None
        except FileNotFoundError:
            raise InputError(f"{name}: no such file") from None
        except OSError as e:
            raise InputError(f"{name}: cannot be read ({e.strerror or e})") from None
    elif isinstance(source, (bytes, bytearray)):
        data, name = bytes(source), "image"
    else:
        raise InputError(f"cannot read an image from {type(source).__name__}")
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise InputError(f"{name}: far more than {MAX_PIXELS / 1e6:.0f} megapixels; refused") from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise InputError(f"{name}: not an image (PNG, JPEG, GIF, BMP, WebP or TIFF expected)") from None
    w, h = img.size
    if w * h > MAX_PIXELS:
        raise InputError(f"{name}: {w}x{h} is {w * h / 1e6:.0f} megapixels; the limit is {MAX_PIXELS / 1e6:.0f}")
    if img.format == "JPEG":
        img.draft("RGB" if img.mode != "L" else "L", (WORK_SIDE, WORK_SIDE))  # decode at 1/2..1/8 scale: fast
    try:
        img.load()
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError):
        raise InputError(f"{name}: corrupt or truncated image") from None
    return img


def _from_array(a: np.ndarray) -> Image.Image:
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)) or min(a.shape[:2]) == 0:
        raise InputError(f"an image array must be HxW, HxWx3 or HxWx4, not {a.shape}")
    if a.dtype == np.uint16:
        a = (a // 257).astype(np.uint8)
    elif a.dtype.kind == "f":
        a = np.clip(a * (255.0 if a.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    elif a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    return Image.fromarray(a)


def _normalise_mode(img: Image.Image) -> Image.Image:
    """One of L, RGBA, or F (high bit depth scaled to [0, 255]), downscaled to at most WORK_SIDE."""
    # One factor for both sides (the shape must not change), but the short side keeps MIN_WORK_SHORT px: a
    # 5000x10 strip shrunk to 500x1 would average ink and paper into one grey row, which reads as blank.
    factor = min(-(-max(img.size) // WORK_SIDE), max(1, min(img.size) // MIN_WORK_SHORT))
    if factor > 1 and img.mode in ("L", "RGB") and "transparency" not in img.info:  # shrink first: 4x faster
        img, factor = img.reduce(factor), 1
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(img, dtype=np.float32)
        top = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        img = Image.fromarray(np.clip(a * (255.0 / top), 0, 255).astype(np.float32), mode="F")
    elif img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info:
        img = img.convert("RGBA")
    elif img.mode != "L":
        try:
            img = img.convert("L")
        except ValueError:  # modes PIL cannot take straight to grey (HSV, LAB, ...)
            img = img.convert("RGB").convert("L")
    if factor > 1:
        img = img.reduce(factor)  # box filter: keeps thin strokes as grey instead of dropping them
    return img


def ink_map(img: Image.Image) -> np.ndarray:
    """Ink strength in [0, 1] (1 = darkest ink), whatever the polarity; zeros for a blank image."""
    if img.mode == "RGBA":
        rgba = np.asarray(img, dtype=np.float32) / 255.0
        alpha = rgba[..., 3]
        lum = rgba[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32)
        gray = lum * alpha + (1.0 - alpha)  # composited on white paper
        if np.ptp(gray) < MIN_CONTRAST and np.ptp(alpha) >= MIN_CONTRAST:
            gray = 1.0 - alpha  # light strokes on a transparent sheet: the alpha channel is the drawing
    else:
        gray = np.asarray(img, dtype=np.float32) / 255.0
    paper = paper_level(gray)
    ink = (paper - gray) if paper >= 0.5 else (gray - paper)  # dark ink on light paper, or the reverse
    ink = np.clip(ink, 0.0, None)
    top = float(ink.max())
    if top < MIN_CONTRAST:
        return np.zeros_like(ink)
    return ink / top


def paper_level(gray: np.ndarray) -> float:
    """The paper's grey level: the median of the image's outer ring of pixels, where drawings rarely reach.
    When that ring is most of the image (a strip a few pixels thin), the median of the whole image: ink is
    the minority of a drawing's pixels."""
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    if border.size * 2 > gray.size:
        return float(np.median(gray))
    return float(np.median(border))


# --------------------------------------------------------------------------------------- preprocessing

def preprocess(source: ImageSource, normalise_stroke: bool = True, size: int = IMAGE_SIZE) -> np.ndarray:
    """Any image of one character -> float32 [size, size], ink = 1, like the training images."""
    return preprocess_ink(ink_map(open_image(source)), normalise_stroke, size)


def preprocess_ink(ink: np.ndarray, normalise_stroke: bool = True, size: int = IMAGE_SIZE) -> np.ndarray:
    mask = ink >= INK_LEVEL
    if mask.sum() < 2:
        raise InputError("blank image: draw or upload a character")
    ys, xs = np.nonzero(mask)
    crop = ink[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    page = place_on_page(crop)
    if normalise_stroke:
        page = redraw_strokes(page)
    return shrink_page(page, size)


def place_on_page(crop: np.ndarray) -> np.ndarray:
    """Scale the cropped ink so its long side is CHAR_SIDE and centre it on a PAGE x PAGE binary page."""
    h, w = crop.shape
    scale = CHAR_SIDE / max(h, w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    small = np.asarray(Image.fromarray(crop.astype(np.float32), mode="F").resize((nw, nh), Image.BOX))
    # Shrinking averages thin strokes down to faint grey: keep any real coverage, the redraw restores width.
    level = INK_LEVEL if scale >= 1 else INK_LEVEL * min(1.0, scale * 3)
    mask = small >= level
    if not mask.any():  # hairlines on a huge canvas: any coverage at all is the drawing
        mask = small > 0
    page = np.zeros((PAGE, PAGE), bool)
    top, left = round(CENTER - (nh - 1) / 2), round(CENTER - (nw - 1) / 2)
    page[top:top + nh, left:left + nw] = mask
    return page


def stroke_width(mask: np.ndarray) -> float:
    """Mean stroke width of a binary drawing: 2 * area / boundary length (exact for long uniform strokes)."""
    p = np.pad(mask, 1)
    interior = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    boundary = int(mask.sum() - interior.sum())
    return 2.0 * mask.sum() / max(boundary, 1)


def thin(mask: np.ndarray) -> np.ndarray:
    """Zhang-Suen thinning to a one-pixel skeleton (vectorised; a few ms on a 105-px page)."""
    img = np.pad(mask, 1).astype(np.uint8)
    while True:
        changed = False
        for step in (0, 1):
            p = [img[0:-2, 1:-1], img[0:-2, 2:], img[1:-1, 2:], img[2:, 2:],  # P2..P9, clockwise from north
                 img[2:, 1:-1], img[2:, 0:-2], img[1:-1, 0:-2], img[0:-2, 0:-2]]
            neighbours = sum(p)
            transitions = sum(((p[i] == 0) & (p[(i + 1) % 8] == 1)).astype(np.uint8) for i in range(8))
            if step == 0:
                cond = (p[0] * p[2] * p[4] == 0) & (p[2] * p[4] * p[6] == 0)
            else:
                cond = (p[0] * p[2] * p[6] == 0) & (p[0] * p[4] * p[6] == 0)
            remove = (img[1:-1, 1:-1] == 1) & (neighbours >= 2) & (neighbours <= 6) & (transitions == 1) & cond
            if remove.any():
                img[1:-1, 1:-1][remove] = 0
                changed = True
        if not changed:
            return img[1:-1, 1:-1].astype(bool)


def redraw_strokes(mask: np.ndarray, radius: float | None = None) -> np.ndarray:
    """Skeletonise, then dilate with a disk: every input ends up with Omniglot's stroke width."""
    radius = STROKE_RADIUS if radius is None else radius
    skeleton = thin(mask)
    r = int(np.ceil(radius))
    out = np.zeros_like(skeleton)
    padded = np.pad(skeleton, r)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if dy * dy + dx * dx <= radius * radius:
                out |= padded[r + dy:r + dy + mask.shape[0], r + dx:r + dx + mask.shape[1]]
    return out


def shrink_page(page: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """The training pipeline (matchnet.data.omniglot._to_array): black-on-white page, LANCZOS to size, invert."""
    img = Image.fromarray(np.where(page, 0, 255).astype(np.uint8), mode="L")
    small = img.resize((size, size), Image.LANCZOS)
    return (255.0 - np.asarray(small, dtype=np.float32)) / 255.0


def preprocess_split(split: FewShotSplit, normalise_stroke: bool = True) -> FewShotSplit:
    """Every image of a split (uint8, ink = 255) through the app's preprocessing, as if each had been drawn
    or uploaded: how other character sets (MNIST) look to the demo. Images with no ink are kept as they are.
    The images keep their size (a model trained at 56 px is served drawings at 56 px)."""
    images = split.images.cpu().numpy()
    out = np.empty_like(images)
    flat, flat_out = images.reshape(-1, *images.shape[-2:]), out.reshape(-1, *images.shape[-2:])
    for i in tqdm(range(len(flat)), desc="app preprocessing", mininterval=2.0, leave=False):
        try:
            x = preprocess_ink(flat[i].astype(np.float32) / 255.0, normalise_stroke, flat.shape[-1])
        except InputError:
            x = flat[i].astype(np.float32) / 255.0
        flat_out[i] = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
    return replace(split, images=torch.from_numpy(out).to(split.images.device))


def clean_omniglot(source: ImageSource, size: int = IMAGE_SIZE) -> np.ndarray:
    """An Omniglot PNG exactly as training saw it (for comparisons): LANCZOS 105 -> size, ink = 1."""
    img = open_image(source)
    gray = np.asarray(img.convert("L") if img.mode != "F" else img, dtype=np.float32)
    small = Image.fromarray(gray.astype(np.uint8), mode="L").resize((size, size), Image.LANCZOS)
    return (255.0 - np.asarray(small, dtype=np.float32)) / 255.0


def to_display(x: np.ndarray, scale: int = 3) -> np.ndarray:
    """A model input as a uint8 thumbnail: a drawing [H, W] (ink = 1) dark on white, pixel-exact (nearest
    upscale); a photo [C, H, W] in [0, 1] as it is (HxWx3, or HxW for one channel)."""
    if x.ndim == 3:
        img = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
        return img[0] if img.shape[0] == 1 else np.ascontiguousarray(img.transpose(1, 2, 0))
    img = (255 - np.clip(x, 0, 1) * 255).astype(np.uint8)
    return np.kron(img, np.ones((scale, scale), np.uint8))


# ------------------------------------------------------------------------------------- photos, any model

def input_shape(model: MatchingNetwork) -> tuple[int, int, int]:
    """(channels, height, width) of the images a model takes, from its config."""
    config = getattr(model, "config", {})
    size = int(config.get("image_size", IMAGE_SIZE))
    return int(config.get("in_channels", 1)), size, size


def is_drawing_model(model: MatchingNetwork) -> bool:
    """Omniglot-style: one channel and no input normalisation, at any size (the shipped ones: 28 px; `data_options
    = {image_size = 56}` trains one at 56). These get the drawing preprocessing at their own size; any other
    model gets photos: every natural-image split carries its training classes' mean/std into the model config."""
    config = getattr(model, "config", {})
    return input_shape(model)[0] == 1 and "mean" not in config


def describe_shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(n) for n in shape)


def preprocess_photo(source: ImageSource, size: int = 84, channels: int = 3, resize: str = "crop") -> np.ndarray:
    """Any image -> float32 [channels, size, size] in [0, 1]: transparency on white; then resize "crop" (the
    largest centred square, resized) or "stretch" (the whole image squashed to a square), as the image
    datasets' data option `resize` does. No stroke processing; the model normalises its inputs itself."""
    if resize not in ("crop", "stretch"):
        raise ValueError(f"resize must be 'crop' or 'stretch', not {resize!r}")
    img = decode(source)
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        img = _normalise_mode(img).convert("L")  # high bit depth, scaled to 8 bits
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        img = Image.new("RGB", rgba.size, (255, 255, 255))
        img.paste(rgba, mask=rgba.getchannel("A"))
    img = img.convert("RGB" if channels == 3 else "L")
    w, h = img.size
    side = min(w, h)
    box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
    if resize == "stretch":
        box = (0, 0, w, h)
    img = img.resize((size, size), PHOTO_RESAMPLE, box=box, reducing_gap=3.0)
    a = np.asarray(img, dtype=np.float32) / 255.0
    return a[None] if a.ndim == 2 else np.ascontiguousarray(a.transpose(2, 0, 1))


def prepare(source: ImageSource, model: MatchingNetwork, resize: str = "crop") -> np.ndarray:
    """Any image as the input this model takes: a drawing [H, W] at the model's side, or a photo [C, H, W]
    (resize: see preprocess_photo)."""
    channels, size, _ = input_shape(model)
    if is_drawing_model(model):
        return preprocess(source, size=size)
    return preprocess_photo(source, size, channels, resize)


def training_resize(folder: str | os.PathLike) -> str | None:
    """How the run that wrote this checkpoint made its photos square (data option `resize`): "crop" or
    "stretch" (the image loaders' default). train_config.json sits in the run folder, the parent of best/ and
    final/; a rebuilt model's training.json holds it too. None when neither says (a Hub download, a copy)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    for config in (folder / "train_config.json", folder.parent / "train_config.json", folder / "training.json"):
        try:
            saved = json.loads(config.read_text())
            if config.name == "training.json":
                saved = saved["train_config"]
            options = saved.get("data_options") or {}
        except (OSError, ValueError, AttributeError, KeyError, TypeError):
            continue
        return "crop" if options.get("resize") == "crop" else "stretch"
    return None


def as_model_input(images: np.ndarray, model: MatchingNetwork) -> torch.Tensor:
    """[M, H, W] or [M, C, H, W] -> a tensor [1, M, C, H, W], or an InputError saying what the model expects
    (instead of a convolution's shape traceback several layers down)."""
    shape = input_shape(model)
    a = np.ascontiguousarray(images, np.float32)
    if a.ndim == 3:  # [M, H, W]: one channel
        a = a[:, None]
    if a.ndim != 4 or tuple(a.shape[1:]) != shape:
        got = describe_shape(a.shape[1:]) if a.ndim == 4 else f"an array of shape {describe_shape(a.shape)}"
        kind = "RGB " if shape[0] == 3 else ""
        raise InputError(f"this model expects {describe_shape(shape)} images ({kind}{shape[1]} px square); "
                         f"got {got}")
    return torch.from_numpy(a).unsqueeze(0).to(next(model.parameters()).device)


# ----------------------------------------------------------------------------------------- classifying

@dataclass
class Result:
    """Class probabilities and attention of Q queries over S support examples."""

    classes: list[str]  # N names, in label order
    support_labels: list[str]  # S names, one per support example
    probs: np.ndarray  # [Q, N]
    attention: np.ndarray  # [Q, S], rows sum to 1
    cosine: np.ndarray | None = None  # [Q, S] before the softmax: attention = softmax(scale * cosine)
    scale: float = 1.0  # the model's softmax scale
    query_points: np.ndarray | None = None  # [Q, d] unit-length query embeddings (the cosine's left side)
    support_points: np.ndarray | None = None  # [S, d] unit-length support embeddings

    @property
    def predicted(self) -> list[str]:
        return [self.classes[i] for i in self.probs.argmax(1)]

    def to_json(self) -> dict[str, Any]:
        return {
            "labels": self.predicted,
            "classes": self.classes,
            "probabilities": [[round(float(p), 6) for p in row] for row in self.probs],
            "support_labels": self.support_labels,
            "attention": [[round(float(a), 6) for a in row] for row in self.attention],
            **({"similarity": [[round(float(c), 6) for c in row] for row in self.cosine]}
               if self.cosine is not None else {}),
        }


def fingerprint(images: np.ndarray, labels: Sequence[str], model_key: str) -> str:
    h = hashlib.sha1(model_key.encode())
    h.update(np.ascontiguousarray(images, np.float32).tobytes())
    h.update("\x00".join(labels).encode())
    return h.hexdigest()


class EmbeddedSupport:
    """A support set embedded once by one model; classify() then costs one forward pass over the queries."""

    def __init__(self, model: MatchingNetwork, images: np.ndarray, labels: Sequence[str],
                 classes: Sequence[str] | None = None, model_key: str = ""):
        self.classes = check_support(labels, classes)
        self.labels = list(labels)
        self.key = fingerprint(images, self.labels, model_key)
        index = {c: i for i, c in enumerate(self.classes)}
        x = as_model_input(images, model)
        y = torch.tensor([[index[c] for c in self.labels]], device=x.device)
        self.model = model
        with torch.inference_mode():
            self.support: SupportSet = model.embed_support(x, y, len(self.classes))

    def classify(self, queries: np.ndarray) -> Result:
        x = as_model_input(queries, self.model)
        model = self.model
        with torch.inference_mode():
            features = model.encode(x)
            log_probs, attention = model.classify(self.support, features=features)
            # The cosines behind the attention, for the demo (model.classify's own first steps): with the
            # softmax scale at 30 the attention is nearly one-hot and hides which other examples were close.
            f = model.query_lstm(features, self.support.embeddings) if model.fce else features
            points = F.normalize(f, dim=-1)
            cosine = points @ self.support.normalized.transpose(1, 2)
        return Result(self.classes, self.labels, log_probs[0].exp().cpu().numpy(), attention[0].cpu().numpy(),
                      cosine[0].cpu().numpy(), float(model.scale), points[0].cpu().numpy(),
                      self.support.normalized[0].cpu().numpy())


class SupportCache:
    """Per-session cache: the embedded support of each model, rebuilt only when images or labels change."""

    def __init__(self) -> None:
        self.entries: dict[str, EmbeddedSupport] = {}
        self.hits = self.misses = 0

    def get(self, model_key: str, model: MatchingNetwork, images: np.ndarray, labels: Sequence[str],
            classes: Sequence[str] | None = None) -> EmbeddedSupport:
        entry = self.entries.get(model_key)
        if entry is not None and entry.key == fingerprint(images, labels, model_key) and (
                classes is None or list(classes) == entry.classes):
            self.hits += 1
            return entry
        self.misses += 1
        entry = EmbeddedSupport(model, images, labels, classes, model_key)
        self.entries[model_key] = entry
        return entry


# --------------------------------------------------------------------------------------------- examples

def list_examples(folder: str | os.PathLike) -> dict[str, list[Path]]:
    """assets/examples/omniglot/<Alphabet>/<characterNN>/*.png -> {"Alphabet/characterNN": [paths]}."""
    out: dict[str, list[Path]] = {}
    for png in sorted(Path(folder).glob("*/character*/*.png")):
        out.setdefault(f"{png.parent.parent.name}/{png.parent.name}", []).append(png)
    return out


def random_episode(examples: dict[str, list[Path]], n_way: int, k_shot: int, queries: int,
                   rng: random.Random) -> tuple[list[str], list[list[Path]], list[tuple[int, Path]]]:
    """(character names, k support paths per class, (class index, path) queries), all distinct drawings."""
    usable = [c for c, paths in examples.items() if len(paths) > k_shot]
    if len(usable) < n_way:
        raise InputError(f"only {len(usable)} example characters have more than {k_shot} drawings")
    chars = rng.sample(usable, n_way)
    support, pool = [], []
    for i, c in enumerate(chars):
        drawings = rng.sample(examples[c], len(examples[c]))
        support.append(drawings[:k_shot])
        pool += [(i, p) for p in drawings[k_shot:]]
    return chars, support, rng.sample(pool, min(queries, len(pool)))
