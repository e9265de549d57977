"""ROI → voxel box → box prompt: a markups ROI (rotated, under transforms) as the voxel box of a
volume, and as the 2-D box prompt on each of its slices (:class:`BoxPrompt`, the one place every
operation turns a box ROI into a prompt)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import vtk

from ..errors import InvalidInputError
from ..geometry import Box
from .nodes import Extent, image_dims, matrix_to_numpy, node_to_world, require_node

_EPS = 1e-6
FRAME_ATTRIBUTE = "PolypSAM.frame"  # the sequence item an ROI was placed on
# 12 edges of the unit cube whose corners are numbered by bits (x = bit 0, y = bit 1, z = bit 2).
_CUBE_CORNERS = np.array([[(c >> a) & 1 for a in range(3)] for c in range(8)], dtype=float) * 2 - 1
_CUBE_EDGES = [(a, b) for a in range(8) for b in range(a + 1, 8) if bin(a ^ b).count("1") == 1]


@dataclass(frozen=True)
class VoxelBox:
    """Voxel index box of an ROI in a volume: inclusive ``i0..i1, j0..j1, k0..k1``.

    ``roi_to_ijk`` (4x4) maps ROI object coordinates (the ROI spans ``-half_size..+half_size``)
    into the volume's IJK, so :meth:`box_on_slice` can give the tight 2-D box of the exact ROI
    on a slice when the ROI is oblique to the grid.
    """

    i0: int
    i1: int
    j0: int
    j1: int
    k0: int
    k1: int
    key_slice: int
    roi_to_ijk: np.ndarray | None = None
    half_size: tuple[float, float, float] | None = None

    @property
    def slice_range(self) -> range:
        """The slices ``k0..k1`` (inclusive) as a ``range``."""
        return range(self.k0, self.k1 + 1)

    @property
    def extent(self) -> Extent:
        """``(i0, i1, j0, j1, k0, k1)``, the region argument of :func:`write_mask_to_segment`."""
        return (self.i0, self.i1, self.j0, self.j1, self.k0, self.k1)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(K, J, I)`` size of the box (NumPy order)."""
        return (self.k1 - self.k0 + 1, self.j1 - self.j0 + 1, self.i1 - self.i0 + 1)

    def box(self) -> Box:
        """The 2-D box ``(i0, j0, i1, j1)`` covering the ROI on every slice."""
        return Box(float(self.i0), float(self.j0), float(self.i1), float(self.j1))

    def box_on_slice(self, k: int, *, tight: bool = True) -> Box:
        """2-D box prompt (x = I, y = J) on slice ``k``.

        With ``tight`` (and an ROI known), the bounds of the exact ROI cut by the plane of slice
        ``k``: smaller than :meth:`box` when the ROI is rotated against the grid. Falls back to
        :meth:`box` where the cut is empty or narrower than two pixels.
        """
        if not self.k0 <= k <= self.k1:
            raise InvalidInputError(f"slice {k} is outside the ROI's slices {self.k0}..{self.k1}")
        if not tight or self.roi_to_ijk is None or self.half_size is None:
            return self.box()
        points = _plane_cut(self.roi_to_ijk, np.asarray(self.half_size), float(k))
        if points.size == 0:
            return self.box()
        bounds = []
        for axis, (lo_box, hi_box) in enumerate(((self.i0, self.i1), (self.j0, self.j1))):
            lo_f, hi_f = points[:, axis].min(), points[:, axis].max()
            lo = max(lo_box, math.ceil(lo_f - _EPS))
            hi = min(hi_box, math.floor(hi_f + _EPS))
            if hi - lo < 1:  # narrower than 2 pixel centres: take the enclosing pixels
                lo = max(lo_box, math.floor(lo_f))
                hi = min(hi_box, math.ceil(hi_f))
            if hi - lo < 1:
                return self.box()
            bounds.append((lo, hi))
        (x0, x1), (y0, y1) = bounds
        return Box(float(x0), float(y0), float(x1), float(y1))


def _plane_cut(roi_to_ijk: np.ndarray, half: np.ndarray, k: float) -> np.ndarray:
    """IJK points where the plane ``K = k`` cuts the edges of the ROI box (N x 3)."""
    corners = (roi_to_ijk @ np.c_[_CUBE_CORNERS * half, np.ones(8)].T).T[:, :3]
    points = [c for c in corners if abs(c[2] - k) <= _EPS]
    for a, b in _CUBE_EDGES:
        ka, kb = corners[a, 2] - k, corners[b, 2] - k
        if ka * kb < 0:
            t = ka / (ka - kb)
            points.append(corners[a] + t * (corners[b] - corners[a]))
    return np.array(points, dtype=float).reshape(-1, 3)


