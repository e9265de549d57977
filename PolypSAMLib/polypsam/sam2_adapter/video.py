"""Streaming SAM2 video tracking: frames from memory, state that does not grow with the sequence.

Meta's ``SAM2VideoPredictor.init_state`` only accepts a JPEG folder or an mp4 and decodes every
frame up front (sam2 #456), and its ``output_dict`` keeps every tracked frame's memory (sam2 #571).
This module keeps Meta's predictor and its public methods (``add_new_mask``,
``add_new_points_or_box``, ``propagate_in_video``) and changes only what goes around them:

* :class:`LazyFrames` stands in for ``inference_state["images"]``: ``_get_image_feature`` indexes
  it, and frame ``i`` is converted (:func:`polypsam.preprocess.to_model_rgb`), resized to the
  model's square input and ImageNet-normalised only then, the same steps as sam2's
  ``load_video_frames``. Nothing is decoded ahead and no JPEG is written.
* :func:`new_inference_state` builds the state dictionary ``init_state`` would build, without
  loading frames (and without its warm-up encoding of frame 0).
* :class:`VideoSession` runs ``propagate_in_video`` and, between yielded frames, drops the
  per-frame outputs the memory bank can no longer reach (non-conditioning outputs farther than
  :func:`memory_window` frames behind the current one). The memory bank reads at most
  ``num_maskmem`` recent mask memories and ``max_obj_ptrs_in_encoder`` recent object pointers, so
  results are identical to an untrimmed run while memory stays O(1) in the number of frames.
* :class:`~.lookahead.EncoderLookahead` (with ``encoder_batch`` > 1) encodes the frames a pass
  visits next in small batches, ahead of memory attention.
* :class:`BackboneCache` carries a frame's image-encoder output from one pass to the next (and
  from the 2-D predictor that segmented the key slice): a prompted frame is encoded once, not once
  per direction. Both paths feed the encoder bit-identical tensors, so results do not change.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from typing import Iterator, Sequence

import numpy as np

from ..engine import CancelToken, FrameMasks, FramePrompt, FrameSource
from ..errors import InvalidInputError
from ..preprocess import Intensity, to_model_rgb
from .image import model_input
from .lookahead import EncoderLookahead

# Without sam2's optional CUDA extension only its hole-filling post-processing is skipped (see
# docs/development.md); the warning it prints on every propagation says the same and is noise for users.
warnings.filterwarnings("ignore", message=r"cannot import name '_C' from 'sam2'", category=UserWarning)


class LazyFrames:
    """A sequence of model-ready frames (``3 x S x S`` float tensors) computed on demand.

    ``frames`` is any :class:`~polypsam.engine.FrameSource` (a volume's slices, a folder of
    images, a video reader). Every frame must have the size of frame 0; a different one raises
    :class:`InvalidInputError` when it is reached.
    """

    def __init__(
        self,
        frames: FrameSource,
        image_size: int,
        *,
        intensity: Intensity | None = None,
        device=None,
    ) -> None:
        import torch

        self._frames = frames
        self._size = int(image_size)
        self._intensity = intensity
        self._device = torch.device(device) if device is not None else torch.device("cpu")
        self._len = len(frames)
        if self._len == 0:
            raise InvalidInputError("the frame sequence is empty")
        first = self._read(0)
        self.height, self.width = int(first.shape[0]), int(first.shape[1])
        self.reads = 0  # number of frames converted (tests and benchmarks look at it)

    def _read(self, index: int) -> np.ndarray:
        frame = np.asarray(self._frames[index])
        if frame.ndim not in (2, 3):
            raise InvalidInputError(
                f"frame {index} has shape {frame.shape}; frames must be H x W or H x W x 3"
            )
        return frame

    def __len__(self) -> int:
        return self._len

    def rgb(self, index: int) -> np.ndarray:
        """Frame ``index`` as the float RGB image in [0, 1] that SAM2 is given (before resizing)."""
        index = int(index)
        if not 0 <= index < self._len:
            raise IndexError(index)
        frame = self._read(index)
        if frame.shape[:2] != (self.height, self.width):
            raise InvalidInputError(
                f"frame {index} is {frame.shape[1]}x{frame.shape[0]} pixels but frame 0 is"
                f" {self.width}x{self.height}: all frames of a sequence must have the same size"
            )
        return to_model_rgb(frame, self._intensity)

    def to_tensor(self, rgb: np.ndarray):
        """Resize ``rgb`` to the model's square input and ImageNet-normalise it (``3 x S x S``)."""
        return model_input(rgb, self._size, self._device)

    def __getitem__(self, index: int):
        tensor = self.to_tensor(self.rgb(index))
        self.reads += 1
        return tensor


