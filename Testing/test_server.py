"""The PolypSAM server and its client against a real ``polypsam serve`` on 127.0.0.1.

One server (random-weight tiny model, image size 256, CPU, a token) serves most tests; the fault
tests start and kill their own. Parity: the server engine gives exactly the in-process engine's
masks and scores (same weights, same inputs).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import zlib

import numpy as np
import pytest

from conftest import synthetic_rgb
from server_fixtures import ServerProcess, child_env, free_port

TOKEN = "test-token-0123456789"


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tmp_path_factory):
    proc = ServerProcess(tiny_checkpoint, token=TOKEN,
                         extra=("--max-jobs", "3", "--max-upload-mb", "1", "--memory-mb", "64",
                                "--max-sessions", "8"),
                         log=tmp_path_factory.mktemp("server") / "server.log")
    yield proc
    proc.stop()


@pytest.fixture()
def remote(server):
    from polypsam.server.client import ServerEngine

    eng = ServerEngine(server.url, TOKEN)
    yield eng
    eng.close()


def _volume(nk: int = 10, nj: int = 48, ni: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vol = rng.normal(0, 30, (nk, nj, ni)).astype(np.int16) - 50
    kk, jj, ii = np.mgrid[:nk, :nj, :ni]
    vol[(jj - nj / 2) ** 2 + (ii - ni / 2) ** 2 < (8 + kk / 2) ** 2] += 250
    return vol


def _same_masks(a, b) -> None:
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        assert ra.mask.dtype == bool and ra.mask.shape == rb.mask.shape
        assert np.array_equal(ra.mask, rb.mask)
        assert ra.score == pytest.approx(rb.score, abs=1e-6)
        assert ra.box == rb.box


# -- capabilities, parity -------------------------------------------------------------------------
def test_capabilities_openapi_and_test_connection(server, remote, engine):
    from polypsam.server.client import test_connection

    caps = remote.capabilities
    assert caps["image_size"] == 256 and caps["device"] == "cpu"
    assert caps["checkpoint_sha256"] == engine.info.checkpoint_sha256
    from polypsam.server import wire

    assert caps["api_version"] == wire.API_VERSION and caps["token_required"] is True
    assert caps["limits"]["max_jobs"] == 3 and "zlib" in caps["codecs"]
    assert remote.info.image_size == 256 and remote.info.engine == "server"
    status, schema = server.request("GET", "/openapi.json", token="")  # the schema is open
    assert status == 200
    paths = schema["paths"]
    for path in ("/v1/health", "/v1/capabilities", "/v1/sessions",
                 "/v1/sessions/{sid}/arrays/{sha256}", "/v1/sessions/{sid}/segment",
                 "/v1/sessions/{sid}/track", "/v1/sessions/{sid}/jobs/{job_id}/cancel"):
        assert path in paths, path
    seg = paths["/v1/sessions/{sid}/segment"]["post"]
    assert seg["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "SegmentRequest")
    assert "application/octet-stream" in paths["/v1/sessions/{sid}/arrays/{sha256}"]["put"][
        "requestBody"]["content"]
    line = test_connection(server.url, TOKEN)
    assert f"API {wire.API_VERSION}" in line and "image size 256" in line
    assert caps["checkpoint_sha256"][:12] in line


def test_segment_parity_rgb_and_ct(remote, engine):
    from polypsam.preprocess import Window

    rgb = synthetic_rgb(60, 80, seed=3)
    boxes = [(20, 15, 50, 45), (5, 5, 30, 25)]
    _same_masks(remote.segment_2d(rgb, boxes), engine.segment_2d(rgb, boxes))
    ct = _volume()[4]
    for intensity in (Window(40, 400), None):
        _same_masks(remote.segment_2d(ct, [(20, 12, 44, 36)], intensity=intensity),
                    engine.segment_2d(ct, [(20, 12, 44, 36)], intensity=intensity))
    sent = remote.voxel_bytes_sent
    remote.segment_2d(ct, [(10, 10, 40, 40)])  # same image again: no pixel bytes
    assert remote.voxel_bytes_sent == sent


def test_segment_parity_every_prompt_kind_and_candidates(remote, engine):
    from polypsam.engine import Prompt

    rgb = synthetic_rgb(60, 80, seed=4)
    first = engine.segment_2d(rgb, [(20, 15, 50, 45)])[0].mask
    prompts = [
        Prompt(points=((35, 30),), labels=(1,)),                              # one click
        Prompt(box=(20, 15, 50, 45), points=((25, 20), (45, 40)), labels=(1, 0)),  # box + clicks
        Prompt(mask=first),                                                   # a mask
        Prompt(mask=first, points=((40, 35),), labels=(0,)),                  # mask + exclude
    ]
    for multimask in (False, True):
        a = remote.segment_2d(rgb, prompts, multimask=multimask)
        b = engine.segment_2d(rgb, prompts, multimask=multimask)
        _same_masks(a, b)
        for ra, rb in zip(a, b):
            assert ra.candidate_scores == rb.candidate_scores
            assert len(ra.candidates) == len(rb.candidates) == (3 if multimask else 0)
            assert all(np.array_equal(x, y) for x, y in zip(ra.candidates, rb.candidates))
            assert ra.prompt.to_dict() == rb.prompt.to_dict()
            assert (ra.prompt.mask is None) == (rb.prompt.mask is None)


def test_tracking_parity_point_prompts(remote, engine):
    from polypsam.engine import FramePrompt

    frames = np.stack([np.roll(synthetic_rgb(48, 64, seed=2), 2 * t, axis=1) for t in range(4)])
    prompts = [FramePrompt(frame=1, obj_id=1, points=((28, 24), (10, 5)), labels=(1, 0)),
               FramePrompt(frame=1, obj_id=2, box=(30, 10, 60, 40), points=((45, 25),),
                           labels=(1,))]
    kw = dict(start_frame=1, max_frames=2)
    a = list(remote.track(frames, prompts, **kw))
    b = list(engine.track(frames, prompts, **kw))
    assert [f.frame for f in a] == [f.frame for f in b] == [1, 2, 3]
    for fa, fb in zip(a, b):
        assert fa.scores == fb.scores and set(fa.masks) == {1, 2}
        assert all(np.array_equal(fa.masks[o], fb.masks[o]) for o in fb.masks)


def test_propagation_parity_and_repeat_sends_no_voxels(remote, engine):
    from polypsam.engine import FramePrompt
    from polypsam.propagation import propagate

    vol = _volume()
    refine = [FramePrompt(frame=7, obj_id=1, box=(22, 14, 42, 34))]
    kw = dict(slice_range=(2, 8), key_slice=4, refinements=refine)
    done = []
    a = propagate(remote, vol, [(20, 12, 44, 36)], progress=lambda d, t: done.append(d), **kw)
    b = propagate(engine, vol, [(20, 12, 44, 36)], **kw)
    assert np.array_equal(a.labelmap.array, b.labelmap.array)
    assert a.labelmap.array[2:9].any() and not a.labelmap.array[[0, 1, 9]].any()
    assert a.slice_scores == b.slice_scores
    assert done == list(range(1, 8))
    sent, uploads = remote.voxel_bytes_sent, remote.uploads
    c = propagate(remote, vol, [(20, 12, 44, 36)], **kw)
    assert np.array_equal(c.labelmap.array, b.labelmap.array)
    assert remote.voxel_bytes_sent == sent and remote.uploads == uploads


def test_tracking_parity_rgb_frames(remote, engine):
    from polypsam.propagation import track

    frames = np.stack([np.roll(synthetic_rgb(48, 64, seed=1), 2 * t, axis=1) for t in range(6)])
    a = track(remote, frames, 2, [(15, 12, 40, 36)])
    b = track(engine, frames, 2, [(15, 12, 40, 36)])
    assert np.array_equal(a.labels, b.labels) and a.labels.any()
    assert a.frame_scores == b.frame_scores


# -- bad input ------------------------------------------------------------------------------------
def _session(server) -> str:
    status, body = server.request("POST", "/v1/sessions")
    assert status == 201
    return body["session"]


def _upload(server, sid, array, codec="zlib", body=None, **meta_changes):
    from polypsam.server import wire

    meta, payload = wire.encode_array(array, codec)
    meta.update(meta_changes)
    query = f"dtype={meta['dtype']}&shape={','.join(map(str, meta['shape']))}&codec={meta['codec']}"
    return server.request("PUT", f"/v1/sessions/{sid}/arrays/{meta['sha256']}?{query}",
                          payload if body is None else body,
                          {"Content-Type": "application/octet-stream"})


def test_bad_input_answers_4xx_and_server_keeps_serving(server):
    from polypsam.server import wire

    sid = _session(server)
    img = _volume()[3]
    digest = wire.content_hash(img)
    assert _upload(server, sid, img)[0] == 201
    seg = f"/v1/sessions/{sid}/segment"
    _meta, good = wire.encode_array(img, "zlib")
    nan = np.zeros((8, 8), np.float32)
    nan[2, 3] = np.nan
    cases = {
        "garbage body": (server.request("POST", seg, b"\x00{not json",
                                        {"Content-Type": "application/json"}), 400, "JSON"),
        "truncated upload": (_upload(server, sid, img, body=good[: len(good) // 2]), 400,
                             "truncated"),
        "wrong dtype": (_upload(server, sid, img, dtype="complex64"), 400, "dtype"),
        "wrong shape": (_upload(server, sid, img, shape=[48, 65]), 400, "truncated"),
        "NaN": (_upload(server, sid, nan), 400, "NaN"),
        "oversized upload": (_upload(server, sid, np.zeros((1100, 1100), np.uint8), codec="none"),
                             413, "limit"),
        "unknown volume hash": (server.post_json(seg, {"image": "ab" * 32, "boxes": [[1, 1, 9, 9]]}),
                                404, "not on the server"),
        "box outside": (server.post_json(seg, {"image": digest, "boxes": [[10, 10, 90, 30]]}),
                        400, "outside"),
        "inverted box": (server.post_json(seg, {"image": digest, "boxes": [[30, 10, 10, 30]]}),
                         400, "inverted"),
        "point outside": (server.post_json(seg, {"image": digest, "prompts": [
            {"points": [[70, 10]], "labels": [1]}]}), 400, "outside"),
        "bad point label": (server.post_json(seg, {"image": digest, "prompts": [
            {"points": [[7, 10]], "labels": [3]}]}), 400, "labels"),
        "unknown session": (server.post_json("/v1/sessions/nope/segment",
                                             {"image": digest, "boxes": [[1, 1, 9, 9]]}),
                            404, "unknown session"),
        "missing token": (server.request("GET", "/v1/capabilities", token=""), 401, "missing"),
        "wrong token": (server.request("GET", "/v1/capabilities", token="x" * 21), 401, "wrong"),
        "wrong content type": (server.request("POST", seg, b"image=1",
                                              {"Content-Type": "text/plain"}), 415,
                               "application/json"),
    }
    # negative slice ranges in a tracking request
    vol = _volume()
    chunk = wire.content_hash(vol)
    assert _upload(server, sid, vol)[0] == 201
    track = f"/v1/sessions/{sid}/track"
    mask = wire.pack_mask(np.ones((48, 64), bool))
    base = {"frames": {"length": 10, "chunks": [{"start": 0, "array": chunk}]},
            "prompts": [{"frame": 4, "obj_id": 1, "mask": mask}], "start_frame": 4}
    cases["negative start frame"] = (server.post_json(track, {**base, "start_frame": -1}), 400,
                                     "outside")
    cases["negative max_frames"] = (server.post_json(track, {**base, "max_frames": -3}), 400,
                                    "max_frames")
    cases["negative chunk start"] = (server.post_json(
        track, {**base, "frames": {"length": 10, "chunks": [{"start": -2, "array": chunk}]}}),
        422, "start")
    cases["prompt outside frames"] = (server.post_json(
        track, {**base, "prompts": [{"frame": 12, "obj_id": 1, "mask": mask}]}), 400, "outside")
    for name, ((status, body), want, words) in cases.items():
        assert status == want, (name, status, body)
        assert words.lower() in body["error"]["message"].lower(), (name, body)
    assert server.health()["status"] == "ok"
    status, body = server.post_json(seg, {"image": digest, "boxes": [[10, 10, 40, 30]]})
    assert status == 200 and len(body["results"]) == 1
    assert server.request("DELETE", f"/v1/sessions/{sid}")[1] == {"deleted": True}


def test_shape_overflowing_64_bits_is_invalid_input_without_a_traceback(server):
    """4294967296 x 4294967296 wraps to 0 in int64; 99999999999999999999 does not fit one."""
    sid = _session(server)
    img = _volume()[2]
    for shape in ([4294967296, 4294967296], [99999999999999999999], [2**62, 2**62, 4, 4]):
        status, body = _upload(server, sid, img, shape=shape)
        assert status == 400, (shape, body)
        assert body["error"]["code"] == "invalid_input"
        assert "exceeds the server's limit" in body["error"]["message"]
    assert _upload(server, sid, img)[0] == 201  # still serving
    assert "Traceback" not in server.log_text()
    server.request("DELETE", f"/v1/sessions/{sid}")


def test_too_many_concurrent_jobs_is_429_then_cancel_frees(server):
    from polypsam.server import wire

    sid = _session(server)
    frames = np.stack([synthetic_rgb(32, 32, seed=t % 8) for t in range(200)])
    assert _upload(server, sid, frames)[0] == 201
    body = {"frames": {"length": 200, "chunks": [{"start": 0, "array": wire.content_hash(frames)}]},
            "prompts": [{"frame": 0, "obj_id": 1, "box": [4, 4, 20, 20]}], "start_frame": 0}
    conns = []
    import http.client

    for i in range(3):  # the limit: one runs, two wait
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        conn.request("POST", f"/v1/sessions/{sid}/track", json.dumps({**body, "job": f"j{i}"}),
                     {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"})
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("X-PolypSAM-Job") == f"j{i}"
        conns.append((conn, resp))
    status, err = server.post_json(f"/v1/sessions/{sid}/track", body)
    assert status == 429 and "busy" in err["error"]["message"]
    time.sleep(5.5)  # the waiting streams say they are alive (heartbeat every 5 s)
    for i in range(3):
        assert server.post_json(f"/v1/sessions/{sid}/jobs/j{i}/cancel", None)[1]["cancelled"]
    server.wait_idle(60)
    for i, (conn, resp) in enumerate(conns):
        lines = [json.loads(x) for x in resp.read().splitlines()]
        assert lines and lines[-1]["error"]["code"] == "cancelled"
        assert sum(1 for x in lines if "frame" in x) < 200
        if i == 2:  # never started: only heartbeats before the cancel
            assert lines[:-1] and all(x == {"heartbeat": True} for x in lines[:-1])
        conn.close()
    server.request("DELETE", f"/v1/sessions/{sid}")


def test_cancel_mid_propagation_frees_server_within_one_frame(server, remote):
    from polypsam.engine import CancelToken, FramePrompt
    from polypsam.errors import CancelledError

    frames = np.stack([synthetic_rgb(32, 32, seed=t) for t in range(40)])
    cancel = CancelToken()
    before = server.health()["frames_done"]
    stream = remote.track(frames, [FramePrompt(frame=0, obj_id=1, box=(4, 4, 20, 20))],
                          start_frame=0, cancel=cancel)
    received = 0
    with pytest.raises(CancelledError):
        for _fm in stream:
            received += 1
            if received == 2:
                cancel.cancel()
    after = server.wait_idle(30)["frames_done"]
    assert received == 2
    assert after - before <= received + 2  # the frame in flight and at most one more


# -- client errors --------------------------------------------------------------------------------
def test_client_errors_are_clear(server, monkeypatch):
    from polypsam.errors import InvalidInputError, ServerError
    from polypsam.server import wire
    from polypsam.server.client import ServerEngine, test_connection

    with pytest.raises(InvalidInputError, match="no scheme.*http://"):
        ServerEngine(f"127.0.0.1:{server.port}", TOKEN)
    with pytest.raises(ServerError, match="connection refused"):
        test_connection(f"http://127.0.0.1:{free_port()}", TOKEN)
    with pytest.raises(ServerError, match="refused the token"):
        ServerEngine(server.url, "wrong-token")
    with pytest.raises(ServerError, match="refused the token"):
        ServerEngine(server.url)
    server_api = wire.API_VERSION.replace(".", r"\.")
    monkeypatch.setattr(wire, "API_VERSION", "2.0")
    with pytest.raises(ServerError, match=rf"client API 2\.0.*server API {server_api}"):
        ServerEngine(server.url, TOKEN)
    monkeypatch.undo()
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        t0 = time.monotonic()
        with pytest.raises(ServerError, match="did not answer within"):
            ServerEngine(f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=0.5)
        assert time.monotonic() - t0 < 5


def test_cli_segment_with_server(server, engine, tmp_path, capsys):
    from polypsam import io
    from polypsam.cli import main

    img = synthetic_rgb(60, 80, seed=5)
    src = tmp_path / "frame.png"
    io.write_png(img, src)
    out = tmp_path / "mask.png"
    assert main(["segment", str(src), "--box", "20", "15", "50", "45", "-o", str(out),
                 "--server", server.url, "--token", TOKEN]) == 0
    assert "--token is visible to every user" in capsys.readouterr().err
    expected = engine.segment_2d(io.read_image(src), [(20, 15, 50, 45)])[0].mask
    assert np.array_equal(io.read_image(out) > 0, expected)


def test_cli_propagate_with_server(server, engine, tmp_path):
    from polypsam import io
    from polypsam.cli import main
    from polypsam.engines import EngineSettings
    from polypsam.geometry import Volume
    from polypsam.propagation import propagate

    vol = _volume(nk=5, nj=32, ni=40)
    src, out = tmp_path / "ct.nrrd", tmp_path / "lab.nrrd"
    io.write_volume(Volume(vol), src)
    secret = tmp_path / "token"
    secret.write_text(TOKEN + "\n")
    secret.chmod(0o600)
    assert main(["propagate", str(src), "--box", "10", "8", "30", "24", "--slices", "1", "3",
                 "-o", str(out), "--server", server.url, "--token-file", str(secret)]) == 0
    expected = propagate(engine, io.read_volume(src), [(10, 8, 30, 24)], (1, 3)).labelmap.array
    assert np.array_equal(io.read_volume(out).array, expected)
    settings = EngineSettings(kind="server", server_url=server.url, token=TOKEN)
    assert settings.describe() == f"server: {server.url}" and TOKEN not in repr(settings)


def test_cli_closes_its_session_on_success_error_and_ctrl_c(tiny_checkpoint, tmp_path,
                                                            monkeypatch):
    """Back-to-back CLI runs against a server holding 2 sessions: each run deletes its session
    (no 429 "holds 2 active sessions"), also when it fails and when Ctrl-C stops it."""
    import signal

    from PIL import Image

    from polypsam import io
    from polypsam.cli import main
    from polypsam.geometry import Volume

    srv = ServerProcess(tiny_checkpoint, token=TOKEN, log=tmp_path / "server.log",
                        extra=("--max-sessions", "2", "--max-upload-mb", "1"))
    monkeypatch.setenv("POLYPSAM_TOKEN", TOKEN)
    try:
        from polypsam.server.client import ServerEngine

        with ServerEngine(srv.url, TOKEN) as client:  # the client is a context manager
            client.segment_2d(synthetic_rgb(32, 32), [(4, 4, 20, 20)])
            assert srv.health()["sessions"] == 1
        assert srv.health()["sessions"] == 0
        frames = tmp_path / "frames"
        frames.mkdir()
        for i in range(40):
            Image.fromarray(synthetic_rgb(48, 64, seed=i)).save(frames / f"f{i:02d}.png")
        ct = tmp_path / "ct.nrrd"
        io.write_volume(Volume(_volume(nk=5, nj=32, ni=40)), ct)
        remote = ["--server", srv.url]
        runs = [["segment", str(frames / "f00.png"), "--box", "10", "8", "40", "30"],
                ["propagate", str(ct), "--box", "10", "8", "30", "24", "--slices", "1", "3"],
                ["track", str(frames), "--frame", "0", "--box", "10", "8", "40", "30"]] * 2
        for n, run in enumerate(runs):
            out = tmp_path / f"out{n}" / ("labels.nrrd" if run[0] == "propagate" else "mask.png")
            out = out.parent if run[0] == "track" else out
            assert main([*run, "-o", str(out), *remote]) == 0, n
            assert srv.health()["sessions"] == 0, (n, run[0])
        # an error after the session opened: the server refuses an upload over 1 MiB (413)
        noise = np.random.default_rng(0).integers(0, 256, (700, 700, 3), dtype=np.uint8)
        Image.fromarray(noise).save(tmp_path / "big.png")
        assert main(["segment", str(tmp_path / "big.png"), "--box", "1", "1", "50", "50",
                     "-o", str(tmp_path / "big_mask.png"), *remote]) == 2
        assert srv.health()["sessions"] == 0
        # Ctrl-C while tracking: the run stops with PolypSAM's line and deletes its session
        out = tmp_path / "interrupted"
        env = {**child_env(), "POLYPSAM_TOKEN": TOKEN}
        proc = subprocess.Popen(
            [sys.executable, "-m", "polypsam.cli", "track", str(frames), "--frame", "0",
             "--box", "10", "8", "40", "30", "-o", str(out), *remote],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while srv.health()["frames_done"] == 0 or srv.health()["sessions"] == 0:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 130, stderr
        assert stderr.strip().splitlines()[-1].startswith("polypsam: interrupted"), stderr
        assert srv.health()["sessions"] == 0
    finally:
        srv.stop()


# -- the Slicer-side path without torch -------------------------------------------------------------
NO_TORCH = r"""
import importlib.abc, sys, json
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "sam2", "torchvision", "hydra", "fastapi", "uvicorn"):
            raise ImportError(f"blocked: {name}")
