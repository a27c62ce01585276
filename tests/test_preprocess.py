"""The demo's preprocessing (matchnet/inference.py): odd image formats, and accuracy on drawings that are not
where, how big or how thick Omniglot's are.

The robustness test renders real Omniglot test characters (assets/examples/omniglot) onto canvas-sized pages
at other positions and scales, with thicker or thinner strokes, and checks that accuracy through the app's
preprocessing stays close to accuracy on the clean 28x28 training-style images of the same episodes.

The same measurement on the whole vinyals test split (the numbers in docs/APP.md):
    python tests/test_preprocess.py --omniglot /path/to/omniglot-py --episodes 300
"""
from __future__ import annotations

import argparse
import io
import random
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from matchnet import inference as inf  # noqa: E402

EXAMPLES = ROOT / "assets" / "examples" / "omniglot"


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)  # tiny batches: a second thread only adds contention on a shared 2-core box
    return inf.load_checkpoint(ROOT / "assets" / "omniglot-vinyals")


@pytest.fixture(scope="module")
def examples() -> dict[str, list[Path]]:
    found = inf.list_examples(EXAMPLES)
    assert len(found) == 20 and all(len(v) == 6 for v in found.values()), "assets/examples/omniglot is incomplete"
    return found


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def character(examples, i: int = 0, j: int = 0) -> Path:
    return examples[sorted(examples)[i]][j]


# ------------------------------------------------------------------------------------------ formats

def test_clean_matches_training_pipeline(examples):
    from matchnet.data.omniglot import _to_array

    path = character(examples)
    expected = _to_array(path.read_bytes(), 28).astype(np.float32) / 255
    np.testing.assert_allclose(inf.clean_omniglot(path), expected, atol=1e-6)


def test_output_is_28x28_ink_one(examples):
    x = inf.preprocess(character(examples))
    assert x.shape == (28, 28) and x.dtype == np.float32
    assert x.min() >= 0 and x.max() <= 1
    assert x[0].max() < 0.05 and x[:, 0].max() < 0.05, "paper must be 0 at the border"
    assert 0.04 < (x > 0.5).mean() < 0.35, "a character, not a blank or a full page"


def test_a_drawing_model_at_another_size_gets_drawings_at_its_side(examples):
    """An Omniglot model trained at 56 px is a drawing model: the same page, shrunk to 56 as training did; a
    one-channel model carrying its training images' mean/std (grey photos) gets photo preprocessing."""
    from matchnet.data.omniglot import _to_array
    from matchnet.model import MatchingNetwork

    path = character(examples)
    np.testing.assert_allclose(inf.clean_omniglot(path, 56), _to_array(path.read_bytes(), 56) / 255, atol=1e-6)
    big = MatchingNetwork(image_size=56, hidden=8)
    assert inf.is_drawing_model(big) and inf.input_shape(big) == (1, 56, 56)
    x56 = inf.prepare(path, big)
    np.testing.assert_array_equal(x56, inf.preprocess(path, size=56))
    # the same drawing as the 28-px pipeline makes it, at twice the resolution
    down = np.asarray(Image.fromarray(x56.astype(np.float32), mode="F").resize((28, 28), Image.BOX))
    assert x56.shape == (56, 56) and np.abs(down - inf.preprocess(path)).mean() < 0.03
    grey = MatchingNetwork(image_size=28, hidden=8, mean=[0.5], std=[0.25])
    assert not inf.is_drawing_model(grey) and inf.prepare(path, grey).shape == (1, 28, 28)


def test_a_split_through_the_preprocessing_keeps_its_size(examples):
    from matchnet.data.fewshot import FewShotSplit
    from matchnet.data.omniglot import _to_array

    paths = [examples[c][j] for c in sorted(examples)[:2] for j in range(2)]
    images = torch.from_numpy(np.stack([_to_array(p.read_bytes(), 56) for p in paths]).reshape(2, 2, 56, 56))
    split = FewShotSplit(images, torch.arange(2), torch.zeros(2, dtype=torch.long), ["a", "b"])
    out = inf.preprocess_split(split).images
    assert out.shape == (2, 2, 56, 56) and out.dtype == torch.uint8
    expected = inf.preprocess_ink(images[1, 0].numpy() / 255.0, True, 56)
    assert expected.shape == (56, 56)
    np.testing.assert_array_equal(out[1, 0].numpy(), np.clip(np.rint(expected * 255), 0, 255).astype(np.uint8))


