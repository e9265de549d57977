"""Intensity preprocessing: what a CT slice, an MR slice or an RGB frame looks like to SAM2.

SAM2 expects an RGB image. PolypSAM converts every input to ``float32`` RGB in ``[0, 1]``
(no 8-bit quantisation, no JPEG round trip); SAM2's own transforms then resize and normalise.

* CT in Hounsfield units: a window (level/width) preset or a custom window;
* other scalars: percentile scaling (default 0.5-99.5 %);
* ``uint8`` RGB: passed through (divided by 255).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np

from .errors import InvalidInputError


@dataclass(frozen=True)
class Window:
    """A display window in the image's units (HU for CT): ``[level - width/2, level + width/2]``."""

    level: float
    width: float

    def __post_init__(self) -> None:
        if not np.isfinite(self.level) or not np.isfinite(self.width) or self.width <= 0:
            raise InvalidInputError(
                f"a window needs a finite level and a positive width, got level={self.level},"
                f" width={self.width}"
            )


@dataclass(frozen=True)
class Percentile:
    """Scale between two percentiles of the image's own intensities."""

    low: float = 0.5
    high: float = 99.5

    def __post_init__(self) -> None:
        if not 0 <= self.low < self.high <= 100:
            raise InvalidInputError(
                f"percentiles must satisfy 0 <= low < high <= 100, got {self.low}, {self.high}"
            )


Intensity = Union[Window, Percentile]

CT_WINDOWS: dict[str, Window] = {
    "abdomen": Window(40, 400),
    "soft_tissue": Window(50, 350),
    "lung": Window(-600, 1500),
    "bone": Window(400, 1800),
    "brain": Window(40, 80),
}


def parse_intensity(text: str) -> Intensity:
    """Parse ``abdomen|soft_tissue|lung|bone|brain``, ``percentile[:LOW,HIGH]`` or ``LEVEL,WIDTH``."""
    name = text.strip().lower()
    preset = name.replace("-", "_")
    if preset in CT_WINDOWS:
        return CT_WINDOWS[preset]
    if name.startswith("percentile"):
        rest = name[len("percentile"):].lstrip(":")
        if not rest:
            return Percentile()
        low, high = _two_numbers(rest, text)
        return Percentile(low, high)
    level, width = _two_numbers(name.removeprefix("custom:"), text)
    return Window(level, width)


def _two_numbers(part: str, original: str) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in part.split(","))
    except ValueError as exc:
        presets = ", ".join(CT_WINDOWS)
        raise InvalidInputError(
            f"unknown intensity setting {original!r}: use a preset ({presets}), "
            "'percentile[:LOW,HIGH]' or 'LEVEL,WIDTH'"
        ) from exc
    return a, b


def check_image(image: np.ndarray) -> np.ndarray:
    """Validate a 2-D image (H x W scalar or H x W x 3 uint8 RGB) and return it as an array."""
    if not isinstance(image, np.ndarray):
        raise InvalidInputError(f"image must be a NumPy array, got {type(image).__name__}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 3:
        if image.shape[2] != 3:
            raise InvalidInputError(
                f"an image with channels must be H x W x 3 RGB; got {image.shape[2]} channels"
                f" (shape {image.shape})"
            )
        if image.dtype != np.uint8:
            raise InvalidInputError(f"RGB images must be uint8, got {image.dtype}")
    elif image.ndim != 2:
        raise InvalidInputError(
            f"expected a 2-D image (H x W or H x W x 3), got an array of shape {image.shape}"
        )
    if image.shape[0] < 2 or image.shape[1] < 2:
        raise InvalidInputError(f"image of shape {image.shape} is too small to segment")
    if image.dtype.kind not in "biuf":
        raise InvalidInputError(f"image dtype {image.dtype} is not numeric")
    if image.dtype.kind == "f" and not np.all(np.isfinite(image)):
        raise InvalidInputError("image contains NaN or infinite values")
    return image


def to_model_rgb(image: np.ndarray, intensity: Intensity | None = None) -> np.ndarray:
    """Convert a valid image to ``float32`` H x W x 3 in ``[0, 1]`` for SAM2's transforms."""
    image = check_image(image)
    if image.ndim == 3:
        return image.astype(np.float32) / 255.0
    scaled = scale_scalar(image, intensity)
    return np.repeat(scaled[:, :, None], 3, axis=2)


def scale_scalar(image: np.ndarray, intensity: Intensity | None = None) -> np.ndarray:
    """Map a scalar image to ``float32`` in ``[0, 1]`` with a window or percentiles."""
    values = image.astype(np.float32, copy=False)
    policy = intensity if intensity is not None else Percentile()
    if isinstance(policy, Window):
        lo = policy.level - policy.width / 2.0
        hi = policy.level + policy.width / 2.0
    else:
        lo, hi = (float(v) for v in np.percentile(values, [policy.low, policy.high]))
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.float32)
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def volume_intensity(array: np.ndarray, intensity: Intensity | None) -> Intensity | None:
    """One intensity mapping for all slices: percentiles are taken over the whole sub-volume.

    Per-slice percentiles would change the contrast from slice to slice, which SAM2's memory sees
    as motion; a window is kept as it is.
    """
    if intensity is not None and not isinstance(intensity, Percentile):
        return intensity
    policy = intensity or Percentile()
    values = np.asarray(array)
    if values.size > 4_000_000:  # a strided sample is enough for percentiles
        step = int(np.ceil((values.size / 4_000_000) ** (1 / 3)))
        values = values[::step, ::step, ::step]
    lo, hi = (float(v) for v in np.percentile(values.astype(np.float32), [policy.low, policy.high]))
    if hi <= lo:
        hi = lo + 1.0
    return Window(level=(lo + hi) / 2.0, width=hi - lo)


def intensity_text(intensity: Intensity) -> str:
    """The exact text :func:`parse_intensity` reads back: ``LEVEL,WIDTH`` or
    ``percentile:LOW,HIGH`` (numbers in their shortest exact form)."""
    def num(v: float) -> str:
        text = repr(float(v))
        return text[:-2] if text.endswith(".0") else text

    if isinstance(intensity, Window):
        return f"{num(intensity.level)},{num(intensity.width)}"
    return f"percentile:{num(intensity.low)},{num(intensity.high)}"


def describe_intensity(intensity: Intensity | None) -> str:
    """For people: ``window level 40 width 400 (abdomen)``, ``percentiles 0.5-99.5 ...``."""
    if intensity is None:
        return "percentiles 0.5-99.5 of the image (the default)"
    if isinstance(intensity, Percentile):
        return f"percentiles {intensity.low:g}-{intensity.high:g} of the image"
    name = next((n for n, w in CT_WINDOWS.items() if w == intensity), None)
    return (f"window level {intensity.level:g} width {intensity.width:g}"
            + (f" ({name})" if name else ""))
