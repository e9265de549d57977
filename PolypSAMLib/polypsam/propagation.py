"""Key-slice propagation through volumes and two-way tracking through frame sequences.

Engine-agnostic: everything here talks to the :class:`~polypsam.engine.Engine` protocol only, so
the same code runs with SAM2 in this process or behind a server.

The method (for a volume; a frame sequence is the same with frames for slices):

1. The key slice (default: the middle of the slice range) is segmented in 2-D from the boxes with
   ``engine.segment_2d``; the key slice of the result is exactly that 2-D result.
2. Each object's 2-D mask becomes a conditioning mask for ``engine.track``, run forward and
   backward from the key slice. Each direction is independent and uses the conditioning frames
   on its side (refinements); the key slice, yielded by both, is not taken from either.
3. Per slice, objects are merged into one labelmap (labels 1..N in box order); where objects
   overlap, the one with the higher score (mask logit maximum) wins.
4. Only slices of the range are written (``until="range"``), or tracking continues beyond the
   range while an object is still found (``until="lost"``: an object is dropped after the first
   slice outside the range where it is empty; a direction stops when all are dropped).

Refinements are extra :class:`~polypsam.engine.FramePrompt` on other slices (a box, segmented in
2-D like the key slice, or a mask); they become extra conditioning frames and propagation re-runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Literal, Sequence

import numpy as np

from .engine import CancelToken, Engine, FrameMasks, FramePrompt, FrameSource, ProgressCallback
from .errors import InvalidInputError
from .geometry import Box, Volume, as_box, as_boxes, check_index, check_slice_range
from .preprocess import Intensity, volume_intensity

Until = Literal["range", "lost"]
# Score given to a user-supplied mask prompt when merging overlaps (it beats any model output).
USER_MASK_SCORE = float("inf")


@dataclass
class PropagationResult:
    """A labelmap on the input volume's grid (labels 1..N, one per box) and what produced it."""

    labelmap: Volume
    key_slice: int
    slices: tuple[int, int]  # first and last slice written (inclusive)
    scores: dict[int, float]  # label -> SAM2's IoU score of the key-slice 2-D mask
    slice_scores: dict[int, dict[int, float]] = field(default_factory=dict)  # k -> label -> score
    conditioning_slices: tuple[int, ...] = ()


@dataclass
class TrackResult:
    """Per-frame label masks (``T x H x W``, labels 1..N) of a tracked frame sequence."""

    labels: np.ndarray
    frame_index: int
    scores: dict[int, float]
    frame_scores: dict[int, dict[int, float]] = field(default_factory=dict)


# -- inputs ----------------------------------------------------------------------------------
class _SameSizeFrames:
    """Wraps a FrameSource and checks every frame against a reference size."""

    def __init__(self, frames: FrameSource, shape: tuple[int, int]) -> None:
        self._frames = frames
        self._shape = shape

    def __len__(self) -> int:
        return len(self._frames)

    def __getitem__(self, index: int) -> np.ndarray:
        frame = np.asarray(self._frames[index])
        if frame.shape[:2] != self._shape:
            raise InvalidInputError(
                f"frame {index} is {frame.shape[1] if frame.ndim > 1 else '?'}x{frame.shape[0]}"
                f" pixels but the prompted frame is {self._shape[1]}x{self._shape[0]}: all frames"
                " of a sequence must have the same size"
            )
        return frame


def _as_volume(volume) -> Volume:
    if isinstance(volume, Volume):
        return volume
    array = np.asarray(volume)
    if array.ndim == 2:
        raise InvalidInputError(
            f"propagate needs a 3-D volume (K, J, I); got a 2-D image of shape {array.shape}"
            " (use segment_2d for a single image)"
        )
    if array.ndim != 3:
        raise InvalidInputError(
            f"propagate needs a 3-D scalar volume (K, J, I); got an array of shape {array.shape}"
        )
    return Volume(array)


def _label_dtype(n: int):
    return np.uint8 if n < 256 else np.uint16


