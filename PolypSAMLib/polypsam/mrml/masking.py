"""Writes that follow the Segment Editor's masking settings (read from a segment editor node).

What Slicer's Segment Editor applies to every effect (``qSlicerSegmentEditorAbstractEffect::
modifySegmentByLabelmap``): an *editable area* (mask mode: everywhere, inside/outside all or
visible segments, inside/outside one segment), an *editable intensity range* of the source
volume, and the *overwrite* mode for other segments (all, visible only, none). Here they are
applied to a computed mask on the reference volume's grid before anything is written:

* the target segment changes only inside the editable area (outside it keeps its voxels), as the
  editor's "set" modification: the modifier is masked, the segment outside the mask kept;
* "overwrite none" (the editor's "allow overlap"): other segments are never changed;
* "overwrite all/visible": the voxels the target gains inside the area are removed from the other
  (visible) segments, and nothing else of them changes.

The editable area of "inside/outside all (visible) segments" is computed from the segments other
than the one written.

Voxels outside the editable area therefore never change, in any segment. Computation is limited
to the written region (e.g. one slice, or the propagated slab). :func:`apply_masking` is used by
the one writer (:mod:`polypsam.mrml.writer`) for every region write.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from ..errors import InvalidInputError
from .nodes import Extent, matrix_to_numpy, node_to_world
from .segments import reference_grid, same_lattice, find_segment
from .volumes import volume_from_node

_S = slicer.vtkMRMLSegmentationNode
EVERYWHERE = _S.EditAllowedEverywhere
INSIDE_ALL, INSIDE_VISIBLE = _S.EditAllowedInsideAllSegments, _S.EditAllowedInsideVisibleSegments
OUTSIDE_ALL, OUTSIDE_VISIBLE = _S.EditAllowedOutsideAllSegments, _S.EditAllowedOutsideVisibleSegments
INSIDE_SINGLE = _S.EditAllowedInsideSingleSegment
_E = slicer.vtkMRMLSegmentEditorNode
OVERWRITE_ALL, OVERWRITE_VISIBLE, OVERWRITE_NONE = (
    _E.OverwriteAllSegments, _E.OverwriteVisibleSegments, _E.OverwriteNone,
)


@dataclass(frozen=True)
class EditorMasking:
    """The Segment Editor's masking settings as plain values (defaults: no masking at all)."""

    mask_mode: int = EVERYWHERE
    mask_segment_id: str = ""
    intensity_range: tuple[float, float] | None = None
    overwrite: int | None = None  # None: other segments are left alone (overlap allowed)
    source_volume_id: str = ""  # the Segment Editor's source volume: its intensities are masked

    @classmethod
    def from_editor_node(cls, editor_node: Any) -> "EditorMasking":
        """Read a ``vtkMRMLSegmentEditorNode`` (``None`` gives no masking)."""
        if editor_node is None:
            return cls()
        if not editor_node.IsA("vtkMRMLSegmentEditorNode"):
            raise InvalidInputError(
                f"masking settings come from a segment editor node, got a {editor_node.GetClassName()}"
            )
        intensity, source_id = None, ""
        if editor_node.GetSourceVolumeIntensityMask():
            lo, hi = editor_node.GetSourceVolumeIntensityMaskRange()
            intensity = (float(lo), float(hi))
            source = editor_node.GetSourceVolumeNode()
            source_id = source.GetID() if source is not None else ""
        return cls(
            mask_mode=int(editor_node.GetMaskMode()),
            mask_segment_id=editor_node.GetMaskSegmentID() or "",
            intensity_range=intensity,
            overwrite=int(editor_node.GetOverwriteMode()),
            source_volume_id=source_id,
        )


def check_masking_applies(masking: EditorMasking, rgb: bool) -> None:
    """Refuse an editable intensity range on an RGB frame (it has no scalar intensities)."""
    if rgb and masking.intensity_range is not None:
        raise InvalidInputError("an editable intensity range applies to scalar volumes, not RGB frames")