@pytest.mark.parametrize("kind", ["rgba", "la", "inverted", "i16", "rgb-jpeg", "palette", "float"])
def test_formats_give_the_same_input(examples, kind):
    """Transparent, 16-bit, inverted, JPEG, palette and float images of the same drawing agree."""
    gray = Image.open(character(examples)).convert("L")
    a = np.asarray(gray)
    reference = inf.preprocess(gray)
    if kind == "rgba":  # black ink on a transparent sheet
        rgba = np.zeros((*a.shape, 4), np.uint8)
        rgba[..., 3] = 255 - a
        source = png_bytes(Image.fromarray(rgba, "RGBA"))
    elif kind == "la":  # white ink on a transparent sheet: only the alpha channel carries the drawing
        la = np.stack([np.full_like(a, 255), 255 - a], -1)
        source = png_bytes(Image.fromarray(la, "LA"))
    elif kind == "inverted":
        source = png_bytes(Image.fromarray(255 - a))
    elif kind == "i16":
        source = png_bytes(Image.fromarray(a.astype(np.uint16) * 257))  # 16-bit grey PNG
        assert Image.open(io.BytesIO(source)).mode.startswith("I")
    elif kind == "rgb-jpeg":
        buf = io.BytesIO()
        Image.fromarray(a).convert("RGB").save(buf, format="JPEG", quality=90)
        source = buf.getvalue()
    elif kind == "palette":
        source = png_bytes(Image.fromarray(a).convert("P"))
    else:
        source = a.astype(np.float32) / 255
    x = inf.preprocess(source)
    assert np.abs(x - reference).mean() < 0.03, kind


@pytest.mark.parametrize("source", [
    np.full((300, 300), 255, np.uint8),  # a blank canvas
    np.full((300, 300, 3), 30, np.uint8),  # a blank dark page
    np.full((64, 64, 4), 0, np.uint8),  # fully transparent
    (np.random.default_rng(0).random((200, 200)) * 12 + 240).astype(np.uint8),  # faint noise only
])
def test_blank_images_are_refused(source):
    with pytest.raises(inf.InputError, match="blank"):
        inf.preprocess(source)


def test_bad_files_are_refused(tmp_path, examples):
    text = tmp_path / "notes.png"
    text.write_text("not an image at all")
    with pytest.raises(inf.InputError, match="not an image"):
        inf.preprocess(text)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(png_bytes(Image.open(character(examples)).convert("L").resize((400, 400)))[:300])
    with pytest.raises(inf.InputError, match="corrupt"):
        inf.preprocess(corrupt)


def giant_png_header(width: int, height: int) -> bytes:
    """A PNG that claims to be width x height; its pixels are never there (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + \
        chunk(b"IEND", b"")


def test_giant_images_are_refused_before_decoding():
    with pytest.raises(inf.InputError, match="megapixels"):
        inf.preprocess(giant_png_header(20000, 20000))  # PIL itself objects
    with pytest.raises(inf.InputError, match="megapixels"):
        inf.preprocess(giant_png_header(9000, 9000))  # 81 MP: only our limit stops it


def test_large_images_are_downscaled(examples):
    """A 50-megapixel photo of a character: decoded, shrunk and classified like the small one."""
    small = Image.open(character(examples)).convert("L")
    big = Image.new("L", (8000, 6250), 255)  # 50 MP
    big.paste(small.resize((3000, 3000), Image.NEAREST), (2500, 1500))
    x_big, x_small = inf.preprocess(png_bytes(big)), inf.preprocess(small)
    assert np.abs(x_big - x_small).mean() < 0.05


def test_stroke_width_is_normalised(examples):
    """Thin and thick versions of a drawing end up with Omniglot's stroke width."""
    gray = Image.open(character(examples, 3)).convert("L").resize((420, 420), Image.NEAREST)
    widths = {}
    for name, f in [("thin", ImageFilter.MaxFilter(9)), ("thick", ImageFilter.MinFilter(15))]:
        ink = inf.ink_map(inf.open_image(gray.filter(f)))
        crop_mask = ink >= inf.INK_LEVEL
        ys, xs = np.nonzero(crop_mask)
        page = inf.place_on_page(ink[ys.min():ys.max() + 1, xs.min():xs.max() + 1])
        widths[name] = (inf.stroke_width(page), inf.stroke_width(inf.redraw_strokes(page)))
    assert widths["thick"][0] > 2 * widths["thin"][0], "the test drawings must differ in width"
    for before, after in widths.values():
        assert 4.0 < after < 7.5, widths  # Omniglot's median is 5.6 px on the 105-px page


