"""Resumable, SHA256-checked checkpoint download with the standard library.

The file is streamed into ``<dest>.part`` next to its destination (the user cache directory),
resumed with an HTTP ``Range`` request when a ``.part`` is already there, hashed while it streams
and moved into place with :func:`os.replace` only once it is complete and its hash matches.
Every failure is a :class:`~polypsam.errors.CheckpointError` with a one-line message that names
the file, the URL and the path where the user can place the file by hand.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import socket
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .errors import CheckpointError

if TYPE_CHECKING:
    from .checkpoints import ModelSpec

#: Largest checkpoint we agree to download (SAM2.1 large is ~900 MB).
MAX_DOWNLOAD_BYTES = 4 << 30

_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", re.IGNORECASE)


class _NetworkError(Exception):
    """Internal: a failure that leaves the ``.part`` usable for a later resume."""


class _Restart(Exception):
    """Internal: the ``.part`` cannot be resumed; start again from byte zero."""


def download_checkpoint(
    spec: ModelSpec,
    dest: Path,
    *,
    progress: bool = True,
    timeout: float = 30,
    chunk_size: int = 1 << 20,
    sha256: str | None = None,
    max_bytes: int = MAX_DOWNLOAD_BYTES,
) -> Path:
    """Download ``spec.url`` to ``dest`` and return ``dest``.

    ``sha256`` overrides ``spec.sha256`` as the expected hash (e.g. a hash pinned earlier); with
    neither, the file is accepted as downloaded. A failed network transfer keeps ``<dest>.part``
    so that the next call resumes it; a hash mismatch deletes it.
    """
    dest = Path(dest)
    part = dest.with_suffix(dest.suffix + ".part")
    url = spec.url
    expected = (sha256 or spec.sha256 or "").strip().lower() or None

    def fail(reason: str) -> CheckpointError:
        reason = " ".join(str(reason).split()) or "unknown error"
        return CheckpointError(
            f"could not download {spec.filename} from {url} ({reason}); download it elsewhere"
            f" and place it at {dest}"
        )

    if not url:
        raise CheckpointError(
            f"no download URL is known for {spec.filename}; place the file at {dest}"
        )
    if urllib.parse.urlsplit(url).scheme.lower() not in ("http", "https"):
        raise fail("only http:// and https:// URLs are supported")
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise fail(f"cannot create {dest.parent}: {exc.strerror or exc}") from exc

    for attempt in range(2):
        try:
            digest = _transfer(url, part, spec.filename, progress=progress, timeout=timeout,
                               chunk_size=chunk_size, max_bytes=max_bytes)
            break
        except _Restart:
            part.unlink(missing_ok=True)
            if attempt:
                raise fail("the server does not resume the download consistently") from None
        except _NetworkError as exc:
            raise fail(str(exc)) from exc.__cause__
        except CheckpointError:
            part.unlink(missing_ok=True)
            raise
        except OSError as exc:  # local disk: full, read-only, permissions
            raise fail(f"cannot write {part}: {exc.strerror or exc}") from exc

    if expected is not None and digest != expected:
        part.unlink(missing_ok=True)
        raise CheckpointError(
            f"downloaded {spec.filename} from {url} fails its SHA256 check (expected {expected},"
            f" got {digest}); the partial file was deleted; download it elsewhere and place it"
            f" at {dest}"
        )
    try:
        os.replace(part, dest)
    except OSError as exc:
        raise fail(f"cannot move {part} into place: {exc.strerror or exc}") from exc
    return dest


def _transfer(url: str, part: Path, label: str, *, progress: bool, timeout: float,
              chunk_size: int, max_bytes: int) -> str:
    """Stream ``url`` into ``part`` (resuming it if present); return the SHA256 of the result."""
    offset = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"User-Agent": f"polypsam/{__version__}",
                                                   "Accept-Encoding": "identity"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:  # .part is as long as (or longer than) the file
            raise _Restart from exc
        raise _NetworkError(f"HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        raise _NetworkError(_reason(exc.reason, timeout)) from exc
    except (OSError, ValueError, http.client.HTTPException) as exc:  # timeouts, resets, bad URLs
        raise _NetworkError(_reason(exc, timeout)) from exc

    with response:
        if urllib.parse.urlsplit(response.geturl()).scheme.lower() not in ("http", "https"):
            raise _NetworkError("redirected to a non-http(s) URL")
        status = response.status
        length = _int_or_none(response.headers.get("Content-Length"))
        if status == 206 and offset:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if match is None or int(match.group(1)) != offset:
                raise _Restart
            total = int(match.group(3)) if match.group(3) != "*" else (
                offset + length if length is not None else None)
        elif status == 200:
            offset = 0
            total = length
        else:
            raise _NetworkError(f"unexpected HTTP status {status}")
        if total is not None and total > max_bytes:
            raise CheckpointError(
                f"refusing to download {label} from {url}: the server announces {total} bytes,"
                f" more than the limit of {max_bytes}"
            )

        digest = hashlib.sha256()
        if offset:
            _hash_prefix(part, digest, chunk_size)
        bar = _progress_bar(label, total, offset, progress)
        received = offset
        try:
            with open(part, "ab" if offset else "wb") as handle:
                while True:
                    try:
                        block = response.read(chunk_size)
                    except (OSError, ValueError, http.client.HTTPException) as exc:
                        raise _NetworkError(_reason(exc, timeout)) from exc
                    if not block:
                        break
                    received += len(block)
                    if received > max_bytes:
                        raise CheckpointError(
                            f"refusing to download {label} from {url}: more than the limit of"
                            f" {max_bytes} bytes"
                        )
                    handle.write(block)
                    digest.update(block)
                    if bar is not None:
                        bar.update(len(block))
                handle.flush()
                os.fsync(handle.fileno())
        finally:
            if bar is not None:
                bar.close()
    if total is not None and received != total:
        raise _NetworkError(f"connection closed after {received} of {total} bytes")
    return digest.hexdigest()


def _hash_prefix(part: Path, digest: Any, chunk_size: int) -> None:
    with open(part, "rb") as handle:
        while block := handle.read(chunk_size):
            digest.update(block)


def _progress_bar(label: str, total: int | None, initial: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a declared dependency
        return None
    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
                desc=label, leave=False)


def _reason(exc: object, timeout: float) -> str:
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return f"timed out after {timeout:g} s"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc)
    return text or type(exc).__name__


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
