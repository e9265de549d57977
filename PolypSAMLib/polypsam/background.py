"""Run the model work in a worker thread while the calling (UI) thread keeps serving its events.

Slicer's Python runs on the Qt main thread: a SAM2 encoding there freezes the application for
its duration (seconds on a CPU). :func:`run_in_worker` runs a function in a worker thread and
waits for it on a :class:`threading.Event`; between waits it calls ``while_waiting`` on the
calling thread, which the Slicer module uses to repaint, apply progress and notice Cancel. The
function must not touch MRML or Qt: PolypSAM's operations read the scene before and write it
after, on the calling thread (see ``PolypSAM/PolypSAMOperations.py``).

Progress reported from the worker goes through a :class:`ProgressRelay`, which keeps only the
latest value for the calling thread to pick up. No Qt here: the library stays Qt-free, and the
same code is tested without a GUI.
"""

from __future__ import annotations

import threading
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


def run_in_worker(
    work: Callable[[], T],
    *,
    while_waiting: Callable[[], None],
    interval_s: float = 0.05,
    name: str = "polypsam-worker",
) -> T:
    """Return ``work()`` computed in a worker thread; call ``while_waiting()`` here meanwhile.

    ``while_waiting`` runs on the calling thread at most every ``interval_s`` seconds while the
    worker runs (and not at all if it finishes first). An exception raised by ``work`` is raised
    here unchanged; one raised by ``while_waiting`` is raised after the worker has stopped, so
    ``work`` should watch a :class:`~polypsam.engine.CancelToken` that ``while_waiting`` sets.
    """
    outcome: dict[str, object] = {}
    finished = threading.Event()

    def target() -> None:
        try:
            outcome["value"] = work()
        except BaseException as exc:  # noqa: BLE001 - re-raised on the calling thread
            outcome["error"] = exc
        finally:
            finished.set()

    worker = threading.Thread(target=target, name=name, daemon=True)
    worker.start()
    waiting_error: Optional[BaseException] = None
    while not finished.wait(interval_s):
        if waiting_error is None:
            try:
                while_waiting()
            except BaseException as exc:  # noqa: BLE001 - keep waiting: work must end first
                waiting_error = exc
    worker.join()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    if waiting_error is not None:
        raise waiting_error
    return outcome["value"]  # type: ignore[return-value]
