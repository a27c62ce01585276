"""Training-time input changes: Koch et al. (2015)'s small affine distortions done on the device, and the demo's
preprocessing applied to whole splits, to every episode ("app") or to a random half of them ("mixed").

AffineAugment follows Koch, Zemel & Salakhutdinov (2015, section 4.2): rotation in [-10, 10] degrees, shear in
[-0.3, 0.3] along each axis, scale in [0.8, 1.2] along each axis, translation in [-2, 2] pixels of a 105-px
page (a fraction 2/105 of the side here, whatever the image size), each of the seven components applied
with probability 0.5. One F.affine_grid + F.grid_sample for the whole batch, with random numbers from the
sampler's own generator: no host sync, and a resumed run continues the same stream.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from .data.fewshot import FewShotSplit
from .episodes import Episodes, gather, shuffle_support


@dataclass(frozen=True)
class AffineAugment:
    rotate: float = 10.0  # degrees, either way
    shear: float = 0.3
    scale: tuple[float, float] = (0.8, 1.2)
    translate: float = 2 / 105  # fraction of the image side, either way
    p: float = 0.5  # probability that each component is applied

    def theta(self, n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        """n random 2x3 matrices in affine_grid's normalised coordinates (output -> input; every range is
        symmetric about the identity, so drawing the inverse map is drawing the map)."""
        u = torch.rand(n, 7, generator=generator, device=device)
        on = torch.rand(n, 7, generator=generator, device=device) < self.p
        centred = 2 * u - 1  # [-1, 1)
        angle = torch.where(on[:, 0], centred[:, 0] * math.radians(self.rotate), 0.0)
        shx = torch.where(on[:, 1], centred[:, 1] * self.shear, 0.0)
        shy = torch.where(on[:, 2], centred[:, 2] * self.shear, 0.0)
        lo, hi = self.scale
        sx = torch.where(on[:, 3], lo + u[:, 3] * (hi - lo), 1.0)
        sy = torch.where(on[:, 4], lo + u[:, 4] * (hi - lo), 1.0)
        tx = torch.where(on[:, 5], centred[:, 5] * 2 * self.translate, 0.0)  # normalised side = 2
        ty = torch.where(on[:, 6], centred[:, 6] * 2 * self.translate, 0.0)
        cos, sin = angle.cos(), angle.sin()
        rot = torch.stack([cos, -sin, sin, cos], 1).view(n, 2, 2)
        one = torch.ones_like(shx)
        shear = torch.stack([one, shx, shy, one], 1).view(n, 2, 2)
        scale = torch.diag_embed(torch.stack([sx, sy], 1))
        linear = rot @ shear @ scale
        return torch.cat([linear, torch.stack([tx, ty], 1).unsqueeze(2)], 2)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """images float [..., C, H, W] with paper = 0 (ink = 1): each image distorted on its own; what comes in
        from outside the page is paper (zero padding)."""
        shape = images.shape
        flat = images.reshape(-1, *shape[-3:])
        theta = self.theta(len(flat), generator, images.device).to(images.dtype)
        grid = F.affine_grid(theta, list(flat.shape), align_corners=False)
        out = F.grid_sample(flat, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return out.reshape(shape)


class AugmentedSampler:
    """Any episode sampler with AffineAugment applied to its support and query images. Same interface
    (.sample(E) -> Episodes, .generator): the distortions draw from the wrapped sampler's generator, so
    saving and restoring that one state resumes both."""

    def __init__(self, sampler, augment: AffineAugment | None = None):
        self.sampler = sampler
        self.augment = augment or AffineAugment()

    @property
    def generator(self) -> torch.Generator:
        return self.sampler.generator

    def sample(self, episodes: int = 1) -> Episodes:
        ep = self.sampler.sample(episodes)
        return replace(ep, support=self.augment(ep.support, self.generator),
                       query=self.augment(ep.query, self.generator))


def with_app_preprocessing(splits: dict[str, FewShotSplit], normalise_stroke: bool = True
                           ) -> dict[str, FewShotSplit]:
    """Every split with its images put through the demo's preprocessing (matchnet.inference.preprocess_split).
    Splits sharing one images tensor (as omniglot_splits' do) share the result: each tensor is processed once
    (about 32,000 images for Omniglot: minutes on a CPU, so do it once before training)."""
    from .inference import preprocess_split  # numpy/PIL code: imported only when asked for

    done: dict[int, torch.Tensor] = {}
    out = {}
    for name, split in splits.items():
        key = id(split.images)
        if key not in done:
            done[key] = preprocess_split(split, normalise_stroke).images
        out[name] = replace(split, images=done[key])
    return out


class MixedPreprocessSampler:
    """An AlphabetEpisodeSampler whose episodes come, each with probability `p`, from a second copy of its
    split put through the demo's preprocessing (with_app_preprocessing), else as drawn: the same indices look
    up either copy, so one model learns both the clean pages and what the demo makes of a drawing. Same
    interface (.sample(E) -> Episodes, .generator): every draw is from the wrapped sampler's generator."""

    def __init__(self, sampler, processed: FewShotSplit, p: float = 0.5):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p (the fraction of preprocessed episodes) must be in [0, 1], got {p}")
        split = sampler.split
        if processed.images.shape != split.images.shape or not torch.equal(processed.source, split.source) \
                or not torch.equal(processed.rotation, split.rotation):
            raise ValueError("the preprocessed split must be the same split (classes, drawings, rotations)")
        self.sampler, self.processed, self.p = sampler, processed, p

    @property
    def generator(self) -> torch.Generator:
        return self.sampler.generator

    def sample(self, episodes: int = 1) -> Episodes:
        inner = self.sampler
        idx, _ = inner.indices(episodes)
        drawn, done = gather(inner.split, idx, inner.shot), gather(self.processed, idx, inner.shot)
        pick = (torch.rand(episodes, generator=inner.generator, device=inner.split.device) < self.p)
        pick = pick.view(-1, 1, 1, 1, 1)
        ep = replace(drawn, support=torch.where(pick, done.support, drawn.support),
                     query=torch.where(pick, done.query, drawn.query))
        return shuffle_support(ep, inner.generator) if inner.shuffle_support else ep
