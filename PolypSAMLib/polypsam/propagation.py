"""Key-slice propagation through volumes and two-way tracking through frame sequences.

Engine-agnostic: everything here talks to the :class:`~polypsam.engine.Engine` protocol only, so
the same code runs with SAM2 in this process or behind a server.

The method (for a volume; a frame sequence is the same with frames for slices):

1. The key slice (default: the middle of the slice range) is segmented in 2-D from each object's
   prompt (a box, clicks, a mask, or a combination: :class:`~polypsam.engine.Prompt`) with
   ``engine.segment_2d``; the key slice of the result is exactly that 2-D result, the mask the
   user saw (or chose among the candidates). A mask-only prompt (an existing segment seeding the
   propagation) is taken as it is, as SAM2's ``add_new_mask`` takes it.
2. Each object's 2-D mask becomes a conditioning mask for ``engine.track``, run forward and
   backward from the key slice. Each direction is independent and uses the conditioning frames
   on its side (refinements); the key slice, yielded by both, is not taken from either.
3. Per slice, objects are merged into one labelmap (labels 1..N in box order); where objects
   overlap, the one with the higher score (mask logit maximum) wins.
4. Only slices of the range are written (``until="range"``), or tracking continues beyond the
   range while an object is still found (``until="lost"``: an object is dropped after the first
   slice outside the range where it is empty; a direction stops when all are dropped).

Refinements are extra :class:`~polypsam.engine.FramePrompt` on other slices; they become extra
conditioning frames exactly as SAM2's video predictor takes them: a mask with ``add_new_mask``
(kept as it is on its slice), a box and/or clicks with ``add_new_points_or_box`` (after the mask
when both are given, so the clicks correct it); that slice's mask is the tracker's output there.
Clicks on the key slice belong to the key prompt.

Re-propagation (``previous=``): each direction's conditioning is fingerprinted
(:attr:`PropagationResult.side_digests`); given the previous result, only the directions whose
conditioning changed are tracked again (a click above the key slice re-runs only that side) and
the other side's slices are copied, giving the same labelmap as a full run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator, Literal, Sequence

import numpy as np

from .conditioning import (  # noqa: F401  (affected_directions, USER_MASK_SCORE: public here too)
    MASK_PROMPT_IOU, SIDES, USER_MASK_SCORE, Conditioning, affected_directions, build_conditioning,
    conditioning_digest, sides_to_run,
)
from .engine import (
    CancelToken, Engine, FramePrompt, FrameSource, ProgressCallback, Prompt, as_prompts,
)
from .errors import InvalidInputError
from .geometry import Box, Volume, check_index, check_slice_range
from .labels import PackedLabels
from .preprocess import Intensity, volume_intensity

Until = Literal["range", "lost"]


@dataclass
class PropagationResult:
    """A labelmap on the input volume's grid (labels 1..N, one per box) and what produced it."""

    labelmap: Volume
    key_slice: int
    slices: tuple[int, int]  # first and last slice written (inclusive)
    scores: dict[int, float]  # label -> SAM2's IoU score of the key-slice 2-D mask
    slice_scores: dict[int, dict[int, float]] = field(default_factory=dict)  # k -> label -> score
    conditioning_slices: tuple[int, ...] = ()
    side_digests: dict[str, str] = field(default_factory=dict)  # direction -> its conditioning
    tracked: dict[str, int] = field(default_factory=dict)  # direction -> frames tracked this run

    def slab(self, label: int = 1) -> np.ndarray:
        """Label ``label``'s mask on the written slices only (``slices``): what a region write of
        this result needs, without a whole-volume mask."""
        s0, s1 = self.slices
        return self.labelmap.array[s0:s1 + 1] == label


@dataclass
class TrackResult:
    """Per-frame label masks (``T x H x W``, labels 1..N) of a tracked frame sequence (an array,
    or :class:`~polypsam.labels.PackedLabels` from ``track(..., packed=True)``)."""

    labels: np.ndarray
    frame_index: int
    scores: dict[int, float]
    frame_scores: dict[int, dict[int, float]] = field(default_factory=dict)
    side_digests: dict[str, str] = field(default_factory=dict)  # direction -> its conditioning
    tracked: dict[str, int] = field(default_factory=dict)  # direction -> frames tracked this run

    @property
    def key_slice(self) -> int:  # the name re-propagation looks for
        return self.frame_index


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


