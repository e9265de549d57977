"""Answers before the click: the image on screen is encoded in the background (issue 19).

The real engine with random weights: an encoding is held at its first encoder block by a test
hook, so "the user moved on while it was running" happens every time, not by timing luck.
Encoder work is counted with forward hooks on SAM2's own modules.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from polypsam.geometry import Box
from polypsam.prefetch import CACHED, CANCELLED, DONE, RUNNING, Prefetcher
from polypsam.preprocess import Window

from encoder_probes import EncoderCounter, held_encoding  # noqa: F401 (a fixture)

WINDOW = Window(40.0, 400.0)
BOX = Box(10, 12, 40, 44)


def ct_slice(seed: int, shape=(64, 80)) -> np.ndarray:
    """An int16 CT-like slice never seen by the engine before."""
    rng = np.random.default_rng(1000 + seed)
    return (rng.normal(0, 200, shape) + 40).astype(np.int16)






def test_prefetch_is_cancelled_and_replaced_when_the_slice_changes(engine, held_encoding):
    started, release = held_encoding
    a, b = ct_slice(1), ct_slice(2)
    counter = EncoderCounter(engine.model)
    runs = engine.encoder_runs
    try:
        shown = Prefetcher()
        on_a = shown.show(engine, a, intensity=WINDOW)  # returns while the encoding runs
        assert started.wait(60), "the prefetch never started on the engine's thread"
        assert on_a.state == RUNNING and not on_a.finished
        assert threading.current_thread().name != "polypsam-prefetch"
        on_b = shown.show(engine, b, intensity=WINDOW)  # the user moved on to slice b
        assert on_a.cancelled and shown.current is on_b
        assert not on_a.finished, "show() waited for the model"  # a is still held at block 0
        release.set()
        assert on_a.wait(60) and on_b.wait(60)
        assert (on_a.state, on_b.state) == (CANCELLED, DONE)
        blocks = len(engine.model.image_encoder.trunk.blocks)
        # a's encoding stopped within its first block (before its attention); b's ran whole
        assert (counter.begun, counter.finished, counter.blocks) == (2, 1, 1 + blocks)
        assert counter.attentions == blocks
        assert engine.encoder_runs == runs + 1

        # a box on the slice shown: the decoder only
        (result,) = engine.segment_2d(b, [BOX], intensity=WINDOW)
        assert result.mask.dtype == bool and result.mask.shape == b.shape
        assert (counter.begun, engine.encoder_runs) == (2, runs + 1)
        # a was never cached: a box there encodes it now
        engine.segment_2d(a, [BOX], intensity=WINDOW)
        assert (counter.finished, engine.encoder_runs) == (2, runs + 2)
    finally:
        counter.remove()


def test_box_after_prefetch_equals_box_without_and_runs_no_encoder(engine):
    image = ct_slice(3)
    counter = EncoderCounter(engine.model)
    try:
        shown = Prefetcher()
        handle = shown.show(engine, image, intensity=WINDOW)
        assert handle.wait(60) and handle.state == DONE and counter.finished == 1
        assert shown.show(engine, image.copy(), intensity=WINDOW) is handle  # same image: kept
        (after_prefetch,) = engine.segment_2d(image, [BOX], intensity=WINDOW)
        assert counter.begun == 1
        # showing it again once encoded runs nothing
        again = engine.prefetch(image, intensity=WINDOW)
        assert again.wait(60) and again.state == CACHED and counter.begun == 1
        # another window is another model input: encoded again
        other = engine.prefetch(image, intensity=Window(0.0, 2000.0))
        assert other.wait(60) and other.state == DONE and counter.finished == 2
        shown.hide()
        assert shown.current is None
    finally:
        counter.remove()
    # the same mask and score as SAM2's modules give without any cache or thread
    import torch

    from conftest import TEST_IMAGE_SIZE
    from polypsam.engine import Prompt
    from polypsam.preprocess import to_model_rgb
    from polypsam.sam2_adapter.image import embed_image, model_input, predict

    rgb = to_model_rgb(image, WINDOW)
    with torch.inference_mode():
        backbone = engine.model.forward_image(model_input(rgb, TEST_IMAGE_SIZE)[None])
        masks, scores = predict(engine.model, embed_image(engine.model, backbone, *rgb.shape[:2]),
                                Prompt(box=BOX))
    assert np.array_equal(after_prefetch.mask, masks[0])
    assert after_prefetch.score == float(scores[0])


def test_hide_cancels_queued_work_and_close_ends_the_thread(tiny_checkpoint):
    from conftest import TEST_IMAGE_SIZE, TINY_CONFIG
    from polypsam.engines import engine_for

    from polypsam.errors import InvalidInputError

    before = prefetch_threads()
    eng = engine_for(tiny_checkpoint, TINY_CONFIG, device="cpu", image_size=TEST_IMAGE_SIZE)
    started, release = threading.Event(), threading.Event()

    def hold(_module, _args):
        if not started.is_set():
            started.set()
            release.wait(60)

    eng.model.image_encoder.trunk.blocks[0].register_forward_pre_hook(hold)
    shown = Prefetcher()
    first = shown.show(eng, ct_slice(4), intensity=WINDOW)
    assert started.wait(60)
    queued = eng.prefetch(ct_slice(5), intensity=WINDOW)  # waits behind the first
    queued.cancel()
    shown.hide()  # nothing shown any more
    release.set()
    assert first.wait(60) and queued.wait(60)
    assert (first.state, queued.state) == (CANCELLED, CANCELLED)
    assert eng.encoder_runs == 0
    last = eng.prefetch(ct_slice(6), intensity=WINDOW)
    eng.close()  # cancels what is pending and ends the prefetch thread
    assert last.finished and last.state in (CANCELLED, DONE)
    assert prefetch_threads() == before
    with pytest.raises(InvalidInputError, match="closed"):
        eng.prefetch(ct_slice(7))


def prefetch_threads() -> int:
    return sum(t.name.startswith("polypsam-prefetch") for t in threading.enumerate())


# -- the server ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def prefetch_server(tiny_checkpoint, tmp_path_factory):
    from server_fixtures import ServerProcess

    proc = ServerProcess(tiny_checkpoint, log=tmp_path_factory.mktemp("server") / "server.log")
    yield proc
    proc.stop()


def wait_until(condition, timeout: float = 60.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def busy_stream(remote):
    """A long tracking job holding the server's model thread (stopped by closing the stream)."""
    from conftest import synthetic_rgb
    from polypsam.engine import FramePrompt

    frames = np.stack([synthetic_rgb(32, 32, seed=t % 7) for t in range(200)])
    stream = remote.track(frames, [FramePrompt(0, 1, box=(4, 4, 20, 20))], start_frame=0)
    next(stream)
    return stream


