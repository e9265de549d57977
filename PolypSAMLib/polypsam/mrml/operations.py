"""The box buttons: Segment (2-D), Propagate (3-D) and Refine, as plans.

Each function reads what it needs from the scene for a :class:`~.shapes.Request` and returns a
:class:`~.shapes.Plan`: the model work (on plain arrays) and the writes it makes. The box ROIs
become prompts in one place (:func:`.roi.box_prompts`); every write goes through the one writer
(:mod:`.writer`). Track lives in :mod:`.tracking`, the click tools in :mod:`.interactive`; the
one entry point that runs them all is :mod:`.session`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from .. import propagation
from ..engine import FramePrompt
from ..errors import InvalidInputError
from .roi import BoxPrompt, box_prompts
from .shapes import (
    Plan, Request, Result, check_cancel, require_input, require_output, require_rois,
)
from .volumes import frame_from_vector_node, intensity_for, volume_from_node, volume_voxels
from .writer import RegionWrite, check_masking, colour


def segment(request: Request, engine: Any, context: Any, boxes: list[BoxPrompt] | None = None) -> Plan:
    """One segment per box from a 2-D box prompt on one slice (volume) or on an RGB frame.

    The slice: the key-slice override if >= 0, else the slice the box was drawn on. The mask
    replaces the segment on that slice only; other slices and other segments are kept.
    ``boxes`` (default: the request's ROIs) may name other segments (Refine on a frame).
    """
    input_node = require_input(request.input_node)
    require_output(request.segmentation_node)
    rgb = input_node.IsA("vtkMRMLVectorVolumeNode")
    if boxes is None:
        boxes = box_prompts(require_rois(request.rois), input_node)
    check_masking(request.editor_node, rgb, input_node)
    if rgb:
        images, source, intensity = frame_from_vector_node(input_node)[None], None, None
    else:
        images = source = volume_voxels(input_node)  # a view: the slices are read, not copied
        intensity = intensity_for(input_node, request.window_preset)
    height, width = images.shape[1:3]
    terminology = "polyp" if rgb else "lesion"  # endoscopy frames show polyps; CT, lesions
    key = request.key_slice
    items = []  # (slice, box index, prompt, its box on that slice)
    for index, p in enumerate(boxes):
        k = 0 if rgb else (key if key >= 0 else p.key_slice)
        items.append((k, index, p, p.box(k)))
    slices = sorted({k for k, *_ in items})
    progress, cancel = context.progress, context.cancel

    def compute() -> dict[int, list]:
        out = {}
        for n, k in enumerate(slices):
            check_cancel(cancel)
            progress(n, len(slices), f"segmenting slice {k}")
            here = [item for item in items if item[0] == k]
            out[k] = engine.segment_2d(images[k], [item[3] for item in here], intensity=intensity)
        return out

    def ordered(out: dict[int, list]):
        for k in slices:
            yield from zip([item for item in items if item[0] == k], out[k])

    def writes(out: dict[int, list]) -> list[RegionWrite]:
        progress(len(slices), len(slices), "writing segments")
        return [RegionWrite(p.name, np.asarray(res.mask, dtype=bool)[None],
                            (0, width - 1, 0, height - 1, k, k), colour(index), terminology,
                            {"operation": "segment", "box": box, "key_slice": k, "roi": p.roi_id,
                             "score": f"{res.score:.4f}"})
                for (k, index, p, box), res in ordered(out)]

    def report(out: dict[int, list], written) -> Result:
        scores = {p.name: float(res.score) for (_, _, p, _), res in ordered(out)}
        return Result(scores=scores, summary=f"segmented {len(items)} box(es) on slice(s)"
                                             f" {', '.join(map(str, slices))}")

    return Plan(compute, writes, report, input_node, source, engine.info.provenance())


def propagate(request: Request, engine: Any, context: Any,
              refinement_rois: tuple = ()) -> Plan:
    """Segment each box on its key slice and propagate it through its slice range, both ways.

    Key slice: the override if >= 0, else the slice the box was drawn on (the middle of its
    extent along K). Slice range: the override where >= 0, else the box's extent along K,
    widened to cover the ``refinement_rois`` (extra boxes on other slices for the first box's
    object, see :func:`refine`). The segment is replaced inside the written slices only.
    """
    input_node = require_input(request.input_node)
    if input_node.IsA("vtkMRMLVectorVolumeNode"):
        raise InvalidInputError("Propagate needs a scalar volume; use Segment for an RGB frame"
                                " or Track for a video")
    require_output(request.segmentation_node)
    boxes = box_prompts(require_rois(request.rois), input_node)
    check_masking(request.editor_node, False, input_node)
    volume = volume_from_node(input_node)
    depth, height, width = volume.shape
    intensity = intensity_for(input_node, request.window_preset)
    extra = box_prompts(refinement_rois, input_node)
    refinements = [FramePrompt(frame=p.key_slice, obj_id=1, box=p.box(p.key_slice)) for p in extra]
    refine_slices = [p.key_slice for p in extra]
    jobs = []  # (key, k0, k1, box) per box
    start, end = request.slice_range
    for index, p in enumerate(boxes):
        k0 = start if start >= 0 else p.voxels.k0
        k1 = end if end >= 0 else p.voxels.k1
        widen = refine_slices if index == 0 else []
        k0, k1 = min([k0, k1, *widen]), max([k0, k1, *widen])
        k0, k1 = max(0, k0), min(depth - 1, k1)
        key = request.key_slice if request.key_slice >= 0 else p.key_slice
        if not k0 <= key <= k1:
            raise InvalidInputError(f"key slice {key} is outside the slice range {k0}..{k1}")
        jobs.append((key, k0, k1, p.box(key)))
    progress, cancel = context.progress, context.cancel
    total = len(jobs) * 1000

    def compute() -> list[propagation.PropagationResult]:
        out = []
        for index, (key, k0, k1, box) in enumerate(jobs):
            check_cancel(cancel)

            def box_progress(done: int, count: int, _index=index) -> None:
                progress(_index * 1000 + int(1000 * done / max(count, 1)), total,
                         f"box {_index + 1}/{len(jobs)}: slice {done}/{count}")

            out.append(propagation.propagate(
                engine, volume, [box], (k0, k1), key, refinements=refinements if index == 0 else (),
                intensity=intensity, cancel=cancel, progress=box_progress))
        return out

    def writes(out: list[propagation.PropagationResult]) -> list[RegionWrite]:
        progress(total, total, "writing segments")
        result = []
        for index, ((key, _, _, box), p, res) in enumerate(zip(jobs, boxes, out)):
            s0, s1 = (int(v) for v in res.slices)
            refined = bool(refinements) and index == 0
            result.append(RegionWrite(
                p.name, res.slab(), (0, width - 1, 0, height - 1, s0, s1),
                colour(index), "lesion",
                {"operation": "refine" if refined else "propagate", "box": box, "key_slice": key,
                 "slice_range": (s0, s1),
                 "refinement_slices": tuple(refine_slices) if index == 0 else (),
                 "score": f"{res.scores.get(1, float('nan')):.4f}", "roi": p.roi_id}))
        return result

    def report(out, written) -> Result:
        return Result(summary=f"propagated {len(out)} box(es)")

    return Plan(compute, writes, report, input_node, volume.array, engine.info.provenance())


def refine(request: Request, engine: Any, context: Any) -> Plan:
    """Re-run the first box's object with the other boxes as extra boxes on other slices/frames.

    * a sequence (a browser, and the input is none, an RGB frame or the browser's proxy):
      tracking with the extra boxes as conditioning frames (time points of a 4-D sequence);
    * a scalar volume: propagation with the extra boxes as conditioning slices;
    * a single RGB frame: each box re-segments the first box's segment in 2-D.
    """
    from .tracking import track

    rois = require_rois(request.rois)
    first, extra = rois[0], tuple(rois[1:])
    browser, input_node = request.browser_node, request.input_node
    if browser is not None and (input_node is None or input_node.IsA("vtkMRMLVectorVolumeNode")
                                or browser.IsProxyNodeID(input_node.GetID())):
        return track(request.with_(rois=(first,)), engine, context, refinement_rois=extra)
    input_node = require_input(input_node)
    if not input_node.IsA("vtkMRMLVectorVolumeNode"):
        return propagate(request.with_(rois=(first,)), engine, context, refinement_rois=extra)
    boxes = box_prompts(rois, input_node)
    target = boxes[0].name
    plan = segment(request, engine, context, boxes=[replace(p, name=target) for p in boxes])
    report = plan.report

    def refined(out, written) -> Result:
        result = report(out, written)
        result.summary = f"refined segment '{target}' with {len(rois)} box(es)"
        return result

    return replace(plan, report=refined)
