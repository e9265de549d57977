"""Track: boxes or clicks followed through a sequence (an endoscopy video, or a 4-D CT's time points).

The frames are never copied for the model: on the calling (main) thread, before the model work
starts, each frame becomes a read-only view of the scene's own voxels (for a 4-D sequence, of the
slices the boxes cover); the worker then reads those arrays and touches no MRML or VTK object.
SAM2 converts a frame only when it reaches it and keeps its memory window (see
:mod:`polypsam.sam2_adapter.video`); the tracked labels are kept one bit per pixel
(:class:`polypsam.labels.PackedLabels`) and unpacked one frame at a time as they are written into
a segmentation sequence synchronised with the browser, as one undoable step.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Iterator

import numpy as np

from .. import propagation
from ..engine import FramePrompt, Prompt
from ..errors import InvalidInputError
from ..geometry import box_of_mask
from ..preprocess import volume_intensity
from .clicks import clicks_from_markups
from .roi import box_prompts
from .sequences import check_sequence_output
from .shapes import Plan, Request, Result, check_cancel, require_output, require_rois, require_segment
from .video_clicks import click_frame, clicks_per_frame
from .volumes import frames_from_sequence, intensity_for, sequence_holds_volumes, volumes_from_sequence
from .writer import SequenceWrite


class _FrameMasks(Mapping):
    """``{frame: {name: mask}}`` of tracked labels (label ``n`` is ``names[n - 1]``), made one
    frame at a time when read. ``groups`` are the runs of boxes drawn on other frames
    (``(TrackResult, names)``: :func:`track` tracks each frame's boxes from that frame); where
    objects overlap, the higher-scoring one wins, as within one run."""

    def __init__(self, labels: Any, names: list[str], groups: tuple = ()) -> None:
        self._labels, self._names, self._groups = labels, names, groups

    def __getitem__(self, frame: int) -> dict[str, np.ndarray]:
        row = self._labels[frame]
        if not self._groups:
            return {name: row == label for label, name in enumerate(self._names, start=1)}
        masks, scores, label = {}, {}, 0
        for out, names in self._groups:
            group_row, group_scores = out.labels[frame], out.frame_scores.get(frame, {})
            for n, name in enumerate(names, start=1):
                label += 1
                masks[label], scores[label] = group_row == n, group_scores.get(n, 0.0)
        merged = propagation.merge_masks(masks, scores, row.shape,
                                         np.uint16 if label > 255 else np.uint8)
        return {name: merged == label for label, name in enumerate(self._names, start=1)}

    def __iter__(self) -> Iterator[int]:
        return iter(range(len(self._labels)))

    def __len__(self) -> int:
        return len(self._labels)


def sequence_proxy(browser_node: Any, master: Any) -> Any:
    """The node the browser shows ``master``'s current item in."""
    proxy = browser_node.GetProxyNode(master)
    if proxy is None:
        raise InvalidInputError(f"sequence browser '{browser_node.GetName()}' shows no frame")
    return proxy


def track(request: Request, engine: Any, context: Any, refinement_rois: tuple = ()) -> Plan:
    """Track the boxes through the whole sequence, both ways from the frame they were drawn on.

    A box's frame is the item it was placed on (:func:`~polypsam.mrml.scene.place_box`), else
    the browser's current item; each box prompts its own frame (the boxes of one frame are
    tracked together, each other frame's boxes in a run of their own, merged per frame as one
    run merges its objects). ``refinement_rois`` are extra boxes for the first box's object
    on other frames. Writes one segmentation per frame into a segmentation sequence synchronised
    to the browser (the output node becomes its proxy). A sequence of 3-D volumes (4-D CT) is
    tracked through time by :func:`_track_volumes`; the window preset applies there.
    """
    browser = request.browser_node
    if browser is None:
        raise InvalidInputError("no sequence browser selected: Track needs a video sequence")
    require_output(request.segmentation_node)
    rois = require_rois(request.rois)
    check_sequence_output(browser, request.segmentation_node)
    if sequence_holds_volumes(browser):
        return _track_volumes(request, engine, context, rois, refinement_rois)
    source = frames_from_sequence(browser)
    proxy = sequence_proxy(browser, browser.GetMasterSequenceNode())
    current = max(0, int(browser.GetSelectedItemNumber()))
    boxes = box_prompts(rois, proxy, current)
    refinements = [FramePrompt(frame=p.frame, obj_id=1, box=p.box(0))
                   for p in box_prompts(refinement_rois, proxy, current)]
    names, prompts = [p.name for p in boxes], [p.box(0) for p in boxes]
    by_frame: dict[int, list[int]] = {}  # each box on its own frame; the first box's frame first
    for index, p in enumerate(boxes):
        by_frame.setdefault(p.frame, []).append(index)
    runs = list(by_frame.items())
    total = len(source)
    progress, cancel = context.progress, context.cancel
    progress(0, total, "reading frames")
    frames = source.views()  # main thread: MRML reads end here
    steps = total * len(runs)

    def compute() -> list[propagation.TrackResult]:
        outs = []
        for n, (frame, indices) in enumerate(runs):
            def frame_progress(done: int, count: int, _base: int = n * total) -> None:
                progress(_base + done, steps, f"tracking: frame {_base + done}/{steps}")

            outs.append(propagation.track(
                engine, frames, frame, [prompts[i] for i in indices],
                refinements=refinements if n == 0 else (), cancel=cancel, progress=frame_progress,
                packed=True))
        return outs

    def writes(outs: list[propagation.TrackResult]) -> list[SequenceWrite]:
        progress(steps, steps, "writing the segmentation sequence")
        groups = tuple((out, [names[i] for i in indices]) for out, (_, indices) in zip(outs, runs))
        masks = _FrameMasks(outs[0].labels, names, groups if len(runs) > 1 else ())
        return [SequenceWrite(browser, masks, names, {
            "operation": "refine" if refinements else "track", "start_frame": runs[0][0],
            "box_frames": tuple(p.frame for p in boxes), "boxes": prompts,
            "refinement_frames": tuple(p.frame for p in refinements)}, "polyp")]

    def report(outs: list[propagation.TrackResult], written) -> Result:
        return Result(summary=f"tracked {len(names)} box(es) through {outs[0].labels.shape[0]}"
                              f" frame(s) into {written.sequence.GetName()}")

    return Plan(compute, writes, report, proxy, None, engine.info.provenance())


class _TimePointMasks(Mapping):
    """``{time point: {name: K x J x I mask}}`` from the tracked crops, one time point at a time.
    Time point 0 names every box (an empty mask where it was not found), so each gets a segment."""

    def __init__(self, crops: dict, first_k: dict, shape: tuple, names: list[str]) -> None:
        self._crops, self._first_k, self._shape, self._names = crops, first_k, shape, names
        self._times = sorted({t for t, masks in crops.items() if masks} | {0})

    def __getitem__(self, t: int) -> dict[str, np.ndarray]:
        if t not in self._times:
            raise KeyError(t)
        out = {}
        for name, crop in self._crops.get(t, {}).items():
            full = np.zeros(self._shape, dtype=bool)
            full[self._first_k[name]:self._first_k[name] + crop.shape[0]] = crop
            out[name] = full
        if t == 0:
            for name in self._names:
                out.setdefault(name, np.zeros(self._shape, dtype=bool))
        return out

    def __iter__(self) -> Iterator[int]:
        return iter(self._times)

    def __len__(self) -> int:
        return len(self._times)


def _track_volumes(request: Request, engine: Any, context: Any, rois: list, refinement_rois) -> Plan:
    """Track boxes through the time points of a 4-D sequence (one 3-D volume per time point).

    Per box: its key slice (the slice it was drawn on) is tracked through time with SAM2's
    video predictor from the time point the box was drawn on; at every time point where the
    object is found, the bounding box of the tracked key-slice mask prompts a 3-D propagation
    through the box's slice range of that time point's volume. A time point where the object is
    lost gets an empty segment. ``refinement_rois`` add boxes for the first box on other time
    points (on its key slice).
    """
    browser = request.browser_node
    volumes = volumes_from_sequence(browser)
    proxy = sequence_proxy(browser, volumes.sequence_node)
    depth = volumes.shape[0]
    n_times = len(volumes)
    current = max(0, int(browser.GetSelectedItemNumber()))
    preset = intensity_for(proxy, request.window_preset)
    extra = box_prompts(refinement_rois, proxy, current)
    jobs = []
    for index, p in enumerate(box_prompts(rois, proxy, current)):
        key = p.key_slice
        jobs.append(dict(
            name=p.name, time=p.frame, key=key, k0=max(0, p.voxels.k0), k1=min(depth - 1, p.voxels.k1),
            box=p.box(key),
            refinements=[FramePrompt(frame=e.frame, obj_id=1, box=e.box(key)) for e in extra]
            if index == 0 else []))
    progress, cancel = context.progress, context.cancel
    # Main thread: views of only the slices the boxes cover, at every time point.
    lo, hi = min(job["k0"] for job in jobs), max(job["k1"] for job in jobs)
    progress(0, n_times, "reading time points")
    stack = volumes.views(lo, hi)  # [t] -> (K', J, I), the scene's own voxels
    steps = len(jobs) * 2 * n_times

    def compute() -> dict[int, dict[str, np.ndarray]]:
        per_time: dict[int, dict[str, np.ndarray]] = {t: {} for t in range(n_times)}
        for index, job in enumerate(jobs):
            base = index * 2 * n_times
            k0, k1, key = job["k0"] - lo, job["k1"] - lo, job["key"] - lo
            # a window stays; percentiles are taken once, over the box's slices where it was drawn
            intensity = volume_intensity(stack[job["time"]][k0:k1 + 1], preset)
            tracked = propagation.track(
                engine, [view[key] for view in stack], job["time"], [job["box"]],
                refinements=job["refinements"], intensity=intensity, cancel=cancel,
                progress=lambda done, total, _b=base, _i=index: progress(
                    _b + done, steps, f"box {_i + 1}/{len(jobs)}: key slice through time {done}/{total}"))
            for t in range(n_times):
                check_cancel(cancel)
                found = tracked.labels[t] == 1
                if found.any():
                    out = propagation.propagate(engine, stack[t], [box_of_mask(found)],
                                                (k0, k1), key, intensity=intensity, cancel=cancel)
                    per_time[t][job["name"]] = out.labelmap.array[k0:k1 + 1] == 1
                progress(base + n_times + t + 1, steps,
                         f"box {index + 1}/{len(jobs)}: time point {t + 1}/{n_times} in 3-D")
        return per_time

    names = [job["name"] for job in jobs]
    first = jobs[0]

    def writes(crops: dict[int, dict[str, np.ndarray]]) -> list[SequenceWrite]:
        progress(steps, steps, "writing the segmentation sequence")
        masks = _TimePointMasks(crops, {job["name"]: job["k0"] for job in jobs}, volumes.shape, names)
        return [SequenceWrite(browser, masks, names, {
            "operation": "refine" if first["refinements"] else "track",
            "start_frame": first["time"], "key_slice": first["key"],
            "slice_range": (first["k0"], first["k1"]), "boxes": [job["box"] for job in jobs],
            "refinement_frames": tuple(p.frame for p in first["refinements"])}, "lesion")]

    def report(crops, written) -> Result:
        return Result(summary=f"tracked {len(names)} box(es) through {n_times} time point(s) in 3-D"
                              f" into {written.sequence.GetName()}")

    return Plan(compute, writes, report, proxy, None, engine.info.provenance())


def track_clicks(request: Request, engine: Any, context: Any) -> Plan:
    """Track the request's segment through the browser's video from clicks (and the first box).

    Each click belongs to the frame it was placed on (:func:`.video_clicks.click_frame`). Key
    frame: the box's frame, else the frame of the first include click; its prompt is the box plus
    the clicks there. Clicks on every other frame become conditioning frames (SAM2
    ``add_new_points_or_box``). The segment is written on every frame of the segmentation sequence
    synchronised with the browser. With the previous result (``request.previous.tracking``, for the
    same key frame) only the directions whose clicks changed are tracked again.
    """
    browser = request.video_browser or request.browser_node
    if browser is None:
        raise InvalidInputError("no sequence browser selected: tracking clicks needs a video sequence")
    require_output(request.segmentation_node)
    segment = require_segment(request.segment)
    check_sequence_output(browser, request.segmentation_node)
    if sequence_holds_volumes(browser):
        raise InvalidInputError(
            "clicks through time on a 4-D sequence are not supported: propagate clicks on one time"
            " point's volume, or Track with a box")
    source = frames_from_sequence(browser)
    proxy = sequence_proxy(browser, browser.GetMasterSequenceNode())
    total = len(source)
    current = max(0, int(browser.GetSelectedItemNumber()))
    include, exclude = request.include, request.exclude
    clicks = clicks_from_markups(proxy, include, exclude)
    by_frame = clicks_per_frame(clicks, {True: include, False: exclude}, browser, total)
    roi = request.rois[0] if request.rois else None
    box_prompt = box_prompts([roi], proxy, current)[0] if roi is not None else None
    if box_prompt is not None:
        key = box_prompt.frame
    else:
        key = next((click_frame(include, c.point, browser) for c in clicks if c.include), None)
        if key is None:
            raise InvalidInputError("no include click and no box: place an include point first")
    if not 0 <= key < total:
        raise InvalidInputError(f"key frame {key} lies outside the sequence's frames 0..{total - 1}")
    points, labels = by_frame.get(key, ([], []))
    if box_prompt is None and 1 not in labels:
        raise InvalidInputError(
            f"no include click and no box on the key frame {key}: nothing to track from")
    key_prompt = Prompt(box=box_prompt.box(0) if box_prompt else None, points=points, labels=labels)
    refinements = [FramePrompt(f, 1, points=p, labels=lab) for f, (p, lab) in by_frame.items() if f != key]
    previous = request.previous.tracking if request.previous is not None else None
    if previous is not None and previous.labels.shape[0] != total:
        raise InvalidInputError(
            f"the previous result has {previous.labels.shape[0]} frames, the sequence {total}")
    progress, cancel = context.progress, context.cancel
    progress(0, total, "reading frames")
    frames = source.views()  # main thread: MRML reads end here

    def compute() -> propagation.TrackResult:
        def report(done: int, count: int) -> None:
            progress(done, count or total, f"tracking clicks: frame {done}/{count or total}")

        return propagation.track(engine, frames, key, [key_prompt], refinements=refinements,
                                 previous=previous, cancel=cancel, progress=report, packed=True)

    def writes(out: propagation.TrackResult) -> list[SequenceWrite]:
        progress(total, total, "writing the segmentation sequence")
        return [SequenceWrite(browser, _FrameMasks(out.labels, [segment]), [segment], {
            "operation": "track-clicks", "start_frame": key, "prompt": key_prompt.to_dict(),
            "refinement_frames": tuple(p.frame for p in refinements)}, "polyp")]

    def report(out: propagation.TrackResult, written) -> Result:
        tracked = ", ".join(f"{d} {n}" for d, n in out.tracked.items()) or "none"
        return Result(segment=segment, key_frame=key, tracking=out,
                      scores={"key frame": float(out.scores.get(1, float("nan")))},
                      summary=f"tracked '{segment}' from frame {key} with clicks on {len(by_frame)}"
                              f" frame(s) into {written.sequence.GetName()} (tracked: {tracked})")

    return Plan(compute, writes, report, proxy, None, engine.info.provenance())