def merge_masks(
    masks: dict[int, np.ndarray], scores: dict[int, float], shape: tuple[int, int], dtype=np.uint8
) -> np.ndarray:
    """One label image from per-object masks; overlaps go to the higher-scoring object."""
    out = np.zeros(shape, dtype=dtype)
    best = np.full(shape, -np.inf, dtype=np.float64)
    for label in sorted(masks):
        mask = np.asarray(masks[label], dtype=bool)
        score = float(scores.get(label, 0.0))
        take = mask & (score > best)
        out[take] = label
        best[take] = score
    return out


# -- conditioning ----------------------------------------------------------------------------
@dataclass
class _Conditioning:
    """Conditioning masks per frame and object, with the score used when merging them."""

    masks: dict[int, dict[int, np.ndarray]] = field(default_factory=dict)
    scores: dict[int, dict[int, float]] = field(default_factory=dict)

    def add(self, frame: int, obj: int, mask: np.ndarray, score: float) -> None:
        self.masks.setdefault(frame, {})[obj] = np.asarray(mask, dtype=bool)
        self.scores.setdefault(frame, {})[obj] = float(score)

    def prompts(self, side: str, key: int) -> list[FramePrompt]:
        out = []
        for frame in sorted(self.masks):
            if (side == "forward" and frame < key) or (side == "backward" and frame > key):
                continue
            for obj, mask in sorted(self.masks[frame].items()):
                out.append(FramePrompt(frame=frame, obj_id=obj, mask=mask))
        return out


def _conditioning(
    engine: Engine,
    frames: FrameSource,
    key: int,
    boxes: list[Box],
    refinements: Sequence[FramePrompt],
    intensity: Intensity | None,
    shape: tuple[int, int],
    allowed: tuple[int, int],
) -> tuple[_Conditioning, dict[int, float]]:
    n_obj = len(boxes)
    height, width = shape
    cond = _Conditioning()
    key_results = engine.segment_2d(frames[key], boxes, intensity=intensity)
    key_scores = {}
    for label, res in enumerate(key_results, start=1):
        cond.add(key, label, res.mask, res.score)
        key_scores[label] = float(res.score)
    by_frame: dict[int, list[FramePrompt]] = {}
    for p in refinements:
        if not isinstance(p, FramePrompt):
            raise InvalidInputError(f"a refinement must be a FramePrompt, got {type(p).__name__}")
        if not 1 <= p.obj_id <= n_obj:
            raise InvalidInputError(
                f"refinement for object {p.obj_id}: objects are numbered 1..{n_obj} (box order)"
            )
        if not allowed[0] <= p.frame <= allowed[1]:
            raise InvalidInputError(
                f"refinement on slice/frame {p.frame} lies outside {allowed[0]}..{allowed[1]}"
            )
        by_frame.setdefault(p.frame, []).append(p)
    for frame, prompts in sorted(by_frame.items()):
        box_prompts = [p for p in prompts if p.box is not None]
        if box_prompts:
            rb = [as_box(p.box) for p in box_prompts]
            for b in rb:
                b.validate(width, height)
            results = engine.segment_2d(frames[frame], rb, intensity=intensity)
            for p, res in zip(box_prompts, results):
                cond.add(frame, p.obj_id, res.mask, res.score)
        for p in prompts:
            if p.mask is not None:
                if np.shape(p.mask) != shape:
                    raise InvalidInputError(
                        f"refinement mask on slice/frame {frame} has shape {np.shape(p.mask)};"
                        f" slices are {height} x {width}"
                    )
                cond.add(frame, p.obj_id, p.mask, USER_MASK_SCORE)
    return cond, key_scores


