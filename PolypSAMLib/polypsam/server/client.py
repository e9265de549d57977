"""``ServerEngine``: the engine protocol served by ``polypsam serve``, with only the standard library
and NumPy (it runs in Slicer's Python without torch or sam2).

A drop-in for the in-process engine: :func:`polypsam.propagation.propagate` and
:func:`~polypsam.propagation.iter_track` run unchanged above it. Images and frames are uploaded
once, compressed and addressed by content (a repeated request sends no pixel bytes); tracking
sends only the chunks of frames it visits and reads masks back as an NDJSON stream, one frame at
a time, so progress and cancel work per frame. :meth:`ServerEngine.prefetch` uploads and encodes
the image on screen on the client's background threads, so the caller never waits. A server that restarted or dropped the session
is not an error: the client opens a new session, uploads what the server lacks and goes on.
Close it (``close()``, or use it as a context manager) to delete its session on the server.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import urllib.parse
import uuid
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from .. import __version__
from ..engine import (CancelToken, EngineInfo, FrameMasks, FramePrompt, FrameSource, MaskResult,
                      Prompt, as_prompts)
from ..errors import CancelledError, InvalidInputError, PolypSAMError, ServerError
from ..geometry import Box
from ..prefetch import CANCELLED, FAILED, QUEUED, Prefetch
from ..preprocess import Intensity, check_image
from . import wire

CHUNK_BYTES = 2 << 20  # frames are grouped into chunks of about this many raw bytes
_RETRIES = 3


class _Refused(ServerError):
    """A 4xx/5xx answer, with the server's error code."""

    def __init__(self, status: int, code: str, message: str, missing: list[str]) -> None:
        super().__init__(message)
        self.status, self.code, self.missing = status, code, missing


def parse_url(url: str) -> urllib.parse.SplitResult:
    """``url`` split and checked: a scheme (http/https) and a host are required."""
    text = (url or "").strip()
    if "://" not in text:
        raise InvalidInputError(
            f"server URL {url!r} has no scheme: write it as http://HOST:PORT"
            f" (e.g. http://{text or '127.0.0.1:8765'})")
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https"):
        raise InvalidInputError(f"server URL {url!r}: the scheme must be http or https")
    if not parts.hostname:
        raise InvalidInputError(f"server URL {url!r} has no host name")
    try:
        parts.port
    except ValueError as exc:
        raise InvalidInputError(f"server URL {url!r} has a bad port: {exc}") from exc
    return parts


