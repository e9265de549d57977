"""Checkpoint download and registry tests, against a real HTTP server on 127.0.0.1.

The server (a small ``http.server`` handler in a thread, random port) serves in-memory files and
supports ``Range: bytes=N-`` requests; switches make it ignore ranges, cut a transfer short,
stall, or announce a huge size. Nothing here reaches the network.
"""

from __future__ import annotations

import hashlib
import http.server
import random
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from polypsam.checkpoints import (
    REGISTRY,
    ModelSpec,
    ResolvedCheckpoint,
    cache_dir,
    resolve_checkpoint,
    verify_checkpoint,
)
from polypsam.download import download_checkpoint
from polypsam.errors import CheckpointError, InvalidInputError

PAYLOAD = random.Random(0).randbytes(300_000)
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
CHUNK = 64 * 1024
CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"


@dataclass
class FileServer:
    """State of the local test server; tests flip the switches between requests."""

    base_url: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[dict[str, str]] = field(default_factory=list)
    ignore_range: bool = False
    cut_after: int | None = None  # close the connection after this many body bytes
    delay: float = 0.0  # stall before answering
    fake_length: int | None = None  # announce this Content-Length instead of the real one

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}"

    def range_requests(self) -> list[str]:
        return [r["range"] for r in self.requests if r.get("range")]


def _handler(state: FileServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server API
            state.requests.append({"path": self.path, "range": self.headers.get("Range", "")})
            if state.delay:
                time.sleep(state.delay)
            if self.path.startswith("/redirect/"):
                self.send_response(302)
                self.send_header("Location", self.path[len("/redirect"):])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data = state.files.get(self.path.lstrip("/"))
            if data is None:
                self.send_error(404, "Not Found")
                return
            start, status = 0, 200
            spec = self.headers.get("Range", "")
            if spec.startswith("bytes=") and not state.ignore_range:
                first, _, last = spec[len("bytes="):].partition("-")
                start = int(first)
                if last:
                    raise NotImplementedError("the client only sends open-ended ranges")
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status = 206
            body = data[start:]
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(state.fake_length or len(body)))
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if state.cut_after is not None:
                body = body[: state.cut_after]
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    return Handler


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # a client that timed out or hung up is expected in these tests


@pytest.fixture()
def server():
    state = FileServer()
    httpd = _QuietServer(("127.0.0.1", 0), _handler(state))
    state.base_url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture(autouse=True)
def _fresh_cache(tmp_path, monkeypatch) -> Path:
    """A cache directory (and SHA256 pin file) of its own for every test."""
    path = tmp_path / "cache"
    monkeypatch.setenv("POLYPSAM_CACHE_DIR", str(path))
    return path


def _spec(server: FileServer, filename: str = "model.pt", sha256: str | None = PAYLOAD_SHA,
          data: bytes = PAYLOAD, name: str = "test-model") -> ModelSpec:
    server.files[filename] = data
    return ModelSpec(name, filename, CONFIG, server.url(filename), sha256, 512, "test")


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- download_checkpoint


def test_full_download_verified_and_in_place(server, tmp_path):
    spec = _spec(server)
    dest = tmp_path / "cache" / "model.pt"
    assert download_checkpoint(spec, dest, progress=True, chunk_size=CHUNK) == dest
    assert dest.read_bytes() == PAYLOAD
    assert not dest.with_suffix(".pt.part").exists()
    assert server.range_requests() == []


def test_resume_from_partial_file(server, tmp_path):
    spec = _spec(server)
    dest = tmp_path / "model.pt"
    part = dest.with_suffix(".pt.part")
    part.write_bytes(PAYLOAD[:100_000])
    download_checkpoint(spec, dest, progress=False, chunk_size=CHUNK)
    assert server.range_requests() == ["bytes=100000-"]
    assert dest.read_bytes() == PAYLOAD
    assert not part.exists()


