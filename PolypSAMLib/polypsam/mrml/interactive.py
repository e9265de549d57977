"""The click tools as plans: clicks, candidates, and propagations seeded by clicks or a segment.

* :func:`clicks` — the target segment's include/exclude point lists (and the first box) re-segment
  every clicked slice in 2-D (on a video, the frame shown from its own clicks only); the segment's current mask goes along as SAM2's mask input. On a
  slice already encoded only SAM2's prompt encoder and mask decoder run. With ``multimask`` the
  result keeps SAM2's three candidates per slice and the best one is written;
* :func:`candidate` writes another of them (no model work);
* :func:`propagate_clicks` — a key prompt (the box, the clicks on the key slice, and for "Start
  from segment" the segment's own mask there) propagated through the volume; clicks on other
  slices become SAM2 conditioning slices; with the previous result only the directions a new
  click affects are tracked again. On a video it tracks instead
  (:func:`polypsam.mrml.tracking.track_clicks`).

Every write follows the Segment Editor's masking settings (see :mod:`.writer`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import propagation
from ..engine import FramePrompt, Prompt
from ..errors import InvalidInputError
from .clicks import clicks_by_slice, clicks_from_markups
from .masking import reference_to_node, segment_crop
from .roi import box_prompts
from .segments import find_segment
from .shapes import (
    Plan, Request, Result, check_cancel, require_input, require_output, require_segment,
)
from .video_clicks import clicks_on_frame
from .volumes import frame_from_vector_node, intensity_for, volume_from_node, volume_voxels
from .writer import RegionWrite, check_masking, colour


def _read_input(input_node: Any):
    """``(images K x H x W[ x 3], source voxels or None, is_rgb)``: an RGB frame is one slice; a
    volume's voxels are a read-only view (a click reads its slice, not a copy of the volume)."""
    input_node = require_input(input_node)
    if input_node.IsA("vtkMRMLVectorVolumeNode"):
        return frame_from_vector_node(input_node)[None], None, True
    voxels = volume_voxels(input_node)
    return voxels, voxels, False


def _segment_slices(segmentation_node: Any, segment: str, reference: Any,
                    shape) -> np.ndarray | None:
    """The segment's voxels on the whole reference grid (``None`` if there is no such segment)."""
    segment_id = find_segment(segmentation_node.GetSegmentation(), segment)
    if segment_id is None:
        return None
    nk, nj, ni = shape
    image_to_node = reference_to_node(segmentation_node, reference)
    return segment_crop(segmentation_node, segment_id, image_to_node, (0, ni - 1, 0, nj - 1, 0, nk - 1))


def clicks(request: Request, engine: Any, context: Any) -> Plan:
    """Re-segment every clicked slice of the request's segment in 2-D from its clicks.

    The first box adds its box on each clicked slice it covers (without clicks, its key slice is
    segmented); the segment's current mask on a slice goes along as SAM2's mask input (refine
    rather than start over).
    """
    segmentation_node = require_output(request.segmentation_node)
    segment = require_segment(request.segment)
    input_node = request.input_node
    images, source, rgb = _read_input(input_node)
    intensity = None if rgb else intensity_for(input_node, request.window_preset)
    nk, height, width = images.shape[:3]
    clicked = clicks_from_markups(input_node, request.include, request.exclude)
    video = request.video_browser  # a video frame: only the clicks (and box) of the frame shown
    shown = max(0, int(video.GetSelectedItemNumber())) if video is not None else 0
    if video is not None:
        clicked = clicks_on_frame(clicked, {True: request.include, False: request.exclude},
                                  video, shown)
    by_slice = clicks_by_slice(clicked)
    box_of = {}
    boxes = box_prompts(request.rois[:1], input_node, shown)
    if boxes and (video is None or boxes[0].frame == shown):
        (p,) = boxes
        if not by_slice:
            by_slice = {0 if rgb else p.key_slice: ([], [])}
        for k in by_slice:
            box = p.voxels.box() if rgb else p.box_within(k)  # a frame: the ROI's whole box
            if box is not None:
                box_of[k] = box
    if not by_slice:
        where = f" on frame {shown}, the frame shown" if video is not None else ""
        raise InvalidInputError(f"no clicks{where}: place include points (or give a box) first")
    existing = _segment_slices(segmentation_node, segment, input_node, (nk, height, width))
    prompts = {}
    for k, (points, labels) in by_slice.items():
        mask = existing[k] if existing is not None and existing[k].any() else None
        prompts[k] = Prompt(box=box_of.get(k), points=points, labels=labels, mask=mask)
    check_masking(request.editor_node, rgb, input_node)
    progress, cancel = context.progress, context.cancel

    def compute() -> dict:
        out = {}
        for n, (k, prompt) in enumerate(prompts.items()):
            check_cancel(cancel)
            progress(n, len(prompts), f"clicks on slice {k}")
            (out[k],) = engine.segment_2d(images[k], [prompt], intensity=intensity,
                                          multimask=request.multimask)
        return out

    def writes(results: dict) -> list[RegionWrite]:
        return [RegionWrite(segment, res.mask[None], (0, width - 1, 0, height - 1, k, k), colour(0),
                            provenance={"operation": "clicks", "slice": k,
                                        "prompt": prompts[k].to_dict(),
                                        "score": f"{res.score:.4f}"})
                for k, res in results.items()]

    def report(results: dict, written) -> Result:
        result = Result(segment=segment)
        for k, res in results.items():
            result.scores[f"slice {k}"] = float(res.score)
            if res.candidates:
                result.candidates[k] = (list(res.candidates), list(res.candidate_scores))
                result.chosen[k] = res.best
        result.summary = (f"segmented '{segment}' on slice(s) {', '.join(map(str, results))}"
                          f" from {sum(len(p.points) for p in prompts.values())} click(s)"
                          + describe_candidate(result))
        return result

    return Plan(compute, writes, report, input_node, source, engine.info.provenance())


