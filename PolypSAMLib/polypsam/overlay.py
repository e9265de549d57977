"""Label maps from per-box masks, and overlays that let a person look at a result."""

from __future__ import annotations

import math
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


MIN_SIDE = 360  # smaller pictures are enlarged (whole pixels) until their longer side reaches this
INCLUDE_CLICK = (255, 255, 255)  # white "+", outlined in black: no label has this colour
EXCLUDE_CLICK = (0, 0, 0)  # black "x", outlined in white
_OUTLINE = {INCLUDE_CLICK: (0, 0, 0), EXCLUDE_CLICK: (255, 255, 255)}
POSITIVE_POINT, NEGATIVE_POINT = INCLUDE_CLICK, EXCLUDE_CLICK  # older names


def overlay_scale(shape: tuple[int, ...], min_side: int = MIN_SIDE) -> int:
    """The whole-pixel enlargement for an image of ``shape``: 1 unless it is small."""
    return max(1, math.ceil(min_side / max(1, max(shape[:2]))))


def _draw_rectangle(rgb: np.ndarray, box: Box, colour, scale: int = 1) -> None:
    """A 1-pixel outline around the pixels of ``box`` (inclusive bounds), clipped to the picture."""
    h, w = rgb.shape[:2]
    x0, y0 = max(0, int(round(box.x0)) * scale), max(0, int(round(box.y0)) * scale)
    x1 = min(w - 1, (int(round(box.x1)) + 1) * scale - 1)
    y1 = min(h - 1, (int(round(box.y1)) + 1) * scale - 1)
    if x1 < x0 or y1 < y0:
        return
    rgb[y0, x0 : x1 + 1] = colour
    rgb[y1, x0 : x1 + 1] = colour
    rgb[y0 : y1 + 1, x0] = colour
    rgb[y0 : y1 + 1, x1] = colour


def _marker_offsets(include: bool, arm: int) -> list[tuple[int, int]]:
    steps = range(-arm, arm + 1)
    if include:  # "+"
        return [(d, t) for d in steps for t in (0, 1)] + [(t, d) for d in steps for t in (0, 1)]
    return ([(d + t, d) for d in steps for t in (0, 1)]
            + [(d + t, -d) for d in steps for t in (0, 1)])


def _draw_click(rgb: np.ndarray, cx: int, cy: int, include: bool, arm: int = 6) -> None:
    """A 2-pixel "+" (include) or "x" (exclude), with a 1-pixel outline of the other shade."""
    h, w = rgb.shape[:2]
    colour = INCLUDE_CLICK if include else EXCLUDE_CLICK
    core = {(cx + dx, cy + dy) for dx, dy in _marker_offsets(include, arm)}
    ring = {(x + ox, y + oy) for x, y in core for ox in (-1, 0, 1) for oy in (-1, 0, 1)} - core
    for points, shade in ((ring, _OUTLINE[colour]), (core, colour)):
        for x, y in points:
            if 0 <= x < w and 0 <= y < h:
                rgb[y, x] = shade


def draw_overlay(
    image: np.ndarray,
    labels: np.ndarray,
    intensity: Intensity | None = None,
    *,
    boxes: Sequence[Box | None] = (),
    points: Sequence[tuple[float, float, bool]] = (),
    note: str | None = None,
    legend: bool = True,
    min_side: int = MIN_SIDE,
) -> np.ndarray:
    """RGB uint8 picture of ``image`` with every label's contour drawn in its colour.

    The prompts are drawn too, so a person sees what was asked beside what came back: box ``i``
    (label ``i + 1``) as a thin rectangle in that label's colour, and points ``(x, y, include)``
    as a white "+" (include) or a black "x" (exclude), each outlined in the other shade. An
    image whose longer side is under ``min_side`` pixels is enlarged by a whole factor (each
    pixel a square block, see :func:`overlay_scale`). With ``legend``, a strip below the image
    names what each colour and mark is, and ``note`` (e.g. "random weights").
    """
    scale = overlay_scale(labels.shape, min_side)
    rgb = (to_model_rgb(image, intensity) * 255.0 + 0.5).astype(np.uint8)
    if scale > 1:
        rgb = np.repeat(np.repeat(rgb, scale, axis=0), scale, axis=1)
        labels = np.repeat(np.repeat(labels, scale, axis=0), scale, axis=1)
    present = [int(v) for v in np.unique(labels) if v != 0]
    for label in present:
        rgb[contour(labels == label)] = PALETTE[(label - 1) % len(PALETTE)]
    for index, box in enumerate(boxes):
        if box is not None:
            _draw_rectangle(rgb, box, PALETTE[index % len(PALETTE)], scale)
    h, w = labels.shape[:2]
    for x, y, include in points:
        if 0 <= x < w / scale and 0 <= y < h / scale:
            _draw_click(rgb, int(round(x)) * scale + scale // 2, int(round(y)) * scale + scale // 2,
                        bool(include))
    if not legend:
        return rgb
    labelled = sorted(set(present) | {i + 1 for i, b in enumerate(boxes) if b is not None})
    return _with_legend(rgb, labelled, any(b is not None for b in boxes),
                        {bool(p[2]) for p in points}, note, scale)


