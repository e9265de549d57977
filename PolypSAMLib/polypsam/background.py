"""Run the model work in a worker thread while the calling (UI) thread keeps serving its events.

Slicer's Python runs on the Qt main thread: a SAM2 encoding there freezes the application for
its duration (seconds on a CPU). An :class:`EngineWorker` is one persistent thread that runs
all model work of one engine (loading included): GPU libraries keep per-thread state (CUDA
contexts, cuDNN handles), so reusing one thread avoids paying for it on every click
(SlicerNNInteractive measured 1.2 s → 0.11 s per interaction from this). :meth:`EngineWorker.run`
waits for a function on that thread and, between waits, calls ``while_waiting`` on the calling
thread, which the Slicer module uses to repaint, apply progress and notice Cancel. The function
must not touch MRML or Qt: PolypSAM's operations read the scene before and write it after, on
the calling thread (see :mod:`polypsam.mrml.session`).

Progress reported from the worker goes through a :class:`ProgressRelay`, which keeps only the
latest value for the calling thread to pick up. No Qt here: the library stays Qt-free, and the
same code is tested without a GUI.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Optional, TypeVar

T = TypeVar("T")


class ProgressRelay:
    """Latest ``(done, total, message)`` reported from any thread; read on the UI thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latest: Optional[tuple[int, int, str]] = None
        self._fresh = False

    def __call__(self, done: int, total: int, message: str = "") -> None:
        with self._lock:
            self._latest = (int(done), int(total), str(message))
            self._fresh = True

    def take(self) -> Optional[tuple[int, int, str]]:
        """The value reported since the last ``take``, or ``None`` if nothing new."""
        with self._lock:
            if not self._fresh:
                return None
            self._fresh = False
            return self._latest


class EngineWorker:
    """One persistent thread for the model work of one engine; closed with the engine."""

    def __init__(self, name: str = "polypsam-engine") -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    def submit(self, work: Callable[[], T]) -> "Future[T]":
        return self._executor.submit(work)

    def run(
        self,
        work: Callable[[], T],
        *,
        while_waiting: Callable[[], None] = lambda: None,
        interval_s: float = 0.05,
    ) -> T:
        """Return ``work()`` computed on the worker thread; call ``while_waiting()`` here meanwhile.

        ``while_waiting`` runs on the calling thread at most every ``interval_s`` seconds while
        the work runs (and not at all if it finishes first). An exception raised by ``work`` is
        raised here unchanged; one raised by ``while_waiting`` is raised after the work has
        stopped, so ``work`` should watch a :class:`~polypsam.engine.CancelToken` that
        ``while_waiting`` sets.
        """
        future = self.submit(work)
        finished = threading.Event()
        future.add_done_callback(lambda _f: finished.set())
        waiting_error: Optional[BaseException] = None
        while not finished.wait(interval_s):
            if waiting_error is None:
                try:
                    while_waiting()
                except BaseException as exc:  # noqa: BLE001 - keep waiting: work must end first
                    waiting_error = exc
        error = future.exception()
        if error is not None:
            raise error
        if waiting_error is not None:
            raise waiting_error
        return future.result()

    def close(self) -> None:
        """Let queued work finish, then end the thread."""
        self._executor.shutdown(wait=True)


def run_in_worker(
    work: Callable[[], T],
    *,
    while_waiting: Callable[[], None],
    interval_s: float = 0.05,
    name: str = "polypsam-worker",
) -> T:
    """``work()`` on a one-off worker thread (see :meth:`EngineWorker.run`); prefer an
    :class:`EngineWorker` kept with the engine."""
    worker = EngineWorker(name)
    try:
        return worker.run(work, while_waiting=while_waiting, interval_s=interval_s)
    finally:
        worker.close()
