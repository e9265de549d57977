"""Per-client state on the server: uploaded arrays, bounded in memory and time.

A client opens a session and uploads arrays (images, chunks of volume slices or video frames)
addressed by their SHA-256. All sessions share one memory cap: when it is reached, the least
recently used arrays of any session are dropped; a session unused for ``idle_timeout`` seconds is
dropped whole, and at most ``max_sessions`` live at once (beyond, the least recently used goes if
it has been idle for ``grace`` seconds; otherwise a new session is refused with 429). A client
that asks for something dropped gets a 404 naming it and uploads it again: eviction and server
restarts are not errors for the user. Image embeddings are cached by content in the engine itself
(shared by all sessions; identical images are encoded once).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from ..errors import InvalidInputError
from .worker import BusyError


class NotFoundError(InvalidInputError):
    """A session or array the server does not hold (never held, evicted, or lost in a restart)."""

    def __init__(self, message: str, code: str, missing: list[str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.missing = missing or []


@dataclass
class Session:
    sid: str
    last_used: float = field(default_factory=time.monotonic)
    arrays: "OrderedDict[str, np.ndarray]" = field(default_factory=OrderedDict)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())


class SessionStore:
    """Thread-safe sessions with a shared memory cap, LRU and idle eviction."""

    def __init__(self, *, memory_bytes: int, max_sessions: int = 16,
                 idle_timeout: float = 3600.0, grace: float = 30.0) -> None:
        self.grace = float(grace)
        self.memory_bytes = int(memory_bytes)
        self.max_sessions = int(max_sessions)
        self.idle_timeout = float(idle_timeout)
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()
        self.evicted_arrays = 0
        self.evicted_sessions = 0

    # -- sessions --------------------------------------------------------------------------------
    def create(self) -> str:
        """A new session; at the limit the least recently used one goes if it has been idle for
        ``grace`` seconds, else the server is busy (429) rather than thrashing active clients."""
        with self._lock:
            self._expire_idle()
            if len(self._sessions) >= self.max_sessions:
                oldest = next(iter(self._sessions.values()))
                if time.monotonic() - oldest.last_used < self.grace:
                    raise BusyError(
                        f"the server holds {len(self._sessions)} active sessions (limit"
                        f" {self.max_sessions}); try again later or start it with a higher"
                        " --max-sessions")
                del self._sessions[oldest.sid]
                self.evicted_sessions += 1
            sid = secrets.token_urlsafe(16)
            self._sessions[sid] = Session(sid)
            return sid

    def get(self, sid: str) -> Session:
        with self._lock:
            self._expire_idle()
            session = self._sessions.get(sid)
            if session is None:
                raise NotFoundError(
                    "unknown session (expired, evicted or the server restarted): open a new one",
                    "unknown_session")
            session.last_used = time.monotonic()
            self._sessions.move_to_end(sid)
            return session

    def delete(self, sid: str) -> bool:
        with self._lock:
            return self._sessions.pop(sid, None) is not None

    def _expire_idle(self) -> None:
        now = time.monotonic()
        for sid in [s for s, v in self._sessions.items() if now - v.last_used > self.idle_timeout]:
            del self._sessions[sid]
            self.evicted_sessions += 1

    # -- arrays ----------------------------------------------------------------------------------
    def put(self, sid: str, digest: str, array: np.ndarray) -> None:
        if array.nbytes > self.memory_bytes:
            raise InvalidInputError(
                f"array of {array.nbytes} bytes exceeds the server's memory cap of"
                f" {self.memory_bytes} bytes")
        session = self.get(sid)
        with self._lock:
            array.setflags(write=False)
            session.arrays[digest] = array
            session.arrays.move_to_end(digest)
            self._enforce_cap(keep=(sid, digest))

    def has(self, sid: str, digest: str) -> bool:
        return digest in self.get(sid).arrays

    def arrays(self, sid: str, digests: list[str]) -> list[np.ndarray]:
        """The arrays for ``digests``; a 404 error lists every one the server lacks."""
        session = self.get(sid)
        with self._lock:
            missing = [d for d in digests if d not in session.arrays]
            if missing:
                raise NotFoundError(
                    f"{len(missing)} array(s) not on the server (evicted or never uploaded):"
                    f" {', '.join(m[:12] for m in missing[:4])}", "unknown_array", missing)
            for d in digests:
                session.arrays.move_to_end(d)
            return [session.arrays[d] for d in digests]

    def _enforce_cap(self, keep: tuple[str, str]) -> None:
        """Drop least recently used arrays (oldest session first) until under the cap."""
        total = sum(s.nbytes for s in self._sessions.values())
        for session in list(self._sessions.values()):
            for digest in list(session.arrays):
                if total <= self.memory_bytes:
                    return
                if (session.sid, digest) == keep:
                    continue
                total -= session.arrays.pop(digest).nbytes
                self.evicted_arrays += 1

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"sessions": len(self._sessions),
                    "bytes": sum(s.nbytes for s in self._sessions.values()),
                    "evicted_arrays": self.evicted_arrays,
                    "evicted_sessions": self.evicted_sessions}