sys.meta_path.insert(0, Block())
import numpy as np
from polypsam.engines import EngineSettings, create_engine
from polypsam.propagation import propagate
url, token = sys.argv[1], sys.argv[2]
vol = np.load(sys.argv[3], allow_pickle=False)
eng = create_engine(EngineSettings(kind="server", server_url=url, token=token))
res = propagate(eng, vol, [(20, 12, 44, 36)], (2, 8), 4)
seg = eng.segment_2d(vol[4], [(20, 12, 44, 36)])
eng.close()
try:
    import torch
    raise SystemExit("torch imported")
except ImportError:
    pass
bad = [m for m in sys.modules if m.split(".")[0] in ("torch", "sam2", "fastapi")]
np.save(sys.argv[4], res.labelmap.array)
print(json.dumps({"bad": bad, "pixels": int(seg[0].mask.sum())}))
"""


def test_client_runs_where_torch_and_sam2_cannot_import(server, engine, tmp_path):
    from polypsam.propagation import propagate

    vol = _volume()
    np.save(tmp_path / "vol.npy", vol)
    script = tmp_path / "client.py"
    script.write_text(NO_TORCH)
    run = subprocess.run([sys.executable, str(script), server.url, TOKEN, str(tmp_path / "vol.npy"),
                          str(tmp_path / "out.npy")], env=child_env(), capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["bad"] == [] and report["pixels"] > 0
    expected = propagate(engine, vol, [(20, 12, 44, 36)], (2, 8), 4).labelmap.array
    assert np.array_equal(np.load(tmp_path / "out.npy"), expected)


# -- load -----------------------------------------------------------------------------------------
def test_load_20_clients_10_requests_all_answered_memory_bounded(server):
    from polypsam.errors import ServerError
    from polypsam.server.client import ServerEngine

    img = synthetic_rgb(32, 32, seed=9)
    warm = ServerEngine(server.url, TOKEN)
    warm.segment_2d(img, [(4, 4, 20, 20)])  # warm the embedding cache
    warm.close()
    rss0 = server.rss_mb()
    answers: list[tuple[str, int]] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        eng = ServerEngine(server.url, TOKEN, timeout=120)
        for r in range(10):
            kind = ("valid", "unknown-array", "garbage", "no-token", "unknown-session")[(i + r) % 5]
            if kind == "valid":
                try:
                    res = eng.segment_2d(img, [(4, 4, 20, 20)])
                    got = 200 if res[0].mask.shape == (32, 32) else -1
                except ServerError as exc:
                    got = getattr(exc, "status", -1)
            elif kind == "unknown-array":
                got, body = server.request("POST", "/v1/sessions")
                if got == 201:
                    got = server.post_json(f"/v1/sessions/{body['session']}/segment",
                                           {"image": "0" * 64, "boxes": [[9, 9, 1, 1]]})[0]
                    server.request("DELETE", f"/v1/sessions/{body['session']}")
            elif kind == "garbage":
                got = server.request("POST", "/v1/sessions/zz/segment", b"\xff\xfe{",
                                     {"Content-Type": "application/json"})[0]
            elif kind == "no-token":
                got = server.request("GET", "/v1/capabilities", token="")[0]
            else:
                got = server.post_json("/v1/sessions/zz/segment", {"image": "0" * 64,
                                                                   "boxes": [[1, 1, 5, 5]]})[0]
            with lock:
                answers.append((kind, got))
        eng.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not any(t.is_alive() for t in threads)
    assert len(answers) == 200
    # beyond --max-sessions 8, new clients are refused (429) while the 8 sessions are active
    allowed = {"valid": {200, 429}, "unknown-array": {404, 429}, "garbage": {400},
               "no-token": {401}, "unknown-session": {404}}
    wrong = [(k, s) for k, s in answers if s not in allowed[k]]
    assert not wrong, wrong[:10]
    assert sum(1 for k, s in answers if k == "valid" and s == 200) >= 6
    health = server.wait_idle(60)
    assert health["sessions"] <= 8
    assert server.rss_mb() - rss0 < 300


# -- faults: killed mid-propagation, restarted ------------------------------------------------------
def test_server_killed_mid_propagation_then_restarted(tiny_checkpoint, tmp_path, engine):
    from polypsam.errors import ServerError
    from polypsam.propagation import propagate
    from polypsam.server.client import ServerEngine

    port = free_port()
    first = ServerProcess(tiny_checkpoint, port=port, log=tmp_path / "a.log")
    try:
        remote = ServerEngine(first.url, timeout=30)
        vol = _volume(nk=40)

        def kill_after_two(done, _total):
            if done == 2:
                first.stop(kill=True)

        t0 = time.monotonic()
        with pytest.raises(ServerError, match="closed the connection|cannot reach"):
            propagate(remote, vol, [(20, 12, 44, 36)], (0, 39), 20, progress=kill_after_two)
        assert time.monotonic() - t0 < 30 + 20
    finally:
        first.stop(kill=True)
    second = ServerProcess(tiny_checkpoint, port=port, log=tmp_path / "b.log")
    try:
        uploads = remote.uploads
        small = vol[:8]
        a = propagate(remote, small, [(20, 12, 44, 36)], (2, 6), 4)  # same client goes on
        assert remote.uploads > uploads  # it re-sent what the new server lacked
        b = propagate(engine, small, [(20, 12, 44, 36)], (2, 6), 4)
        assert np.array_equal(a.labelmap.array, b.labelmap.array)
        remote.close()
    finally:
        second.stop()


# -- wire format, token storage -------------------------------------------------------------------
def test_wire_masks_arrays_and_codecs():
    from polypsam.errors import InvalidInputError
    from polypsam.server import wire

    mask = np.zeros((300, 200), bool)
    mask[100:140, 50:70] = True
    packed = wire.pack_mask(mask)
    assert packed["bbox"] == [100, 140, 50, 70]
    assert len(packed["bits"]) < 200 * 300 / 8 / 10
    assert np.array_equal(wire.unpack_mask(packed), mask)
    assert not wire.unpack_mask(wire.pack_mask(np.zeros((5, 4), bool))).any()
    ct = _volume(nk=3)
    for codec in wire.available_codecs():
        meta, body = wire.encode_array(ct, codec)
        back = wire.decode_array(body, max_bytes=1 << 24, **meta)
        assert back.dtype == np.int16 and np.array_equal(back, ct)
    assert wire.choose_codec(["zlib", "none"]) == "zlib"  # a server without zstd
    bomb = zlib.compress(bytes(10 << 20))
    with pytest.raises(InvalidInputError, match="truncated or oversized"):
        wire.decompress(bomb, "zlib", 1000)
    with pytest.raises(InvalidInputError, match="dtype"):
        wire.check_dtype_shape("object", [2, 2], 100)


def test_token_is_generated_once_with_user_only_permissions(tmp_path, monkeypatch):
    from polypsam.cli.serve import is_loopback, stored_token

    monkeypatch.setenv("POLYPSAM_CONFIG_DIR", str(tmp_path / "cfg"))
    token, path, created = stored_token()
    assert created and len(token) >= 32 and (path.stat().st_mode & 0o777) == 0o600
    assert stored_token() == (token, path, False)
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")


def _serve(args: list[str], env_extra: dict, stdout=subprocess.PIPE, timeout: float = 120):
    """``polypsam serve ARGS`` that stops before binding (a missing checkpoint): (rc, stderr)."""
    env = {key: value for key, value in child_env().items() if key != "POLYPSAM_TOKEN"}
    env.update(env_extra)
    proc = subprocess.run([sys.executable, "-m", "polypsam.cli", "serve", *args,
                           "--checkpoint", "missing.pt", "--config", "configs/sam2.1/sam2.1_hiera_t.yaml"],
                          env=env, stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=timeout)
    return proc.returncode, proc.stderr


def test_generated_token_goes_only_to_a_terminal(tmp_path):
    """A redirected log gets the token file's path, never the token; a terminal gets the token."""
    import os
    import pty

    env = {"POLYPSAM_CONFIG_DIR": str(tmp_path / "cfg")}
    stored = tmp_path / "cfg" / "server-token"
    with open(tmp_path / "serve.log", "w") as log:  # nohup polypsam serve ... > serve.log
        rc, stderr = _serve(["--host", "0.0.0.0"], env, stdout=log)
    assert rc == 2 and "checkpoint" in stderr  # it stopped at the model, before binding
    token = stored.read_text().strip()
    assert len(token) >= 32 and (stored.stat().st_mode & 0o777) == 0o600
    logged = (tmp_path / "serve.log").read_text()
    assert token not in logged and str(stored) in logged and "not a terminal" in logged
    stored.unlink()
    leader, follower = pty.openpty()  # a real terminal on stdout
    try:
        rc, _ = _serve(["--host", "0.0.0.0"], env, stdout=follower)
        os.close(follower)
        shown = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the terminal's other end is closed
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(leader)
    assert rc == 2 and stored.read_text().strip() in shown.decode()