def test_resume_through_redirect(server, tmp_path):
    spec = _spec(server)
    spec = ModelSpec(spec.name, spec.filename, CONFIG, server.url("redirect/model.pt"), PAYLOAD_SHA)
    dest = tmp_path / "model.pt"
    dest.with_suffix(".pt.part").write_bytes(PAYLOAD[:7])
    download_checkpoint(spec, dest, progress=False, chunk_size=CHUNK)
    assert server.range_requests() == ["bytes=7-", "bytes=7-"]  # the Range survives the 302
    assert dest.read_bytes() == PAYLOAD


def test_restart_when_server_ignores_range(server, tmp_path):
    spec = _spec(server)
    server.ignore_range = True
    dest = tmp_path / "model.pt"
    part = dest.with_suffix(".pt.part")
    stale = b"stale bytes from another file" * 100
    part.write_bytes(stale)
    download_checkpoint(spec, dest, progress=False, chunk_size=CHUNK)
    assert server.range_requests() == [f"bytes={len(stale)}-"]  # answered 200: start over
    assert dest.read_bytes() == PAYLOAD


def test_part_longer_than_file_restarts(server, tmp_path):
    spec = _spec(server)
    dest = tmp_path / "model.pt"
    dest.with_suffix(".pt.part").write_bytes(PAYLOAD + b"extra")
    download_checkpoint(spec, dest, progress=False, chunk_size=CHUNK)
    assert server.range_requests() == [f"bytes={len(PAYLOAD) + 5}-"]  # answered 416
    assert dest.read_bytes() == PAYLOAD


def test_interrupted_download_keeps_part_and_resumes(server, tmp_path):
    spec = _spec(server)
    dest = tmp_path / "model.pt"
    part = dest.with_suffix(".pt.part")
    server.cut_after = 120_000
    with pytest.raises(CheckpointError, match="connection closed after 120000 of 300000 bytes"):
        download_checkpoint(spec, dest, progress=False, chunk_size=CHUNK)
    assert not dest.exists()
    assert part.read_bytes() == PAYLOAD[:120_000]

    server.cut_after = None
    download_checkpoint(spec, dest, progress=False, chunk_size=CHUNK)
    assert server.range_requests() == ["bytes=120000-"]
    assert dest.read_bytes() == PAYLOAD
    assert not part.exists()


def test_wrong_hash_leaves_nothing(server, tmp_path):
    wrong = "0" * 64
    spec = _spec(server, sha256=wrong)
    dest = tmp_path / "model.pt"
    with pytest.raises(CheckpointError) as info:
        download_checkpoint(spec, dest, progress=False, chunk_size=CHUNK)
    message = str(info.value)
    assert "model.pt" in message and wrong in message and PAYLOAD_SHA in message
    assert not dest.exists()
    assert not dest.with_suffix(".pt.part").exists()


def test_wrong_hash_after_resume_deletes_part(server, tmp_path):
    spec = _spec(server)
    dest = tmp_path / "model.pt"
    part = dest.with_suffix(".pt.part")
    part.write_bytes(b"\0" * 50_000)  # corrupt prefix: the resumed file cannot match
    with pytest.raises(CheckpointError, match="SHA256"):
        download_checkpoint(spec, dest, progress=False, chunk_size=CHUNK)
    assert not dest.exists() and not part.exists()
    download_checkpoint(spec, dest, progress=False, chunk_size=CHUNK)  # a retry starts afresh
    assert dest.read_bytes() == PAYLOAD


