"""matchnet.inference's demo-facing pieces that need no server: thin images, the cosines behind the attention."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from matchnet import inference as inf


def bar(width: int, height: int, box: tuple[int, int, int, int]) -> Image.Image:
    a = np.full((height, width), 255, np.uint8)
    x0, y0, x1, y1 = box
    a[y0:y1, x0:x1] = 0
    return Image.fromarray(a)


@pytest.mark.parametrize("size, box, axis", [
    ((5000, 10), (100, 4, 4900, 7), 1),  # issue 14: a 4800x3 black bar on a 5000x10 strip
    ((5000, 3), (100, 1, 4900, 2), 1),  # a strip so thin that its border ring is all of it
    ((10, 5000), (4, 100, 7, 4900), 0),
])
def test_thin_images_are_read_not_called_blank(size, box, axis):
    x = inf.preprocess(bar(*size, box))
    ink = x > 0.5
    # One straight bar across the middle of the 28x28 input, along the image's long side.
    assert ink.sum(axis=axis).max() >= 16
    assert (ink.any(axis=axis)).sum() <= 4


def test_a_blank_strip_is_still_blank():
    with pytest.raises(inf.InputError, match="blank"):
        inf.preprocess(Image.new("L", (5000, 10), 255))


def test_attention_is_the_softmax_of_the_returned_cosines():
    model = inf.load_checkpoint()
    rng = np.random.default_rng(0)
    support = (rng.random((4, 28, 28)) > 0.8).astype(np.float32)
    entry = inf.EmbeddedSupport(model, support, ["a", "b", "c", "d"])
    r = entry.classify(support[[1, 3]] * 0.9)
    assert r.cosine.shape == r.attention.shape == (2, 4) and r.scale == pytest.approx(30.0)
    z = np.exp(r.scale * (r.cosine - r.cosine.max(1, keepdims=True)))
    np.testing.assert_allclose(z / z.sum(1, keepdims=True), r.attention, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(r.query_points, axis=1), 1, atol=1e-5)
    assert "similarity" in r.to_json()
