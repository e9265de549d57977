"""Masks → segments: region-only writes with provenance tags, and segments read back as labels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Union

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from ..errors import InvalidInputError
from ..geometry import Volume, VolumeGeometry
from ..provenance import provenance_tags
from ..terminology import TERMINOLOGY_PRESETS, slicer_entry
from .nodes import Extent, image_dims, matrix_to_numpy, node_to_world, numpy_to_matrix, require_node, ijk_to_world
from .roi import VoxelBox

TAG_PREFIX = "PolypSAM."
KEYS_TAG = "keys"  # vtkSegment cannot list its tags: keep the list of our keys in a tag

Reference = Union["slicer.vtkMRMLVolumeNode", Volume, VolumeGeometry]


@dataclass(frozen=True)
class Grid:
    """A reference voxel grid: its IJK-to-world matrix and ``(K, J, I)`` shape (if known)."""

    ijk_to_world: np.ndarray
    shape: tuple[int, int, int] | None  # (K, J, I) or unknown


def reference_grid(reference: Any) -> Grid:
    """The grid of a volume node, :class:`~polypsam.geometry.Volume` or ``VolumeGeometry``."""
    if reference is None:
        raise InvalidInputError("no reference volume or geometry given")
    if isinstance(reference, Grid):
        return reference
    if isinstance(reference, Volume):
        return Grid(reference.geometry.ijk_to_ras(), reference.shape)
    if isinstance(reference, VolumeGeometry):
        return Grid(reference.ijk_to_ras(), None)
    if hasattr(reference, "IsA") and reference.IsA("vtkMRMLVolumeNode"):
        i, j, k = image_dims(reference, "reference volume")
        return Grid(ijk_to_world(reference), (k, j, i))
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


def _mask_crop(mask: np.ndarray, grid: Grid, extent: Extent | None) -> tuple[np.ndarray, Extent]:
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
    image.SetImageToWorldMatrix(numpy_to_matrix(image_to_node))
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
    theirs = matrix_to_numpy(matrix)
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


def same_lattice(a: np.ndarray, b: np.ndarray) -> bool:
    """True if two IJK-to-X matrices share axes, spacing and a voxel lattice (integer offset)."""
    if not np.allclose(a[:3, :3], b[:3, :3], atol=1e-4):
        return False
    offset = np.linalg.solve(a[:3, :3], b[:3, 3] - a[:3, 3])
    return bool(np.allclose(offset, np.round(offset), atol=1e-3))


def find_segment(segmentation: Any, segment: str) -> str | None:
    """The id of the segment with id or name ``segment`` in a ``vtkSegmentation``, else ``None``."""
    if segmentation.GetSegment(segment) is not None:
        return segment
    found = segmentation.GetSegmentIdBySegmentName(segment)
    return found or None


def add_segment(segmentation: Any, name: str, color: Any) -> str:
    """A new empty segment named ``name`` (RGB ``color`` 0..1, or Slicer's next colour)."""
    if color is None:
        return segmentation.AddEmptySegment("", name)
    return segmentation.AddEmptySegment("", name, [float(c) for c in color])


def holds_segments_off_lattice(segmentation_node: Any, image_to_node: np.ndarray) -> bool:
    """Whether a non-empty segment of ``segmentation_node`` lies on another voxel grid than
    ``image_to_node`` (IJK → the segmentation node's coordinates)."""
    segmentation = segmentation_node.GetSegmentation()
    for n in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(n)
        labelmap = segmentation_node.GetBinaryLabelmapInternalRepresentation(segment_id)
        if labelmap is None or labelmap.IsEmpty():
            continue
        existing = vtk.vtkMatrix4x4()
        labelmap.GetImageToWorldMatrix(existing)
        if not same_lattice(matrix_to_numpy(existing), image_to_node):
            return True
    return False


def _check_segmentation_lattice(segmentation_node: Any, image_to_node: np.ndarray) -> None:
    if holds_segments_off_lattice(segmentation_node, image_to_node):
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
    provenance: Mapping[str, Any] | None = None,
    terminology: str | None = None,
) -> str:
    """Write a boolean mask into a segment over the changed region only; return the segment id.

    ``segment`` is a segment id or name; a missing segment is created with that name (and
    ``color``, RGB 0..1). ``mask_kji`` is on the reference grid ``[k, j, i]``: the whole grid, or
    just the ``region`` crop. ``region`` (a :class:`VoxelBox` or ``(i0, i1, j0, j1, k0, k1)``)
    limits the write: voxels of the segment outside it are kept, inside it replaced; without a
    region the whole grid is replaced. ``provenance`` (e.g. the engine's
    ``info.provenance()`` plus the prompts) is stored as ``PolypSAM.<key>`` segment tags.
    ``terminology`` (a preset of :mod:`polypsam.terminology`, e.g. ``"polyp"``, or a Slicer
    terminology entry string) is given to a segment this write creates; an existing segment
    keeps the terminology its user chose.

    Everything is validated before anything changes; on failure the node is left as it was.
    Call :func:`save_state_for_undo` first to make the write undoable.
    """
    require_node(segmentation_node, "vtkMRMLSegmentationNode", "segmentation")
    if not isinstance(segment, str) or not segment:
        raise InvalidInputError(f"segment must be a non-empty id or name, got {segment!r}")
    grid = reference_grid(reference)
    crop, extent = _mask_crop(mask_kji, grid, _as_extent(region))
    to_world = node_to_world(segmentation_node, "segmentation")
    image_to_node = np.linalg.inv(to_world) @ grid.ijk_to_world
    _check_segmentation_lattice(segmentation_node, image_to_node)
    tags = provenance_tags(provenance)
    segmentation = segmentation_node.GetSegmentation()
    segment_id = find_segment(segmentation, segment)
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
                numpy_to_matrix(image_to_node), [0, i - 1, 0, j - 1, 0, k - 1]
            )
            segmentation_node.GetSegmentation().SetConversionParameter(
                slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName(), geometry
            )
        segment_id = add_segment(segmentation, segment, color)
        if terminology:
            entry = slicer_entry(terminology) if terminology in TERMINOLOGY_PRESETS else terminology
            segmentation.GetSegment(segment_id).SetTerminology(entry)
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
            old = get_tag(seg, TAG_PREFIX + KEYS_TAG)
            keys = list(dict.fromkeys((old.split(",") if old else []) + list(tags)))
            for key, value in tags.items():
                seg.SetTag(TAG_PREFIX + key, value)
            seg.SetTag(TAG_PREFIX + KEYS_TAG, ",".join(keys))
    finally:
        segmentation_node.EndModify(was_modifying)
    return segment_id