def test_server_prefetch_replaced_by_the_next_slice_then_a_box_runs_no_encoder(prefetch_server):
    from polypsam.server.client import ServerEngine

    jobs = lambda: prefetch_server.health()["jobs_active"]  # noqa: E731
    runs = lambda: prefetch_server.health()["encoder_runs"]  # noqa: E731
    remote = ServerEngine(prefetch_server.url)
    try:
        assert remote.info.precision == "fp32"  # a CPU server: SAM2 in float32 (auto)
        status, schema = prefetch_server.request("GET", "/openapi.json")
        assert status == 200 and "/v1/sessions/{sid}/prefetch" in schema["paths"]
        a, b, c = ct_slice(11), ct_slice(12), ct_slice(13)
        stream = busy_stream(remote)
        before = runs()
        on_a = remote.prefetch(a, intensity=WINDOW)  # returns at once; queued on the server
        wait_until(lambda: jobs() == 2)
        on_b = remote.prefetch(b, intensity=WINDOW)  # the next slice: the server cancels a's
        wait_until(lambda: jobs() == 3)
        assert not on_a.finished and not on_b.finished
        stream.close()  # the model thread is free
        assert on_a.wait(60) and on_b.wait(60)
        assert (on_a.state, on_b.state) == (CANCELLED, DONE)
        assert runs() == before + 1
        (result,) = remote.segment_2d(b, [BOX], intensity=WINDOW)  # decoder only
        assert result.mask.dtype == bool and runs() == before + 1
        again = remote.prefetch(b, intensity=WINDOW)
        assert again.wait(60) and again.state == CACHED
        remote.segment_2d(a, [BOX], intensity=WINDOW)  # a was never encoded
        assert runs() == before + 2

        # nothing shown any more: the handle's cancel reaches the server
        stream = busy_stream(remote)
        shown = Prefetcher()
        on_c = shown.show(remote, c, intensity=WINDOW)
        wait_until(lambda: jobs() == 2)
        shown.hide()
        stream.close()
        assert on_c.wait(60) and on_c.state == CANCELLED
        prefetch_server.wait_idle(60)
        assert runs() == before + 2
    finally:
        remote.close()
