"""The shape every PolypSAM operation shares: read the scene, compute, write the scene.

An operation reads what it needs from MRML on the calling thread and returns the two remaining
phases: ``compute()`` runs the engine on plain values and touches no MRML or VTK object, so
``background`` (a callable that runs a function and returns its result, e.g. an
:class:`polypsam.background.EngineWorker`'s ``run``) can move it to a worker thread; ``write(out)``
runs on the calling thread again, saves an undo step and writes. :func:`run` is the one runner:
a failed or cancelled compute phase therefore changes nothing, and a failed write restores the
saved step.

``progress(done, total, message)`` is called at frame boundaries and ``cancel`` (a
:class:`polypsam.engine.CancelToken`) is checked there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from ..errors import InvalidInputError
from ..preprocess import Percentile, Window, parse_intensity
from . import history
from .segments import write_mask_to_segment

ProgressFn = Callable[[int, int, str], None]
#: Runs the compute phase: ``background(fn)`` returns ``fn()`` (possibly from another thread).
Background = Callable[[Callable[[], Any]], Any]

#: Segment colours (RGB 0..1) given to boxes in order; a box's own ROI colour is not used
#: because ROIs of one scene usually share the default colour.
PALETTE = (
    (0.95, 0.45, 0.40), (0.35, 0.75, 0.95), (0.55, 0.85, 0.40), (0.95, 0.80, 0.30),
    (0.75, 0.50, 0.90), (0.30, 0.85, 0.75), (0.95, 0.55, 0.80), (0.60, 0.60, 0.95),
)

FRAME_ATTRIBUTE = "PolypSAM.frame"  # the sequence item an ROI was placed on


@dataclass
class RunResult:
    """What one operation wrote: segment ids per box name, and a one-line summary."""

    segment_ids: dict[str, str] = field(default_factory=dict)
    summary: str = ""
    scores: dict[str, float] = field(default_factory=dict)


@dataclass
class Job:
    """The compute and write phases of an operation whose scene reads are done."""

    compute: Callable[[], Any]
    write: Callable[[Any], RunResult]


def run(job: Job, *, background: Optional[Background] = None, cancel=None) -> RunResult:
    """Compute (here or through ``background``), then write unless cancelled meanwhile."""
    out = job.compute() if background is None else background(job.compute)
    check_cancel(cancel)
    return job.write(out)


def noop_progress(done: int, total: int, message: str) -> None:
    del done, total, message


def check_cancel(cancel) -> None:
    if cancel is not None:
        cancel.raise_if_cancelled()


def intensity_for(node: Any, preset: str):
    """The intensity policy for a scalar volume: a preset, percentiles or the display window.

    ``"display"`` (default) reads the volume's current window/level from its display node; the
    voxels are never modified. Vector (RGB) inputs return ``None`` (passthrough).
    """
    if node is None or node.IsA("vtkMRMLVectorVolumeNode"):
        return None
    preset = (preset or "display").strip().lower()
    if preset in ("display", "auto", ""):
        display = node.GetDisplayNode()
        if display is not None and hasattr(display, "GetWindow") and display.GetWindow() > 0:
            return Window(float(display.GetLevel()), float(display.GetWindow()))
        return Percentile()
    return parse_intensity(preset)


def require_rois(rois: Sequence[Any]) -> list[Any]:
    rois = [r for r in rois if r is not None]
    if not rois:
        raise InvalidInputError("no box: add a box ROI (Add box) and check it in the list")
    return rois


def require_input(node: Any) -> Any:
    if node is None:
        raise InvalidInputError("no input image selected")
    if node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise InvalidInputError(f"'{node.GetName()}' is a label map; choose an image as input")
    return node


def require_output(node: Any) -> Any:
    """The output segmentation, with display nodes: one made by a selector's "Create new" has
    none, and its segments would not show."""
    if node is None:
        raise InvalidInputError("no output segmentation selected")
    node.CreateDefaultDisplayNodes()
    return node


def segment_name(roi: Any) -> str:
    return roi.GetName() or "Polyp"


def colour(index: int) -> tuple[float, float, float]:
    return PALETTE[index % len(PALETTE)]


def frame_of(roi: Any, default: int) -> int:
    """The sequence item ``roi`` was placed on (:data:`FRAME_ATTRIBUTE`), else ``default``."""
    value = roi.GetAttribute(FRAME_ATTRIBUTE) if hasattr(roi, "GetAttribute") else None
    try:
        return int(value) if value not in (None, "") else default
    except ValueError:
        return default


def follow_editor_masking(segmentation_node: Any, writes: list[dict], reference: Any,
                          editor_node: Any, source_kji=None) -> list[dict]:
    """``writes`` limited to the Segment Editor's editable area (mask mode, intensity range) and
    overwrite mode, read from ``editor_node`` (``None``: unchanged)."""
    from .masking import EditorMasking, check_masking_applies, masked_writes

    masking = EditorMasking.from_editor_node(editor_node)
    if masking == EditorMasking():
        return writes
    check_masking_applies(masking, rgb=source_kji is None)
    out: list[dict] = []
    for item in writes:
        item = dict(item)
        extent = item.pop("region")
        out += masked_writes(segmentation_node, item.pop("segment"), item.pop("mask_kji"), extent,
                             reference, masking, source_kji=source_kji, **item)
    return out


def write_all(segmentation_node: Any, writes: list[dict], reference: Any, *,
              editor_node: Any = None, source_kji=None) -> RunResult:
    """Save an undo step, then write every mask on ``reference``'s grid (within the Segment
    Editor's editable area when ``editor_node`` is given); restore the step if any write fails.
    Each write is a region write (``region`` = the crop's extent)."""
    result = RunResult()
    writes = follow_editor_masking(segmentation_node, writes, reference, editor_node, source_kji)
    history.save_state_for_undo(segmentation_node)
    try:
        for item in writes:
            item = dict(item)
            name = item.pop("segment")
            result.segment_ids[name] = write_mask_to_segment(
                segmentation_node, name, reference=reference, **item
            )
    except Exception:
        history.undo(segmentation_node)
        raise
    return result
