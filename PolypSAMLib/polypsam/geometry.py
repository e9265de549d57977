"""Geometry types that travel beside the pixels: 2-D boxes and 3-D volume grids.

Conventions (used everywhere in PolypSAM):

* A 2-D image is indexed ``image[y, x]`` (row, column). A :class:`Box` holds *inclusive* pixel
  indices ``x0 <= x <= x1``, ``y0 <= y <= y1`` (the bounding box of a mask), which is also the
  ``xyxy`` convention SAM2's prompt encoder was trained with.
* A volume array is indexed ``array[k, j, i]`` (the NumPy order of SimpleITK and Slicer). Slice
  ``k`` is ``array[k]``; in it ``x`` is the I index and ``y`` the J index.
* :class:`VolumeGeometry` stores the grid in LPS like SimpleITK/ITK/DICOM: ``origin`` (mm),
  ``spacing`` (mm, positive) and ``direction`` (3x3, columns = I, J, K axis directions).
  Slicer's IJK-to-RAS matrix is available through :meth:`VolumeGeometry.ijk_to_ras`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .errors import InvalidInputError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class Box:
    """A box prompt in pixel index coordinates of one 2-D image (inclusive bounds)."""

    x0: float
    y0: float
    x1: float
    y1: float

    @classmethod
    def from_sequence(cls, values: Sequence[float]) -> "Box":
        """Build a box from ``(x0, y0, x1, y1)``; raises :class:`InvalidInputError` otherwise."""
        values = list(values)
        if len(values) != 4:
            raise InvalidInputError(f"a box needs 4 numbers X0 Y0 X1 Y1, got {len(values)}")
        try:
            numbers = [float(v) for v in values]
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"box coordinates must be numbers, got {values!r}") from exc
        return cls(*numbers)

    def as_xyxy(self) -> np.ndarray:
        return np.array([self.x0, self.y0, self.x1, self.y1], dtype=np.float32)

    def validate(self, width: int, height: int) -> "Box":
        """Check the box against an image of ``width`` x ``height`` pixels and return it."""
        coords = (self.x0, self.y0, self.x1, self.y1)
        if not all(np.isfinite(coords)):
            raise InvalidInputError(f"box {self} has a non-finite coordinate")
        if self.x1 < self.x0 or self.y1 < self.y0:
            raise InvalidInputError(
                f"box {self.describe()} is inverted: need X0 <= X1 and Y0 <= Y1"
            )
        if self.x1 == self.x0 or self.y1 == self.y0:
            raise InvalidInputError(f"box {self.describe()} has zero width or height")
        if self.x0 < 0 or self.y0 < 0 or self.x1 > width - 1 or self.y1 > height - 1:
            raise InvalidInputError(
                f"box {self.describe()} lies outside the image: pixel x must be in [0, {width - 1}]"
                f" and y in [0, {height - 1}] for a {width}x{height} image"
            )
        return self

    def describe(self) -> str:
        return f"({self.x0:g}, {self.y0:g}, {self.x1:g}, {self.y1:g})"

    def to_list(self) -> list[float]:
        return [self.x0, self.y0, self.x1, self.y1]


def as_box(value: "Box | Sequence[float]") -> Box:
    """A :class:`Box` from a box or four numbers ``(x0, y0, x1, y1)``."""
    return value if isinstance(value, Box) else Box.from_sequence(value)


def as_boxes(boxes: "Box | Sequence", width: int | None = None, height: int | None = None) -> list[Box]:
    """Coerce one box, four numbers, an ``N x 4`` array or a list of boxes to checked boxes.

    With ``width`` and ``height`` every box is validated against that image. For boxes alone (a
    batch manifest's box column); prompts of any kind, boxes included, go through
    :func:`polypsam.engine.as_prompts`, which coerces boxes by these rules and which the engines
    and propagation call.
    """
    if isinstance(boxes, Box):
        items = [boxes]
    elif isinstance(boxes, np.ndarray):
        items = [boxes] if boxes.ndim == 1 else list(boxes)
    else:
        items = list(boxes)
        if len(items) == 4 and all(np.isscalar(v) for v in items):
            items = [items]
    if not items:
        raise InvalidInputError("at least one box is needed")
    out = [as_box(b) for b in items]
    if width is not None and height is not None:
        for b in out:
            b.validate(width, height)
    return out


def check_index(index: object, count: int, what: str, container: str) -> int:
    """``index`` as an int in ``0..count-1``; the error names ``what`` and the ``container``."""
    try:
        value = int(index)  # type: ignore[call-overload]
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{what} must be an integer, got {index!r}") from exc
    if not 0 <= value < count:
        raise InvalidInputError(f"{what} lies outside {container} 0..{count - 1}")
    return value


def check_slice_range(slice_range: object, count: int, what: str = "slice range") -> tuple[int, int]:
    """An inclusive ``(k0, k1)`` inside ``0..count-1``; ``None`` means all slices."""
    if slice_range is None:
        return 0, count - 1
    try:
        k0, k1 = (int(v) for v in slice_range)  # type: ignore[union-attr]
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{what} must be two integers K0 K1, got {slice_range!r}") from exc
    if k0 > k1:
        raise InvalidInputError(f"{what} {k0}..{k1} is inverted: need K0 <= K1")
    if k0 < 0 or k1 > count - 1:
        raise InvalidInputError(
            f"{what} {k0}..{k1} lies outside the volume, which has slices 0..{count - 1}"
        )
    return k0, k1


def box_of_mask(mask: np.ndarray) -> Box | None:
    """Inclusive bounding box of a 2-D boolean mask, or ``None`` if it is empty."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    return Box(float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()))


@dataclass(frozen=True)
class VolumeGeometry:
    """Physical grid of a volume in LPS (SimpleITK convention)."""

    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    direction: tuple[float, ...] = field(default=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))

    def __post_init__(self) -> None:
        if len(self.origin) != 3 or len(self.spacing) != 3 or len(self.direction) != 9:
            raise InvalidInputError("volume geometry needs 3 origin, 3 spacing, 9 direction values")
        if not all(s > 0 for s in self.spacing):
            raise InvalidInputError(f"volume spacing must be positive, got {self.spacing}")
        object.__setattr__(self, "origin", tuple(float(v) for v in self.origin))
        object.__setattr__(self, "spacing", tuple(float(v) for v in self.spacing))
        object.__setattr__(self, "direction", tuple(float(v) for v in self.direction))

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    def ijk_to_lps(self) -> np.ndarray:
        """4x4 homogeneous matrix mapping (i, j, k, 1) to LPS millimetres."""
        m = np.eye(4)
        m[:3, :3] = self.direction_matrix @ np.diag(self.spacing)
        m[:3, 3] = self.origin
        return m

    def ijk_to_ras(self) -> np.ndarray:
        """4x4 homogeneous matrix mapping (i, j, k, 1) to RAS millimetres (Slicer's IJKToRAS)."""
        m = self.ijk_to_lps()
        m[:3, :] = LPS_TO_RAS @ m[:3, :]
        return m

    @classmethod
    def from_ijk_to_ras(cls, matrix: np.ndarray) -> "VolumeGeometry":
        """Inverse of :meth:`ijk_to_ras` (spacing = column norms, direction = unit columns)."""
        m = np.asarray(matrix, dtype=float)
        lps = LPS_TO_RAS @ m[:3, :]
        spacing = np.linalg.norm(lps[:3, :3], axis=0)
        if np.any(spacing == 0):
            raise InvalidInputError("IJK-to-RAS matrix has a zero-length axis")
        direction = lps[:3, :3] / spacing
        return cls(tuple(lps[:3, 3]), tuple(spacing), tuple(direction.ravel()))


@dataclass(frozen=True)
class Volume:
    """A scalar volume: ``array[k, j, i]`` plus its physical grid."""

    array: np.ndarray
    geometry: VolumeGeometry = VolumeGeometry()

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise InvalidInputError(
                f"a volume must be 3-D (K, J, I); got an array of shape {self.array.shape}"
            )

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)  # type: ignore[return-value]

    def with_array(self, array: np.ndarray) -> "Volume":
        """A volume on the same grid holding ``array`` (e.g. a labelmap)."""
        if array.shape != self.array.shape:
            raise InvalidInputError(
                f"array shape {array.shape} differs from the volume's {self.array.shape}"
            )
        return Volume(array, self.geometry)