def segment_names(segmentation_node: Any) -> list[str]:
    """The names of a segmentation node's segments, in order (``[]`` for ``None``)."""
    if segmentation_node is None:
        return []
    segmentation = segmentation_node.GetSegmentation()
    return [segmentation.GetNthSegment(n).GetName() for n in range(segmentation.GetNumberOfSegments())]


def read_provenance(segmentation_node: Any, segment: str) -> dict[str, str]:
    """The ``PolypSAM.*`` tags of a segment (keys without the prefix)."""
    require_node(segmentation_node, "vtkMRMLSegmentationNode", "segmentation")
    segmentation = segmentation_node.GetSegmentation()
    segment_id = find_segment(segmentation, segment)
    if segment_id is None:
        raise InvalidInputError(f"no segment '{segment}' in '{segmentation_node.GetName()}'")
    seg = segmentation.GetSegment(segment_id)
    keys = get_tag(seg, TAG_PREFIX + KEYS_TAG)
    tags = {}
    for key in keys.split(",") if keys else []:
        value = get_tag(seg, TAG_PREFIX + key)
        if value is not None:
            tags[key] = value
    return tags


def get_tag(segment: Any, key: str) -> str | None:
    """The value of tag ``key`` of a ``vtkSegment``, or ``None``."""
    value = vtk.reference("")
    return str(value) if segment.GetTag(key, value) else None


def export_segment_labelmap(
    segmentation_node: Any,
    reference_volume_node: Any,
    segments: Iterable[str] | None = None,
) -> np.ndarray:
    """Segments as labels ``[k, j, i]`` on the reference volume's grid (0 = background).

    ``segments`` (ids or names; default: all, in order) get labels 1, 2, ... in that order.
    """
    require_node(segmentation_node, "vtkMRMLSegmentationNode", "segmentation")
    require_node(reference_volume_node, "vtkMRMLVolumeNode", "reference volume")
    segmentation = segmentation_node.GetSegmentation()
    if segments is None:
        count = segmentation.GetNumberOfSegments()
        segment_ids = [segmentation.GetNthSegmentID(n) for n in range(count)]
    else:
        segment_ids = []
        for name in segments:
            segment_id = find_segment(segmentation, name)
            if segment_id is None:
                raise InvalidInputError(f"no segment '{name}' in '{segmentation_node.GetName()}'")
            segment_ids.append(segment_id)
    i, j, k = image_dims(reference_volume_node, "reference volume")
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