class ServerEngine:
    """The :class:`~polypsam.engine.Engine` protocol, run by a PolypSAM server."""

    def __init__(self, url: str, token: str = "", *, timeout: float = 60.0) -> None:
        self._parts = parse_url(url)
        self.url = urllib.parse.urlunsplit(self._parts[:3] + ("", "")).rstrip("/")
        self._base = self._parts.path.rstrip("/")
        self._token = token or ""
        self.timeout = float(timeout)
        self._lock = threading.RLock()
        self._conn: http.client.HTTPConnection | None = None
        self._session: str | None = None
        self._known: set[str] = set()  # arrays this session holds on the server
        self.bytes_sent = 0  # request bodies (uploads and JSON), for benchmarks and tests
        self.bytes_received = 0
        self.voxel_bytes_sent = 0  # compressed array bytes only
        self.uploads = 0
        self._background = None  # prefetch uploads and requests (started on first use)
        self._prefetches: list[Prefetch] = []
        # not self._lock, which a request holds for as long as the server takes to answer
        self._prefetch_lock = threading.Lock()
        self.capabilities = self._capabilities()
        self._codec = wire.choose_codec(self.capabilities.get("codecs", []))

    # -- protocol ------------------------------------------------------------------------------
    @property
    def info(self) -> EngineInfo:
        c = self.capabilities
        return EngineInfo(
            engine="server", model=str(c.get("model", "")), config=str(c.get("config", "")),
            checkpoint=f"{self.url} ({c.get('checkpoint', '')})",
            checkpoint_sha256=str(c.get("checkpoint_sha256", "")),
            image_size=int(c.get("image_size", 0)), device=f"{c.get('device', '')} @ {self.url}",
            polypsam_version=str(c.get("polypsam_version", "")),
            precision=str(c.get("precision", "")),
            trained_intensity=str(c.get("trained_intensity", "")))

    def segment_2d(self, image: np.ndarray, prompts: "Sequence[Prompt | Box] | Prompt | Box", *,
                   intensity: Intensity | None = None, multimask: bool = False) -> list[MaskResult]:
        image = check_image(image)
        prompts = as_prompts(prompts, image.shape[1], image.shape[0])
        array = wire.wire_array(image)
        digest = wire.content_hash(array)
        body = {"image": digest, "prompts": [wire.prompt_to_wire(p) for p in prompts],
                "multimask": bool(multimask), "intensity": wire.intensity_to_wire(intensity)}
        answer = self._with_arrays({digest: lambda: array},
                                   lambda sid: self._json("POST", f"/v1/sessions/{sid}/segment", body))
        return [wire.result_from_wire(r, p) for r, p in zip(answer["results"], prompts)]

    def track(self, frames: FrameSource, prompts: Sequence[FramePrompt], *, start_frame: int,
              reverse: bool = False, max_frames: int | None = None,
              intensity: Intensity | None = None,
              cancel: CancelToken | None = None) -> Iterator[FrameMasks]:
        n = len(frames)
        if n == 0:
            raise InvalidInputError("the frame sequence is empty")
        if not 0 <= int(start_frame) < n:
            raise InvalidInputError(f"start frame {start_frame} is outside the frames 0..{n - 1}")
        if max_frames is not None and max_frames < 0:
            raise InvalidInputError(f"max_frames must be >= 0, got {max_frames}")
        if not prompts:
            raise InvalidInputError("tracking needs at least one prompt (a box or a mask)")
        if cancel is not None:
            cancel.raise_if_cancelled()
        providers, chunks = self._chunks(frames, start_frame, reverse, max_frames, prompts)
        job = uuid.uuid4().hex
        body = {"job": job, "frames": {"length": n, "chunks": chunks},
                "prompts": [wire.frame_prompt_to_wire(p) for p in prompts],
                "start_frame": int(start_frame), "reverse": bool(reverse),
                "max_frames": None if max_frames is None else int(max_frames),
                "intensity": wire.intensity_to_wire(intensity)}
        return self._stream(providers, body, job, cancel)

    def prefetch(self, image: np.ndarray, *, intensity: Intensity | None = None) -> Prefetch:
        """Upload ``image`` and have the server encode it, on background threads; returns at once.

        A newer prefetch replaces this one on the server (the server cancels it); cancelling the
        handle also tells the server. The handle finishes when the server has answered.
        """
        job = uuid.uuid4().hex
        handle = Prefetch(on_cancel=lambda: self._submit_background(self._cancel_prefetch, job,
                                                                    handle))
        with self._prefetch_lock:
            self._prefetches = [p for p in self._prefetches if not p.finished] + [handle]
        self._submit_background(self._run_prefetch, handle, job, image, intensity)
        return handle

    def _submit_background(self, fn, *args) -> None:
        from concurrent.futures import ThreadPoolExecutor

        with self._prefetch_lock:
            if self._background is None:  # two: a new prefetch or a cancel is never stuck
                self._background = ThreadPoolExecutor(2, thread_name_prefix="polypsam-prefetch")
            try:
                self._background.submit(fn, *args)
            except RuntimeError:  # closed meanwhile
                pass

    def _run_prefetch(self, handle: Prefetch, job: str, image, intensity) -> None:
        if handle.cancelled:
            handle.finish(CANCELLED)
            return
        handle.started()
        try:
            array = wire.wire_array(check_image(image))
            digest = wire.content_hash(array)
            body = {"job": job, "image": digest, "intensity": wire.intensity_to_wire(intensity)}

            def request(sid: str) -> dict:
                handle.token.raise_if_cancelled()
                response, conn = self._open("POST", f"/v1/sessions/{sid}/prefetch", body)
                try:
                    payload = response.read()
                finally:
                    conn.close()
                self.bytes_received += len(payload)
                return json.loads(payload)

            answer = self._with_arrays({digest: lambda: array}, request)
            handle.finish(str(answer.get("state", FAILED)))
        except CancelledError:
            handle.finish(CANCELLED)
        except Exception as exc:  # noqa: BLE001 - a prefetch is a hint: report, never raise
            handle.finish(FAILED, exc)

    def _cancel_prefetch(self, job: str, handle: Prefetch) -> None:
        """Tell the server (the request may be in flight); before it was sent nothing is needed."""
        sid = self._session
        if handle.state == QUEUED or handle.finished or sid is None:
            return
        try:
            self._json("POST", f"/v1/sessions/{sid}/jobs/{job}/cancel", None, timeout=5.0)
        except PolypSAMError:
            pass

    def __enter__(self) -> "ServerEngine":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Delete this client's server session (its uploads) and close the connection."""
        with self._prefetch_lock:
            background, self._background = self._background, None
            for handle in self._prefetches:
                handle.token.cancel()  # a request in flight ends with the session (deleted below)
                if handle.state == QUEUED:
                    handle.finish(CANCELLED)
        if background is not None:
            background.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            if self._session is not None:
                try:
                    self._json("DELETE", f"/v1/sessions/{self._session}", None, timeout=5.0)
                except PolypSAMError:
                    pass
                self._session = None
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # -- frames --------------------------------------------------------------------------------
    def _chunks(self, frames: FrameSource, start: int, reverse: bool, max_frames: int | None,
                prompts: Sequence[FramePrompt]):
        """Chunks of consecutive frames covering what tracking visits (plus frame 0, which the
        server reads for the frame size): ``({sha: builder}, [{"start", "array"}])``."""
        n = len(frames)
        first = np.asarray(frames[start])
        per_chunk = max(1, CHUNK_BYTES // max(1, first.nbytes))
        span = n if max_frames is None else max_frames + 1
        last = max(start - span + 1, 0) if reverse else min(start + span - 1, n - 1)
        needed = set(range(min(start, last), max(start, last) + 1))
        needed |= {int(p.frame) for p in prompts if 0 <= int(p.frame) < n}
        ranges = sorted({(c * per_chunk, min((c + 1) * per_chunk, n))
                         for c in {i // per_chunk for i in needed}})
        if ranges[0][0] != 0:
            ranges.insert(0, (0, 1))
        providers: dict[str, Callable[[], np.ndarray]] = {}
        refs = []
        for lo, hi in ranges:
            def build(lo=lo, hi=hi) -> np.ndarray:
                return wire.wire_array(np.stack([np.asarray(frames[i]) for i in range(lo, hi)]))

            array = build()
            digest = wire.content_hash(array)
            if digest not in self._known:  # upload now, while the chunk is in memory
                self._upload_once(digest, array)
            providers[digest] = build
            refs.append({"start": lo, "array": digest})
            del array
        return providers, refs

    def _stream(self, providers, body, job: str, cancel: CancelToken | None) -> Iterator[FrameMasks]:
        response, conn, sid = self._with_arrays(
            providers, lambda sid: self._open("POST", f"/v1/sessions/{sid}/track", body,
                                              stream=True) + (sid,))
        done = False
        frames_read = 0
        try:
            while True:
                try:
                    line = response.readline()
                except socket.timeout as exc:
                    raise ServerError(
                        f"the server at {self.url} sent no frame for {self.timeout:.0f} s") from exc
                except (OSError, http.client.HTTPException) as exc:
                    raise self._stopped(frames_read) from exc
                if not line:
                    raise self._stopped(frames_read)
                self.bytes_received += len(line)
                try:
                    item = json.loads(line)
                except ValueError as exc:
                    raise ServerError(f"the server at {self.url} sent a broken line") from exc
                if "error" in item:
                    err = item["error"]
                    if err.get("code") == "cancelled":
                        raise CancelledError(err.get("message", "cancelled"))
                    raise ServerError(f"the server failed: {err.get('message')}")
                if item.get("done"):
                    done = True
                    return
                if item.get("heartbeat"):  # queued behind other work, or a slow frame
                    if cancel is not None and cancel.cancelled:
                        raise CancelledError("cancelled by the user")
                    continue
                frames_read += 1
                yield FrameMasks(
                    frame=int(item["frame"]),
                    masks={int(o): wire.unpack_mask(m) for o, m in item["masks"].items()},
                    scores={int(o): float(s) for o, s in item["scores"].items()})
                if cancel is not None and cancel.cancelled:
                    raise CancelledError("cancelled by the user")
        finally:
            if not done:  # cancelled, failed or closed early: stop the server's work now
                try:
                    self._json("POST", f"/v1/sessions/{sid}/jobs/{job}/cancel", None, timeout=5.0)
                except PolypSAMError:
                    pass
            conn.close()

    def _stopped(self, frames_read: int) -> ServerError:
        return ServerError(
            f"the server at {self.url} closed the connection during tracking after {frames_read}"
            " frame(s) (stopped, killed or restarted?); nothing more was received")

    # -- sessions and uploads -------------------------------------------------------------------
    def _session_id(self) -> str:
        with self._lock:
            if self._session is None:
                self._session = self._json("POST", "/v1/sessions", None)["session"]
                self._known.clear()
            return self._session

    def _with_arrays(self, providers: dict[str, Callable[[], np.ndarray]],
                     request: Callable[[str], Any]) -> Any:
        """Run ``request(session)`` after making sure the server holds ``providers``' arrays;
        an unknown session (server restarted) or dropped array is re-sent, then retried."""
        for attempt in range(_RETRIES):
            sid = self._session_id()
            for digest, build in providers.items():
                if digest not in self._known:
                    self._upload_once(digest, build())
            try:
                return request(sid)
            except _Refused as exc:
                if attempt == _RETRIES - 1 or exc.code not in ("unknown_session", "unknown_array"):
                    raise
                with self._lock:
                    if exc.code == "unknown_session":
                        self._session = None
                    self._known.difference_update(exc.missing or providers)
        raise AssertionError("unreachable")

    def _upload_once(self, digest: str, array: np.ndarray) -> None:
        sid = self._session_id()
        meta, payload = wire.encode_array(array, self._codec)
        query = urllib.parse.urlencode({"dtype": meta["dtype"],
                                        "shape": ",".join(map(str, meta["shape"])),
                                        "codec": meta["codec"]})
        try:
            self._request("PUT", f"/v1/sessions/{sid}/arrays/{digest}?{query}", payload,
                          "application/octet-stream")
        except _Refused as exc:
            if exc.code != "unknown_session":
                raise
            with self._lock:
                self._session = None
            sid = self._session_id()
            self._request("PUT", f"/v1/sessions/{sid}/arrays/{digest}?{query}", payload,
                          "application/octet-stream")
        self.voxel_bytes_sent += len(payload)
        self.uploads += 1
        self._known.add(digest)

    # -- HTTP ----------------------------------------------------------------------------------
    def _capabilities(self) -> dict:
        caps = self._json("GET", "/v1/capabilities", None)
        theirs = str(caps.get("api_version", "?"))
        if theirs.split(".")[0] != wire.API_VERSION.split(".")[0]:
            raise ServerError(
                f"version mismatch: the server at {self.url} speaks API {theirs} (PolypSAM"
                f" {caps.get('polypsam_version', '?')}), this client API {wire.API_VERSION}"
                f" (PolypSAM {__version__}); update the older side")
        return caps

    def _json(self, method: str, path: str, body: Any, timeout: float | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        raw = self._request(method, path, data, "application/json", timeout=timeout)
        try:
            return json.loads(raw) if raw else {}
        except ValueError as exc:
            raise ServerError(f"{self.url} did not answer with JSON: is it a PolypSAM server?") from exc

    def _request(self, method: str, path: str, data: bytes | None, ctype: str,
                 timeout: float | None = None) -> bytes:
        with self._lock:
            for fresh in (False, True):
                conn = self._connection(fresh, timeout)
                try:
                    response = self._send(conn, method, path, data, ctype)
                    payload = response.read()
                    break
                except (http.client.RemoteDisconnected, BrokenPipeError,
                        ConnectionResetError) as exc:
                    self._drop()
                    if fresh:  # a reused keep-alive connection may be stale; a fresh one not
                        raise self._unreachable(exc) from exc
                except (OSError, http.client.HTTPException) as exc:  # socket.timeout too
                    self._drop()
                    raise self._unreachable(exc, timeout or self.timeout) from exc
            if timeout is not None:
                self._drop()
            self.bytes_received += len(payload)
            self._check(response, payload)
            return payload

    def _open(self, method: str, path: str, body: Any, stream: bool = True):
        """A dedicated connection whose response is read as it streams: ``(response, conn)``."""
        conn = self._new_connection(self.timeout)
        try:
            response = self._send(conn, method, path, json.dumps(body).encode(), "application/json")
        except (OSError, http.client.HTTPException) as exc:  # socket.timeout too
            conn.close()
            raise self._unreachable(exc, self.timeout) from exc
        if response.status >= 400:
            payload = response.read()
            conn.close()
            self._check(response, payload)
        return response, conn

    def _send(self, conn, method, path, data, ctype):
        headers = {"X-PolypSAM-API": wire.API_VERSION, "Accept": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        if data is not None:
            headers["Content-Type"] = ctype
            self.bytes_sent += len(data)
        conn.request(method, self._base + path, body=data, headers=headers)
        return conn.getresponse()

    def _check(self, response, payload: bytes) -> None:
        if response.status < 400:
            return
        try:
            err = json.loads(payload)["error"]
            code, message, missing = err["code"], err["message"], err.get("missing") or []
        except (ValueError, KeyError, TypeError):
            code, message, missing = "http", payload[:200].decode("utf-8", "replace"), []
        if response.status == 401:
            raise _Refused(401, code, f"the server at {self.url} refused the token ({message})",
                           [])
        if code == "version_mismatch":
            raise _Refused(409, code, f"version mismatch: {message}", [])
        raise _Refused(response.status, code,
                       f"the server at {self.url} answered {response.status}: {message}", missing)

    def _connection(self, fresh: bool, timeout: float | None):
        if timeout is not None:
            self._drop()
            self._conn = self._new_connection(timeout)
        elif fresh or self._conn is None:
            self._drop()
            self._conn = self._new_connection(self.timeout)
        return self._conn

    def _new_connection(self, timeout: float):
        cls = http.client.HTTPSConnection if self._parts.scheme == "https" else http.client.HTTPConnection
        return cls(self._parts.hostname, self._parts.port, timeout=timeout)

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _unreachable(self, exc: Exception, seconds: float | None = None) -> ServerError:
        """The error for a failed connection or request: a timeout, or why it was unreachable."""
        if isinstance(exc, socket.timeout):
            return ServerError(f"the server at {self.url} did not answer within"
                               f" {seconds or self.timeout:.0f} s")
        if isinstance(exc, socket.gaierror):
            why = f"the host {self._parts.hostname!r} is unknown"
        elif isinstance(exc, ConnectionRefusedError):
            why = "connection refused (is 'polypsam serve' running there, on that port?)"
        else:
            why = f"{type(exc).__name__}: {exc}"
        return ServerError(f"cannot reach the PolypSAM server at {self.url}: {why}")


def test_connection(url: str, token: str = "", *, timeout: float = 10.0) -> str:
    """One line describing the server at ``url`` (for a settings panel's "Test connection").

    Raises :class:`~polypsam.errors.PolypSAMError` with a readable message when the URL is
    malformed, the server is down or unreachable, the token is wrong or the versions differ.
    """
    engine = ServerEngine(url, token, timeout=timeout)
    try:
        c = engine.capabilities
        sha = str(c.get("checkpoint_sha256", ""))[:12]
        return (f"connected to PolypSAM {c.get('polypsam_version')} (API {c.get('api_version')})"
                f" at {engine.url}: {c.get('model') or c.get('checkpoint')} (sha256 {sha}…),"
                f" image size {c.get('image_size')}, device {c.get('device')}")
    finally:
        engine.close()


test_connection.__test__ = False  # not a pytest test despite its name
