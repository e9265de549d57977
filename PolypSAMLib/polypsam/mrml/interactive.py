"""Clicks, candidates and existing segments as prompts: the operations behind the click tools.

Qt-free like every operation here (read the scene → compute with the engine → write; see
:mod:`.jobs`). The module's widget calls them:

* :func:`segment_with_clicks` — the include/exclude point lists (and optionally a box ROI and the
  segment's current mask) re-segment every clicked slice in 2-D at once; on a slice that was
  already encoded only SAM2's prompt encoder and mask decoder run. ``multimask=True`` keeps
  SAM2's three candidates per slice (:attr:`ClickResult.candidates`) and writes the best one;
  :func:`choose_candidate` writes another one (the candidate chooser).
* :func:`propagate_with_clicks` — a key prompt (box, clicks on the key slice, and with
  ``from_segment=True`` the segment's own mask there: "Start from segment") propagated through
  the volume; clicks on other slices become SAM2 conditioning slices. Given the previous result
  (:attr:`ClickResult.propagation`), only the directions a new click affects are tracked again.
* :func:`start_from_segment` — :func:`propagate_with_clicks` seeded by the segment itself.

Every write follows the Segment Editor's masking settings when a segment editor node is given
(:mod:`.masking`): voxels outside the editable area never change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from .. import propagation
from ..engine import FramePrompt, Prompt
from ..errors import InvalidInputError
from .clicks import clicks_by_slice, clicks_from_markups
from .jobs import (
    Background, Job, ProgressFn, RunResult, check_cancel, colour, intensity_for, noop_progress,
    require_input, require_output, run as run_job, write_all,
)
from .masking import (
    EditorMasking, check_masking_applies, reference_to_node, masked_writes, segment_crop,
)
from .roi import roi_to_voxel_box
from .segments import find_segment
from .volumes import frame_from_vector_node, volume_from_node


@dataclass
class ClickResult(RunResult):
    """What a click operation wrote, plus what the widget needs next.

    ``candidates[k] = (masks, scores)``: SAM2's three candidates on slice ``k`` (with
    ``multimask``); ``chosen[k]`` the index written. ``propagation`` is the last propagation (pass
    it back as ``previous`` to re-track only the affected directions).
    """

    segment: str = ""
    candidates: dict[int, tuple[list[np.ndarray], list[float]]] = field(default_factory=dict)
    chosen: dict[int, int] = field(default_factory=dict)
    propagation: Optional[propagation.PropagationResult] = None


def _read_input(input_node: Any):
    """``(images K x H x W[ x 3], source voxels or None, is_rgb)``: an RGB frame is one slice."""
    input_node = require_input(input_node)
    if input_node.IsA("vtkMRMLVectorVolumeNode"):
        return frame_from_vector_node(input_node)[None], None, True
    volume = volume_from_node(input_node)
    return volume.array, volume.array, False


def _segment_slices(segmentation_node: Any, segment: str, reference: Any, shape) -> np.ndarray | None:
    """The segment's voxels on the whole reference grid (``None`` if there is no such segment)."""
    segment_id = find_segment(segmentation_node.GetSegmentation(), segment)
    if segment_id is None:
        return None
    nk, nj, ni = shape
    return segment_crop(segmentation_node, segment_id, reference_to_node(segmentation_node, reference),
                        (0, ni - 1, 0, nj - 1, 0, nk - 1))