def image_digest(rgb: np.ndarray) -> str:
    """Content key of a model-ready RGB image (shared by the 2-D and video paths)."""
    import hashlib

    key = hashlib.blake2b(np.ascontiguousarray(rgb).tobytes(), digest_size=16)
    key.update(repr((rgb.shape, str(rgb.dtype))).encode())
    return key.hexdigest()


class BackboneCache:
    """The image-encoder outputs (``SAM2Base.forward_image``) of the last few prompted frames.

    Keyed by :func:`image_digest` of the frame's model input, so a hit means the encoder would get
    the very same tensor. Bounded (an entry is about 100 MB at image size 1024).
    """

    def __init__(self, max_items: int = 2) -> None:
        from collections import OrderedDict

        self._items: "OrderedDict[str, dict]" = OrderedDict()
        self._max = max(0, int(max_items))
        self.hits = 0

    def get(self, digest: str):
        out = self._items.get(digest)
        if out is not None:
            self._items.move_to_end(digest)
            self.hits += 1
        return out

    def put(self, digest: str, backbone_out: dict) -> None:
        if self._max == 0:
            return
        self._items[digest] = backbone_out
        self._items.move_to_end(digest)
        while len(self._items) > self._max:
            self._items.popitem(last=False)

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


def new_inference_state(model, images: LazyFrames) -> dict:
    """The state dictionary ``SAM2VideoPredictor.init_state`` builds, around lazy ``images``.

    The keys and their meaning are Meta's (see ``init_state``); frames are not loaded and frame 0
    is not pre-encoded.
    """
    from collections import OrderedDict

    device = model.device
    return {
        "images": images,
        "num_frames": len(images),
        "offload_video_to_cpu": False,
        "offload_state_to_cpu": False,
        "video_height": images.height,
        "video_width": images.width,
        "device": device,
        "storage_device": device,
        "point_inputs_per_obj": {},
        "mask_inputs_per_obj": {},
        "cached_features": {},
        "constants": {},
        "obj_id_to_idx": OrderedDict(),
        "obj_idx_to_id": OrderedDict(),
        "obj_ids": [],
        "output_dict_per_obj": {},
        "temp_output_dict_per_obj": {},
        "frames_tracked_per_obj": {},
    }


def memory_window(model) -> int:
    """How many frames behind the current one SAM2's memory bank can read (eval mode).

    Mask memories come from the last ``num_maskmem - 1`` frames (spaced by
    ``memory_temporal_stride_for_eval``), object pointers from the last
    ``max_obj_ptrs_in_encoder - 1`` frames; conditioning frames are always kept.
    """
    stride = max(1, int(getattr(model, "memory_temporal_stride_for_eval", 1)))
    maskmem = int(getattr(model, "num_maskmem", 7)) * stride
    ptrs = int(getattr(model, "max_obj_ptrs_in_encoder", 16)) if getattr(
        model, "use_obj_ptrs_in_encoder", True
    ) else 0
    return max(maskmem, ptrs, 1)


def trim_state(state: dict, current: int, *, reverse: bool, window: int) -> int:
    """Drop non-conditioning outputs ``window`` or more frames behind ``current``; return count.

    Conditioning outputs (the prompted frames) are never dropped. Also trims the per-frame
    bookkeeping (``frames_tracked_per_obj``) and cached image features of other frames.
    """
    def stale(t: int) -> bool:
        behind = (t - current) if reverse else (current - t)
        return behind >= window

    dropped = 0
    for per_obj in (state["output_dict_per_obj"], state["temp_output_dict_per_obj"]):
        for obj_dict in per_obj.values():
            non_cond = obj_dict["non_cond_frame_outputs"]
            for t in [t for t in non_cond if stale(t)]:
                del non_cond[t]
                dropped += 1
    for obj_idx, tracked in state["frames_tracked_per_obj"].items():
        cond = state["output_dict_per_obj"][obj_idx]["cond_frame_outputs"]
        for t in [t for t in tracked if stale(t) and t not in cond]:
            del tracked[t]
    cached = state["cached_features"]
    for t in [t for t in cached if t != current]:
        del cached[t]
    return dropped


def state_entries(state: dict) -> int:
    """Number of per-frame entries held in the state (outputs, bookkeeping, cached features)."""
    n = 0
    for per_obj in (state["output_dict_per_obj"], state["temp_output_dict_per_obj"]):
        for obj_dict in per_obj.values():
            n += len(obj_dict["cond_frame_outputs"]) + len(obj_dict["non_cond_frame_outputs"])
    n += sum(len(v) for v in state["frames_tracked_per_obj"].values())
    n += len(state["cached_features"])
    return n