def test_unreachable_server_names_destination(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/sam2.1_hiera_tiny.pt"
    spec = ModelSpec("x", "sam2.1_hiera_tiny.pt", CONFIG, url, None)
    dest = tmp_path / "cache" / "sam2.1_hiera_tiny.pt"
    with pytest.raises(CheckpointError) as info:
        download_checkpoint(spec, dest, progress=False, timeout=5)
    message = str(info.value)
    assert "\n" not in message
    assert str(dest) in message and url in message and "sam2.1_hiera_tiny.pt" in message
    assert message.startswith("could not download sam2.1_hiera_tiny.pt from ")
    assert not dest.exists()


def test_http_error_is_one_readable_line(server, tmp_path):
    spec = ModelSpec("x", "missing.pt", CONFIG, server.url("missing.pt"), None)
    dest = tmp_path / "missing.pt"
    with pytest.raises(CheckpointError) as info:
        download_checkpoint(spec, dest, progress=False)
    message = str(info.value)
    assert "HTTP 404" in message and str(dest) in message and "\n" not in message


def test_timeout(server, tmp_path):
    spec = _spec(server)
    server.delay = 1.0
    dest = tmp_path / "model.pt"
    with pytest.raises(CheckpointError, match="timed out") as info:
        download_checkpoint(spec, dest, progress=False, timeout=0.2)
    assert str(dest) in str(info.value)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/model.pt", "model.pt"])
def test_only_http_urls(tmp_path, url):
    spec = ModelSpec("x", "model.pt", CONFIG, url, None)
    with pytest.raises(CheckpointError, match="only http"):
        download_checkpoint(spec, tmp_path / "model.pt", progress=False)
    assert not (tmp_path / "model.pt").exists()


def test_no_url(tmp_path):
    spec = ModelSpec("x", "model.pt", CONFIG, None, None)
    with pytest.raises(CheckpointError, match="place the file at"):
        download_checkpoint(spec, tmp_path / "model.pt", progress=False)


def test_refuses_oversized_announcement(server, tmp_path):
    spec = _spec(server)
    server.fake_length = 5 << 30  # default limit is 4 GiB
    dest = tmp_path / "model.pt"
    with pytest.raises(CheckpointError, match="refusing"):
        download_checkpoint(spec, dest, progress=False)
    assert not dest.exists() and not dest.with_suffix(".pt.part").exists()


def test_refuses_stream_beyond_limit(server, tmp_path):
    spec = _spec(server)
    dest = tmp_path / "model.pt"
    with pytest.raises(CheckpointError, match="refusing"):
        download_checkpoint(spec, dest, progress=False, max_bytes=200_000, chunk_size=CHUNK)
    assert not dest.exists() and not dest.with_suffix(".pt.part").exists()


def test_unwritable_destination_is_a_checkpoint_error(server, tmp_path):
    spec = _spec(server)
    blocker = tmp_path / "not-a-dir"
    blocker.write_bytes(b"")
    with pytest.raises(CheckpointError, match="place it at"):
        download_checkpoint(spec, blocker / "model.pt", progress=False)


# --------------------------------------------------------------------------- resolve_checkpoint


def test_registry_name_not_cached_without_download():
    spec = REGISTRY["sam2.1_hiera_tiny"]
    with pytest.raises(CheckpointError) as info:
        resolve_checkpoint("sam2.1_hiera_tiny", download=False)
    message = str(info.value)
    assert spec.filename in message and str(cache_dir() / spec.filename) in message
    assert spec.url in message


def test_registry_name_placed_by_hand_is_pinned(_fresh_cache):
    spec = REGISTRY["sam2.1_hiera_tiny"]
    path = cache_dir() / spec.filename
    path.parent.mkdir(parents=True)
    path.write_bytes(PAYLOAD)

    resolved = resolve_checkpoint("sam2.1_hiera_tiny")
    assert resolved == ResolvedCheckpoint("sam2.1_hiera_tiny", path, spec.config, PAYLOAD_SHA,
                                          spec.image_size)
    assert f"{PAYLOAD_SHA}  {spec.filename}" in (cache_dir() / "sha256-pins.txt").read_text()
    assert resolve_checkpoint("sam2.1_hiera_tiny").sha256 == PAYLOAD_SHA  # still passes

    path.write_bytes(PAYLOAD[:-1] + bytes([PAYLOAD[-1] ^ 1]))  # one bit flipped
    with pytest.raises(CheckpointError, match="SHA256") as info:
        resolve_checkpoint("sam2.1_hiera_tiny")
    assert PAYLOAD_SHA in str(info.value) and str(path) in str(info.value)
    with pytest.raises(CheckpointError):
        verify_checkpoint(spec, path)


def test_resolve_downloads_into_cache_and_pins(server, monkeypatch):
    spec = _spec(server, filename="local_tiny.pt", sha256=None, name="local_tiny")
    monkeypatch.setitem(REGISTRY, spec.name, spec)
    resolved = resolve_checkpoint("local_tiny", download=True)
    assert resolved.path == cache_dir() / "local_tiny.pt"
    assert resolved.path.read_bytes() == PAYLOAD
    assert resolved.sha256 == PAYLOAD_SHA and resolved.image_size == 512
    assert f"{PAYLOAD_SHA}  local_tiny.pt" in (cache_dir() / "sha256-pins.txt").read_text()
    assert not list(cache_dir().glob("*.part"))

    # A later re-download is checked against the pin before it lands in the cache.
    resolved.path.unlink()
    server.files["local_tiny.pt"] = PAYLOAD[::-1]
    with pytest.raises(CheckpointError, match="SHA256"):
        resolve_checkpoint("local_tiny", download=True)
    assert not resolved.path.exists()


def test_resolve_download_with_published_hash_mismatch(server, monkeypatch):
    spec = _spec(server, filename="bad.pt", sha256="f" * 64, name="bad")
    monkeypatch.setitem(REGISTRY, spec.name, spec)
    with pytest.raises(CheckpointError, match="bad.pt"):
        resolve_checkpoint("bad", download=True)
    assert not (cache_dir() / "bad.pt").exists()


def test_custom_checkpoint_needs_config(tmp_path):
    path = tmp_path / "my_model.pt"
    path.write_bytes(PAYLOAD)
    with pytest.raises(InvalidInputError, match="config"):
        resolve_checkpoint(str(path))
    resolved = resolve_checkpoint(str(path), config=CONFIG, image_size=512)
    assert resolved == ResolvedCheckpoint("my_model", path, CONFIG, PAYLOAD_SHA, 512)


def test_unknown_name():
    with pytest.raises(InvalidInputError, match="unknown model"):
        resolve_checkpoint("sam3_hiera_enormous")


def test_custom_checkpoint_missing(tmp_path):
    path = tmp_path / "nowhere.pt"
    with pytest.raises(CheckpointError, match="not found") as info:
        resolve_checkpoint(str(path), config=CONFIG)
    assert str(path) in str(info.value)


def test_registry_configs_ship_with_sam2_and_published_hashes_are_well_formed():
    from polypsam.sam2_adapter.model import resolve_config_path

    for spec in REGISTRY.values():
        assert resolve_config_path(spec.config).is_file(), spec.name
        assert spec.url and spec.url.startswith("https://"), spec.name
        if spec.sha256 is not None:
            assert len(spec.sha256) == 64 and int(spec.sha256, 16) >= 0
    assert REGISTRY["sam2_hiera_tiny"].sha256.startswith("65b50056")
    assert {"sam2.1_hiera_tiny", "sam2.1_hiera_small", "sam2.1_hiera_base_plus",
            "sam2.1_hiera_large", "medsam2"} <= set(REGISTRY)


def test_checkpoint_save_is_atomic(tmp_path):
    """Two writers at once (two benchmark processes on a fresh machine) and a failed write never
    leave a half-written or stray file."""
    import threading

    import torch

    from polypsam.sam2_adapter.model import save_checkpoint

    path = tmp_path / "ckpt.pt"
    models = [torch.nn.Linear(256, 256) for _ in range(4)]
    threads = [threading.Thread(target=save_checkpoint, args=(m, path)) for m in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    state = torch.load(path, weights_only=True)["model"]
    assert any(torch.equal(state["weight"], m.weight) for m in models)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]

    class Broken(torch.nn.Module):
        def state_dict(self, *args, **kwargs):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(Broken(), tmp_path / "other.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]
