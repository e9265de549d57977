"""The PolypSAM server: the engine protocol over HTTP (FastAPI).

``create_app(engine, config)`` wraps any :class:`~polypsam.engine.Engine` (SAM2 in the server's
process). Endpoints (JSON unless said otherwise; every error is 4xx/5xx with
``{"error": {"code", "message"}}``):

* ``GET /v1/health`` and the OpenAPI schema (``/openapi.json``, ``/docs``) without a token;
  ``GET /v1/capabilities``;
* ``POST /v1/sessions``, ``DELETE /v1/sessions/{sid}``;
* ``PUT /v1/sessions/{sid}/arrays/{sha256}?dtype=&shape=&codec=``: an array, compressed
  (``application/octet-stream``);
* ``POST /v1/sessions/{sid}/segment``: masks for boxes on an uploaded image;
* ``POST /v1/sessions/{sid}/prefetch``: encode an uploaded image ahead of its prompts (the image
  on the user's screen); a newer prefetch of the session cancels it; answered once it has ended;
* ``POST /v1/sessions/{sid}/track``: tracking through uploaded frame chunks, answered as NDJSON,
  one line per frame (``{"frame", "masks", "scores"}``; ``{"heartbeat": true}`` while waiting),
  then ``{"done": true}`` or
  ``{"error": ...}``; ``POST /v1/sessions/{sid}/jobs/{job}/cancel`` stops it before its next frame,
  and so does the client closing the connection.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..errors import CancelledError, InvalidInputError, PolypSAMError
from ..geometry import Box
from . import wire
from .schemas import (CancelOut, ErrorOut, PrefetchOut, PrefetchRequest, SegmentRequest,
                      SegmentResponse, SessionOut, TrackRequest, UploadOut)
from .sessions import NotFoundError, SessionStore
from .worker import BusyError, Worker

MiB = 1 << 20
HEARTBEAT_S = 5.0  # a tracking stream says it is alive this often while it waits


@dataclass(frozen=True)
class ServerConfig:
    """Limits and the token (empty: no token, only allowed on a loopback bind)."""

    token: str = ""
    max_json_bytes: int = 16 * MiB
    max_upload_bytes: int = 256 * MiB
    max_array_bytes: int = 512 * MiB
    memory_bytes: int = 4096 * MiB
    max_sessions: int = 16
    idle_timeout: float = 3600.0
    max_jobs: int = 4

    def limits(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("token")
        return out


def _error(status: int, code: str, message: str, missing: list[str] | None = None):
    body = {"error": {"code": code, "message": message, "missing": missing or []}}
    return JSONResponse(body, status_code=status)


class _Guard:
    """ASGI middleware: token, request size and content type, before FastAPI reads a byte."""

    OPEN = ("/v1/health", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc")

    def __init__(self, app, config: ServerConfig) -> None:
        self.app = app
        self.config = config

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        path, method = scope["path"], scope["method"]
        problem = self._check(path, method, headers)
        if problem is not None:
            return await problem(scope, receive, send)
        limit = (self.config.max_upload_bytes if "/arrays/" in path
                 else self.config.max_json_bytes)
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _too_large(limit)
            return message

        await self.app(scope, limited_receive, send)

    def _check(self, path: str, method: str, headers: dict[str, str]):
        token = self.config.token
        if token and path not in self.OPEN:
            given = headers.get("authorization", "")
            scheme, _, value = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                    value.strip().encode(), token.encode()):
                what = "missing" if not given else "wrong"
                return _error(401, "unauthorized",
                              f"{what} token: send 'Authorization: Bearer <token>' with the"
                              " token printed by 'polypsam serve'")
        client_api = headers.get("x-polypsam-api")
        if client_api and client_api.split(".")[0] != wire.API_VERSION.split(".")[0]:
            return _error(409, "version_mismatch",
                          f"client API {client_api} does not match server API {wire.API_VERSION}"
                          f" (PolypSAM {__version__}): update the older side")
        length = headers.get("content-length")
        if length is not None:
            limit = (self.config.max_upload_bytes if "/arrays/" in path
                     else self.config.max_json_bytes)
            if not length.isdigit():
                return _error(400, "bad_request", "Content-Length is not a number")
            if int(length) > limit:
                return _error(413, "too_large",
                              f"request of {length} bytes exceeds the limit of {limit} bytes")
        if method in ("POST", "PUT") and (int(length or 0) > 0 or "transfer-encoding" in headers):
            ctype = headers.get("content-type", "").split(";")[0].strip().lower()
            want = "application/octet-stream" if "/arrays/" in path else "application/json"
            if ctype != want:
                return _error(415, "wrong_content_type",
                              f"Content-Type must be {want}, got {ctype or 'none'}")
        return None


def _too_large(limit: int):
    """Raised while a body streams in; FastAPI passes HTTP exceptions through to the handler."""
    return StarletteHTTPException(413, f"request body exceeds the limit of {limit} bytes")


class ChunkedFrames:
    """A :class:`~polypsam.engine.FrameSource` over uploaded chunks of consecutive frames."""

    def __init__(self, length: int, chunks: list[tuple[int, np.ndarray]]) -> None:
        self.length = int(length)
        self._chunks = sorted(chunks, key=lambda c: c[0])
        shape = dtype = None
        end = -1
        for start, array in self._chunks:
            if array.ndim not in (3, 4) or (array.ndim == 4 and array.shape[3] != 3):
                raise InvalidInputError(
                    f"a frame chunk must be (frames, H, W) or (frames, H, W, 3), got {array.shape}")
            if shape is None:
                shape, dtype = array.shape[1:], array.dtype
            elif array.shape[1:] != shape or array.dtype != dtype:
                raise InvalidInputError(
                    f"frame chunks differ: {array.shape[1:]} {array.dtype} vs {shape} {dtype}")
            if start <= end:
                raise InvalidInputError(f"frame chunks overlap at frame {start}")
            end = start + array.shape[0] - 1
            if end >= self.length:
                raise InvalidInputError(
                    f"a chunk reaches frame {end} but the sequence has {self.length} frames")
        self.frame_shape = tuple(int(s) for s in shape)

    def __len__(self) -> int:
        return self.length

    def has(self, index: int) -> bool:
        return any(s <= index < s + a.shape[0] for s, a in self._chunks)

    def __getitem__(self, index: int) -> np.ndarray:
        index = int(index)
        for start, array in self._chunks:
            if start <= index < start + array.shape[0]:
                return array[index - start]
        raise InvalidInputError(f"frame {index} was not sent to the server")


def _check_track(frames: ChunkedFrames, prompts, start: int, reverse: bool,
                 max_frames: int | None) -> None:
    """The checks tracking would make, before the job is queued (so they answer 400)."""
    n = len(frames)
    h, w = frames.frame_shape[:2]
    if not 0 <= start < n:
        raise InvalidInputError(f"start frame {start} is outside the frames 0..{n - 1}")
    if max_frames is not None and max_frames < 0:
        raise InvalidInputError(f"max_frames must be >= 0, got {max_frames}")
    for p in prompts:
        if not 0 <= p.frame < n:
            raise InvalidInputError(f"prompt for object {p.obj_id} is on frame {p.frame}, outside"
                                    f" the sequence's frames 0..{n - 1}")
        if p.mask is not None and p.mask.shape != (h, w):
            raise InvalidInputError(f"mask prompt on frame {p.frame} has shape {p.mask.shape};"
                                    f" frames are {h} x {w}")
        if p.box is not None:
            p.box.validate(w, h)
    span = n if max_frames is None else max_frames + 1
    last = max(start - span + 1, 0) if reverse else min(start + span - 1, n - 1)
    needed = set(range(min(start, last), max(start, last) + 1)) | {p.frame for p in prompts} | {0}
    missing = sorted(i for i in needed if not frames.has(i))
    if missing:
        raise InvalidInputError(f"frames {missing[0]}..{missing[-1]} are needed but were not sent")


def _frame_line(fm) -> bytes:
    return (json.dumps({"frame": int(fm.frame),
                        "masks": {str(o): wire.pack_mask(m) for o, m in fm.masks.items()},
                        "scores": {str(o): float(s) for o, s in fm.scores.items()}})
            + "\n").encode()


def create_app(engine, config: ServerConfig | None = None):
    """The FastAPI application serving ``engine``."""
    config = config or ServerConfig()
    store = SessionStore(memory_bytes=config.memory_bytes, max_sessions=config.max_sessions,
                         idle_timeout=config.idle_timeout)
    worker = Worker(max_jobs=config.max_jobs)
    instance = secrets.token_hex(8)
    bearer = HTTPBearer(auto_error=False, description="the token printed by 'polypsam serve'")
    errors = {code: {"model": ErrorOut} for code in (400, 401, 404, 409, 413, 415, 422, 429, 500)}

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        worker.shutdown()

    app = FastAPI(title="PolypSAM server", version=__version__, responses=errors, lifespan=lifespan,
                  description="SAM2 segmentation, propagation and tracking: the PolypSAM engine"
                              f" protocol over HTTP (API {wire.API_VERSION}).")
    app.state.store, app.state.worker, app.state.engine = store, worker, engine
    secured = [Security(bearer)]

    @app.exception_handler(NotFoundError)
    async def _not_found(_request, exc: NotFoundError):
        return _error(404, exc.code, str(exc), exc.missing)

    @app.exception_handler(BusyError)
    async def _busy(_request, exc):
        return _error(429, "busy", str(exc))

    @app.exception_handler(CancelledError)
    async def _cancelled(_request, exc):
        return _error(409, "cancelled", str(exc))

    @app.exception_handler(PolypSAMError)
    async def _bad_input(_request, exc):
        return _error(400, "invalid_input", str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request, exc: RequestValidationError):
        errs = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errs):
            return _error(400, "bad_json", "the request body is not valid JSON")
        parts = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in errs[:5]]
        return _error(422, "invalid_request", "; ".join(parts))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request, exc: StarletteHTTPException):
        code = {413: "too_large", 404: "not_found", 405: "method_not_allowed"}.get(
            exc.status_code, "http_error")
        return _error(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _internal(_request, exc: Exception):
        return _error(500, "internal", f"server error: {type(exc).__name__}: {exc}")

    @app.get("/v1/health")
    async def health() -> dict:
        """Liveness (no token needed) and load."""
        return {"status": "ok", "api_version": wire.API_VERSION, "polypsam_version": __version__,
                "instance": instance, "jobs_active": worker.active,
                "frames_done": worker.frames_done,
                "encoder_runs": int(getattr(engine, "encoder_runs", 0)), **store.stats()}

    @app.get("/v1/capabilities", dependencies=secured)
    async def capabilities() -> dict:
        """Model, weights, device, versions, codecs and limits."""
        info = engine.info
        return {"api_version": wire.API_VERSION, "polypsam_version": __version__,
                "instance": instance, "engine": info.engine, "model": info.model,
                "config": info.config, "checkpoint": Path(info.checkpoint).name,
                "checkpoint_sha256": info.checkpoint_sha256, "image_size": info.image_size,
                "device": info.device, "precision": info.precision,
                "trained_intensity": info.trained_intensity,
                "codecs": wire.available_codecs(),
                "dtypes": list(wire.ALLOWED_DTYPES), "limits": config.limits(),
                "token_required": bool(config.token)}

    @app.post("/v1/sessions", dependencies=secured, response_model=SessionOut, status_code=201)
    async def open_session() -> dict:
        return {"session": store.create()}

    @app.delete("/v1/sessions/{sid}", dependencies=secured)
    async def close_session(sid: str) -> dict:
        return {"deleted": store.delete(sid)}

    @app.put("/v1/sessions/{sid}/arrays/{sha256}", dependencies=secured,
             response_model=UploadOut, status_code=201,
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
    async def upload(sid: str, sha256: str, request: Request, dtype: str, shape: str,
                     codec: str = "zlib") -> dict:
        """An array's bytes (C order, little-endian), compressed with ``codec``."""
        store.get(sid)
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise InvalidInputError("the array address must be a lowercase hex SHA-256")
        try:
            dims = [int(s) for s in shape.split(",")]
        except ValueError as exc:
            raise InvalidInputError(f"shape must be comma-separated integers, got {shape!r}") from exc
        wire.check_dtype_shape(dtype, dims, config.max_array_bytes)
        body = await request.body()
        array = wire.decode_array(body, sha256=sha256, dtype=dtype, shape=dims, codec=codec,
                                  max_bytes=config.max_array_bytes)
        store.put(sid, sha256, array)
        return {"array": sha256, "nbytes": int(array.nbytes)}

    @app.post("/v1/sessions/{sid}/segment", dependencies=secured, response_model=SegmentResponse)
    async def segment(sid: str, req: SegmentRequest) -> dict:
        """One mask per prompt (or box) on an uploaded 2-D image (H x W or H x W x 3 uint8);
        with ``multimask`` SAM2's three candidates and their scores come along."""
        from ..engine import as_prompts
        from ..preprocess import check_image

        image = store.arrays(sid, [req.image])[0]
        image = check_image(image)
        if req.prompts is not None:
            prompts = [wire.prompt_from_wire(p.model_dump()) for p in req.prompts]
        else:
            prompts = [Box.from_sequence(b) for b in req.boxes]
        prompts = as_prompts(prompts, image.shape[1], image.shape[0])
        intensity = wire.intensity_from_wire(req.intensity.model_dump() if req.intensity else None)

        def run(_cancel):
            results = engine.segment_2d(image, prompts, intensity=intensity,
                                        multimask=req.multimask)
            return [wire.result_to_wire(r) for r in results]

        return {"results": await worker.call(sid, run)}

    prefetching: dict[str, str] = {}  # session -> its prefetch job in flight

    @app.post("/v1/sessions/{sid}/prefetch", dependencies=secured, response_model=PrefetchOut)
    async def prefetch(sid: str, req: PrefetchRequest) -> dict:
        """Encode an uploaded 2-D image now, so that a later prompt on it (same pixels and
        intensity) runs only the decoder. A newer prefetch of this session, or a cancel of its
        job, cancels it (between encoder blocks). Answers when it has ended: ``done`` (encoded),
        ``cached`` (encoded before) or ``cancelled``."""
        from ..preprocess import check_image

        image = check_image(store.arrays(sid, [req.image])[0])
        intensity = wire.intensity_from_wire(req.intensity.model_dump() if req.intensity else None)
        job_id = req.job or secrets.token_hex(8)
        if sid in prefetching:  # the user moved on: the previous image is not needed now
            worker.cancel(sid, prefetching[sid])
        prefetching[sid] = job_id

        def run(cancel):
            return "done" if engine.encode(image, intensity=intensity, cancel=cancel) else "cached"

        try:
            state = await worker.call(sid, run, job_id=job_id)
        except CancelledError:
            state = "cancelled"
        finally:
            if prefetching.get(sid) == job_id:
                del prefetching[sid]
        return {"job": job_id, "state": state}

    @app.post("/v1/sessions/{sid}/track", dependencies=secured,
              responses={200: {"content": {"application/x-ndjson": {}},
                               "description": "one JSON line per frame, then done or error"}})
    async def track(sid: str, req: TrackRequest):
        """Track prompted objects through uploaded frame chunks (NDJSON stream)."""
        refs = req.frames.chunks
        arrays = store.arrays(sid, [c.array for c in refs])
        frames = ChunkedFrames(req.frames.length, [(c.start, a) for c, a in zip(refs, arrays)])
        prompts = [wire.frame_prompt_from_wire(p.model_dump(exclude_none=True))
                   for p in req.prompts]
        _check_track(frames, prompts, req.start_frame, req.reverse, req.max_frames)
        intensity = wire.intensity_from_wire(req.intensity.model_dump() if req.intensity else None)

        def run(cancel):
            stream = engine.track(frames, prompts, start_frame=req.start_frame,
                                  reverse=req.reverse, max_frames=req.max_frames,
                                  intensity=intensity, cancel=cancel)
            return (_frame_line(fm) for fm in stream)

        job = worker.start_stream(sid, run, req.job)

        async def lines():
            async for kind, value in worker.items(job, heartbeat=HEARTBEAT_S):
                if kind == "item":
                    yield value
                elif kind == "heartbeat":
                    yield b'{"heartbeat": true}\n'
                else:
                    code = "cancelled" if isinstance(value, CancelledError) else (
                        "invalid_input" if isinstance(value, PolypSAMError) else "internal")
                    yield (json.dumps({"error": {"code": code, "message": str(value)}})
                           + "\n").encode()
                    return
            yield b'{"done": true}\n'

        return StreamingResponse(lines(), media_type="application/x-ndjson",
                                 headers={"X-PolypSAM-Job": job.job_id})

    @app.post("/v1/sessions/{sid}/jobs/{job_id}/cancel", dependencies=secured,
              response_model=CancelOut)
    async def cancel(sid: str, job_id: str) -> dict:
        """Stop a job of this session before its next frame (or before it starts)."""
        store.get(sid)
        return {"cancelled": worker.cancel(sid, job_id)}

    app.add_middleware(_Guard, config=config)
    return app
