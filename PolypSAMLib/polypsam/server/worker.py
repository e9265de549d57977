"""One persistent worker thread that runs all model work, one job at a time, in arrival order.

HTTP handlers (asyncio) submit jobs and await them; the model is never used from two threads.
A job is a plain call (2-D segmentation) or a stream (tracking) whose items reach the handler
as they are produced. At most ``max_jobs`` jobs are queued or running; one more is refused
(HTTP 429). Every job has a :class:`~polypsam.engine.CancelToken`: cancelling a queued job skips
it, cancelling a running stream stops it before its next frame.
"""

from __future__ import annotations

import asyncio
import queue
import secrets
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from ..engine import CancelToken
from ..errors import PolypSAMError

_END = object()


class BusyError(PolypSAMError):
    """Too many jobs are queued or running."""


@dataclass
class Job:
    job_id: str
    session: str
    run: Callable[[CancelToken], Any]
    stream: bool
    loop: asyncio.AbstractEventLoop
    results: "asyncio.Queue[Any]"
    cancel: CancelToken = field(default_factory=CancelToken)
    frames: int = 0


class Worker:
    """The model's only thread."""

    def __init__(self, max_jobs: int = 4) -> None:
        self.max_jobs = int(max_jobs)
        self._queue: "queue.Queue[Job | None]" = queue.Queue()
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self.frames_done = 0  # tracked frames produced by all jobs (health shows it)
        self.jobs_done = 0
        self._thread = threading.Thread(target=self._loop, name="polypsam-worker", daemon=True)
        self._thread.start()

    # -- submitting ----------------------------------------------------------------------------
    def _submit(self, session: str, run, stream: bool, job_id: str | None) -> Job:
        loop = asyncio.get_running_loop()
        with self._lock:
            if len(self._jobs) >= self.max_jobs:
                raise BusyError(
                    f"the server is busy: {len(self._jobs)} jobs queued or running (limit"
                    f" {self.max_jobs}); try again when one has finished")
            job_id = job_id or secrets.token_hex(8)
            if job_id in self._jobs:
                raise PolypSAMError(f"job id {job_id} is already in use")
            job = Job(job_id, session, run, stream, loop, asyncio.Queue())
            self._jobs[job_id] = job
        self._queue.put(job)
        return job

    async def call(self, session: str, run: Callable[[CancelToken], Any],
                   job_id: str | None = None) -> Any:
        """Run ``run(cancel)`` on the worker and return its result (or raise its error)."""
        job = self._submit(session, run, False, job_id)
        try:
            kind, value = await job.results.get()
        except asyncio.CancelledError:
            job.cancel.cancel()
            raise
        if kind == "error":
            raise value
        return value

    def start_stream(self, session: str, run: Callable[[CancelToken], Iterator[Any]],
                     job_id: str | None = None) -> Job:
        """Queue a stream; read it with :meth:`items`."""
        return self._submit(session, run, True, job_id)

    async def items(self, job: Job, heartbeat: float | None = None):
        """Items of a stream job as they come; ``("error", exc)`` ends it on a failure.

        With ``heartbeat``, ``("heartbeat", None)`` comes after that many seconds without an
        item (the job waits in the queue or a frame is slow): the client's read timeout then
        means a dead server, not a busy one.
        """
        try:
            while True:
                try:
                    kind, value = await asyncio.wait_for(job.results.get(), heartbeat)
                except asyncio.TimeoutError:
                    yield "heartbeat", None
                    continue
                if kind == "end":
                    return
                yield kind, value
                if kind == "error":
                    return
        finally:
            job.cancel.cancel()  # the client went away or the stream ended: stop the work

    def cancel(self, session: str, job_id: str) -> bool:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None or job.session != session:
            return False
        job.cancel.cancel()
        return True

    @property
    def active(self) -> int:
        with self._lock:
            return len(self._jobs)

    def shutdown(self) -> None:
        self._queue.put(None)

    # -- the thread ------------------------------------------------------------------------------
    def _post(self, job: Job, kind: str, value: Any) -> None:
        try:
            job.loop.call_soon_threadsafe(job.results.put_nowait, (kind, value))
        except RuntimeError:  # the event loop is closed (server shutting down)
            job.cancel.cancel()

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            try:
                self._run(job)
            finally:
                with self._lock:
                    self._jobs.pop(job.job_id, None)
                    self.jobs_done += 1

    def _run(self, job: Job) -> None:
        if job.cancel.cancelled:
            self._post(job, "error", _cancelled())
            return
        try:
            if not job.stream:
                self._post(job, "value", job.run(job.cancel))
                return
            iterator = job.run(job.cancel)
            try:
                for item in iterator:
                    job.frames += 1
                    self.frames_done += 1
                    self._post(job, "item", item)
                    if job.cancel.cancelled:
                        raise _cancelled()
            finally:
                close = getattr(iterator, "close", None)
                if close is not None:
                    close()
            self._post(job, "end", None)
        except BaseException as exc:  # reported to the handler, never kills the worker
            self._post(job, "error", exc)


def _cancelled():
    from ..errors import CancelledError

    return CancelledError("the job was cancelled")
