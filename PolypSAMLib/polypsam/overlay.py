"""Label maps from per-box masks, and overlays that let a person look at a result."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .engine import MaskResult
from .preprocess import Intensity, to_model_rgb

PALETTE = np.array(
    [(0, 255, 0), (255, 64, 64), (64, 160, 255), (255, 210, 0), (255, 0, 255), (0, 255, 255)],
    dtype=np.uint8,
)


def labelmap_from_masks(results: Sequence[MaskResult]) -> np.ndarray:
    """Labels ``1..N`` (one per box, in box order); where masks overlap the higher score wins."""
    if not results:
        raise ValueError("no masks to combine")
    shape = results[0].mask.shape
    labels = np.zeros(shape, dtype=np.uint8 if len(results) < 256 else np.uint16)
    best = np.full(shape, -np.inf, dtype=np.float32)
    for label, result in enumerate(results, start=1):
        take = result.mask & (result.score > best)
        labels[take] = label
        best[take] = result.score
    return labels


def contour(mask: np.ndarray, thickness: int = 2) -> np.ndarray:
    """Inner boundary pixels of a boolean mask (``thickness`` pixels wide)."""
    inner = mask.copy()
    for _ in range(thickness):
        shrunk = inner.copy()
        shrunk[1:, :] &= inner[:-1, :]
        shrunk[:-1, :] &= inner[1:, :]
        shrunk[:, 1:] &= inner[:, :-1]
        shrunk[:, :-1] &= inner[:, 1:]
        inner = shrunk
    return mask & ~inner


def draw_overlay(
    image: np.ndarray, labels: np.ndarray, intensity: Intensity | None = None
) -> np.ndarray:
    """RGB uint8 picture of ``image`` with the contour of every label drawn in its colour."""
    rgb = (to_model_rgb(image, intensity) * 255.0 + 0.5).astype(np.uint8)
    for label in np.unique(labels):
        if label == 0:
            continue
        rgb[contour(labels == label)] = PALETTE[(int(label) - 1) % len(PALETTE)]
    return rgb
