"""Answers before the click: the image on screen is encoded in the background.

SAM2's image encoder is most of the time a first box or click on a new slice waits for (about
0.7 s at image size 512 on a CPU, against tens of milliseconds for the prompt encoder and mask
decoder). :meth:`polypsam.engine.Engine.prefetch` encodes an image into the engine's embedding
cache without a prompt, off the caller's thread, and returns a :class:`Prefetch` handle; a box
placed once it has finished runs only the decoder. Cancelling the handle stops the encoding at the
next encoder block (or before it starts), so moving on to another slice costs at most one block.

:class:`Prefetcher` is what a viewer uses: it keeps the prefetch of the one image shown,
cancelling and replacing it when another image is shown, and cancelling it when nothing is::

    prefetcher = Prefetcher()
    # whenever the slice/frame on screen changes (e.g. a slice node's Modified event):
    prefetcher.show(engine, slice_array, intensity=window)
    # when the view is closed or the input is unset:
    prefetcher.hide()

No Qt and no threads of its own here: the engine runs the work (SAM2 in this process on its
background thread, or a server on its model thread).
"""

from __future__ import annotations

import hashlib
import threading
from typing import Callable, Optional

import numpy as np

from .engine import CancelToken

QUEUED, RUNNING = "queued", "running"
DONE, CACHED, CANCELLED, FAILED = "done", "cached", "cancelled", "failed"
FINISHED = (DONE, CACHED, CANCELLED, FAILED)


class Prefetch:
    """One background encoding: its state, a way to cancel it and to wait for it.

    ``state`` goes ``queued`` → ``running`` → one of ``done`` (encoded now), ``cached`` (it was
    encoded before: nothing ran), ``cancelled`` or ``failed`` (``error`` says why; a prefetch is a
    hint, so a failure is never raised at the caller).
    """

    def __init__(self, on_cancel: Optional[Callable[[], None]] = None) -> None:
        self.token = CancelToken()
        self._on_cancel = on_cancel
        self._finished = threading.Event()
        self._lock = threading.Lock()
        self.state = QUEUED
        self.error: Optional[BaseException] = None

    def cancel(self) -> None:
        """Stop the encoding at its next encoder block (or skip it if it has not started)."""
        if self.finished:
            return
        self.token.cancel()
        if self._on_cancel is not None:
            self._on_cancel()

    @property
    def cancelled(self) -> bool:
        return self.token.cancelled

    @property
    def finished(self) -> bool:
        return self._finished.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the prefetch has finished (any way); ``False`` on timeout."""
        return self._finished.wait(timeout)

    def started(self) -> None:
        """Called by the engine when the encoding begins."""
        with self._lock:
            if not self.finished:
                self.state = RUNNING

    def finish(self, state: str, error: BaseException | None = None) -> None:
        """Called by the engine once, with the final state."""
        with self._lock:
            if self.finished:
                return
            self.state, self.error = state, error
            self._finished.set()

    def __repr__(self) -> str:
        return f"Prefetch(state={self.state!r})"


def image_key(image: np.ndarray, intensity=None) -> str:
    """Content key of an image shown with ``intensity`` (equal pixels and window: equal key)."""
    array = np.ascontiguousarray(image)
    digest = hashlib.blake2b(array.tobytes(), digest_size=16)
    digest.update(repr((array.shape, str(array.dtype), intensity)).encode())
    return digest.hexdigest()


class Prefetcher:
    """The prefetch of the one image on screen: shown → encoded; moved on → cancelled, replaced.

    ``show`` is cheap on the calling thread (a content hash of the image) and never waits for
    the model. Showing the same image again (same pixels, same intensity, same engine) keeps the
    running prefetch.
    """

    def __init__(self) -> None:
        self._current: Optional[Prefetch] = None
        self._key: Optional[tuple[int, str]] = None

    @property
    def current(self) -> Optional[Prefetch]:
        """The prefetch of the image shown last (``None`` after :meth:`hide`)."""
        return self._current

    def show(self, engine, image: np.ndarray, *, intensity=None) -> Prefetch:
        """Encode ``image`` in the background on ``engine``, cancelling the previous image's."""
        key = (id(engine), image_key(image, intensity))
        current = self._current
        if current is not None and key == self._key and current.state not in (CANCELLED, FAILED):
            return current
        self.hide()
        self._current, self._key = engine.prefetch(image, intensity=intensity), key
        return self._current

    def hide(self) -> None:
        """Nothing is shown any more: cancel the prefetch (no work is left queued)."""
        if self._current is not None:
            self._current.cancel()
        self._current = self._key = None