def describe_candidate(result: Result) -> str:
    """`` — candidate n/3 on slice k (predicted IoU x)`` for the last clicked slice, if any."""
    if not result.candidates:
        return ""
    k = max(result.candidates)
    _masks, scores = result.candidates[k]
    chosen = result.chosen[k]
    return (f" — candidate {chosen + 1}/{len(scores)} on slice {k}"
            f" (predicted IoU {scores[chosen]:.2f})")


def candidate(request: Request, engine: Any, context: Any) -> Plan:
    """Write another of SAM2's candidates of the previous click result (``request.previous``):
    ``request.candidate`` (0..2), or the next one (``-1``), on its last clicked slice. Without
    candidates (none kept for this input and segment) nothing is written and the summary says so."""
    del engine, context
    result = request.previous
    if result is None or not result.candidates:  # nothing to write: say so (no undo step)
        return Plan(lambda: None, lambda _: [], lambda _, written: Result(
            summary="No candidates: check 'Show 3 candidates' and click first."))
    slice_k = max(result.candidates)
    masks, scores = result.candidates[slice_k]
    index = request.candidate
    if index < 0:
        index = (result.chosen[slice_k] + 1) % len(masks)
    if not 0 <= index < len(masks):
        raise InvalidInputError(f"candidate {index} does not exist: choose 0..{len(masks) - 1}")
    require_output(request.segmentation_node)
    images, source, rgb = _read_input(request.input_node)
    height, width = images.shape[1:3]
    check_masking(request.editor_node, rgb, request.input_node)

    def writes(_: Any) -> list[RegionWrite]:
        return [RegionWrite(result.segment, np.asarray(masks[index])[None],
                            (0, width - 1, 0, height - 1, slice_k, slice_k),
                            provenance={"candidate": str(index), "score": f"{scores[index]:.4f}"})]

    def report(_: Any, written) -> Result:
        result.chosen[slice_k] = index
        result.scores[f"slice {slice_k}"] = float(scores[index])
        result.summary = f"'{result.segment}'" + describe_candidate(result)
        return result

    return Plan(lambda: None, writes, report, request.input_node, source, {})


