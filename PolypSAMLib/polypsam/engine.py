"""The engine protocol: the one interface every segmentation engine implements.

Two implementations share it: :class:`polypsam.sam2_adapter.engine.SAM2Engine` (SAM2 in this
process) and :class:`polypsam.server.client.ServerEngine` (the HTTP client of ``polypsam
serve``). Code above the engine (propagation, the CLI, the Slicer logic) only ever talks to this
protocol, so it never builds SAM2 itself.

Images cross the protocol as NumPy arrays: ``H x W`` scalar (any dtype: a CT slice in HU, an
MR slice...) or ``H x W x 3`` uint8 RGB (an endoscopy frame). Intensity handling for scalar
images is part of the request (:mod:`polypsam.preprocess`), so a server applies the same window.

Prompts: one object's prompt is a :class:`Prompt` (a box, positive/negative points, an input
mask, or any combination, as SAM2 takes them together); a plain :class:`~polypsam.geometry.Box`
or four numbers still mean a box prompt. Every type here has ``to_dict``/``from_dict`` with plain
JSON types; masks (NumPy arrays) are left out of the dictionaries and travel separately.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator, Protocol, Sequence, runtime_checkable

import numpy as np

from .errors import CancelledError, InvalidInputError
from .geometry import Box, as_box
from .preprocess import Intensity, parse_intensity

if TYPE_CHECKING:
    from .prefetch import Prefetch

INCLUDE, EXCLUDE = 1, 0  # point labels, as SAM2 takes them (1 positive, 0 negative)


def _points(points, labels, what: str) -> tuple[tuple[tuple[float, float], ...], tuple[int, ...]]:
    """``points``/``labels`` as tuples of plain floats/ints, checked for shape and label values."""
    try:
        pts = tuple((float(p[0]), float(p[1])) for p in points)
        if any(len(p) != 2 for p in points):
            raise ValueError
    except (TypeError, ValueError, IndexError) as exc:
        raise InvalidInputError(f"{what}: points must be pairs of numbers X Y, got {points!r}") from exc
    try:
        labs = tuple(int(v) for v in labels)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{what}: point labels must be 1 or 0, got {labels!r}") from exc
    if len(labs) != len(pts):
        raise InvalidInputError(f"{what}: {len(pts)} points but {len(labs)} point labels")
    if any(v not in (INCLUDE, EXCLUDE) for v in labs):
        raise InvalidInputError(
            f"{what}: point labels must be 1 (include) or 0 (exclude), got {list(labs)}"
        )
    if not all(np.isfinite(c) for p in pts for c in p):
        raise InvalidInputError(f"{what}: a point has a non-finite coordinate")
    return pts, labs


def _check_points_in_image(points, width: int, height: int, what: str) -> None:
    for x, y in points:
        if not (0 <= x <= width - 1 and 0 <= y <= height - 1):
            raise InvalidInputError(
                f"{what}: point ({x:g}, {y:g}) lies outside the image: pixel x must be in"
                f" [0, {width - 1}] and y in [0, {height - 1}] for a {width}x{height} image"
            )


def _check_mask(mask, width: int, height: int, what: str, allow_empty: bool = False) -> None:
    if np.shape(mask) != (height, width):
        raise InvalidInputError(
            f"{what}: mask prompt has shape {np.shape(mask)}; the image is {height} x {width}"
        )
    if not allow_empty and not np.any(mask):
        raise InvalidInputError(f"{what}: mask prompt is empty (no pixel set)")


@dataclass(frozen=True, eq=False)
class Prompt:
    """One object's prompt on one 2-D image: any combination of a box, points and a mask.

    ``points`` are ``(x, y)`` pixel positions (x = column, y = row, like a box's corners) with
    ``labels`` 1 (include) or 0 (exclude). ``mask`` is a binary ``H x W`` mask of the image (an
    existing segment, a previous result); SAM2 gets it as its low-resolution mask input (see
    :func:`polypsam.sam2_adapter.image.mask_to_logits`). At least one positive element is needed: a box,
    an include point or a mask; exclude points alone are refused.
    """

    box: Box | None = None
    points: tuple[tuple[float, float], ...] = ()
    labels: tuple[int, ...] = ()
    mask: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.box is not None:
            object.__setattr__(self, "box", as_box(self.box))
        pts, labs = _points(self.points, self.labels, "prompt")
        object.__setattr__(self, "points", pts)
        object.__setattr__(self, "labels", labs)
        if self.mask is not None:
            mask = np.asarray(self.mask)
            if mask.ndim != 2:
                raise InvalidInputError(f"prompt: a mask prompt must be 2-D, got shape {mask.shape}")
            object.__setattr__(self, "mask", mask.astype(bool, copy=False))
        if self.box is None and self.mask is None and INCLUDE not in labs:
            raise InvalidInputError(
                "prompt: exclude points alone cannot make a mask; add an include point, a box or"
                " a mask prompt" if labs else "prompt: empty (give a box, points or a mask)"
            )

    @classmethod
    def of(cls, value: "Prompt | Box | Sequence[float]") -> "Prompt":
        """A prompt from a prompt, a box or four numbers ``x0 y0 x1 y1`` (a box prompt)."""
        return value if isinstance(value, Prompt) else cls(box=as_box(value))

    @property
    def include_points(self) -> list[tuple[float, float]]:
        return [p for p, v in zip(self.points, self.labels) if v == INCLUDE]

    @property
    def exclude_points(self) -> list[tuple[float, float]]:
        return [p for p, v in zip(self.points, self.labels) if v == EXCLUDE]

    def validate(self, width: int, height: int) -> "Prompt":
        """Check box, points and mask against a ``width`` x ``height`` image; return self."""
        if self.box is not None:
            self.box.validate(width, height)
        _check_points_in_image(self.points, width, height, "prompt")
        if self.mask is not None:
            _check_mask(self.mask, width, height, "prompt")
        return self

    def describe(self) -> str:
        parts = []
        if self.box is not None:
            parts.append(f"box {self.box.describe()}")
        if self.points:
            inc, exc = len(self.include_points), len(self.exclude_points)
            parts.append(f"{inc} include / {exc} exclude points")
        if self.mask is not None:
            parts.append("mask")
        return " + ".join(parts)

    def to_dict(self) -> dict:
        """Plain JSON types; the mask is left out (``has_mask`` says whether one goes along)."""
        return {
            "box": None if self.box is None else self.box.to_list(),
            "points": [list(p) for p in self.points],
            "labels": list(self.labels),
            "has_mask": self.mask is not None,
        }

    @classmethod
    def from_dict(cls, data: dict, mask: np.ndarray | None = None) -> "Prompt":
        """Inverse of :meth:`to_dict`; ``mask`` must be given when ``has_mask`` is true."""
        if not isinstance(data, dict):
            raise InvalidInputError(f"a prompt must be a mapping, got {type(data).__name__}")
        unknown = set(data) - {"box", "points", "labels", "has_mask"}
        if unknown:
            raise InvalidInputError(f"prompt: unknown fields {sorted(unknown)}")
        if bool(data.get("has_mask")) != (mask is not None):
            raise InvalidInputError(
                "prompt: has_mask is true but no mask was sent" if data.get("has_mask")
                else "prompt: a mask was sent but has_mask is false"
            )
        box = data.get("box")
        return cls(
            box=None if box is None else Box.from_sequence(box),
            points=tuple(data.get("points") or ()),
            labels=tuple(data.get("labels") or ()),
            mask=mask,
        )


def as_prompts(
    prompts: "Prompt | Box | Sequence", width: int | None = None, height: int | None = None
) -> list[Prompt]:
    """One prompt, a box, four numbers, an ``N x 4`` array or a list of these → checked prompts.

    With ``width`` and ``height`` every prompt is validated against that image. The one home of
    prompt coercion (boxes alone go through :func:`polypsam.geometry.as_boxes`' rules).
    """
    if isinstance(prompts, (Prompt, Box)):
        items = [prompts]
    elif isinstance(prompts, np.ndarray):
        items = [prompts] if prompts.ndim == 1 else list(prompts)
    else:
        items = list(prompts)
        if len(items) == 4 and all(np.isscalar(v) for v in items):
            items = [items]
    if not items:
        raise InvalidInputError("at least one box (or a points/mask prompt) is needed")
    out = [Prompt.of(p) for p in items]
    if width is not None and height is not None:
        for i, p in enumerate(out, start=1):
            try:
                p.validate(width, height)
            except InvalidInputError as exc:
                raise InvalidInputError(f"object {i}: {exc}" if len(out) > 1 else str(exc)) from None
    return out


def object_prompts(
    boxes: Sequence,
    points: Sequence = (),
    labels: Sequence[int] = (),
    mask: np.ndarray | None = None,
    width: int | None = None,
    height: int | None = None,
    *,
    other_clicks: bool = False,
    boxes_name: str = "boxes",
    advice: str = "one call per object",
) -> list[Prompt]:
    """Boxes plus ONE object's clicks and mask as the objects' prompts (CLI and batch rule).

    Without clicks or mask every box is an object (labels 1..N). Clicks (``points`` with
    ``labels`` 1/0) and ``mask`` go with the single box, or form one object alone; several boxes
    with them, or with ``other_clicks`` (clicks on other frames, which belong to object 1), are
    refused (``boxes_name``/``advice`` word the error for the caller). With ``width`` and
    ``height`` everything is checked against that image (:func:`as_prompts`).
    """
    boxes = [as_box(b) for b in boxes]
    clicks = len(points) > 0 or mask is not None or other_clicks
    if len(boxes) > 1 and clicks:
        raise InvalidInputError(
            f"{len(boxes)} {boxes_name} with clicks or a mask prompt: clicks and masks belong to"
            f" one object, so give at most one box with them ({advice})"
        )
    if not clicks:
        return as_prompts(boxes, width, height)
    prompt = Prompt(box=boxes[0] if boxes else None, points=points, labels=labels, mask=mask)
    return as_prompts([prompt], width, height)


def frame_clicks(
    clicks: Sequence, count: int, unit: str = "frame", obj_id: int = 1
) -> list[FramePrompt]:
    """Clicks ``(frame, x, y, label)`` on frames of a ``count``-frame sequence as one
    :class:`FramePrompt` per frame for object ``obj_id`` (sorted by frame; ``unit`` words errors).
    """
    from .geometry import check_index

    by_frame: dict[int, tuple[list, list]] = {}
    for n, x, y, label in clicks:
        if n != int(n):
            raise InvalidInputError(f"click {unit} {n:g}: the {unit} must be an integer")
        frame = check_index(int(n), count, f"click {unit} {int(n)}", f"the {unit}s")
        pts, labs = by_frame.setdefault(frame, ([], []))
        pts.append((x, y))
        labs.append(label)
    return [
        FramePrompt(f, obj_id, points=pts, labels=labs) for f, (pts, labs) in sorted(by_frame.items())
    ]


@dataclass(frozen=True, eq=False)
class MaskResult:
    """One object's 2-D mask (``bool``, input size) and SAM2's predicted IoU score.

    With ``multimask`` the engine also returns SAM2's three ``candidates`` and their predicted
    IoU ``candidate_scores`` (in SAM2's output order); ``mask``/``score`` are then the candidate
    with the highest score (``best``), as SAM2's video predictor picks it.
    """

    mask: np.ndarray
    score: float
    box: Box | None = None
    prompt: Prompt | None = None
    candidates: tuple[np.ndarray, ...] = ()
    candidate_scores: tuple[float, ...] = ()

    @property
    def best(self) -> int:
        """Index of ``mask`` among ``candidates`` (0 without candidates)."""
        if not self.candidate_scores:
            return 0
        return int(np.argmax(self.candidate_scores))

    def to_dict(self) -> dict:
        """Plain JSON types; masks are left out (``mask`` and ``candidates`` travel separately)."""
        return {
            "score": float(self.score),
            "box": None if self.box is None else self.box.to_list(),
            "prompt": None if self.prompt is None else self.prompt.to_dict(),
            "candidate_scores": [float(v) for v in self.candidate_scores],
            "shape": list(np.shape(self.mask)),
        }

    @classmethod
    def from_dict(
        cls,
        data: dict,
        mask: np.ndarray,
        candidates: Sequence[np.ndarray] = (),
        prompt_mask: np.ndarray | None = None,
    ) -> "MaskResult":
        """Inverse of :meth:`to_dict` with the arrays given back."""
        scores = tuple(float(v) for v in data.get("candidate_scores") or ())
        if len(scores) != len(candidates):
            raise InvalidInputError(
                f"result: {len(scores)} candidate scores but {len(candidates)} candidate masks"
            )
        box, prompt = data.get("box"), data.get("prompt")
        return cls(
            mask=np.asarray(mask, dtype=bool),
            score=float(data["score"]),
            box=None if box is None else Box.from_sequence(box),
            prompt=None if prompt is None else Prompt.from_dict(prompt, prompt_mask),
            candidates=tuple(np.asarray(c, dtype=bool) for c in candidates),
            candidate_scores=scores,
        )


@dataclass(frozen=True)
class EngineInfo:
    """What produced a result: recorded as provenance on every segment."""

    engine: str
    model: str
    config: str
    checkpoint: str
    checkpoint_sha256: str
    image_size: int
    device: str
    polypsam_version: str
    precision: str = ""  # fp32 or bf16 (SAM2's forward calls under bfloat16 autocast)
    trained_intensity: str = ""  # the fine-tuning intensity (sidecar), used when a call gives none

    def provenance(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self).items() if k != "trained_intensity" or v}

    def default_intensity(self, intensity: Intensity | None = None) -> Intensity | None:
        """``intensity``, or when it is ``None`` the checkpoint's fine-tuning intensity."""
        if intensity is not None or not self.trained_intensity:
            return intensity
        return parse_intensity(self.trained_intensity)


@dataclass(frozen=True, eq=False)
class FramePrompt:
    """A conditioning prompt for one object on one frame of a sequence.

    What SAM2's video predictor takes: a box and/or points (``add_new_points_or_box``), or a
    mask (``add_new_mask``). A mask together with points/box means both, in that order: the mask
    is added, then the points/box correct it (SAM2 feeds the mask's logits to the decoder with
    the points, as it does for a click on an already prompted frame). Unlike a 2-D
    :class:`Prompt`, an empty mask is accepted here: it tells the tracker the object is absent
    on that frame.
    """

    frame: int
    obj_id: int
    box: Box | None = None
    mask: np.ndarray | None = None
    points: tuple[tuple[float, float], ...] = ()
    labels: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        what = f"prompt for object {self.obj_id} on frame {self.frame}"
        if self.box is not None:
            object.__setattr__(self, "box", as_box(self.box))
        pts, labs = _points(self.points, self.labels, what)
        object.__setattr__(self, "points", pts)
        object.__setattr__(self, "labels", labs)
        if self.box is None and self.mask is None and not pts:
            raise InvalidInputError(f"{what}: needs a box, points or a mask")
        if self.box is None and self.mask is None and INCLUDE not in labs:
            raise InvalidInputError(
                f"{what}: exclude points alone cannot make a mask; add an include point, a box"
                " or a mask prompt"
            )

    @classmethod
    def from_prompt(cls, frame: int, obj_id: int, prompt: "Prompt | Box | Sequence[float]") -> "FramePrompt":
        p = Prompt.of(prompt)
        return cls(int(frame), int(obj_id), p.box, p.mask, p.points, p.labels)

    @property
    def prompt(self) -> Prompt:
        """The 2-D :class:`Prompt` of this frame (box, points, mask)."""
        return Prompt(self.box, self.points, self.labels, self.mask)

    @property
    def has_clicks(self) -> bool:
        """True when SAM2 gets a box or points here (``add_new_points_or_box``)."""
        return self.box is not None or bool(self.points)

    def validate(self, width: int, height: int) -> "FramePrompt":
        what = f"prompt for object {self.obj_id} on frame {self.frame}"
        if self.box is not None:
            self.box.validate(width, height)
        _check_points_in_image(self.points, width, height, what)
        if self.mask is not None:
            _check_mask(self.mask, width, height, what, allow_empty=True)
        return self

    def to_dict(self) -> dict:
        """Plain JSON types; the mask is left out (``has_mask`` says whether one goes along)."""
        return {"frame": int(self.frame), "obj_id": int(self.obj_id), **self.prompt.to_dict()}

    @classmethod
    def from_dict(cls, data: dict, mask: np.ndarray | None = None) -> "FramePrompt":
        if not isinstance(data, dict) or "frame" not in data or "obj_id" not in data:
            raise InvalidInputError("a frame prompt needs 'frame' and 'obj_id'")
        rest = {k: v for k, v in data.items() if k not in ("frame", "obj_id")}
        return cls.from_prompt(int(data["frame"]), int(data["obj_id"]), Prompt.from_dict(rest, mask))


@dataclass
class FrameMasks:
    """Masks of every tracked object on one frame (``obj_id -> bool mask``) and its logits max."""

    frame: int
    masks: dict[int, np.ndarray]
    scores: dict[int, float] = field(default_factory=dict)


class FrameSource(Protocol):
    """A sequence of frames read on demand: a volume's slices or a video's frames."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> np.ndarray: ...


class CancelToken:
    """Thread-safe flag a caller sets to stop long work at the next frame boundary."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise CancelledError("cancelled by the user")


ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(done, total)`` while work advances."""


@runtime_checkable
class Engine(Protocol):
    """A promptable segmentation model (SAM2 in-process, or a server client)."""

    @property
    def info(self) -> EngineInfo: ...

    def segment_2d(
        self,
        image: np.ndarray,
        prompts: "Sequence[Prompt | Box] | Prompt | Box",
        *,
        intensity: Intensity | None = None,
        multimask: bool = False,
    ) -> list[MaskResult]:
        """One mask per prompt on a 2-D image (same order as ``prompts``).

        A prompt is a :class:`Prompt`, a :class:`~polypsam.geometry.Box` or four numbers. With
        ``multimask`` each result also carries SAM2's three candidates and their scores.
        """
        ...

    def track(
        self,
        frames: FrameSource,
        prompts: Sequence[FramePrompt],
        *,
        start_frame: int,
        reverse: bool = False,
        max_frames: int | None = None,
        intensity: Intensity | None = None,
        cancel: CancelToken | None = None,
    ) -> Iterator[FrameMasks]:
        """Track the prompted objects through ``frames`` from ``start_frame`` in one direction.

        Yields one :class:`FrameMasks` per frame visited, starting with ``start_frame``. Frames are
        read from ``frames`` on demand; memory does not grow with the number of frames.
        """
        ...

    def prefetch(self, image: np.ndarray, *, intensity: Intensity | None = None) -> "Prefetch":
        """Encode ``image`` into the embedding cache in the background; returns at once.

        The returned :class:`~polypsam.prefetch.Prefetch` can be cancelled (the encoding stops
        at its next encoder block) and waited for; a later prompt on the same image (same pixels
        and intensity) then runs only the decoder. See :class:`polypsam.prefetch.Prefetcher`.
        """
        ...

    def close(self) -> None:
        """Release the model and any cached state."""
        ...
