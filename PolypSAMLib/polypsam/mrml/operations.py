"""What the PolypSAM buttons do, without Qt: Slicer nodes in, an engine in the middle, segments out.

Each operation reads its input through this package, runs an :class:`polypsam.engine.Engine`
(given, never built here) directly or through :mod:`polypsam.propagation`, and writes the results
only when every mask is computed (see :mod:`.jobs` for the read → compute → write runner). Track
lives in :mod:`.tracking`; :func:`run` dispatches a button's operation by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from .. import propagation
from ..engine import FramePrompt
from ..errors import InvalidInputError
from .jobs import (
    Background, Job, ProgressFn, RunResult, check_cancel, colour, intensity_for, noop_progress,
    require_input, require_output, require_rois, run as run_job, segment_name, write_all,
)
from .roi import roi_to_voxel_box
from .tracking import track
from .volumes import frame_from_vector_node, volume_from_node


# --------------------------------------------------------------------------------------------
# Segment (2-D) and Refine
# --------------------------------------------------------------------------------------------


def _image_and_boxes(input_node: Any, rois: Sequence[Any], key_slice: int):
    """``(is_vector, [(roi, k, Box)])``: the slice and 2-D box prompt of each ROI."""
    vector = input_node.IsA("vtkMRMLVectorVolumeNode")
    prompts = []
    for roi in rois:
        vb = roi_to_voxel_box(roi, input_node)
        k = 0 if vector else (key_slice if key_slice >= 0 else vb.key_slice)
        prompts.append((roi, k, vb.box_on_slice(k) if vb.k0 <= k <= vb.k1 else vb.box()))
    return vector, prompts


def segment_2d(
    engine: Any,
    input_node: Any,
    rois: Sequence[Any],
    segmentation_node: Any,
    *,
    key_slice: int = -1,
    window_preset: str = "display",
    editor_node: Any = None,
    progress: Optional[ProgressFn] = None,
    cancel=None,
    background: Optional[Background] = None,
) -> RunResult:
    """One segment per ROI from a 2-D box prompt on one slice (volume) or on an RGB frame.

    The mask replaces the segment on that slice only (the changed region); other slices and
    other segments are kept. With the Segment Editor's ``editor_node``, its masking settings
    (editable area, intensity range, overwrite mode) limit the write.
    """
    progress = progress or noop_progress
    input_node = require_input(input_node)
    segmentation_node = require_output(segmentation_node)
    rois = require_rois(rois)
    vector, prompts = _image_and_boxes(input_node, rois, key_slice)
    if vector:
        volume_array = frame_from_vector_node(input_node)[None]
        intensity, source = None, None
    else:
        volume_array = source = volume_from_node(input_node).array
        intensity = intensity_for(input_node, window_preset)
    height, width = volume_array.shape[1:3]
    terminology = "polyp" if vector else "lesion"  # endoscopy frames show polyps; CT, lesions
    slices = sorted({k for _, k, _ in prompts})
    # Scene reads stay here; the compute phase below sees plain values only.
    items = [(k, rois.index(roi), segment_name(roi), roi.GetID(), box) for roi, k, box in prompts]
    info = engine.info.provenance()

    def compute() -> tuple[list[dict], dict[str, float]]:
        writes, scores = [], {}
        for n, k in enumerate(slices):
            check_cancel(cancel)
            progress(n, len(slices), f"segmenting slice {k}")
            here = [item for item in items if item[0] == k]
            results = engine.segment_2d(volume_array[k], [item[4] for item in here],
                                        intensity=intensity)
            for (_, index, name, roi_id, box), res in zip(here, results):
                scores[name] = float(res.score)
                writes.append(dict(
                    segment=name,
                    mask_kji=np.asarray(res.mask, dtype=bool)[None],
                    region=(0, width - 1, 0, height - 1, k, k),
                    color=colour(index), terminology=terminology,
                    provenance={**info, "operation": "segment", "box": box, "key_slice": k,
                                "roi": roi_id, "score": f"{res.score:.4f}"},
                ))
        return writes, scores

    def write(out: tuple[list[dict], dict[str, float]]) -> RunResult:
        writes, scores = out
        progress(len(slices), len(slices), "writing segments")
        result = write_all(segmentation_node, writes, input_node, editor_node=editor_node,
                           source_kji=source)
        result.scores = scores
        result.summary = f"segmented {len(writes)} box(es) on slice(s) {', '.join(map(str, slices))}"
        return result

    return run_job(Job(compute, write), background=background, cancel=cancel)


# --------------------------------------------------------------------------------------------
# Propagate (3-D through a volume)
# --------------------------------------------------------------------------------------------


def propagate(
    engine: Any,
    input_node: Any,
    rois: Sequence[Any],
    segmentation_node: Any,
    *,
    key_slice: int = -1,
    slice_range: tuple[int, int] = (-1, -1),
    window_preset: str = "display",
    refinement_rois: Sequence[Any] = (),
    editor_node: Any = None,
    progress: Optional[ProgressFn] = None,
    cancel=None,
    background: Optional[Background] = None,
) -> RunResult:
    """Segment each ROI on its key slice and propagate through its slice range (both ways).

    Key slice: the override if >= 0, else the slice the box was drawn on (the middle of its
    extent along K). Slice range: the override where >= 0, else the box's extent along K,
    widened to cover the ``refinement_rois`` (extra boxes on other slices for the first ROI's
    object, see :func:`refine`). The segment is replaced inside the written slices only.
    """
    progress = progress or noop_progress
    input_node = require_input(input_node)
    if input_node.IsA("vtkMRMLVectorVolumeNode"):
        raise InvalidInputError("Propagate needs a scalar volume; use Segment for an RGB frame"
                                " or Track for a video")
    segmentation_node = require_output(segmentation_node)
    rois = require_rois(rois)
    volume = volume_from_node(input_node)
    depth, height, width = volume.shape
    intensity = intensity_for(input_node, window_preset)
    refinements = []
    refine_slices = []
    for roi in refinement_rois:
        vb = roi_to_voxel_box(roi, input_node)
        refinements.append(FramePrompt(frame=vb.key_slice, obj_id=1, box=vb.box_on_slice(vb.key_slice)))
        refine_slices.append(vb.key_slice)
    jobs = []  # scene reads: one (key, k0, k1, box, name, roi id) per ROI
    for index, roi in enumerate(rois):
        vb = roi_to_voxel_box(roi, input_node)
        k0 = slice_range[0] if slice_range[0] >= 0 else vb.k0
        k1 = slice_range[1] if slice_range[1] >= 0 else vb.k1
        extra = refine_slices if index == 0 else []
        k0, k1 = min([k0, k1, *extra]), max([k0, k1, *extra])
        k0, k1 = max(0, k0), min(depth - 1, k1)
        key = key_slice if key_slice >= 0 else vb.key_slice
        if not k0 <= key <= k1:
            raise InvalidInputError(f"key slice {key} is outside the slice range {k0}..{k1}")
        box = vb.box_on_slice(key) if vb.k0 <= key <= vb.k1 else vb.box()
        jobs.append((key, k0, k1, box, segment_name(roi), roi.GetID()))
    info = engine.info.provenance()

    def compute() -> list[dict]:
        writes = []
        for index, (key, k0, k1, box, name, roi_id) in enumerate(jobs):
            check_cancel(cancel)

            def box_progress(done: int, total: int, _index=index) -> None:
                progress(_index * 1000 + int(1000 * done / max(total, 1)), len(jobs) * 1000,
                         f"box {_index + 1}/{len(jobs)}: slice {done}/{total}")

            out = propagation.propagate(engine, volume, [box], (k0, k1), key,
                                        refinements=refinements if index == 0 else (),
                                        intensity=intensity, cancel=cancel, progress=box_progress)
            s0, s1 = (int(v) for v in out.slices)
            refined = bool(refinements) and index == 0
            writes.append(dict(
                segment=name, mask_kji=np.asarray(out.labelmap.array[s0:s1 + 1] == 1),
                region=(0, width - 1, 0, height - 1, s0, s1), color=colour(index),
                terminology="lesion",
                provenance={**info, "operation": "refine" if refined else "propagate",
                            "box": box, "key_slice": key, "slice_range": (s0, s1),
                            "refinement_slices": tuple(refine_slices) if index == 0 else (),
                            "score": f"{out.scores.get(1, float('nan')):.4f}", "roi": roi_id},
            ))
        return writes

    def write(writes: list[dict]) -> RunResult:
        progress(len(rois) * 1000, len(rois) * 1000, "writing segments")
        result = write_all(segmentation_node, writes, input_node, editor_node=editor_node,
                           source_kji=volume.array)
        result.summary = f"propagated {len(writes)} box(es)"
        return result

    return run_job(Job(compute, write), background=background, cancel=cancel)


def refine(
    engine: Any,
    input_node: Any,
    rois: Sequence[Any],
    segmentation_node: Any,
    *,
    browser_node: Any = None,
    key_slice: int = -1,
    slice_range: tuple[int, int] = (-1, -1),
    window_preset: str = "display",
    editor_node: Any = None,
    progress: Optional[ProgressFn] = None,
    cancel=None,
    background: Optional[Background] = None,
) -> RunResult:
    """Re-run the first ROI's object with the other ROIs as extra boxes on other slices/frames.

    * a scalar volume: propagation with the extra boxes as conditioning slices;
    * a sequence (browser given, and the input is none, an RGB frame or the browser's proxy):
      tracking with the extra boxes as conditioning frames (time points of a 4-D sequence);
    * a single RGB frame: each box re-segments the first ROI's segment in 2-D.
    """
    rois = require_rois(rois)
    first, extra = rois[0], list(rois[1:])
    if browser_node is not None and (input_node is None or input_node.IsA("vtkMRMLVectorVolumeNode")
                                     or browser_node.IsProxyNodeID(input_node.GetID())):
        return track(engine, browser_node, [first], segmentation_node, refinement_rois=extra,
                     window_preset=window_preset, progress=progress, cancel=cancel,
                     background=background)
    input_node = require_input(input_node)
    if not input_node.IsA("vtkMRMLVectorVolumeNode"):
        return propagate(engine, input_node, [first], segmentation_node, key_slice=key_slice,
                         slice_range=slice_range, window_preset=window_preset,
                         refinement_rois=extra, editor_node=editor_node, progress=progress,
                         cancel=cancel, background=background)
    target = segment_name(first)
    out = segment_2d(engine, input_node, [_Renamed(roi, target) for roi in rois], segmentation_node,
                     window_preset=window_preset, editor_node=editor_node, progress=progress,
                     cancel=cancel, background=background)
    out.summary = f"refined segment '{target}' with {len(rois)} box(es)"
    return out


class _Renamed:
    """An ROI node seen under another name (the segment a Refine writes to)."""

    def __init__(self, roi: Any, name: str) -> None:
        self._roi = roi
        self._name = name

    def GetName(self) -> str:  # noqa: N802 - MRML naming
        return self._name

    def __getattr__(self, attr: str):
        return getattr(self._roi, attr)


# --------------------------------------------------------------------------------------------
# One entry point for the module's buttons
# --------------------------------------------------------------------------------------------


@dataclass
class Request:
    """What a button runs on: the module's parameter node, read as plain values and nodes."""

    input_node: Any = None
    browser_node: Any = None
    rois: Sequence[Any] = ()
    segmentation_node: Any = None
    key_slice: int = -1
    slice_range: tuple[int, int] = (-1, -1)
    window_preset: str = "display"
    editor_node: Any = None  # the Segment Editor's node: its masking settings limit the writes


OPERATIONS = ("segment", "propagate", "track", "refine")


def run(
    operation: str,
    engine: Any,
    request: Request,
    *,
    progress: Optional[ProgressFn] = None,
    cancel=None,
    background: Optional[Background] = None,
) -> RunResult:
    """Run one of :data:`OPERATIONS` on ``request`` (read → compute → write)."""
    r = request
    common = dict(window_preset=r.window_preset, progress=progress, cancel=cancel,
                  background=background)
    if operation == "segment":
        return segment_2d(engine, r.input_node, list(r.rois), r.segmentation_node,
                          key_slice=r.key_slice, editor_node=r.editor_node, **common)
    if operation == "propagate":
        return propagate(engine, r.input_node, list(r.rois), r.segmentation_node,
                         key_slice=r.key_slice, slice_range=tuple(r.slice_range),
                         editor_node=r.editor_node, **common)
    if operation == "track":
        return track(engine, r.browser_node, list(r.rois), r.segmentation_node, **common)
    if operation == "refine":
        return refine(engine, r.input_node, list(r.rois), r.segmentation_node,
                      browser_node=r.browser_node, key_slice=r.key_slice,
                      slice_range=tuple(r.slice_range), editor_node=r.editor_node, **common)
    raise InvalidInputError(f"unknown operation {operation!r}: use one of {', '.join(OPERATIONS)}")