def test_token_from_environment_or_user_only_file_and_argv_warns(tiny_checkpoint, tmp_path):
    """$POLYPSAM_TOKEN (the fixtures' way) and --token-file (0600) work; a file others can read
    is refused with one line; --token works but warns that the process list shows it."""
    secret = tmp_path / "token"
    secret.write_text("file-token-0123456789\n")
    secret.chmod(0o644)
    rc, stderr = _serve(["--token-file", str(secret)], {})
    assert rc == 2 and stderr.strip() == (f"polypsam: error: token file {secret} can be read by"
                                          f" other users (mode 0644): run chmod 600 {secret}")
    rc, stderr = _serve(["--token", "argv-token-0123456789"], {})
    assert rc == 2 and "--token is visible to every user" in stderr
    assert "POLYPSAM_TOKEN" in stderr and "--token-file" in stderr
    secret.chmod(0o600)
    srv = ServerProcess(tiny_checkpoint, extra=("--token-file", str(secret)),
                        log=tmp_path / "server.log")
    try:
        assert srv.request("GET", "/v1/capabilities")[0] == 401
        status, caps = srv.request("GET", "/v1/capabilities", token="file-token-0123456789")
        assert status == 200 and caps["token_required"]
        assert "warning" not in srv.log_text()
    finally:
        srv.stop()
