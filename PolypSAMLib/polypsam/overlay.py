"""Label maps from per-box masks, and overlays that let a person look at a result."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .engine import MaskResult
from .geometry import Box
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


def _draw_rectangle(rgb: np.ndarray, box: Box, colour) -> None:
    """A 1-pixel outline of ``box`` (inclusive pixel bounds), clipped to the picture."""
    h, w = rgb.shape[:2]
    x0, y0 = max(0, int(round(box.x0))), max(0, int(round(box.y0)))
    x1, y1 = min(w - 1, int(round(box.x1))), min(h - 1, int(round(box.y1)))
    if x1 < x0 or y1 < y0:
        return
    rgb[y0, x0 : x1 + 1] = colour
    rgb[y1, x0 : x1 + 1] = colour
    rgb[y0 : y1 + 1, x0] = colour
    rgb[y0 : y1 + 1, x1] = colour


def _draw_cross(rgb: np.ndarray, x: float, y: float, colour, arm: int = 4) -> None:
    h, w = rgb.shape[:2]
    cx, cy = int(round(x)), int(round(y))
    rgb[cy, max(0, cx - arm) : min(w, cx + arm + 1)] = colour
    rgb[max(0, cy - arm) : min(h, cy + arm + 1), cx] = colour


POSITIVE_POINT = (40, 220, 40)
NEGATIVE_POINT = (230, 40, 40)


def draw_overlay(
    image: np.ndarray,
    labels: np.ndarray,
    intensity: Intensity | None = None,
    *,
    boxes: Sequence[Box | None] = (),
    points: Sequence[tuple[float, float, bool]] = (),
) -> np.ndarray:
    """RGB uint8 picture of ``image`` with every label's contour drawn in its colour.

    The prompts are drawn too, so a person sees what was asked beside what came back: box ``i``
    (label ``i + 1``) as a thin rectangle in that label's colour, and points ``(x, y, positive)``
    as crosses (green include, red exclude).
    """
    rgb = (to_model_rgb(image, intensity) * 255.0 + 0.5).astype(np.uint8)
    for label in np.unique(labels):
        if label == 0:
            continue
        rgb[contour(labels == label)] = PALETTE[(int(label) - 1) % len(PALETTE)]
    for index, box in enumerate(boxes):
        if box is not None:
            _draw_rectangle(rgb, box, PALETTE[index % len(PALETTE)])
    h, w = rgb.shape[:2]
    for x, y, positive in points:
        if 0 <= x < w and 0 <= y < h:
            _draw_cross(rgb, x, y, POSITIVE_POINT if positive else NEGATIVE_POINT)
    return rgb
