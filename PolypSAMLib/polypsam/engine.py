"""The engine protocol: the one interface every segmentation engine implements.

Two implementations share it: :class:`polypsam.sam2_engine.SAM2Engine` (SAM2 in this process)
and, later, an HTTP client for a local GPU server. Code above the engine (propagation, the CLI,
the Slicer logic) only ever talks to this protocol, so it never builds SAM2 itself.

Images cross the protocol as NumPy arrays: ``H x W`` scalar (any dtype: a CT slice in HU, an
MR slice...) or ``H x W x 3`` uint8 RGB (an endoscopy frame). Intensity handling for scalar
images is part of the request (:mod:`polypsam.preprocess`), so a server applies the same window.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator, Protocol, Sequence, runtime_checkable

import numpy as np

from .errors import CancelledError
from .geometry import Box
from .preprocess import Intensity


@dataclass(frozen=True)
class MaskResult:
    """One object's 2-D mask (``bool``, input size) and SAM2's predicted IoU score."""

    mask: np.ndarray
    score: float
    box: Box | None = None


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

    def provenance(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class FramePrompt:
    """A conditioning prompt for one object on one frame of a sequence: a box or a mask."""

    frame: int
    obj_id: int
    box: Box | None = None
    mask: np.ndarray | None = None

    def __post_init__(self) -> None:
        if (self.box is None) == (self.mask is None):
            raise ValueError("a FramePrompt needs exactly one of box or mask")


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
    """A box-promptable segmentation model (SAM2 in-process, or a server client)."""

    @property
    def info(self) -> EngineInfo: ...

    def segment_2d(
        self,
        image: np.ndarray,
        boxes: Sequence[Box],
        *,
        intensity: Intensity | None = None,
    ) -> list[MaskResult]:
        """One mask per box on a 2-D image (same order as ``boxes``)."""
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

    def close(self) -> None:
        """Release the model and any cached state."""
        ...