# -- the two-way pass ------------------------------------------------------------------------
def _two_way(
    engine: Engine,
    frames: FrameSource,
    cond: _Conditioning,
    key: int,
    lo: int,
    hi: int,
    n_obj: int,
    until: Until,
    intensity: Intensity | None,
    cancel: CancelToken | None,
) -> Iterator[tuple[int, dict[int, np.ndarray], dict[int, float]]]:
    """Yield ``(frame, masks, scores)`` for the key frame, then backward, then forward.

    Conditioning frames yield their conditioning masks; other frames the tracked masks.
    """
    n = len(frames)
    yield key, dict(cond.masks[key]), dict(cond.scores[key])
    for side, reverse in (("backward", True), ("forward", False)):
        if cancel is not None:
            cancel.raise_if_cancelled()
        if until == "range":
            max_frames = (key - lo) if reverse else (hi - key)
        else:
            max_frames = None
        if max_frames == 0 or (reverse and key == 0) or (not reverse and key == n - 1):
            continue
        alive = set(range(1, n_obj + 1))
        stream = engine.track(
            frames, cond.prompts(side, key), start_frame=key, reverse=reverse,
            max_frames=max_frames, intensity=intensity, cancel=cancel,
        )
        try:
            for fm in stream:
                if fm.frame == key:
                    continue
                if fm.frame in cond.masks:
                    masks = {o: m for o, m in cond.masks[fm.frame].items()}
                    scores = dict(cond.scores[fm.frame])
                    for o in fm.masks:  # objects without a prompt here keep the tracked mask
                        if o not in masks:
                            masks[o], scores[o] = fm.masks[o], fm.scores.get(o, 0.0)
                else:
                    masks, scores = dict(fm.masks), dict(fm.scores)
                inside = lo <= fm.frame <= hi
                if not inside:
                    for o in list(alive):
                        if o not in masks or not np.any(masks[o]):
                            alive.discard(o)
                    masks = {o: m for o, m in masks.items() if o in alive}
                    if not alive:
                        break
                yield fm.frame, masks, scores
                if cancel is not None:
                    cancel.raise_if_cancelled()
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()


def _check_until(until: str) -> None:
    if until not in ("range", "lost"):
        raise InvalidInputError(f"until must be 'range' or 'lost', got {until!r}")