def intensity_source(masking: EditorMasking, reference: Any, source_kji: np.ndarray | None):
    """The voxels an editable intensity range applies to, on ``reference``'s grid: the Segment
    Editor's source volume's (Slicer masks the intensities of that volume:
    ``vtkSlicerSegmentEditorLogic::ModifySegmentByLabelmap``), ``source_kji`` (the reference's
    own) where it is the reference or unset. A source volume on another grid is refused."""
    sid = masking.source_volume_id
    if masking.intensity_range is None or not sid or reference is None or sid == reference.GetID():
        return source_kji
    node = reference.GetScene().GetNodeByID(sid) if reference.GetScene() is not None else None
    if node is None:
        raise InvalidInputError("the Segment Editor's source volume (its editable intensity range)"
                                " is no longer in the scene")
    grid = reference_grid(reference)
    if reference_grid(node).shape != grid.shape or not np.allclose(
            reference_grid(node).ijk_to_world, grid.ijk_to_world, atol=1e-4):
        raise InvalidInputError(
            f"the Segment Editor's source volume '{node.GetName()}' is not on the grid of"
            f" PolypSAM's input '{reference.GetName()}': its editable intensity range cannot apply;"
            " make the input the Segment Editor's source volume, or turn the range off")
    return volume_from_node(node).array


# -- segments read on the reference lattice ------------------------------------------------
def reference_to_node(segmentation_node: Any, reference: Any) -> np.ndarray:
    """The reference grid's IJK-to-node matrix of a segmentation node (its transforms undone)."""
    grid = reference_grid(reference)
    return np.linalg.inv(node_to_world(segmentation_node, "segmentation")) @ grid.ijk_to_world


def segment_crop(segmentation_node: Any, segment_id: str, image_to_node: np.ndarray,
                 extent: Extent) -> np.ndarray:
    """A segment's voxels ``[k, j, i]`` inside ``extent`` of the reference lattice (bool)."""
    i0, i1, j0, j1, k0, k1 = extent
    out = np.zeros((k1 - k0 + 1, j1 - j0 + 1, i1 - i0 + 1), dtype=bool)
    labelmap = segmentation_node.GetBinaryLabelmapInternalRepresentation(segment_id)
    if labelmap is None or labelmap.IsEmpty():
        return out
    old = np.array(labelmap.GetExtent()).reshape(3, 2)
    if np.any(old[:, 1] < old[:, 0]):
        return out
    matrix = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(matrix)
    theirs = matrix_to_numpy(matrix)
    if not same_lattice(theirs, image_to_node):
        raise InvalidInputError(
            f"segment '{segment_id}' lies on another voxel grid than the reference volume;"
            " choose the volume the segmentation was made on"
        )
    shift = np.round(np.linalg.solve(image_to_node[:3, :3], theirs[:3, 3] - image_to_node[:3, 3]))
    old_ref = old + shift.astype(int)[:, None]
    region = np.array(extent).reshape(3, 2)
    lo = np.maximum(old_ref[:, 0], region[:, 0])
    hi = np.minimum(old_ref[:, 1], region[:, 1])
    if np.any(hi < lo):
        return out
    dims = (old[:, 1] - old[:, 0] + 1)[::-1]
    label = segmentation_node.GetSegmentation().GetSegment(segment_id).GetLabelValue()
    values = numpy_support.vtk_to_numpy(labelmap.GetPointData().GetScalars()).reshape(tuple(dims))
    a = lo - old_ref[:, 0]
    b = hi - old_ref[:, 0] + 1
    src = values[a[2]:b[2], a[1]:b[1], a[0]:b[0]] == label
    c = lo - region[:, 0]
    out[c[2]:c[2] + src.shape[0], c[1]:c[1] + src.shape[1], c[0]:c[0] + src.shape[2]] = src
    return out


def _segment_ids(segmentation_node: Any) -> list[str]:
    segmentation = segmentation_node.GetSegmentation()
    return [segmentation.GetNthSegmentID(n) for n in range(segmentation.GetNumberOfSegments())]