def _with_legend(rgb: np.ndarray, labels: list[int], has_boxes: bool, clicks: set[bool],
                 note: str | None, scale: int) -> np.ndarray:
    """``rgb`` above a strip naming the colours and marks drawn on it (the note on rows of its
    own, wrapped at words)."""
    from PIL import Image, ImageDraw, ImageFont

    try:
        font = ImageFont.load_default(size=13)
    except TypeError:  # Pillow < 10.1: the bitmap font
        font = ImageFont.load_default()
    # (text, kind, value): kind "swatch" (value: colour), "click" (value: include), "text", "note"
    items: list[tuple[str, str, object]] = [
        (f"label {v} contour", "swatch", tuple(int(c) for c in PALETTE[(v - 1) % len(PALETTE)]))
        for v in labels]
    if has_boxes:
        items.append(("box prompt: thin outline, its label's colour", "text", None))
    items += [("include click", "click", True)] * (True in clicks)
    items += [("exclude click", "click", False)] * (False in clicks)
    if scale > 1:
        items.append((f"enlarged {scale}x", "text", None))
    width, pad, swatch, row = rgb.shape[1], 6, 14, 20
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    for word in (note or "").split():
        line = f"{items[-1][0]} {word}" if items and items[-1][1] == "note" else ""
        if line and measure.textlength(line, font=font) <= width - 2 * pad:
            items[-1] = (line, "note", None)
        else:
            items.append((word, "note", None))
    rows: list[list[tuple[str, str, object, int]]] = [[]]
    x = pad
    for text, kind, value in items:
        size = int(measure.textlength(text, font=font))
        size += swatch + 4 if kind in ("swatch", "click") else 0
        if rows[-1] and (x + size > width - pad or kind == "note"):
            rows.append([])
            x = pad
        rows[-1].append((text, kind, value, x))
        x += size + 3 * pad
    strip = Image.new("RGB", (width, pad + row * len(rows)), (32, 32, 32))
    draw = ImageDraw.Draw(strip)
    for r, entries in enumerate(rows):
        y = pad + r * row
        for text, kind, value, x in entries:
            if kind == "click":
                marker = np.full((swatch + 2, swatch + 2, 3), 32, np.uint8)
                _draw_click(marker, swatch // 2 + 1, swatch // 2 + 1, bool(value), arm=5)
                strip.paste(Image.fromarray(marker), (x - 1, y - 1))
                x += swatch + 4
            elif kind == "swatch":
                draw.rectangle([x, y + 2, x + swatch - 1, y + swatch - 3], outline=value, width=2)
                x += swatch + 4
            draw.text((x, y), text, fill=(255, 210, 0) if kind == "note" else (235, 235, 235),
                      font=font)
    return np.concatenate([rgb, np.asarray(strip)], axis=0)


def prompt_marks(prompts: Sequence) -> tuple[list[Box | None], list[tuple[float, float, bool]]]:
    """``(boxes, points)`` to draw for :class:`~polypsam.engine.Prompt` or ``FramePrompt`` objects:
    box ``i`` is object ``i + 1``'s, points are ``(x, y, include)``."""
    boxes = [getattr(p, "box", None) for p in prompts]
    points = [(float(x), float(y), int(label) == 1) for p in prompts
              for (x, y), label in zip(p.points, p.labels)]
    return boxes, points


def slice_overlays(array: np.ndarray, labels: np.ndarray, slices: range,
                   intensity: Intensity | None = None, *, key: int | None = None,
                   prompts: Sequence = (), refinements: Sequence = (), note: str | None = None):
    """``(k, picture)`` for each slice ``k`` of a volume (``array[k, j, i]``) and its labelmap:
    the key slice shows ``prompts``, other slices their clicks in ``refinements``."""
    for k in slices:
        here = list(prompts) if k == key else [r for r in refinements if r.frame == k]
        boxes, points = prompt_marks(here)
        yield k, draw_overlay(array[k], labels[k], intensity, boxes=boxes if k == key else (),
                              points=points, note=note)


def slice_overlay_name(k: int) -> str:
    return f"slice_{k:04d}.png"
