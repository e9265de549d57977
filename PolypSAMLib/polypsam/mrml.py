"""MRML adapter: Slicer nodes <-> NumPy + geometry. The one library module that imports ``slicer``.

No Qt: everything here runs in desktop Slicer and in ``slicer-core`` (plain MRML in Python).

Data flows one way through it:

* :func:`roi_to_voxel_box` turns a markups ROI into the voxel index box of a volume (and a 2-D
  :class:`~polypsam.geometry.Box` prompt per slice);
* :func:`volume_from_node`, :func:`frame_from_vector_node`, :func:`frames_from_sequence` read
  pixels plus their grid;
* :func:`write_mask_to_segment` and :func:`write_tracked_masks_to_sequence` write masks back,
  only over the changed voxel region, with provenance tags, all-or-nothing;
  :func:`save_state_for_undo` / :func:`undo` / :func:`redo` use Slicer's own
  ``vtkSegmentationHistory`` (the Segment Editor's undo);
* :func:`export_segment_labelmap` reads segments back as labels on a reference grid.

Coordinates: "world" is Slicer's RAS after all parent transforms. A volume's IJK-to-world matrix
is its parent (linear) transform times its IJKToRAS matrix; :func:`volume_from_node` hardens the
transform into the returned :class:`~polypsam.geometry.VolumeGeometry`, so a geometry always
describes the grid in world coordinates, and writing masks maps world into the segmentation
node's own coordinates (through the inverse of its parent transform).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Union

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from .engine import EngineInfo
from .errors import InvalidInputError
from .geometry import Box, Volume, VolumeGeometry

__all__ = [
    "TAG_PREFIX",
    "VoxelBox",
    "SequenceFrames",
    "roi_to_voxel_box",
    "volume_from_node",
    "ijk_to_world",
    "frame_from_vector_node",
    "frames_from_sequence",
    "write_mask_to_segment",
    "read_provenance",
    "write_tracked_masks_to_sequence",
    "export_segment_labelmap",
    "save_state_for_undo",
    "undo",
    "redo",
]

TAG_PREFIX = "PolypSAM."
_KEYS_TAG = "keys"  # vtkSegment cannot list its tags: keep the list of our keys in a tag
_EPS = 1e-6

Extent = tuple[int, int, int, int, int, int]
"""Inclusive voxel extent ``(i0, i1, j0, j1, k0, k1)`` (VTK's order)."""

Reference = Union["slicer.vtkMRMLVolumeNode", Volume, VolumeGeometry]

# 12 edges of the unit cube whose corners are numbered by bits (x = bit 0, y = bit 1, z = bit 2).
_CUBE_CORNERS = np.array([[(c >> a) & 1 for a in range(3)] for c in range(8)], dtype=float) * 2 - 1
_CUBE_EDGES = [(a, b) for a in range(8) for b in range(a + 1, 8) if bin(a ^ b).count("1") == 1]


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------


def _matrix_to_numpy(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=float)


def _numpy_to_matrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def _node_to_world(node: Any, what: str) -> np.ndarray:
    """4x4 node-to-world matrix of ``node``'s parent transforms; error if non-linear."""
    parent = node.GetParentTransformNode()
    if parent is None:
        return np.eye(4)
    if not parent.IsTransformToWorldLinear():
        raise InvalidInputError(
            f"{what} '{node.GetName()}' is under a non-linear transform "
            f"('{parent.GetName()}'); harden or remove the transform first"
        )
    matrix = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(matrix)
    return _matrix_to_numpy(matrix)


def _require(node: Any, class_name: str, what: str) -> None:
    if node is None:
        raise InvalidInputError(f"no {what} given")
    if not node.IsA(class_name):
        raise InvalidInputError(f"{what} must be a {class_name}, got a {node.GetClassName()}")


def _image_dims(node: Any, what: str) -> tuple[int, int, int]:
    image = node.GetImageData()
    if image is None:
        raise InvalidInputError(f"{what} '{node.GetName()}' has no image data")
    dims = image.GetDimensions()
    return int(dims[0]), int(dims[1]), int(dims[2])


def ijk_to_world(volume_node: Any) -> np.ndarray:
    """4x4 IJK-to-world matrix of a volume node (its linear parent transforms included)."""
    _require(volume_node, "vtkMRMLVolumeNode", "volume")
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return _node_to_world(volume_node, "volume") @ _matrix_to_numpy(matrix)


# --------------------------------------------------------------------------------------------
# ROI -> voxel box
# --------------------------------------------------------------------------------------------


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
    _require(roi_node, "vtkMRMLMarkupsROINode", "ROI")
    _require(volume_node, "vtkMRMLVolumeNode", "volume")
    dims = _image_dims(volume_node, "volume")
    size = np.array(roi_node.GetSize(), dtype=float)
    if not np.all(np.isfinite(size)) or np.any(size < 0):
        raise InvalidInputError(f"ROI '{roi_node.GetName()}' has an invalid size {tuple(size)}")
    half = size / 2.0
    object_to_world = _matrix_to_numpy(roi_node.GetObjectToWorldMatrix())
    ras_to_ijk = vtk.vtkMatrix4x4()
    volume_node.GetRASToIJKMatrix(ras_to_ijk)
    world_to_volume = np.linalg.inv(_node_to_world(volume_node, "volume"))
    roi_to_ijk = _matrix_to_numpy(ras_to_ijk) @ world_to_volume @ object_to_world
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


# --------------------------------------------------------------------------------------------
# volumes and frames -> numpy
# --------------------------------------------------------------------------------------------


def _geometry_from_ijk_to_world(matrix: np.ndarray, what: str) -> VolumeGeometry:
    geometry = VolumeGeometry.from_ijk_to_ras(matrix)
    d = geometry.direction_matrix
    if not np.allclose(d.T @ d, np.eye(3), atol=1e-5):
        raise InvalidInputError(
            f"{what}: IJK-to-world has sheared axes (a sheared parent transform?); "
            "harden the transform by resampling first"
        )
    return geometry


def volume_from_node(volume_node: Any) -> Volume:
    """A copy of a scalar volume's voxels ``[k, j, i]`` and its grid in world coordinates.

    A linear parent transform (rotation, translation) is hardened into the geometry; a
    non-linear one, a label map, a vector (RGB) volume or a missing image raise
    :class:`InvalidInputError`.
    """
    _require(volume_node, "vtkMRMLScalarVolumeNode", "input volume")
    if volume_node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise InvalidInputError(
            f"'{volume_node.GetName()}' is a label map; choose an image volume as input"
        )
    image = volume_node.GetImageData()
    if image is None:
        raise InvalidInputError(f"volume '{volume_node.GetName()}' has no image data")
    if image.GetNumberOfScalarComponents() != 1:
        raise InvalidInputError(
            f"volume '{volume_node.GetName()}' has {image.GetNumberOfScalarComponents()} "
            "components; use frame_from_vector_node for RGB frames"
        )
    array = np.array(slicer.util.arrayFromVolume(volume_node), copy=True)
    geometry = _geometry_from_ijk_to_world(ijk_to_world(volume_node), volume_node.GetName())
    return Volume(array, geometry)


def frame_from_vector_node(node: Any) -> np.ndarray:
    """One video frame as ``H x W x 3`` uint8 RGB (a copy).

    Accepts an RGB(A) vector volume of shape ``(1, H, W, 3|4)`` (alpha dropped) or a single-slice
    uint8 scalar volume (grey, repeated to 3 channels).
    """
    _require(node, "vtkMRMLVolumeNode", "frame")
    if node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise InvalidInputError(f"'{node.GetName()}' is a label map, not a video frame")
    if node.GetImageData() is None:
        raise InvalidInputError(f"frame '{node.GetName()}' has no image data")
    array = slicer.util.arrayFromVolume(node)
    if array.ndim == 3:
        array = array[..., None]
    if array.shape[0] != 1 or array.shape[-1] not in (1, 3, 4):
        raise InvalidInputError(
            f"frame '{node.GetName()}' has shape {array.shape}; expected (1, H, W, 3) RGB"
        )
    if array.dtype != np.uint8:
        raise InvalidInputError(f"frame '{node.GetName()}' is {array.dtype}; expected uint8 RGB")
    frame = array[0]
    if frame.shape[-1] == 1:
        return np.repeat(frame, 3, axis=-1)
    return np.ascontiguousarray(frame[..., :3])


class SequenceFrames:
    """The frames of a browser's master sequence, read on demand (a ``FrameSource``)."""

    def __init__(self, sequence_node: Any, height: int, width: int) -> None:
        self.sequence_node = sequence_node
        self.height = height
        self.width = width

    def __len__(self) -> int:
        return int(self.sequence_node.GetNumberOfDataNodes())

    def __getitem__(self, index: int) -> np.ndarray:
        if not 0 <= index < len(self):
            raise IndexError(f"frame {index} out of range 0..{len(self) - 1}")
        return frame_from_vector_node(self.sequence_node.GetNthDataNode(index))


def _master_sequence(browser_node: Any) -> Any:
    _require(browser_node, "vtkMRMLSequenceBrowserNode", "sequence browser")
    master = browser_node.GetMasterSequenceNode()
    if master is None or master.GetNumberOfDataNodes() == 0:
        raise InvalidInputError(f"sequence browser '{browser_node.GetName()}' has no frames")
    return master


class SequenceVolumes:
    """The 3-D volumes of a browser's master sequence (a 4-D image), read on demand.

    ``[t]`` is time point ``t``'s voxels ``(K, J, I)`` (a copy); :meth:`slices` is the
    ``FrameSource`` of one slice ``k`` through time. All time points share one grid.
    """

    def __init__(self, sequence_node: Any, shape: tuple[int, int, int]) -> None:
        self.sequence_node = sequence_node
        self.shape = shape  # (K, J, I)

    def __len__(self) -> int:
        return int(self.sequence_node.GetNumberOfDataNodes())

    def _array(self, t: int) -> np.ndarray:
        if not 0 <= t < len(self):
            raise IndexError(f"time point {t} out of range 0..{len(self) - 1}")
        return slicer.util.arrayFromVolume(self.sequence_node.GetNthDataNode(t))

    def __getitem__(self, t: int) -> np.ndarray:
        return np.array(self._array(t), copy=True)

    def slices(self, k: int) -> "_SliceThroughTime":
        if not 0 <= k < self.shape[0]:
            raise InvalidInputError(f"slice {k} is outside the volumes' slices 0..{self.shape[0] - 1}")
        return _SliceThroughTime(self, k)


class _SliceThroughTime:
    """Slice ``k`` of every time point: a ``FrameSource`` of 2-D scalar frames."""

    def __init__(self, volumes: SequenceVolumes, k: int) -> None:
        self.volumes, self.k = volumes, k

    def __len__(self) -> int:
        return len(self.volumes)

    def __getitem__(self, t: int) -> np.ndarray:
        return np.array(self.volumes._array(t)[self.k], copy=True)


def sequence_holds_volumes(browser_node: Any) -> bool:
    """Whether the browser's master sequence holds 3-D volumes (4-D CT) rather than frames."""
    node = _master_sequence(browser_node).GetNthDataNode(0)
    return node is not None and node.IsA("vtkMRMLVolumeNode") and _image_dims(node, "frame 0")[2] > 1


def volumes_from_sequence(browser_node: Any) -> SequenceVolumes:
    """The scalar volumes of a 4-D sequence; every time point must have the same grid."""
    master = _master_sequence(browser_node)
    first_grid = None
    for t in range(master.GetNumberOfDataNodes()):
        node = master.GetNthDataNode(t)
        what = f"time point {t} of '{master.GetName()}'"
        if node is None or not node.IsA("vtkMRMLScalarVolumeNode") or node.IsA("vtkMRMLLabelMapVolumeNode"):
            raise InvalidInputError(f"{what} is not a scalar image volume")
        if node.GetImageData() is None or node.GetImageData().GetNumberOfScalarComponents() != 1:
            raise InvalidInputError(f"{what} is not a single-component volume")
        matrix = vtk.vtkMatrix4x4()
        node.GetIJKToRASMatrix(matrix)
        grid = (_image_dims(node, what), _matrix_to_numpy(matrix))
        if first_grid is None:
            first_grid = grid
        elif grid[0] != first_grid[0]:
            raise InvalidInputError(f"{what} has another grid than time point 0: size {grid[0]}, not"
                                    f" {first_grid[0]}; resample the time points onto one grid first")
        elif not np.allclose(grid[1], first_grid[1], atol=1e-4):
            raise InvalidInputError(f"{what} has another grid than time point 0: its origin, spacing or"
                                    " axes differ; resample the time points onto one grid first")
    (i, j, k), _ = first_grid
    return SequenceVolumes(master, (k, j, i))


def frames_from_sequence(browser_node: Any) -> SequenceFrames:
    """The RGB frames of the browser's master sequence; all frames must have one size."""
    master = _master_sequence(browser_node)
    sizes: dict[tuple[int, int, int], list[int]] = {}
    for n in range(master.GetNumberOfDataNodes()):
        node = master.GetNthDataNode(n)
        if node is None or not node.IsA("vtkMRMLVolumeNode"):
            raise InvalidInputError(f"frame {n} of '{master.GetName()}' is not a volume")
        sizes.setdefault(_image_dims(node, f"frame {n}"), []).append(n)
    if len(sizes) > 1:
        described = ", ".join(f"{i}x{j}x{k} (frames {v[:3]}...)" for (i, j, k), v in sizes.items())
        raise InvalidInputError(f"sequence '{master.GetName()}' mixes frame sizes: {described}")
    (width, height, depth), = sizes
    if depth != 1:
        raise InvalidInputError(f"sequence '{master.GetName()}' holds 3-D volumes, not frames")
    return SequenceFrames(master, height, width)


# --------------------------------------------------------------------------------------------
# masks -> segments
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Grid:
    ijk_to_world: np.ndarray
    shape: tuple[int, int, int] | None  # (K, J, I) or unknown


def _reference_grid(reference: Any) -> _Grid:
    if reference is None:
        raise InvalidInputError("no reference volume or geometry given")
    if isinstance(reference, _Grid):
        return reference
    if isinstance(reference, Volume):
        return _Grid(reference.geometry.ijk_to_ras(), reference.shape)
    if isinstance(reference, VolumeGeometry):
        return _Grid(reference.ijk_to_ras(), None)
    if hasattr(reference, "IsA") and reference.IsA("vtkMRMLVolumeNode"):
        i, j, k = _image_dims(reference, "reference volume")
        return _Grid(ijk_to_world(reference), (k, j, i))
    raise InvalidInputError(
        f"reference must be a volume node, Volume or VolumeGeometry, got {type(reference)!r}"
    )


def _as_extent(region: Any) -> Extent | None:
    if region is None:
        return None
    if isinstance(region, VoxelBox):
        return region.extent
    values = tuple(int(v) for v in region)
    if len(values) != 6:
        raise InvalidInputError(f"region must be (i0, i1, j0, j1, k0, k1), got {region!r}")
    return values  # type: ignore[return-value]


def _mask_crop(mask: np.ndarray, grid: _Grid, extent: Extent | None) -> tuple[np.ndarray, Extent]:
    """Validate ``mask`` against the grid and region; return the crop to write and its extent."""
    mask = np.asarray(mask)
    if mask.ndim == 2:
        mask = mask[None]
    if mask.ndim != 3:
        raise InvalidInputError(f"a mask must be 3-D (K, J, I); got shape {mask.shape}")
    if mask.dtype != bool and not np.issubdtype(mask.dtype, np.integer):
        raise InvalidInputError(f"a mask must be boolean or integer, got {mask.dtype}")
    full = grid.shape
    if full is not None and extent is None and mask.shape != full:
        raise InvalidInputError(f"mask shape {mask.shape} differs from the volume's {full}")
    if extent is None:
        k, j, i = mask.shape
        return mask, (0, i - 1, 0, j - 1, 0, k - 1)
    i0, i1, j0, j1, k0, k1 = extent
    if i1 < i0 or j1 < j0 or k1 < k0 or min(i0, j0, k0) < 0:
        raise InvalidInputError(f"region {extent} is empty or negative")
    if full is not None and (k1 >= full[0] or j1 >= full[1] or i1 >= full[2]):
        raise InvalidInputError(f"region {extent} exceeds the volume (K, J, I) = {full}")
    crop_shape = (k1 - k0 + 1, j1 - j0 + 1, i1 - i0 + 1)
    if mask.shape == full or (full is None and mask.shape != crop_shape
                              and all(m > e for m, e in zip(mask.shape, (k1, j1, i1)))):
        return mask[k0 : k1 + 1, j0 : j1 + 1, i0 : i1 + 1], extent  # a whole-grid mask
    if mask.shape == crop_shape:
        return mask, extent
    raise InvalidInputError(
        f"mask shape {mask.shape} fits neither the region {crop_shape} nor the volume {full}"
    )


def _oriented_image(crop: np.ndarray, extent: Extent, image_to_node: np.ndarray) -> Any:
    image = slicer.vtkOrientedImageData()
    image.SetExtent(*extent)
    image.SetImageToWorldMatrix(_numpy_to_matrix(image_to_node))
    scalars = numpy_support.numpy_to_vtk(
        np.ascontiguousarray(crop, dtype=np.uint8).ravel(), deep=1, array_type=vtk.VTK_UNSIGNED_CHAR
    )
    image.GetPointData().SetScalars(scalars)
    return image


def _keep_outside_region(
    segmentation_node: Any,
    segment_id: str,
    crop: np.ndarray,
    extent: Extent,
    image_to_node: np.ndarray,
) -> tuple[np.ndarray, Extent]:
    """Extend a region write so that the segment's voxels outside the region survive.

    Slicer's MODE_REPLACE replaces the *whole* segment by the (clipped) modifier image, whatever
    the extent. So where the segment already has voxels outside the region, the modifier grows
    to the union of both extents and carries the old voxels (``== label value``: layers may be
    shared) there. Cost: the segment's own extent, never the whole volume.
    """
    labelmap = segmentation_node.GetBinaryLabelmapInternalRepresentation(segment_id)
    if labelmap is None or labelmap.IsEmpty():
        return crop, extent
    old_extent = np.array(labelmap.GetExtent()).reshape(3, 2)
    if np.any(old_extent[:, 1] < old_extent[:, 0]):
        return crop, extent
    matrix = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(matrix)
    theirs = _matrix_to_numpy(matrix)
    # index shift from the segment's lattice to the reference grid (integer: lattices checked)
    shift = np.round(np.linalg.solve(image_to_node[:3, :3], theirs[:3, 3] - image_to_node[:3, 3]))
    old_in_ref = old_extent + shift.astype(int)[:, None]
    region = np.array(extent).reshape(3, 2)
    if np.all(old_in_ref[:, 0] >= region[:, 0]) and np.all(old_in_ref[:, 1] <= region[:, 1]):
        return crop, extent  # the old segment lies inside the region: it is replaced entirely
    union = np.c_[
        np.minimum(old_in_ref[:, 0], region[:, 0]), np.maximum(old_in_ref[:, 1], region[:, 1])
    ]
    shape = tuple((union[:, 1] - union[:, 0] + 1)[::-1])
    merged = np.zeros(shape, dtype=np.uint8)
    label = segmentation_node.GetSegmentation().GetSegment(segment_id).GetLabelValue()
    dims = (old_extent[:, 1] - old_extent[:, 0] + 1)[::-1]
    old = numpy_support.vtk_to_numpy(labelmap.GetPointData().GetScalars()).reshape(tuple(dims))
    o = old_in_ref[:, 0] - union[:, 0]
    merged[o[2] : o[2] + dims[0], o[1] : o[1] + dims[1], o[0] : o[0] + dims[2]] = old == label
    r = region[:, 0] - union[:, 0]
    kc, jc, ic = crop.shape
    merged[r[2] : r[2] + kc, r[1] : r[1] + jc, r[0] : r[0] + ic] = crop
    return merged, tuple(int(v) for v in union.ravel())  # type: ignore[return-value]


def _same_lattice(a: np.ndarray, b: np.ndarray) -> bool:
    """True if two IJK-to-X matrices share axes, spacing and a voxel lattice (integer offset)."""
    if not np.allclose(a[:3, :3], b[:3, :3], atol=1e-4):
        return False
    offset = np.linalg.solve(a[:3, :3], b[:3, 3] - a[:3, 3])
    return bool(np.allclose(offset, np.round(offset), atol=1e-3))


def _segment_id(segmentation: Any, segment: str) -> str | None:
    if segmentation.GetSegment(segment) is not None:
        return segment
    found = segmentation.GetSegmentIdBySegmentName(segment)
    return found or None


def _add_segment(segmentation: Any, name: str, color: Any) -> str:
    if color is None:
        return segmentation.AddEmptySegment("", name)
    return segmentation.AddEmptySegment("", name, [float(c) for c in color])


def _provenance_tags(
    engine_info: EngineInfo | None, provenance: Mapping[str, Any] | None
) -> dict[str, str]:
    tags: dict[str, str] = {}
    if engine_info is not None:
        tags.update(engine_info.provenance())
    for key, value in (provenance or {}).items():
        if isinstance(value, Box):
            value = ",".join(f"{v:g}" for v in value.to_list())
        elif isinstance(value, (list, tuple, np.ndarray)):
            value = ",".join(str(v) for v in np.asarray(value).ravel().tolist())
        tags[str(key)] = str(value)
    return tags


def _check_segmentation_lattice(segmentation_node: Any, image_to_node: np.ndarray) -> None:
    segmentation = segmentation_node.GetSegmentation()
    for n in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(n)
        labelmap = segmentation_node.GetBinaryLabelmapInternalRepresentation(segment_id)
        if labelmap is None or labelmap.IsEmpty():
            continue
        existing = vtk.vtkMatrix4x4()
        labelmap.GetImageToWorldMatrix(existing)
        if not _same_lattice(_matrix_to_numpy(existing), image_to_node):
            raise InvalidInputError(
                f"segmentation '{segmentation_node.GetName()}' holds segments on another voxel "
                "grid than the reference volume; choose the volume it was made on"
            )
        return  # all segments of one node share the master representation's grid


def write_mask_to_segment(
    segmentation_node: Any,
    segment: str,
    mask_kji: np.ndarray,
    reference: Reference,
    *,
    region: VoxelBox | Extent | None = None,
    color: tuple[float, float, float] | None = None,
    engine_info: EngineInfo | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> str:
    """Write a boolean mask into a segment over the changed region only; return the segment id.

    ``segment`` is a segment id or name; a missing segment is created with that name (and
    ``color``, RGB 0..1). ``mask_kji`` is on the reference grid ``[k, j, i]``: the whole grid, or
    just the ``region`` crop. ``region`` (a :class:`VoxelBox` or ``(i0, i1, j0, j1, k0, k1)``)
    limits the write: voxels of the segment outside it are kept, inside it replaced; without a
    region the whole grid is replaced. Provenance (``engine_info.provenance()`` plus
    ``provenance``) is stored as ``PolypSAM.<key>`` segment tags.

    Everything is validated before anything changes; on failure the node is left as it was.
    Call :func:`save_state_for_undo` first to make the write undoable.
    """
    _require(segmentation_node, "vtkMRMLSegmentationNode", "segmentation")
    if not isinstance(segment, str) or not segment:
        raise InvalidInputError(f"segment must be a non-empty id or name, got {segment!r}")
    grid = _reference_grid(reference)
    crop, extent = _mask_crop(mask_kji, grid, _as_extent(region))
    node_to_world = _node_to_world(segmentation_node, "segmentation")
    image_to_node = np.linalg.inv(node_to_world) @ grid.ijk_to_world
    _check_segmentation_lattice(segmentation_node, image_to_node)
    tags = _provenance_tags(engine_info, provenance)
    segmentation = segmentation_node.GetSegmentation()
    segment_id = _segment_id(segmentation, segment)
    if segment_id is not None:
        crop, extent = _keep_outside_region(
            segmentation_node, segment_id, crop, extent, image_to_node
        )
    image = _oriented_image(crop, extent, image_to_node)

    created = segment_id is None
    if created:
        if segmentation.GetNumberOfSegments() == 0 and grid.shape is not None:
            k, j, i = grid.shape
            geometry = slicer.vtkSegmentationConverter.SerializeImageGeometry(
                _numpy_to_matrix(image_to_node), [0, i - 1, 0, j - 1, 0, k - 1]
            )
            segmentation_node.GetSegmentation().SetConversionParameter(
                slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName(), geometry
            )
        segment_id = _add_segment(segmentation, segment, color)
    was_modifying = segmentation_node.StartModify()
    try:
        if crop.any():
            ok = slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
                image, segmentation_node, segment_id,
                slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE, extent,
            )
        else:  # the segment becomes empty (an all-zero write would leave a 1-voxel image)
            segmentation.ClearSegment(segment_id)
            ok = True
        if not ok:
            if created:
                segmentation.RemoveSegment(segment_id)
            raise InvalidInputError(f"Slicer could not write the mask into segment '{segment}'")
        if tags:
            seg = segmentation.GetSegment(segment_id)
            old = _get_tag(seg, TAG_PREFIX + _KEYS_TAG)
            keys = list(dict.fromkeys((old.split(",") if old else []) + list(tags)))
            for key, value in tags.items():
                seg.SetTag(TAG_PREFIX + key, value)
            seg.SetTag(TAG_PREFIX + _KEYS_TAG, ",".join(keys))
    finally:
        segmentation_node.EndModify(was_modifying)
    return segment_id


def read_provenance(segmentation_node: Any, segment: str) -> dict[str, str]:
    """The ``PolypSAM.*`` tags of a segment (keys without the prefix)."""
    _require(segmentation_node, "vtkMRMLSegmentationNode", "segmentation")
    segmentation = segmentation_node.GetSegmentation()
    segment_id = _segment_id(segmentation, segment)
    if segment_id is None:
        raise InvalidInputError(f"no segment '{segment}' in '{segmentation_node.GetName()}'")
    seg = segmentation.GetSegment(segment_id)
    keys = _get_tag(seg, TAG_PREFIX + _KEYS_TAG)
    tags = {}
    for key in keys.split(",") if keys else []:
        value = _get_tag(seg, TAG_PREFIX + key)
        if value is not None:
            tags[key] = value
    return tags


def _get_tag(segment: Any, key: str) -> str | None:
    value = vtk.reference("")
    return str(value) if segment.GetTag(key, value) else None


# --------------------------------------------------------------------------------------------
# undo
# --------------------------------------------------------------------------------------------

# segmentation address -> (scene, node ID, history). A history holds a reference to its
# segmentation (and up to 10 saved states), so entries whose node has left its scene are dropped
# on every access (and by ``forget_undo_history``, which the module calls when a scene closes).
_HISTORIES: dict[str, tuple[Any, str, Any]] = {}


def _segmentation_key(segmentation_node: Any) -> str:
    return segmentation_node.GetSegmentation().GetAddressAsString("vtkSegmentation")


def _prune_histories() -> None:
    for key, (scene, node_id, _history_) in list(_HISTORIES.items()):
        if scene is None:  # a node outside any scene: kept until forget_undo_history
            continue
        node = scene.GetNodeByID(node_id)
        if node is None or not node.IsA("vtkMRMLSegmentationNode") or _segmentation_key(node) != key:
            del _HISTORIES[key]


def forget_undo_history(segmentation_node: Any = None) -> None:
    """Drop PolypSAM's undo states of one segmentation node, or of all when ``None``."""
    if segmentation_node is None:
        _HISTORIES.clear()
    elif segmentation_node.GetSegmentation() is not None:
        _HISTORIES.pop(_segmentation_key(segmentation_node), None)


def undo_history_count() -> int:
    """How many segmentations PolypSAM currently keeps undo states for (after pruning)."""
    _prune_histories()
    return len(_HISTORIES)


def _history(segmentation_node: Any, create: bool) -> Any:
    _require(segmentation_node, "vtkMRMLSegmentationNode", "segmentation")
    _prune_histories()
    key = _segmentation_key(segmentation_node)
    entry = _HISTORIES.get(key)
    history = entry[2] if entry is not None else None
    if history is None and create:
        history = slicer.vtkSegmentationHistory()
        history.SetMaximumNumberOfStates(10)
        history.SetSegmentation(segmentation_node.GetSegmentation())
        _HISTORIES[key] = (segmentation_node.GetScene(), segmentation_node.GetID(), history)
    return history


def save_state_for_undo(segmentation_node: Any) -> None:
    """Snapshot the segments (Slicer's ``vtkSegmentationHistory``) before changing them."""
    _history(segmentation_node, create=True).SaveState()


def undo(segmentation_node: Any) -> bool:
    """Restore the state saved before the last change; ``False`` if there is none."""
    history = _history(segmentation_node, create=False)
    if history is None or not history.IsRestorePreviousStateAvailable():
        return False
    return bool(history.RestorePreviousState())


def redo(segmentation_node: Any) -> bool:
    """Re-apply the change undone last; ``False`` if there is none."""
    history = _history(segmentation_node, create=False)
    if history is None or not history.IsRestoreNextStateAvailable():
        return False
    return bool(history.RestoreNextState())


# --------------------------------------------------------------------------------------------
# sequences
# --------------------------------------------------------------------------------------------


def write_tracked_masks_to_sequence(
    browser_node: Any,
    segmentation_node: Any,
    masks_per_frame: Mapping[int, np.ndarray | Mapping[str, np.ndarray]],
    *,
    segment: str = "Polyp",
    colors: Mapping[str, tuple[float, float, float]] | None = None,
    engine_info: EngineInfo | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> Any:
    """Write per-frame masks as a segmentation sequence synchronised with ``browser_node``.

    ``masks_per_frame`` maps a frame's item number in the master sequence to a mask (``H x W``
    for a video frame, ``K x J x I`` for a 4-D sequence's volume), written to segment
    ``segment``, or to ``{segment name: mask}``. Every frame of the master
    sequence gets one segmentation (empty segments where no mask is given) on that frame's grid;
    ``segmentation_node`` becomes (or stays) the browser's proxy for the sequence, which is
    returned. If the node already has a sequence in this browser, only the given frames change.
    All masks are validated before anything changes.
    """
    _require(segmentation_node, "vtkMRMLSegmentationNode", "segmentation")
    master = _master_sequence(browser_node)
    n_frames = master.GetNumberOfDataNodes()
    per_frame: dict[int, dict[str, np.ndarray]] = {}
    names: list[str] = []
    for frame, masks in masks_per_frame.items():
        if not isinstance(frame, (int, np.integer)) or not 0 <= frame < n_frames:
            raise InvalidInputError(f"frame {frame!r} is not an item of 0..{n_frames - 1}")
        masks = {segment: masks} if isinstance(masks, np.ndarray) else dict(masks)
        node = master.GetNthDataNode(int(frame))
        i, j, k = _image_dims(node, f"frame {frame}")
        for name, mask in masks.items():
            given = np.asarray(mask)
            mask = given[None] if given.ndim == 2 else given
            if mask.shape != (k, j, i):
                raise InvalidInputError(
                    f"mask '{name}' of frame {frame} has shape {given.shape};"
                    f" the frame is {(j, i) if k == 1 else (k, j, i)}"
                )
            masks[name] = mask
            if name not in names:
                names.append(name)
        per_frame[int(frame)] = masks
    if not names:
        raise InvalidInputError("no masks to write")

    segmentation = segmentation_node.GetSegmentation()
    ids = {}
    for name in names:
        segment_id = _segment_id(segmentation, name)
        if segment_id is None:
            segment_id = _add_segment(segmentation, name, (colors or {}).get(name))
        ids[name] = segment_id

    def write_frame(target: Any, frame: int, masks: Mapping[str, np.ndarray]) -> None:
        frame_node = master.GetNthDataNode(frame)
        grid = _reference_grid(frame_node)
        frame_tags = dict(provenance or {}, frame=frame)
        for name in names:
            mask = masks.get(name)
            if mask is None:
                if target is not segmentation_node:
                    continue  # an existing frame: keep what it has
                _remove_tags(target, ids[name])
                target.GetSegmentation().ClearSegment(ids[name])
                continue
            write_mask_to_segment(
                target, ids[name], mask, grid,
                engine_info=engine_info if name in masks else None,
                provenance=frame_tags if name in masks else None,
            )

    current = min(max(0, browser_node.GetSelectedItemNumber()), n_frames - 1)
    seq = browser_node.GetSequenceNode(segmentation_node)
    if seq is None:  # a new sequence: every frame gets a segmentation, the current one last
        seq = segmentation_node.GetScene().AddNewNodeByClass(
            "vtkMRMLSequenceNode", f"{segmentation_node.GetName()}-seq"
        )
        seq.SetIndexName(master.GetIndexName())
        seq.SetIndexUnit(master.GetIndexUnit())
        seq.SetIndexType(master.GetIndexType())
        for frame in [n for n in range(n_frames) if n != current] + [current]:
            write_frame(segmentation_node, frame, per_frame.get(frame, {}))
            seq.SetDataNodeAtValue(segmentation_node, master.GetNthIndexValue(frame))
        browser_node.AddSynchronizedSequenceNode(seq)
        browser_node.AddProxyNode(segmentation_node, seq, False)
    else:  # update the stored segmentations of the given frames; the others are kept
        for frame, masks in per_frame.items():
            value = master.GetNthIndexValue(frame)
            stored = seq.GetDataNodeAtValue(value)
            if stored is None:
                seq.SetDataNodeAtValue(segmentation_node, value)
                stored = seq.GetDataNodeAtValue(value)
            for name in names:
                if _segment_id(stored.GetSegmentation(), ids[name]) is None:
                    color = segmentation.GetSegment(ids[name]).GetColor()
                    stored.GetSegmentation().AddEmptySegment(ids[name], name, list(color))
            write_frame(stored, frame, masks)
        if current in per_frame:
            write_frame(segmentation_node, current, per_frame[current])
        seq.Modified()
    browser_node.SetSaveChanges(seq, True)
    return seq


def _remove_tags(segmentation_node: Any, segment_id: str) -> None:
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    keys = _get_tag(segment, TAG_PREFIX + _KEYS_TAG)
    for key in (keys.split(",") if keys else []) + [_KEYS_TAG]:
        segment.RemoveTag(TAG_PREFIX + key)


# --------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------


def export_segment_labelmap(
    segmentation_node: Any,
    reference_volume_node: Any,
    segments: Iterable[str] | None = None,
) -> np.ndarray:
    """Segments as labels ``[k, j, i]`` on the reference volume's grid (0 = background).

    ``segments`` (ids or names; default: all, in order) get labels 1, 2, ... in that order.
    """
    _require(segmentation_node, "vtkMRMLSegmentationNode", "segmentation")
    _require(reference_volume_node, "vtkMRMLVolumeNode", "reference volume")
    segmentation = segmentation_node.GetSegmentation()
    if segments is None:
        count = segmentation.GetNumberOfSegments()
        segment_ids = [segmentation.GetNthSegmentID(n) for n in range(count)]
    else:
        segment_ids = []
        for name in segments:
            segment_id = _segment_id(segmentation, name)
            if segment_id is None:
                raise InvalidInputError(f"no segment '{name}' in '{segmentation_node.GetName()}'")
            segment_ids.append(segment_id)
    i, j, k = _image_dims(reference_volume_node, "reference volume")
    if not segment_ids:
        return np.zeros((k, j, i), dtype=np.uint8)
    ids = vtk.vtkStringArray()
    for segment_id in segment_ids:
        ids.InsertNextValue(segment_id)
    scene = segmentation_node.GetScene()
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__polypsam_export__")
    try:
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            segmentation_node, ids, labelmap, reference_volume_node
        ):
            raise InvalidInputError("Slicer could not export the segments to a label map")
        return np.array(slicer.util.arrayFromVolume(labelmap), copy=True)
    finally:
        display = labelmap.GetDisplayNode()
        if display is not None and display.GetColorNode() is not None:
            color = display.GetColorNode()
            if color.GetName().startswith("__polypsam_export__"):
                scene.RemoveNode(color)
        scene.RemoveNode(labelmap)
