"""Table 1's first row: cosine nearest neighbour on raw pixels (no learning at all)."""
from __future__ import annotations

import torch

from .features import FeatureEpisodes, nearest_neighbour


def pixel_features(images: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] in [0, 1] (ink = 1) -> [B, C*H*W]: the image itself is the feature vector."""
    return images.flatten(1)


def pixels_predictor(ep: FeatureEpisodes) -> torch.Tensor:
    """Log-probabilities [E, Q, N] from the cosine between flattened images; argmax = nearest support image."""
    return nearest_neighbour(ep)