_QUIET = threading.local()
_INSTALL_LOCK = threading.Lock()


def _install_quiet_tqdm() -> None:
    """Wrap ``sam2.sam2_video_predictor.tqdm`` once: silent on threads inside ``_quiet``.

    ``propagate_in_video`` creates its own progress bar and has no switch for it; callers here
    show their own. The wrapper is per thread, so other users of sam2 keep their bars and
    concurrent sessions (worker threads, a server) do not race on a swapped global.
    """
    import sam2.sam2_video_predictor as svp

    with _INSTALL_LOCK:
        original = svp.tqdm
        if getattr(original, "_polypsam_quiet", False):
            return

        def tqdm_unless_quiet(iterable=None, *args, **kwargs):
            if getattr(_QUIET, "depth", 0) > 0:
                return iterable
            return original(iterable, *args, **kwargs)

        tqdm_unless_quiet._polypsam_quiet = True
        svp.tqdm = tqdm_unless_quiet


@contextlib.contextmanager
def _quiet_sam2_progress():
    """Silence the progress bar ``propagate_in_video`` creates, on this thread only."""
    _install_quiet_tqdm()
    _QUIET.depth = getattr(_QUIET, "depth", 0) + 1
    try:
        yield
    finally:
        _QUIET.depth -= 1


class VideoSession:
    """One tracking pass of a ``SAM2VideoPredictor`` over frames read on demand.

    ``session.state`` is the predictor's inference state (inspectable between frames);
    ``trim=False`` keeps every frame's output like Meta's predictor does (for comparisons).
    """

    def __init__(
        self,
        model,
        frames: FrameSource,
        prompts: Sequence[FramePrompt],
        *,
        intensity: Intensity | None = None,
        trim: bool = True,
        window: int | None = None,
        backbones: BackboneCache | None = None,
        autocast=contextlib.nullcontext,
        encoder_batch: int = 1,
    ) -> None:
        if model is None:
            raise InvalidInputError("the engine was closed")
        if frames is None or len(frames) == 0:
            raise InvalidInputError("the frame sequence is empty")
        if not prompts:
            raise InvalidInputError("tracking needs at least one prompt (a box, points or a mask)")
        self.model = model
        self.images = LazyFrames(frames, model.image_size, intensity=intensity, device=model.device)
        self.state = new_inference_state(model, self.images)
        self.trim = trim
        self.window = int(window) if window is not None else memory_window(model)
        self.max_entries = 0
        self.prompts = list(prompts)
        self.backbones = backbones
        self.autocast = autocast  # the context SAM2's forward calls run in (precision)
        self.encoder_batch = max(1, int(encoder_batch))
        self.lookahead: EncoderLookahead | None = None
        self._digests: dict[int, str] = {}
        self._check_prompts()

    def _check_prompts(self) -> None:
        n, h, w = len(self.images), self.images.height, self.images.width
        for p in self.prompts:
            if not isinstance(p, FramePrompt):
                raise InvalidInputError(f"a tracking prompt must be a FramePrompt, got {type(p).__name__}")
            if not 0 <= p.frame < n:
                raise InvalidInputError(
                    f"prompt for object {p.obj_id} is on frame {p.frame}, outside the"
                    f" sequence's frames 0..{n - 1}"
                )
            p.validate(w, h)

    def _digest(self, frame: int, rgb: np.ndarray | None = None) -> str:
        if frame not in self._digests:
            self._digests[frame] = image_digest(self.images.rgb(frame) if rgb is None else rgb)
        return self._digests[frame]

    def _seed_features(self, frame: int) -> None:
        """Put a cached encoder output for ``frame`` where ``_get_image_feature`` looks first."""
        if self.backbones is None:
            return
        cached = self.state["cached_features"]
        if frame in cached:
            return
        rgb = self.images.rgb(frame)  # converted once: for the key and, on a hit, the tensor
        backbone_out = self.backbones.get(self._digest(frame, rgb))
        if backbone_out is not None:
            cached[frame] = (self.images.to_tensor(rgb).unsqueeze(0), backbone_out)

    def _remember_features(self, frame: int) -> None:
        if self.backbones is None:
            return
        entry = self.state["cached_features"].get(frame)
        if entry is not None:
            self.backbones.put(self._digest(frame), entry[1])

    def _add_prompts(self) -> None:
        import torch

        with torch.inference_mode(), self.autocast():
            for p in self.prompts:
                self._seed_features(p.frame)
                if p.mask is not None:
                    self.model.add_new_mask(
                        self.state, p.frame, p.obj_id, np.asarray(p.mask).astype(bool)
                    )
                if p.has_clicks:  # after a mask, the clicks correct it (SAM2's own order)
                    points = labels = None
                    if p.points:
                        points = np.asarray(p.points, dtype=np.float32)
                        labels = np.asarray(p.labels, dtype=np.int32)
                    self.model.add_new_points_or_box(
                        self.state, p.frame, p.obj_id, points=points, labels=labels,
                        box=None if p.box is None else p.box.as_xyxy(),
                    )
                self._remember_features(p.frame)
        # propagate_in_video's preflight runs the memory encoder on every prompted frame.
        for frame in sorted({p.frame for p in self.prompts}):
            self._seed_features(frame)

    def run(
        self,
        *,
        start_frame: int,
        reverse: bool = False,
        max_frames: int | None = None,
        cancel: CancelToken | None = None,
    ) -> Iterator[FrameMasks]:
        n = len(self.images)
        if not 0 <= start_frame < n:
            raise InvalidInputError(f"start frame {start_frame} is outside the frames 0..{n - 1}")
        if max_frames is not None and max_frames < 0:
            raise InvalidInputError(f"max_frames must be >= 0, got {max_frames}")
        if cancel is not None:
            cancel.raise_if_cancelled()
        self._add_prompts()
        order = visit_order(n, start_frame, reverse, max_frames)
        if self.encoder_batch > 1:
            prompted = {p.frame for p in self.prompts}
            self.lookahead = EncoderLookahead(
                self.model, [f for f in order if f not in prompted], self.images.__getitem__,
                self.encoder_batch, self.autocast)
        frames_iter = self.model.propagate_in_video(
            self.state, start_frame_idx=start_frame, max_frame_num_to_track=max_frames,
            reverse=reverse,
        )
        step = 0
        try:
            while True:
                if cancel is not None:
                    cancel.raise_if_cancelled()
                if self.lookahead is not None and step < len(order):
                    self.lookahead.seed(self.state, order[step])
                with self.autocast(), (_quiet_sam2_progress() if step == 0  # bar made at step 0
                                       else contextlib.nullcontext()):
                    item = next(frames_iter, None)
                step += 1
                if item is None:
                    return
                frame_idx, obj_ids, logits = item
                self.max_entries = max(self.max_entries, state_entries(self.state))
                if self.trim:
                    trim_state(self.state, frame_idx, reverse=reverse, window=self.window)
                logits = logits.float().cpu()
                masks = {int(o): (logits[i, 0] > 0).numpy() for i, o in enumerate(obj_ids)}
                scores = {int(o): float(logits[i].max()) for i, o in enumerate(obj_ids)}
                yield FrameMasks(frame=int(frame_idx), masks=masks, scores=scores)
        finally:
            frames_iter.close()


