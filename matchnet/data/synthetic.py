"""Procedurally drawn colour images in miniImageNet's layouts, for tests and benchmarks (no natural images exist
on the project's machines, and tests never use the network).

Each class is a combination of a background colour, a shape (disc, square, triangle, cross, ring, bar) with its
own colour, and a stripe texture (angle and period); each image of a class moves, scales and tints those and adds
noise. Classes the model never saw are still told apart by the same cues, so few-shot accuracy on held-out
synthetic classes measures whether training works, the way held-out miniImageNet classes do.

    write_synthetic(root, "csv")      ROOT/images/*.jpg + train.csv, val.csv, test.csv (Ravi's layout)
    write_synthetic(root, "splits")   ROOT/{train,val,test}/<wnid>/*.jpg
    write_synthetic(root, "folder")   ROOT/<class>/*.{jpg,png}
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("disc", "square", "triangle", "cross", "ring", "bar")


def class_recipe(rng: np.random.Generator) -> dict:
    return {"background": rng.integers(0, 256, 3), "colour": rng.integers(0, 256, 3),
            "shape": SHAPES[rng.integers(len(SHAPES))], "angle": rng.uniform(0, math.pi),
            "period": rng.uniform(4, 14), "stripe": rng.uniform(0.15, 0.45)}


def draw(recipe: dict, rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """One image of a class: its texture over its background, its shape on top, jittered, plus pixel noise."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    scale = min(width, height) / 84  # textures keep their look at any image size
    angle = recipe["angle"] + rng.normal(0, 0.15)
    phase = np.sin((x * math.cos(angle) + y * math.sin(angle)) / (recipe["period"] * scale) * 2 * math.pi)
    tint = rng.normal(0, 12, 3)
    background = np.clip(recipe["background"] + tint, 0, 255)
    img = background[None, None, :] * (1 - recipe["stripe"] * (phase[..., None] > 0))
    canvas = Image.fromarray(img.astype(np.uint8))
    pen = ImageDraw.Draw(canvas)
    side = min(width, height)
    r = side * rng.uniform(0.2, 0.32)
    cx, cy = width / 2 + rng.uniform(-0.15, 0.15) * width, height / 2 + rng.uniform(-0.15, 0.15) * height
    fill = tuple(int(v) for v in np.clip(recipe["colour"] + rng.normal(0, 12, 3), 0, 255))
    box = (cx - r, cy - r, cx + r, cy + r)
    shape = recipe["shape"]
    if shape == "disc":
        pen.ellipse(box, fill=fill)
    elif shape == "square":
        pen.rectangle(box, fill=fill)
    elif shape == "triangle":
        pen.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    elif shape == "cross":
        pen.rectangle((cx - r, cy - r / 3, cx + r, cy + r / 3), fill=fill)
        pen.rectangle((cx - r / 3, cy - r, cx + r / 3, cy + r), fill=fill)
    elif shape == "ring":
        pen.ellipse(box, outline=fill, width=max(2, int(r / 3)))
    else:
        pen.rectangle((cx - r, cy - r / 4, cx + r, cy + r / 4), fill=fill)
    noisy = np.asarray(canvas, dtype=np.float32) + rng.normal(0, 8, (height, width, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def synthetic_classes(classes: int = 20, per_class: int = 30, width: int = 84, height: int = 84,
                      seed: int = 0) -> list[list[Image.Image]]:
    rng = np.random.default_rng(seed)
    recipes = [class_recipe(rng) for _ in range(classes)]
    return [[draw(r, rng, width, height) for _ in range(per_class)] for r in recipes]


def wnid(c: int) -> str:
    return f"n{90000000 + c:08d}"  # shaped like an ImageNet id, never a real one


def write_synthetic(root: str | Path, layout: str, classes: int = 20, per_class: int = 30, width: int = 84,
                    height: int = 84, seed: int = 0, parts: tuple[int, int, int] | None = None) -> Path:
    """Write the dataset in `layout` ("csv", "splits" or "folder") under root; returns root.

    parts: classes in train / val / test for the two miniImageNet layouts (default: about 64% / 16% / 20%).
    The folder layout writes every third image as PNG, the rest as JPEG.
    """
    root = Path(root)
    images = synthetic_classes(classes, per_class, width, height, seed)
    if parts is None:
        n_val, n_test = max(1, round(classes * 0.16)), max(1, round(classes * 0.2))
        parts = (classes - n_val - n_test, n_val, n_test)
    if sum(parts) != classes:
        raise ValueError(f"parts {parts} should add up to {classes} classes")
    split_of = ["train"] * parts[0] + ["val"] * parts[1] + ["test"] * parts[2]
    if layout == "csv":
        (root / "images").mkdir(parents=True, exist_ok=True)
        rows = {"train": [], "val": [], "test": []}
        for c, imgs in enumerate(images):
            for i, img in enumerate(imgs):
                name = f"{wnid(c)}{i + 1:08d}.jpg"
                img.save(root / "images" / name, quality=92)
                rows[split_of[c]].append(f"{name},{wnid(c)}")
        for p, lines in rows.items():
            (root / f"{p}.csv").write_text("filename,label\n" + "\n".join(lines) + "\n")
    elif layout == "splits":
        for c, imgs in enumerate(images):
            folder = root / split_of[c] / wnid(c)
            folder.mkdir(parents=True, exist_ok=True)
            for i, img in enumerate(imgs):
                img.save(folder / f"{wnid(c)}_{i:04d}.jpg", quality=92)
    elif layout == "folder":
        for c, imgs in enumerate(images):
            folder = root / f"class_{c:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i, img in enumerate(imgs):
                img.save(folder / (f"img_{i:04d}.png" if i % 3 == 0 else f"img_{i:04d}.jpg"), quality=92)
    else:
        raise ValueError(f"layout should be 'csv', 'splits' or 'folder', not {layout!r}")
    return root