def test_preprocess_split_treats_every_image_as_a_drawing():
    """MNIST-style images (thick, off-centre, ink = 255) come out as the app's preprocess makes them; a blank
    image is kept as it is rather than failing the whole split."""
    from matchnet.data.fewshot import FewShotSplit

    images = np.zeros((2, 2, 28, 28), np.uint8)
    images[0, 0, 2:12, 2:8] = 255  # a thick bar in a corner
    images[0, 1, 15:26, 18:21] = 200
    images[1, 0, 5:9, 4:24] = 255
    split = FewShotSplit(torch.from_numpy(images), torch.arange(2), torch.zeros(2, dtype=torch.long), ["a", "b"])
    out = inf.preprocess_split(split)
    assert out.images.shape == split.images.shape and out.images.dtype == torch.uint8
    assert out.names == ["a", "b"] and torch.equal(out.source, split.source)
    for s, d in [(0, 0), (0, 1), (1, 0)]:
        expected = inf.preprocess_ink(images[s, d].astype(np.float32) / 255.0)
        assert np.abs(out.images[s, d].numpy() / 255.0 - expected).max() <= 0.5 / 255 + 1e-6
        ys, xs = np.nonzero(out.images[s, d].numpy() > 127)
        assert abs(ys.mean() - 13.5) < 2.5 and abs(xs.mean() - 13.5) < 2.5  # moved to the page's centre
    assert torch.equal(out.images[1, 1], split.images[1, 1])  # blank: unchanged


# --------------------------------------------------------------------------------------- robustness

def distort(path: Path, rng: random.Random) -> np.ndarray:
    """An Omniglot drawing as if drawn on a canvas: other page size, scale, position and stroke width."""
    img = Image.open(path).convert("L")
    side = rng.choice([256, 400, 800])
    t = rng.choice([-1, 0, 1, 2, 3])  # thin by 1 px, keep, or thicken by up to 3 px (on the 105-px image)
    if t > 0:
        img = img.filter(ImageFilter.MinFilter(2 * t + 1))  # black ink: a min filter grows it
    elif t < 0:
        img = img.filter(ImageFilter.MaxFilter(3))
    n = max(8, round(105 * rng.uniform(0.5, 3.5) * side / 400))
    img = img.resize((n, n), Image.BILINEAR)
    canvas = Image.new("L", (max(side, n), max(side, n)), 255)
    canvas.paste(img, (rng.randint(0, canvas.size[0] - n), rng.randint(0, canvas.size[1] - n)))
    return np.asarray(canvas)


def naive(page: np.ndarray) -> np.ndarray:
    """What a demo without preprocessing would feed the model: the whole canvas shrunk to 28x28."""
    small = Image.fromarray(page).resize((28, 28), Image.LANCZOS)
    return (255 - np.asarray(small, np.float32)) / 255


