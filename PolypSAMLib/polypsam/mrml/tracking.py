"""Track: the ROIs followed through a sequence (an endoscopy video, or the time points of a 4-D CT).

Frames are read from the sequence's data nodes on the calling (main) thread before the compute
phase starts: the worker then holds plain arrays and touches no MRML or VTK object. For a 4-D
sequence only the slices the ROIs cover are read. Results go into a segmentation sequence
synchronised with the browser, as one undoable step (undo restores or removes the sequence).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from .. import propagation
from ..engine import FramePrompt
from ..errors import InvalidInputError
from ..geometry import box_of_mask
from ..preprocess import volume_intensity
from . import history
from .jobs import (
    Background, Job, ProgressFn, RunResult, colour, frame_of, intensity_for, noop_progress,
    require_output, require_rois, run, segment_name,
)
from .roi import roi_to_voxel_box
from .sequences import write_tracked_masks_to_sequence
from .volumes import frames_from_sequence, sequence_holds_volumes, volumes_from_sequence


def track(
    engine: Any,
    browser_node: Any,
    rois: Sequence[Any],
    segmentation_node: Any,
    *,
    refinement_rois: Sequence[Any] = (),
    window_preset: str = "display",
    progress: Optional[ProgressFn] = None,
    cancel=None,
    background: Optional[Background] = None,
) -> RunResult:
    """Track the ROIs through the whole sequence, both ways from the frame they were drawn on.

    An ROI's frame is the item it was placed on (:func:`~polypsam.mrml.scene.place_box`), else
    the browser's current item. ``refinement_rois`` are extra boxes for the first ROI's object on
    other frames. Writes one segmentation per frame into a segmentation sequence synchronised to
    the browser (the output node becomes its proxy); nothing is written unless every frame
    succeeded. A sequence of 3-D volumes (4-D CT) is tracked through time by
    :func:`_track_volumes`; ``window_preset`` applies there.
    """
    progress = progress or noop_progress
    if browser_node is None:
        raise InvalidInputError("no sequence browser selected: Track needs a video sequence")
    segmentation_node = require_output(segmentation_node)
    rois = require_rois(rois)
    if sequence_holds_volumes(browser_node):
        return _track_volumes(engine, browser_node, rois, segmentation_node, list(refinement_rois),
                              window_preset, progress, cancel, background)
    source = frames_from_sequence(browser_node)
    proxy = sequence_proxy(browser_node, browser_node.GetMasterSequenceNode())
    current = max(0, int(browser_node.GetSelectedItemNumber()))
    frame_index = frame_of(rois[0], current)
    boxes = [roi_to_voxel_box(roi, proxy).box_on_slice(0) for roi in rois]
    refinements = [
        FramePrompt(frame=frame_of(roi, current), obj_id=1,
                    box=roi_to_voxel_box(roi, proxy).box_on_slice(0))
        for roi in refinement_rois
    ]
    names = [segment_name(roi) for roi in rois]
    total = len(source)
    progress(0, total, "reading frames")
    frames = np.stack([source[t] for t in range(total)])  # main thread: MRML reads end here
    info = engine.info.provenance()

    def frame_progress(done: int, count: int) -> None:
        progress(done, count or total, f"tracking: frame {done}/{count or total}")

    def compute():
        return propagation.track(engine, frames, frame_index, boxes, refinements=refinements,
                                 cancel=cancel, progress=frame_progress)

    def write(out) -> RunResult:
        per_frame = {
            t: {name: out.labels[t] == label for label, name in enumerate(names, start=1)}
            for t in range(out.labels.shape[0])
        }
        progress(total, total, "writing the segmentation sequence")
        seq = write_sequence(browser_node, segmentation_node, per_frame, names, {
            **info, "operation": "refine" if refinements else "track",
            "start_frame": frame_index, "boxes": boxes,
            "refinement_frames": tuple(p.frame for p in refinements)}, "polyp")
        result = RunResult(segment_ids={name: name for name in names})
        result.summary = (f"tracked {len(names)} box(es) through {len(per_frame)} frame(s)"
                          f" into {seq.GetName()}")
        return result

    return run(Job(compute, write), background=background, cancel=cancel)


def write_sequence(browser_node, segmentation_node, per_frame, names, provenance,
                    terminology: str) -> Any:
    """One undo step, then the masks into the node's segmentation sequence (undone on failure)."""
    history.save_sequence_state_for_undo(segmentation_node, browser_node)
    try:
        return write_tracked_masks_to_sequence(
            browser_node, segmentation_node, per_frame,
            colors={name: colour(i) for i, name in enumerate(names)}, provenance=provenance,
            terminology=terminology)
    except Exception:
        history.undo(segmentation_node)
        raise


def sequence_proxy(browser_node: Any, master: Any) -> Any:
    proxy = browser_node.GetProxyNode(master)
    if proxy is None:
        raise InvalidInputError(f"sequence browser '{browser_node.GetName()}' shows no frame")
    return proxy