def segment_with_clicks(
    engine: Any,
    input_node: Any,
    segmentation_node: Any,
    segment: str,
    *,
    include: Any = None,
    exclude: Any = None,
    roi: Any = None,
    use_segment: bool = False,
    multimask: bool = False,
    editor_node: Any = None,
    window_preset: str = "display",
    color=None,
    progress: Optional[ProgressFn] = None,
    cancel=None,
    background: Optional[Background] = None,
) -> ClickResult:
    """Re-segment every clicked slice of ``segment`` in 2-D from the clicks (one undo step).

    ``include``/``exclude`` are markups point lists; ``roi`` adds its box on each clicked slice it
    covers (without clicks, its key slice is segmented); ``use_segment`` adds the segment's
    current mask on the slice as SAM2's mask input (refine rather than start over).
    """
    progress = progress or noop_progress
    segmentation_node = require_output(segmentation_node)
    if not segment:
        raise InvalidInputError("no segment name given for the clicks")
    images, source, rgb = _read_input(input_node)
    intensity = None if rgb else intensity_for(input_node, window_preset)
    nk, height, width = images.shape[:3]
    by_slice = clicks_by_slice(clicks_from_markups(input_node, include, exclude))
    box_of = {}
    if roi is not None:
        vb = roi_to_voxel_box(roi, input_node)
        if not by_slice:
            by_slice = {0 if rgb else vb.key_slice: ([], [])}
        for k in by_slice:
            if rgb or vb.k0 <= k <= vb.k1:
                box_of[k] = vb.box_on_slice(k) if not rgb else vb.box()
    if not by_slice:
        raise InvalidInputError("no clicks: place include points (or give a box) first")
    existing = None
    if use_segment:
        existing = _segment_slices(segmentation_node, segment, input_node, (nk, height, width))
    prompts = {}
    for k, (points, labels) in by_slice.items():
        mask = None
        if existing is not None and existing[k].any():
            mask = existing[k]
        prompts[k] = Prompt(box=box_of.get(k), points=points, labels=labels, mask=mask)
        prompts[k].validate(width, height)
    masking = EditorMasking.from_editor_node(editor_node)
    check_masking_applies(masking, rgb)
    info = engine.info.provenance()
    color = color if color is not None else colour(0)

    def compute():
        out = {}
        for n, (k, prompt) in enumerate(prompts.items()):
            check_cancel(cancel)
            progress(n, len(prompts), f"clicks on slice {k}")
            (res,) = engine.segment_2d(images[k], [prompt], intensity=intensity, multimask=multimask)
            out[k] = res
        return out

    def write(results) -> ClickResult:
        writes = []
        for k, res in results.items():
            writes += masked_writes(
                segmentation_node, segment, res.mask[None], (0, width - 1, 0, height - 1, k, k),
                input_node, masking, source_kji=source, color=color,
                provenance={**info, "operation": "clicks", "slice": k,
                            "prompt": prompts[k].to_dict(), "score": f"{res.score:.4f}"},
            )
        result = ClickResult(segment=segment)
        result.segment_ids.update(write_all(segmentation_node, writes, input_node).segment_ids)
        for k, res in results.items():
            result.scores[f"slice {k}"] = float(res.score)
            if res.candidates:
                result.candidates[k] = (list(res.candidates), list(res.candidate_scores))
                result.chosen[k] = res.best
        result.summary = (f"segmented '{segment}' on slice(s) {', '.join(map(str, results))}"
                          f" from {sum(len(p.points) for p in prompts.values())} click(s)")
        return result

    return run_job(Job(compute, write), background=background, cancel=cancel)


def choose_candidate(
    segmentation_node: Any,
    input_node: Any,
    result: ClickResult,
    slice_k: int,
    index: int,
    *,
    editor_node: Any = None,
) -> ClickResult:
    """Write candidate ``index`` (0..2) of slice ``slice_k`` of ``result`` (one undo step)."""
    if slice_k not in result.candidates:
        raise InvalidInputError(f"no candidates on slice {slice_k}: segment with multimask first")
    masks, scores = result.candidates[slice_k]
    if not 0 <= index < len(masks):
        raise InvalidInputError(f"candidate {index} does not exist: choose 0..{len(masks) - 1}")
    images, source, rgb = _read_input(input_node)
    height, width = images.shape[1:3]
    masking = EditorMasking.from_editor_node(editor_node)
    check_masking_applies(masking, rgb)
    writes = masked_writes(
        segmentation_node, result.segment, np.asarray(masks[index])[None],
        (0, width - 1, 0, height - 1, slice_k, slice_k), input_node, masking, source_kji=source,
        provenance={"candidate": str(index), "score": f"{scores[index]:.4f}"},
    )
    write_all(segmentation_node, writes, input_node)
    result.chosen[slice_k] = index
    result.scores[f"slice {slice_k}"] = float(scores[index])
    result.summary = f"candidate {index + 1} of 3 on slice {slice_k} (score {scores[index]:.3f})"
    return result