def propagate(
    engine: Engine,
    volume: Volume,
    boxes: Box | Sequence[Box],
    slice_range: tuple[int, int] | None = None,
    key_slice: int | None = None,
    *,
    until: Until = "range",
    refinements: Sequence[FramePrompt] = (),
    largest_component: bool = False,
    intensity: Intensity | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> PropagationResult:
    """Segment ``boxes`` on the key slice and propagate them through ``volume``'s K axis.

    ``slice_range=(k0, k1)`` is inclusive (default: all slices); ``key_slice`` defaults to its
    middle. Boxes are pixel indices of the key slice (x = I, y = J), one label per box (1..N).
    ``refinements`` are extra prompts (box or mask, ``obj_id`` = label) on other slices.
    ``largest_component`` keeps each label's largest 3-D connected component. Scalar intensities
    use ``intensity`` (a window), or percentiles of the slice range when it is ``None`` or a
    :class:`~polypsam.preprocess.Percentile`. The labelmap has the input's geometry.
    """
    _check_until(until)
    volume = _as_volume(volume)
    nk, nj, ni = volume.shape
    k0, k1 = check_slice_range(slice_range, nk)
    key = (k0 + k1) // 2 if key_slice is None else int(key_slice)
    if not k0 <= key <= k1:
        raise InvalidInputError(f"key slice {key} lies outside the slice range {k0}..{k1}")
    box_list = as_boxes(boxes, ni, nj)
    n_obj = len(box_list)
    intensity = volume_intensity(volume.array[k0 : k1 + 1], intensity)
    frames = volume.array  # a (K, J, I) array is a FrameSource: len = K, [k] = slice k
    allowed = (k0, k1) if until == "range" else (0, nk - 1)
    if cancel is not None:
        cancel.raise_if_cancelled()
    cond, key_scores = _conditioning(
        engine, frames, key, box_list, refinements, intensity, (nj, ni), allowed
    )

    dtype = _label_dtype(n_obj)
    labels = np.zeros(volume.shape, dtype=dtype)
    slice_scores: dict[int, dict[int, float]] = {}
    written = [key, key]
    total = k1 - k0 + 1
    done = 0
    for k, masks, scores in _two_way(
        engine, frames, cond, key, k0, k1, n_obj, until, intensity, cancel
    ):
        labels[k] = merge_masks(masks, scores, (nj, ni), dtype)
        slice_scores[k] = {o: float(s) for o, s in scores.items() if o in masks}
        written = [min(written[0], k), max(written[1], k)]
        done += 1
        if progress is not None:
            progress(min(done, total) if until == "range" else done, total)
    if largest_component:
        labels = largest_components(labels, n_obj)
    return PropagationResult(
        labelmap=volume.with_array(labels),
        key_slice=key,
        slices=(written[0], written[1]),
        scores=key_scores,
        slice_scores=slice_scores,
        conditioning_slices=tuple(sorted(cond.masks)),
    )


def largest_components(labels: np.ndarray, n_labels: int | None = None) -> np.ndarray:
    """Keep the largest 3-D (face-)connected component of every label (SimpleITK)."""
    import SimpleITK as sitk

    out = np.zeros_like(labels)
    present = np.unique(labels)
    for label in present[present > 0]:
        binary = sitk.GetImageFromArray((labels == label).astype(np.uint8))
        cc = sitk.RelabelComponent(sitk.ConnectedComponent(binary), sortByObjectSize=True)
        out[sitk.GetArrayViewFromImage(cc) == 1] = label
    return out


def track(
    engine: Engine,
    frames: FrameSource,
    frame_index: int,
    boxes: Box | Sequence[Box],
    *,
    refinements: Sequence[FramePrompt] = (),
    intensity: Intensity | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> TrackResult:
    """Segment ``boxes`` on frame ``frame_index`` and track them both ways through ``frames``.

    Returns every frame's label mask (``T x H x W``, labels 1..N in box order). For long
    sequences use :func:`iter_track`, which yields frames as they come.
    """
    labels = None
    frame_scores: dict[int, dict[int, float]] = {}
    key_scores: dict[int, float] = {}
    for frame, label_mask, scores in iter_track(
        engine, frames, frame_index, boxes, refinements=refinements, intensity=intensity,
        progress=progress, cancel=cancel, key_scores=key_scores,
    ):
        if labels is None:
            labels = np.zeros((len(frames),) + label_mask.shape, dtype=label_mask.dtype)
        labels[frame] = label_mask
        frame_scores[frame] = scores
    return TrackResult(labels=labels, frame_index=frame_index, scores=key_scores,
                       frame_scores=frame_scores)


def iter_track(
    engine: Engine,
    frames: FrameSource,
    frame_index: int,
    boxes: Box | Sequence[Box],
    *,
    refinements: Sequence[FramePrompt] = (),
    intensity: Intensity | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    key_scores: dict[int, float] | None = None,
) -> Iterator[tuple[int, np.ndarray, dict[int, float]]]:
    """Like :func:`track`, yielding ``(frame, label_mask, scores)``: the prompted frame first,
    then backward to frame 0, then forward to the last frame. Memory does not grow with ``T``."""
    if frames is None or len(frames) == 0:
        raise InvalidInputError("the frame sequence is empty")
    n = len(frames)
    frame_index = check_index(frame_index, n, f"frame {frame_index}", "the sequence's frames")
    key_frame = np.asarray(frames[frame_index])
    if key_frame.ndim not in (2, 3):
        raise InvalidInputError(
            f"frame {frame_index} has shape {key_frame.shape}; frames must be H x W or H x W x 3"
        )
    shape = key_frame.shape[:2]
    checked = _SameSizeFrames(frames, shape)
    box_list = as_boxes(boxes, shape[1], shape[0])
    n_obj = len(box_list)
    if key_frame.ndim == 2:  # a scalar sequence: one mapping for all frames
        intensity = volume_intensity(key_frame[None], intensity)
    cond, scores0 = _conditioning(
        engine, checked, frame_index, box_list, refinements, intensity, shape, (0, n - 1)
    )
    if key_scores is not None:
        key_scores.update(scores0)
    dtype = _label_dtype(n_obj)
    done = 0
    for frame, masks, scores in _two_way(
        engine, checked, cond, frame_index, 0, n - 1, n_obj, "range", intensity, cancel
    ):
        done += 1
        yield frame, merge_masks(masks, scores, shape, dtype), {
            o: float(s) for o, s in scores.items() if o in masks
        }
        if progress is not None:
            progress(done, n)