def _visible(segmentation_node: Any, segment_id: str) -> bool:
    display = segmentation_node.GetDisplayNode()
    return True if display is None else bool(display.GetSegmentVisibility(segment_id))


# -- the editable area and the writes -------------------------------------------------------
def editable_area(
    masking: EditorMasking,
    segmentation_node: Any,
    others: dict[str, np.ndarray],
    extent: Extent,
    source_kji: np.ndarray | None,
    image_to_node: np.ndarray,
) -> np.ndarray:
    """Where the target segment may change inside ``extent`` (mask mode and intensity range)."""
    i0, i1, j0, j1, k0, k1 = extent
    shape = (k1 - k0 + 1, j1 - j0 + 1, i1 - i0 + 1)
    mode = masking.mask_mode
    if mode == EVERYWHERE:
        area = np.ones(shape, dtype=bool)
    elif mode in (INSIDE_ALL, INSIDE_VISIBLE, OUTSIDE_ALL, OUTSIDE_VISIBLE):
        visible_only = mode in (INSIDE_VISIBLE, OUTSIDE_VISIBLE)
        union = np.zeros(shape, dtype=bool)
        for sid, crop in others.items():
            if not visible_only or _visible(segmentation_node, sid):
                union |= crop
        area = union if mode in (INSIDE_ALL, INSIDE_VISIBLE) else ~union
    elif mode == INSIDE_SINGLE:
        sid = masking.mask_segment_id
        if not sid or segmentation_node.GetSegmentation().GetSegment(sid) is None:
            raise InvalidInputError(
                "the Segment Editor's editable area is one segment, but that segment is not set"
                " or no longer exists"
            )
        inside = others[sid] if sid in others else segment_crop(
            segmentation_node, sid, image_to_node, extent)
        area = inside.copy()
    else:
        raise InvalidInputError(f"unknown Segment Editor mask mode {mode}")
    if masking.intensity_range is not None:
        if source_kji is None:
            raise InvalidInputError("an editable intensity range needs the source volume's voxels")
        lo, hi = masking.intensity_range
        src = source_kji[k0:k1 + 1, j0:j1 + 1, i0:i1 + 1]
        area &= (src >= lo) & (src <= hi)
    return area


def apply_masking(
    segmentation_node: Any,
    segment: str,
    mask_crop: np.ndarray,
    extent: Extent,
    reference: Any,
    masking: EditorMasking,
    source_kji: np.ndarray | None = None,
) -> tuple[np.ndarray, list[tuple[str, np.ndarray]]]:
    """``mask_crop`` for ``segment`` limited by ``masking``: ``(its crop to write, [(other segment
    id, that segment's new crop)])``, all over ``extent``.

    ``mask_crop`` covers ``extent`` (inclusive ``i0, i1, j0, j1, k0, k1``) of the reference grid;
    ``source_kji`` are the source volume's voxels (needed for an intensity range). Without any
    masking (the default :class:`EditorMasking`) the crop comes back as it is.
    """
    mask_crop = np.asarray(mask_crop, dtype=bool)
    if masking == EditorMasking():
        return mask_crop, []
    image_to_node = reference_to_node(segmentation_node, reference)
    target_id = find_segment(segmentation_node.GetSegmentation(), segment)
    others = {
        sid: segment_crop(segmentation_node, sid, image_to_node, extent)
        for sid in _segment_ids(segmentation_node) if sid != target_id
    }
    area = editable_area(masking, segmentation_node, others, extent, source_kji, image_to_node)
    old = (segment_crop(segmentation_node, target_id, image_to_node, extent)
           if target_id is not None else np.zeros_like(mask_crop))
    final = np.where(area, mask_crop, old)
    changed = []
    if masking.overwrite in (OVERWRITE_ALL, OVERWRITE_VISIBLE):
        gained = final & area
        for sid, crop in others.items():
            if masking.overwrite == OVERWRITE_VISIBLE and not _visible(segmentation_node, sid):
                continue
            if np.any(crop & gained):
                changed.append((sid, crop & ~gained))
    return final, changed