def propagate_with_clicks(
    engine: Any,
    input_node: Any,
    segmentation_node: Any,
    segment: str,
    *,
    include: Any = None,
    exclude: Any = None,
    roi: Any = None,
    from_segment: bool = False,
    key_slice: int = -1,
    slice_range: tuple[int, int] | None = None,
    until: str = "range",
    previous: Optional[propagation.PropagationResult] = None,
    editor_node: Any = None,
    window_preset: str = "display",
    color=None,
    progress: Optional[ProgressFn] = None,
    cancel=None,
    background: Optional[Background] = None,
) -> ClickResult:
    """Propagate ``segment`` from a key prompt; clicks on other slices condition the tracker.

    Key slice: ``key_slice`` if >= 0, else the ROI's key slice, else (``from_segment``) the
    segment's largest slice, else the slice of the first include click. Slice range: given, else
    the span of the ROI, the clicks and (``from_segment``) the segment. With ``previous`` only the
    directions whose prompts changed are tracked again.
    """
    progress = progress or noop_progress
    segmentation_node = require_output(segmentation_node)
    input_node = require_input(input_node)
    if input_node.IsA("vtkMRMLVectorVolumeNode"):
        raise InvalidInputError("propagation needs a scalar volume; an RGB frame is one slice")
    if not segment:
        raise InvalidInputError("no segment name given")
    volume = volume_from_node(input_node)
    nk, nj, ni = volume.shape
    intensity = intensity_for(input_node, window_preset)
    clicks = clicks_from_markups(input_node, include, exclude)
    by_slice = clicks_by_slice(clicks)
    spans: list[int] = list(by_slice)
    vb = roi_to_voxel_box(roi, input_node) if roi is not None else None
    if vb is not None:
        spans += [vb.k0, vb.k1]
    seeded = None
    if from_segment:
        seeded = _segment_slices(segmentation_node, segment, input_node, volume.shape)
        if seeded is None or not seeded.any():
            raise InvalidInputError(f"segment '{segment}' is empty or missing: nothing to start from")
        ks = np.nonzero(seeded.any(axis=(1, 2)))[0]
        spans += [int(ks.min()), int(ks.max())]
    if key_slice >= 0:
        key = int(key_slice)
    elif vb is not None:
        key = vb.key_slice
    elif seeded is not None:
        key = int(np.argmax(seeded.sum(axis=(1, 2))))
    else:
        first = next((c for c in clicks if c.include), None)
        if first is None:
            raise InvalidInputError("no include click and no box: nothing to propagate from")
        key = first.k
    if not 0 <= key < nk:
        raise InvalidInputError(f"key slice {key} lies outside the volume's slices 0..{nk - 1}")
    if slice_range is None:
        k0, k1 = min(spans + [key]), max(spans + [key])
    else:
        k0, k1 = (int(v) for v in slice_range)
    points, labels = by_slice.get(key, ([], []))
    key_mask = seeded[key] if seeded is not None and seeded[key].any() else None
    box = None
    if vb is not None and vb.k0 <= key <= vb.k1:
        box = vb.box_on_slice(key)
    if box is None and not points and key_mask is None:
        raise InvalidInputError(f"no prompt on the key slice {key}: click there or give a box")
    key_prompt = Prompt(box=box, points=points, labels=labels, mask=key_mask)
    refinements = [FramePrompt(k, 1, points=p, labels=lab)
                   for k, (p, lab) in by_slice.items() if k != key]
    masking = EditorMasking.from_editor_node(editor_node)
    info = engine.info.provenance()
    color = color if color is not None else colour(0)

    def compute():
        def report(done: int, total: int) -> None:
            progress(done, total, f"slice {done}/{total}")

        return propagation.propagate(
            engine, volume, [key_prompt], (k0, k1), key, until=until, refinements=refinements,
            intensity=intensity, previous=previous, cancel=cancel, progress=report,
        )

    def write(out: propagation.PropagationResult) -> ClickResult:
        s0, s1 = (int(v) for v in out.slices)
        writes = masked_writes(
            segmentation_node, segment, out.labelmap.array[s0:s1 + 1] == 1,
            (0, ni - 1, 0, nj - 1, s0, s1), input_node, masking, source_kji=volume.array,
            color=color,
            provenance={**info, "operation": "start-from-segment" if from_segment else "propagate-clicks",
                        "key_slice": key, "slice_range": (s0, s1),
                        "prompt": key_prompt.to_dict(),
                        "refinements": [r.to_dict() for r in refinements],
                        "score": f"{out.scores.get(1, float('nan')):.4f}"},
        )
        result = ClickResult(segment=segment, propagation=out)
        result.segment_ids.update(write_all(segmentation_node, writes, input_node).segment_ids)
        result.scores["key slice"] = float(out.scores.get(1, float("nan")))
        tracked = ", ".join(f"{d} {n}" for d, n in out.tracked.items()) or "none"
        result.summary = (f"propagated '{segment}' from slice {key} over {s0}..{s1}"
                          f" (tracked: {tracked})")
        return result

    return run_job(Job(compute, write), background=background, cancel=cancel)


def start_from_segment(engine: Any, input_node: Any, segmentation_node: Any, segment: str,
                       **kwargs) -> ClickResult:
    """"Start from segment": the segment's own mask seeds the propagation (clicks may add)."""
    return propagate_with_clicks(engine, input_node, segmentation_node, segment,
                                 from_segment=True, **kwargs)