def _track_volumes(engine, browser_node, rois, segmentation_node, refinement_rois, window_preset,
                   progress, cancel, background) -> RunResult:
    """Track ROIs through the time points of a 4-D sequence (one 3-D volume per time point).

    Per ROI: its key slice (the slice it was drawn on) is tracked through time with SAM2's
    video predictor from the time point the ROI was drawn on; at every time point where the
    object is found, the bounding box of the tracked key-slice mask prompts a 3-D propagation
    through the ROI's slice range of that time point's volume. A time point where the object is
    lost gets an empty segment. ``refinement_rois`` add boxes for the first ROI on other time
    points (on its key slice).
    """
    volumes = volumes_from_sequence(browser_node)
    proxy = sequence_proxy(browser_node, volumes.sequence_node)
    depth = volumes.shape[0]
    n_times = len(volumes)
    current = max(0, int(browser_node.GetSelectedItemNumber()))
    preset = intensity_for(proxy, window_preset)
    jobs = []
    for index, roi in enumerate(rois):
        vb = roi_to_voxel_box(roi, proxy)
        k0, k1, key = max(0, vb.k0), min(depth - 1, vb.k1), vb.key_slice
        refinements = []
        for extra in refinement_rois if index == 0 else []:
            evb = roi_to_voxel_box(extra, proxy)
            box = evb.box_on_slice(key) if evb.k0 <= key <= evb.k1 else evb.box()
            refinements.append(FramePrompt(frame=frame_of(extra, current), obj_id=1, box=box))
        jobs.append(dict(name=segment_name(roi), time=frame_of(roi, current), key=key, k0=k0,
                         k1=k1, box=vb.box_on_slice(key), refinements=refinements))
    # Main thread: read only the slices the ROIs cover, at every time point.
    lo, hi = min(job["k0"] for job in jobs), max(job["k1"] for job in jobs)
    progress(0, n_times, "reading time points")
    stack = np.stack([volumes[t][lo:hi + 1] for t in range(n_times)])  # (T, K', J, I)
    steps = len(jobs) * 2 * n_times
    info = engine.info.provenance()

    def compute() -> dict[int, dict[str, np.ndarray]]:
        per_time: dict[int, dict[str, np.ndarray]] = {t: {} for t in range(n_times)}
        for index, job in enumerate(jobs):
            base = index * 2 * n_times
            k0, k1, key = job["k0"] - lo, job["k1"] - lo, job["key"] - lo
            # a window stays; percentiles are taken once, over the ROI's slices where it was drawn
            intensity = volume_intensity(stack[job["time"], k0:k1 + 1], preset)
            tracked = propagation.track(
                engine, stack[:, key], job["time"], [job["box"]],
                refinements=job["refinements"], intensity=intensity, cancel=cancel,
                progress=lambda done, total, _b=base, _i=index: progress(
                    _b + done, steps, f"box {_i + 1}/{len(jobs)}: key slice through time {done}/{total}"))
            for t in range(n_times):
                if cancel is not None:
                    cancel.raise_if_cancelled()
                found = tracked.labels[t] == 1
                if found.any():
                    out = propagation.propagate(engine, stack[t], [box_of_mask(found)],
                                                (k0, k1), key, intensity=intensity, cancel=cancel)
                    per_time[t][job["name"]] = out.labelmap.array[k0:k1 + 1] == 1
                progress(base + n_times + t + 1, steps,
                         f"box {index + 1}/{len(jobs)}: time point {t + 1}/{n_times} in 3-D")
        return per_time

    def write(crops: dict[int, dict[str, np.ndarray]]) -> RunResult:
        names = [job["name"] for job in jobs]
        first_k = {job["name"]: job["k0"] for job in jobs}
        per_time: dict[int, dict[str, np.ndarray]] = {}
        for t, masks in crops.items():
            for name, crop in masks.items():
                full = np.zeros(volumes.shape, dtype=bool)
                full[first_k[name]:first_k[name] + crop.shape[0]] = crop
                per_time.setdefault(t, {})[name] = full
        for name in names:  # a name with no mask anywhere still gets its (empty) segment
            per_time.setdefault(0, {}).setdefault(name, np.zeros(volumes.shape, dtype=bool))
        progress(steps, steps, "writing the segmentation sequence")
        first = jobs[0]
        seq = write_sequence(browser_node, segmentation_node, per_time, names, {
            **info, "operation": "refine" if first["refinements"] else "track",
            "start_frame": first["time"], "key_slice": first["key"],
            "slice_range": (first["k0"], first["k1"]), "boxes": [job["box"] for job in jobs],
            "refinement_frames": tuple(p.frame for p in first["refinements"])}, "lesion")
        result = RunResult(segment_ids={name: name for name in names})
        result.summary = (f"tracked {len(names)} box(es) through {n_times} time point(s) in 3-D"
                          f" into {seq.GetName()}")
        return result

    return run(Job(compute, write), background=background, cancel=cancel)