def _engine_default(engine: Engine, intensity: Intensity | None) -> Intensity | None:
    """``intensity``, else the one the engine's checkpoint was fine-tuned with (if any)."""
    info = getattr(engine, "info", None)
    return info.default_intensity(intensity) if hasattr(info, "default_intensity") else intensity


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


# -- the two-way pass ------------------------------------------------------------------------
def _two_way(
    engine: Engine,
    frames: FrameSource,
    cond: Conditioning,
    key: int,
    lo: int,
    hi: int,
    n_obj: int,
    until: Until,
    intensity: Intensity | None,
    cancel: CancelToken | None,
    sides: Sequence[str] = SIDES,
    tracked: dict[str, int] | None = None,
) -> Iterator[tuple[int, dict[int, np.ndarray], dict[int, float]]]:
    """Yield ``(frame, masks, scores)`` for the key frame, then backward, then forward.

    Frames with conditioning masks yield those masks; other frames (clicked ones included) the
    tracked masks. Only ``sides`` are tracked; ``tracked`` counts the frames each one tracked.
    """
    n = len(frames)
    yield key, dict(cond.masks[key]), dict(cond.scores[key])
    for side, reverse in (("backward", True), ("forward", False)):
        if side not in sides:
            continue
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
                if tracked is not None:
                    tracked[side] = tracked.get(side, 0) + 1
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
    prompts: "Prompt | Box | Sequence[Prompt | Box]",
    slice_range: tuple[int, int] | None = None,
    key_slice: int | None = None,
    *,
    until: Until = "range",
    refinements: Sequence[FramePrompt] = (),
    largest_component: bool = False,
    intensity: Intensity | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    previous: PropagationResult | None = None,
    directions: Iterable[str] | None = None,
) -> PropagationResult:
    """Segment ``prompts`` on the key slice and propagate them through ``volume``'s K axis.

    ``slice_range=(k0, k1)`` is inclusive (default: all slices); ``key_slice`` defaults to its
    middle. Each object's prompt (a box, a :class:`~polypsam.engine.Prompt` with clicks and/or a
    mask) is in pixel indices of the key slice (x = I, y = J), one label per object (1..N).
    ``refinements`` are extra prompts (box, clicks, mask; ``obj_id`` = label) on other slices.
    ``previous`` (the last result of the same volume and key slice) re-tracks only the
    directions whose conditioning changed; ``directions`` names them explicitly instead.
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
    prompt_list = as_prompts(prompts, ni, nj)
    n_obj = len(prompt_list)
    if previous is not None and previous.labelmap.shape != volume.shape:
        raise InvalidInputError(
            f"the previous result has shape {previous.labelmap.shape}, the volume {volume.shape}"
        )
    intensity = volume_intensity(volume.array[k0 : k1 + 1], _engine_default(engine, intensity))
    frames = volume.array  # a (K, J, I) array is a FrameSource: len = K, [k] = slice k
    allowed = (k0, k1) if until == "range" else (0, nk - 1)
    if cancel is not None:
        cancel.raise_if_cancelled()
    cond, key_scores = build_conditioning(
        engine, frames, key, prompt_list, refinements, intensity, (nj, ni), allowed
    )
    context = (getattr(engine, "info", None), repr(intensity), until, k0, k1, key, n_obj, nk)
    digests = {
        side: conditioning_digest(cond.prompts(side, key), (side,) + context) for side in SIDES
    }
    sides = sides_to_run(directions, previous, digests, key)

    dtype = _label_dtype(n_obj)
    labels = np.zeros(volume.shape, dtype=dtype)
    slice_scores: dict[int, dict[int, float]] = {}
    written = [key, key]
    total = k1 - k0 + 1
    done = 0
    if previous is not None:  # the directions not re-run keep the previous slices
        for k, scores in previous.slice_scores.items():
            side = "backward" if k < key else "forward" if k > key else None
            if side is None or side in sides:
                continue
            labels[k] = previous.labelmap.array[k]
            slice_scores[k] = dict(scores)
            written = [min(written[0], k), max(written[1], k)]
            done += 1
    tracked: dict[str, int] = {side: 0 for side in sides}
    for k, masks, scores in _two_way(
        engine, frames, cond, key, k0, k1, n_obj, until, intensity, cancel, sides, tracked
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
        conditioning_slices=cond.frames(),
        side_digests=digests,
        tracked=tracked,
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
    prompts: "Prompt | Box | Sequence[Prompt | Box]",
    *,
    refinements: Sequence[FramePrompt] = (),
    intensity: Intensity | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    previous: TrackResult | None = None,
    directions: Iterable[str] | None = None,
    packed: bool = False,
) -> TrackResult:
    """Segment ``prompts`` on frame ``frame_index`` and track them both ways through ``frames``.

    Each object's prompt is a box or a :class:`~polypsam.engine.Prompt` (clicks, mask);
    ``refinements`` are prompts on other frames (see :func:`propagate`). Returns every frame's
    label mask (``T x H x W``, labels 1..N in prompt order; with ``packed`` a
    :class:`~polypsam.labels.PackedLabels`, one bit per pixel and object). ``previous``/
    ``directions`` re-track only the directions whose prompts changed, as in :func:`propagate`.
    For long sequences use :func:`iter_track`, which yields frames as they come.
    """
    labels = None
    frame_scores: dict[int, dict[int, float]] = {}
    key_scores: dict[int, float] = {}
    run: dict[str, dict] = {}
    for frame, label_mask, scores in iter_track(
        engine, frames, frame_index, prompts, refinements=refinements, intensity=intensity,
        progress=progress, cancel=cancel, key_scores=key_scores, previous=previous,
        directions=directions, run_info=run,
    ):
        if labels is None:
            labels = (PackedLabels(len(frames), label_mask.shape, label_mask.dtype) if packed
                      else np.zeros((len(frames),) + label_mask.shape, dtype=label_mask.dtype))
        labels[frame] = label_mask
        frame_scores[frame] = scores
    if previous is not None:  # the directions not re-run keep the previous frames
        for frame, scores in previous.frame_scores.items():
            side = "backward" if frame < frame_index else "forward" if frame > frame_index else None
            if side is not None and side not in run["sides"]:
                labels[frame] = previous.labels[frame]
                frame_scores[frame] = dict(scores)
    return TrackResult(labels=labels, frame_index=frame_index, scores=key_scores,
                       frame_scores=frame_scores, side_digests=run["digests"],
                       tracked=run["tracked"])


def iter_track(
    engine: Engine,
    frames: FrameSource,
    frame_index: int,
    prompts: "Prompt | Box | Sequence[Prompt | Box]",
    *,
    refinements: Sequence[FramePrompt] = (),
    intensity: Intensity | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    key_scores: dict[int, float] | None = None,
    previous: TrackResult | None = None,
    directions: Iterable[str] | None = None,
    run_info: dict | None = None,
) -> Iterator[tuple[int, np.ndarray, dict[int, float]]]:
    """Like :func:`track`, yielding ``(frame, label_mask, scores)``: the prompted frame first,
    then backward to frame 0, then forward to the last frame. Memory does not grow with ``T``.

    With ``previous``/``directions`` only the directions to re-run are yielded (plus the prompted
    frame); ``run_info`` receives ``sides``, ``digests`` and ``tracked`` counts."""
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
    prompt_list = as_prompts(prompts, shape[1], shape[0])
    n_obj = len(prompt_list)
    if key_frame.ndim == 2:  # a scalar sequence: one mapping for all frames
        intensity = volume_intensity(key_frame[None], _engine_default(engine, intensity))
    cond, scores0 = build_conditioning(
        engine, checked, frame_index, prompt_list, refinements, intensity, shape, (0, n - 1)
    )
    if key_scores is not None:
        key_scores.update(scores0)
    if previous is not None and previous.labels.shape[0] != n:
        raise InvalidInputError(
            f"the previous result has {previous.labels.shape[0]} frames, the sequence {n}"
        )
    context = (getattr(engine, "info", None), repr(intensity), frame_index, n_obj, n, shape)
    digests = {
        side: conditioning_digest(cond.prompts(side, frame_index), (side,) + context)
        for side in SIDES
    }
    sides = sides_to_run(directions, previous, digests, frame_index)
    tracked: dict[str, int] = {side: 0 for side in sides}
    if run_info is not None:
        run_info.update(sides=sides, digests=digests, tracked=tracked)
    dtype = _label_dtype(n_obj)
    done = 0
    for frame, masks, scores in _two_way(
        engine, checked, cond, frame_index, 0, n - 1, n_obj, "range", intensity, cancel, sides,
        tracked,
    ):
        done += 1
        yield frame, merge_masks(masks, scores, shape, dtype), {
            o: float(s) for o, s in scores.items() if o in masks
        }
        if progress is not None:
            progress(done, n)