def propagate_clicks(request: Request, engine: Any, context: Any,
                     from_segment: bool = False) -> Plan:
    """Propagate the request's segment from a key prompt; clicks on other slices condition SAM2.

    Key slice: the override if >= 0, else the first box's key slice, else (``from_segment``) the
    segment's largest slice, else the slice of the first include click. Slice range: the
    override where >= 0, else the span of the box, the clicks and (``from_segment``) the segment.
    A video (the input is a sequence browser's RGB frame) is tracked instead.
    """
    if request.video_browser is not None and not from_segment:
        from .tracking import track_clicks

        return track_clicks(request, engine, context)
    segmentation_node = require_output(request.segmentation_node)
    input_node = require_input(request.input_node)
    if input_node.IsA("vtkMRMLVectorVolumeNode"):
        raise InvalidInputError("propagation needs a scalar volume; an RGB frame is one slice")
    segment = require_segment(request.segment)
    volume = volume_from_node(input_node)
    nk, nj, ni = volume.shape
    intensity = intensity_for(input_node, request.window_preset)
    clicked = clicks_from_markups(input_node, request.include, request.exclude)
    by_slice = clicks_by_slice(clicked)
    spans: list[int] = list(by_slice)
    box = None if from_segment or not request.rois else box_prompts(request.rois[:1], input_node)[0]
    if box is not None:
        spans += [box.voxels.k0, box.voxels.k1]
    seeded = None
    if from_segment:
        seeded = _segment_slices(segmentation_node, segment, input_node, volume.shape)
        if seeded is None or not seeded.any():
            raise InvalidInputError(
                f"segment '{segment}' is empty or missing: nothing to start from")
        ks = np.nonzero(seeded.any(axis=(1, 2)))[0]
        spans += [int(ks.min()), int(ks.max())]
    if request.key_slice >= 0:
        key = int(request.key_slice)
    elif box is not None:
        key = box.key_slice
    elif seeded is not None:
        key = int(np.argmax(seeded.sum(axis=(1, 2))))
    else:
        first = next((c for c in clicked if c.include), None)
        if first is None:
            raise InvalidInputError("no include click and no box: nothing to propagate from")
        key = first.k
    if not 0 <= key < nk:
        raise InvalidInputError(f"key slice {key} lies outside the volume's slices 0..{nk - 1}")
    start, end = request.slice_range
    k0 = start if start >= 0 else min(spans + [key])
    k1 = end if end >= 0 else max(spans + [key])
    points, labels = by_slice.get(key, ([], []))
    key_mask = seeded[key] if seeded is not None and seeded[key].any() else None
    key_box = box.box_within(key) if box is not None else None
    if key_box is None and not points and key_mask is None:
        raise InvalidInputError(f"no prompt on the key slice {key}: click there or give a box")
    key_prompt = Prompt(box=key_box, points=points, labels=labels, mask=key_mask)
    refinements = [FramePrompt(k, 1, points=p, labels=lab)
                   for k, (p, lab) in by_slice.items() if k != key]
    check_masking(request.editor_node, False, input_node)
    previous = request.previous.propagation if request.previous is not None else None
    progress, cancel = context.progress, context.cancel

    def compute() -> propagation.PropagationResult:
        def report(done: int, total: int) -> None:
            progress(done, total, f"slice {done}/{total}")

        return propagation.propagate(
            engine, volume, [key_prompt], (k0, k1), key, refinements=refinements,
            intensity=intensity, previous=previous, cancel=cancel, progress=report)

    def writes(out: propagation.PropagationResult) -> list[RegionWrite]:
        s0, s1 = (int(v) for v in out.slices)
        return [RegionWrite(
            segment, out.slab(), (0, ni - 1, 0, nj - 1, s0, s1), colour(0),
            provenance={"operation": "start-from-segment" if from_segment else "propagate-clicks",
                        "key_slice": key, "slice_range": (s0, s1), "prompt": key_prompt.to_dict(),
                        "refinements": [r.to_dict() for r in refinements],
                        "score": f"{out.scores.get(1, float('nan')):.4f}"})]

    def report(out: propagation.PropagationResult, written) -> Result:
        tracked = ", ".join(f"{d} {n}" for d, n in out.tracked.items()) or "none"
        s0, s1 = (int(v) for v in out.slices)
        return Result(segment=segment, propagation=out,
                      scores={"key slice": float(out.scores.get(1, float("nan")))},
                      summary=f"propagated '{segment}' from slice {key} over {s0}..{s1}"
                              f" (tracked: {tracked})")

    return Plan(compute, writes, report, input_node, volume.array, engine.info.provenance())


def start_from_segment(request: Request, engine: Any, context: Any) -> Plan:
    """"Start from segment": the segment's own mask seeds the propagation (clicks may add)."""
    return propagate_clicks(request, engine, context, from_segment=True)
