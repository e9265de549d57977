"""The in-process SAM2 engine: Meta's ``sam2`` package running in this Python process.

2-D segmentation computes what ``SAM2ImagePredictor`` computes, with SAM2's modules directly
(:mod:`polypsam.sam2_adapter.image`; no torchvision needed). An LRU of embeddings keyed by the
preprocessed image means a new box or click on an image that was already encoded runs only the
prompt encoder and mask decoder (``encoder_runs`` counts the encodings);
:meth:`SAM2Engine.prefetch` fills that cache in the background for the image on screen
(:mod:`polypsam.prefetch`). SAM2's forward calls run at the engine's precision (:mod:`.precision`:
bfloat16 autocast on CUDA by default, float32 elsewhere). Sequence tracking
(:meth:`SAM2Engine.track`) streams frames from memory through :mod:`polypsam.sam2_adapter.video`.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Iterator, Sequence

import numpy as np

from .. import __version__
from ..checkpoints import ResolvedCheckpoint
from ..engine import (
    CancelToken, EngineInfo, FrameMasks, FramePrompt, FrameSource, MaskResult, Prompt, as_prompts,
)
from ..errors import CancelledError, InvalidInputError
from ..geometry import Box
from ..prefetch import CACHED, CANCELLED, DONE, FAILED, Prefetch
from ..preprocess import Intensity, intensity_text, to_model_rgb
from .image import ImageEmbedding, embed_image, model_input, predict
from .model import build_model, select_device
from .lookahead import resolve_encoder_batch
from .precision import resolve_precision
from .video import BackboneCache, image_digest


class SAM2Engine:
    """SAM2 in this process; implements :class:`polypsam.engine.Engine`."""

    def __init__(
        self,
        checkpoint: ResolvedCheckpoint,
        *,
        device: str | None = None,
        image_size: int | None = None,
        embedding_cache_size: int = 4,
        precision: str = "auto",
        encoder_batch: int = 0,
        intensity: Intensity | None = None,
    ) -> None:
        self._checkpoint = checkpoint
        # the checkpoint's fine-tuning intensity: used when a call gives none
        self._default_intensity = intensity
        self._device = select_device(device)
        self._precision = resolve_precision(precision, self._device)
        # frames encoded together ahead of memory attention while tracking (0: per device)
        self.encoder_batch = resolve_encoder_batch(encoder_batch, self._device)
        self._image_size = int(image_size or checkpoint.image_size)
        self._model = build_model(
            checkpoint.config, checkpoint.path, self._device, image_size=self._image_size
        )
        self._encoding_cancel: CancelToken | None = None  # checked inside the image encoder
        for block in _encoder_blocks(self._model):
            block.register_forward_pre_hook(self._check_encoding_cancelled)
        self._prefetch_worker = None  # started on the first prefetch
        self._prefetch_lock = threading.Lock()
        self._closed = False
        self._prefetches: list[Prefetch] = []
        self._cache: OrderedDict[str, ImageEmbedding] = OrderedDict()
        # caller's image (+ intensity) → key of its model RGB: a click skips the conversion
        self._input_keys: OrderedDict[str, str] = OrderedDict()
        self._cache_size = max(1, embedding_cache_size)
        # Encoder outputs of recently segmented/prompted frames, lent to tracking passes so a key
        # slice is encoded once for the 2-D mask and both propagation directions.
        self._backbones = BackboneCache(max_items=2)
        self._lock = threading.RLock()
        self.encoder_runs = 0  # number of image encodings; lets callers/tests see cache hits

    @property
    def model(self):
        """The underlying ``SAM2VideoPredictor`` (a ``SAM2Base``)."""
        return self._model

    @property
    def info(self) -> EngineInfo:
        return EngineInfo(
            engine="sam2-inprocess",
            model=self._checkpoint.model,
            config=self._checkpoint.config,
            checkpoint=str(self._checkpoint.path),
            checkpoint_sha256=self._checkpoint.sha256,
            image_size=self._image_size,
            device=str(self._device),
            polypsam_version=__version__,
            precision=self._precision.name,
            trained_intensity=(intensity_text(self._default_intensity)
                               if self._default_intensity is not None else ""),
        )

    @property
    def precision(self) -> str:
        """``"fp32"`` or ``"bf16"``: what SAM2's forward calls run at (see :mod:`.precision`)."""
        return self._precision.name

    # -- 2-D ---------------------------------------------------------------------------------
    def segment_2d(
        self,
        image: np.ndarray,
        prompts: "Sequence[Prompt | Box] | Prompt | Box",
        *,
        intensity: Intensity | None = None,
        multimask: bool = False,
    ) -> list[MaskResult]:
        import torch

        if intensity is None:
            intensity = self._default_intensity
        with self._lock, torch.inference_mode(), self._precision.autocast():
            if self._model is None:
                raise InvalidInputError("the engine was closed")
            embedding = self._cached_embedding(image, intensity)
            if embedding is None:  # not seen: convert (this checks the image) and encode
                rgb = to_model_rgb(image, intensity)
                as_prompts(prompts, rgb.shape[1], rgb.shape[0])  # bad prompts: nothing encoded
                embedding = self._embedding_for(rgb, self._input_key(image, intensity))
            checked = as_prompts(prompts, embedding.width, embedding.height)
            return [self._result(embedding, p, multimask) for p in checked]

    @staticmethod
    def _input_key(image, intensity) -> str | None:
        """Content key of the caller's image + intensity (cheaper than hashing the float RGB)."""
        array = np.asarray(image)
        if array.dtype == object:
            return None
        return image_digest(array) + repr(intensity)

    def _cached_embedding(self, image, intensity) -> ImageEmbedding | None:
        """The embedding of an image given before (same pixels and intensity), else ``None``."""
        key = self._input_key(image, intensity)
        digest = self._input_keys.get(key) if key is not None else None
        if digest is None or digest not in self._cache:
            return None
        self._cache.move_to_end(digest)
        return self._cache[digest]

    def _result(self, embedding: ImageEmbedding, prompt: Prompt, multimask: bool) -> MaskResult:
        masks, scores = predict(self._model, embedding, prompt, multimask=multimask)
        if not multimask:
            return MaskResult(mask=masks[0], score=float(scores[0]), box=prompt.box, prompt=prompt)
        best = int(np.argmax(scores))
        return MaskResult(
            mask=masks[best], score=float(scores[best]), box=prompt.box, prompt=prompt,
            candidates=tuple(masks), candidate_scores=tuple(float(v) for v in scores),
        )

    def _embedding_for(self, rgb: np.ndarray, input_key: str | None = None,
                       cancel: CancelToken | None = None) -> ImageEmbedding:
        """``rgb`` encoded (cached by content); the encoder output is also lent to tracking.

        ``cancel`` is checked inside the image encoder (raises ``CancelledError``).
        """
        digest = image_digest(rgb)
        if input_key is not None:
            self._input_keys[input_key] = digest
            while len(self._input_keys) > 4 * self._cache_size:
                self._input_keys.popitem(last=False)
        if digest in self._cache:
            self._cache.move_to_end(digest)
            return self._cache[digest]
        batch = model_input(rgb, self._image_size, self._device)[None]
        self._encoding_cancel = cancel
        try:
            backbone_out = self._model.forward_image(batch)
        finally:
            self._encoding_cancel = None
        self.encoder_runs += 1
        self._backbones.put(digest, backbone_out)
        embedding = embed_image(self._model, backbone_out, rgb.shape[0], rgb.shape[1])
        self._cache[digest] = embedding
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return embedding

    # -- background encoding ---------------------------------------------------------------
    def encode(self, image: np.ndarray, *, intensity: Intensity | None = None,
               cancel: CancelToken | None = None) -> bool:
        """Encode ``image`` into the embedding cache now, without a prompt.

        Returns ``True`` if the encoder ran, ``False`` if the image was encoded before.
        ``cancel`` stops the encoding at the encoder's next attention or MLP
        (:class:`CancelledError`); nothing is cached then. This is the work of :meth:`prefetch`
        (and of a server's prefetch).
        """
        import torch

        if intensity is None:
            intensity = self._default_intensity
        with self._lock, torch.inference_mode(), self._precision.autocast():
            if self._model is None:
                raise InvalidInputError("the engine was closed")
            if cancel is not None:
                cancel.raise_if_cancelled()
            if self._cached_embedding(image, intensity) is not None:
                return False
            runs = self.encoder_runs
            self._embedding_for(to_model_rgb(image, intensity), self._input_key(image, intensity),
                                cancel=cancel)
            return self.encoder_runs > runs

    def prefetch(self, image: np.ndarray, *, intensity: Intensity | None = None) -> Prefetch:
        """:meth:`encode` on the engine's background thread; returns a cancellable handle at once.

        The caller's thread does no model work (not even the intensity mapping). Model calls stay
        one at a time (the engine's lock): a box placed while its image is being prefetched
        waits for that encoding and then runs only the decoder.
        """
        from concurrent.futures import ThreadPoolExecutor

        handle = Prefetch()
        with self._prefetch_lock:  # never the model's lock: that one is held while encoding
            if self._closed:
                raise InvalidInputError("the engine was closed")
            self._prefetches = [p for p in self._prefetches if not p.finished] + [handle]
            if self._prefetch_worker is None:  # one persistent thread (GPU per-thread state)
                self._prefetch_worker = ThreadPoolExecutor(
                    1, thread_name_prefix="polypsam-prefetch")
            worker = self._prefetch_worker
        worker.submit(lambda: self._run_prefetch(handle, image, intensity))
        return handle

    def _run_prefetch(self, handle: Prefetch, image, intensity) -> None:
        if handle.cancelled or self._model is None:
            handle.finish(CANCELLED)
            return
        handle.started()
        try:
            ran = self.encode(image, intensity=intensity, cancel=handle.token)
        except CancelledError:
            handle.finish(CANCELLED)
        except Exception as exc:  # noqa: BLE001 - a prefetch is a hint: report, never raise
            handle.finish(CANCELLED if self._model is None else FAILED, exc)
        else:
            handle.finish(DONE if ran else CACHED)

    def _check_encoding_cancelled(self, _module, _inputs) -> None:
        token = self._encoding_cancel
        if token is not None:
            token.raise_if_cancelled()

    # -- sequences ---------------------------------------------------------------------------
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
        from .video import track_frames

        if intensity is None:
            intensity = self._default_intensity
        with self._lock:
            yield from track_frames(
                self._model,
                frames,
                prompts,
                start_frame=start_frame,
                reverse=reverse,
                max_frames=max_frames,
                intensity=intensity,
                cancel=cancel,
                backbones=self._backbones,
                autocast=self._precision.autocast,
                encoder_batch=self.encoder_batch,
            )

    def close(self) -> None:
        with self._prefetch_lock:
            self._closed = True
            worker, self._prefetch_worker = self._prefetch_worker, None
            for handle in self._prefetches:
                handle.cancel()
        if worker is not None:
            worker.shutdown(wait=True)  # the cancelled prefetches stop inside the encoder
        with self._lock:
            self._cache.clear()
            self._input_keys.clear()
            self._backbones.clear()
            self._model = None


def _encoder_blocks(model) -> list:
    """Where a cancelled encoding stops: the attention and MLP of each of the image encoder's
    (Hiera's) blocks, about 40-120 ms apart at image size 512 on one CPU thread; else the
    encoder itself."""
    blocks = getattr(getattr(model.image_encoder, "trunk", None), "blocks", None)
    if blocks is None:
        return [model.image_encoder]
    return [part for block in blocks
            for part in ([getattr(block, "attn", None), getattr(block, "mlp", None)]
                         if hasattr(block, "attn") and hasattr(block, "mlp") else [block])]