def visit_order(count: int, start: int, reverse: bool, max_frames: int | None) -> list[int]:
    """The frames ``propagate_in_video`` visits, in its order (its ``processing_order``)."""
    span = count if max_frames is None else max_frames
    if reverse:  # SAM2 skips reverse tracking from frame 0
        return list(range(start, max(start - span, 0) - 1, -1)) if start > 0 else []
    return list(range(start, min(start + span, count - 1) + 1))


def track_frames(
    model,
    frames: FrameSource,
    prompts: Sequence[FramePrompt],
    *,
    start_frame: int,
    reverse: bool = False,
    max_frames: int | None = None,
    intensity: Intensity | None = None,
    cancel: CancelToken | None = None,
    trim: bool = True,
    backbones: BackboneCache | None = None,
    autocast=contextlib.nullcontext,
    encoder_batch: int = 1,
) -> Iterator[FrameMasks]:
    """Track prompted objects through ``frames`` with a ``SAM2VideoPredictor`` ``model``.

    Every prompt is an initial conditioning frame. Yields one :class:`FrameMasks` per frame from
    ``start_frame`` in one direction (at most ``max_frames`` frames after it). Frames are read
    one at a time; per-frame state is trimmed to the memory window (``trim=False`` keeps it all).
    ``cancel`` is checked before every frame and raises :class:`~polypsam.errors.CancelledError`.
    ``backbones`` lends and keeps the prompted frames' encoder outputs (see :class:`BackboneCache`).
    SAM2's forward calls run inside ``autocast()`` (the engine's precision); with ``encoder_batch``
    > 1 the next frames are encoded that many at a time (:class:`~.lookahead.EncoderLookahead`).
    """
    session = VideoSession(
        model, frames, prompts, intensity=intensity, trim=trim, backbones=backbones,
        autocast=autocast, encoder_batch=encoder_batch,
    )
    yield from session.run(
        start_frame=start_frame, reverse=reverse, max_frames=max_frames, cancel=cancel
    )