def evaluate(model, examples: dict[str, list[Path]], episodes: int, way: int = 5, queries: int = 3,
             seed: int = 0) -> dict[str, float]:
    """Accuracy (%) of 1-shot episodes, the same episodes and drawings for every way of preparing them."""
    rng = random.Random(seed)
    variants = {
        "clean 28x28 (training pipeline)": lambda p, d: inf.clean_omniglot(p),
        "distorted, app preprocessing": lambda p, d: inf.preprocess(d),
        "distorted, no stroke normalisation": lambda p, d: inf.preprocess(d, normalise_stroke=False),
        "distorted, canvas shrunk to 28x28": lambda p, d: naive(d),
    }
    correct = dict.fromkeys(variants, 0)
    total = 0
    names = sorted(examples)
    for _ in range(episodes):
        chars = rng.sample(names, way)
        support, query, truth = [], [], []
        for c, name in enumerate(chars):
            drawings = rng.sample(examples[name], 1 + queries)
            support.append((drawings[0], distort(drawings[0], rng)))
            for p in drawings[1:]:
                query.append((p, distort(p, rng)))
                truth.append(c)
        for key, prepare in variants.items():
            xs = np.stack([prepare(p, d) for p, d in support])
            xq = np.stack([prepare(p, d) for p, d in query])
            result = inf.EmbeddedSupport(model, xs, [str(c) for c in range(way)]).classify(xq)
            correct[key] += int((result.probs.argmax(1) == np.array(truth)).sum())
        total += len(truth)
    return {k: 100.0 * v / total for k, v in correct.items()}


def test_accuracy_survives_canvas_drawing(model, examples):
    acc = evaluate(model, examples, episodes=80)  # 1200 queries; ~10 s on 2 cores
    print("\n" + "\n".join(f"{v:5.1f}%  {k}" for k, v in acc.items()))
    clean = acc["clean 28x28 (training pipeline)"]
    app = acc["distorted, app preprocessing"]
    assert clean > 90, acc
    assert app >= clean - 6, acc  # close to clean accuracy despite position, scale and stroke changes
    # ...and the test can tell: the same drawings without the app's preprocessing fall far behind
    assert acc["distorted, canvas shrunk to 28x28"] < clean - 30, acc
    assert acc["distorted, no stroke normalisation"] < app - 5, acc


def omniglot_stats(folder: Path, count: int = 800) -> None:
    """Where, how big and how thick Omniglot characters are on their 105-px page (inference.py's constants)."""
    files = random.Random(0).sample(sorted(folder.glob("*/character*/*.png")), count)
    rows = []
    for f in files:
        ink = np.asarray(Image.open(f).convert("L")) < 128
        ys, xs = np.nonzero(ink)
        rows.append((max(np.ptp(ys), np.ptp(xs)) + 1, (xs.max() + xs.min()) / 2, (ys.max() + ys.min()) / 2,
                     inf.stroke_width(ink), inf.stroke_width(inf.redraw_strokes(ink))))
    for name, column in zip(["bounding box long side", "box centre x", "box centre y", "stroke width",
                             "stroke width after redraw_strokes"], np.array(rows).T):
        print(f"{name:34s} median {np.median(column):5.1f}   5-95%: {np.percentile(column, 5):5.1f}"
              f" - {np.percentile(column, 95):5.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description="Preprocessing robustness on the vinyals test split")
    parser.add_argument("--omniglot", help="folder holding images_evaluation/ (default: the shipped examples)")
    parser.add_argument("--episodes", type=int, default=300)
    parser.add_argument("--stats", action="store_true", help="print Omniglot's character size, place, width")
    args = parser.parse_args()
    if args.stats:
        omniglot_stats(Path(args.omniglot) / "images_evaluation" if args.omniglot else EXAMPLES)
        return
    torch.set_num_threads(1)
    model = inf.load_checkpoint(ROOT / "assets" / "omniglot-vinyals")
    if args.omniglot:
        split = ROOT / "matchnet" / "data" / "splits" / "vinyals" / "test.txt"
        chars = sorted({line.rsplit("/", 1)[0] for line in split.read_text().split() if line.endswith("rot000")})
        folder = Path(args.omniglot) / "images_evaluation"
        examples = {c: sorted((folder / c).glob("*.png")) for c in chars if (folder / c).is_dir()}
    else:
        examples = inf.list_examples(EXAMPLES)
    acc = evaluate(model, examples, args.episodes)
    print(f"{len(examples)} characters, {args.episodes} 5-way 1-shot episodes, 3 queries per class")
    for k, v in acc.items():
        print(f"{v:5.1f}%  {k}")


if __name__ == "__main__":
    main()