def roi_to_voxel_box(roi_node: Any, volume_node: Any) -> VoxelBox:
    """Voxel box of the volume's voxel centres inside a markups ROI (rotations, transforms ok).

    The ROI's 8 corners are taken in world coordinates (``GetObjectToWorldMatrix`` and
    ``+-size/2``), mapped into the volume's IJK through the inverse of the volume's parent
    transform and ``GetRASToIJKMatrix``; per axis the box is ``ceil(min)..floor(max)`` clamped to
    the volume. An ROI thinner than a voxel along K (e.g. drawn flat on a slice) gives its
    nearest slice. Raises :class:`InvalidInputError` if the ROI lies outside the volume or covers
    fewer than two voxel centres along I or J (a box prompt needs a width and a height).
    """
    require_node(roi_node, "vtkMRMLMarkupsROINode", "ROI")
    require_node(volume_node, "vtkMRMLVolumeNode", "volume")
    dims = image_dims(volume_node, "volume")
    size = np.array(roi_node.GetSize(), dtype=float)
    if not np.all(np.isfinite(size)) or np.any(size < 0):
        raise InvalidInputError(f"ROI '{roi_node.GetName()}' has an invalid size {tuple(size)}")
    half = size / 2.0
    object_to_world = matrix_to_numpy(roi_node.GetObjectToWorldMatrix())
    ras_to_ijk = vtk.vtkMatrix4x4()
    volume_node.GetRASToIJKMatrix(ras_to_ijk)
    world_to_volume = np.linalg.inv(node_to_world(volume_node, "volume"))
    roi_to_ijk = matrix_to_numpy(ras_to_ijk) @ world_to_volume @ object_to_world
    corners = (roi_to_ijk @ np.c_[_CUBE_CORNERS * half, np.ones(8)].T).T[:, :3]
    lo_f, hi_f = corners.min(axis=0), corners.max(axis=0)

    bounds: list[tuple[int, int]] = []
    for axis, name in enumerate("IJK"):
        n = dims[axis]
        if hi_f[axis] < -0.5 or lo_f[axis] > n - 0.5:
            raise InvalidInputError(
                f"ROI '{roi_node.GetName()}' lies outside volume '{volume_node.GetName()}' "
                f"(along {name}: voxels {lo_f[axis]:.1f}..{hi_f[axis]:.1f}, volume 0..{n - 1})"
            )
        lo, hi = math.ceil(lo_f[axis] - _EPS), math.floor(hi_f[axis] + _EPS)
        if axis == 2 and lo > hi:  # flat along K: its nearest slice
            lo = hi = int(round(float(lo_f[axis] + hi_f[axis]) / 2))
        lo, hi = max(lo, 0), min(hi, n - 1)
        if hi < lo:
            raise InvalidInputError(
                f"ROI '{roi_node.GetName()}' is thinner than one voxel along {name} "
                f"(covers voxels {lo_f[axis]:.2f}..{hi_f[axis]:.2f}: no voxel centre inside)"
            )
        if axis < 2 and hi == lo:
            raise InvalidInputError(
                f"ROI '{roi_node.GetName()}' covers a single voxel column along {name}; "
                "a box prompt needs at least two pixels in width and height"
            )
        bounds.append((lo, hi))
    (i0, i1), (j0, j1), (k0, k1) = bounds
    return VoxelBox(
        i0, i1, j0, j1, k0, k1,
        key_slice=(k0 + k1) // 2,
        roi_to_ijk=roi_to_ijk,
        half_size=(float(half[0]), float(half[1]), float(half[2])),
    )


def frame_of(roi: Any, default: int) -> int:
    """The sequence item ``roi`` was placed on (:data:`FRAME_ATTRIBUTE`), else ``default``."""
    value = roi.GetAttribute(FRAME_ATTRIBUTE) if hasattr(roi, "GetAttribute") else None
    try:
        return int(value) if value not in (None, "") else default
    except ValueError:
        return default


@dataclass(frozen=True)
class BoxPrompt:
    """One box ROI as a prompt on a volume's or frame's grid.

    ``name`` is the segment it writes (the ROI's name), ``voxels`` its voxel box, ``frame`` the
    sequence item it was drawn on (the browser's current item if it was not recorded).
    """

    name: str
    roi_id: str
    voxels: VoxelBox
    frame: int = 0

    @property
    def key_slice(self) -> int:
        """The slice the box was drawn on (the middle of its slices)."""
        return self.voxels.key_slice

    def box(self, k: int) -> Box:
        """The box prompt on slice ``k``: the tight cut of the ROI where ``k`` is one of its
        slices, else the ROI's box on every slice."""
        v = self.voxels
        return v.box_on_slice(k) if v.k0 <= k <= v.k1 else v.box()

    def box_within(self, k: int) -> Box | None:
        """The tight box on slice ``k`` where ``k`` is one of the ROI's slices, else ``None`` (a
        box that goes with clicks only where it was drawn)."""
        v = self.voxels
        return v.box_on_slice(k) if v.k0 <= k <= v.k1 else None


def box_prompts(rois: Any, node: Any, current_frame: int = 0) -> list[BoxPrompt]:
    """The ROIs as box prompts on ``node``'s grid (a frame not recorded: ``current_frame``)."""
    return [BoxPrompt(roi.GetName() or "Polyp", roi.GetID(), roi_to_voxel_box(roi, node),
                      frame_of(roi, current_frame)) for roi in rois]
