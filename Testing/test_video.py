"""Streaming SAM2 video tracking (polypsam.sam2_adapter.video): lazy frames and a bounded memory bank."""

from __future__ import annotations

import numpy as np
import pytest

from polypsam.engine import CancelToken, FramePrompt
from polypsam.errors import CancelledError, InvalidInputError
from polypsam.geometry import Box
from polypsam.sam2_adapter.video import (
    LazyFrames,
    VideoSession,
    memory_window,
    new_inference_state,
    state_entries,
    track_frames,
)

N_FRAMES = 20  # beyond SAM2's 16-frame object-pointer window


def moving_disc_frames(n: int = N_FRAMES, h: int = 48, w: int = 64, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    frames = []
    yy, xx = np.mgrid[:h, :w]
    for t in range(n):
        img = rng.integers(30, 80, size=(h, w, 3)).astype(np.uint8)
        cx, cy = 16 + t, 24 + (t % 5)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < 64] = (210, 120, 100)
        frames.append(img)
    return frames


class CountingFrames:
    """A FrameSource that records which frames were read."""

    def __init__(self, frames):
        self.frames = frames
        self.reads: list[int] = []

    def __len__(self):
        return len(self.frames)

    def __getitem__(self, i):
        self.reads.append(int(i))
        return self.frames[i]


@pytest.fixture(scope="module")
def frames():
    return moving_disc_frames()


@pytest.fixture(scope="module")
def untrimmed(engine, frames):
    session = VideoSession(engine.model, frames, [FramePrompt(0, 1, box=Box(8, 16, 24, 32))], trim=False)
    out = list(session.run(start_frame=0))
    return out, session


def test_state_has_the_keys_init_state_builds(engine, tmp_path):
    from PIL import Image

    for i in range(2):
        Image.fromarray(moving_disc_frames(1)[0]).save(tmp_path / f"{i}.jpg")
    official = engine.model.init_state(str(tmp_path))
    ours = new_inference_state(engine.model, LazyFrames(moving_disc_frames(2), engine.model.image_size))
    assert set(ours) == set(official)
    assert ours["video_height"] == official["video_height"] == 48
    assert ours["video_width"] == official["video_width"] == 64
    assert tuple(ours["images"][1].shape) == tuple(official["images"][1].shape)


def test_lazy_frames_match_sam2_normalisation(engine):
    img = moving_disc_frames(1, h=engine.model.image_size, w=engine.model.image_size)[0]
    t = LazyFrames([img], engine.model.image_size)[0].numpy()
    mean = np.array([0.485, 0.456, 0.406])[:, None, None]
    std = np.array([0.229, 0.224, 0.225])[:, None, None]
    expected = (img.transpose(2, 0, 1) / 255.0 - mean) / std
    np.testing.assert_allclose(t, expected, atol=1e-5)


def test_trimming_does_not_change_results(engine, frames, untrimmed):
    reference, full_session = untrimmed
    session = VideoSession(engine.model, frames, [FramePrompt(0, 1, box=Box(8, 16, 24, 32))], trim=True)
    trimmed = list(session.run(start_frame=0))
    assert [f.frame for f in trimmed] == list(range(N_FRAMES))
    for a, b in zip(reference, trimmed):
        assert a.scores == b.scores
        np.testing.assert_array_equal(a.masks[1], b.masks[1])
    # untrimmed state holds one output per frame; the trimmed one stays within the window
    window = memory_window(engine.model)
    assert window == 16
    per_obj = full_session.state["output_dict_per_obj"][0]
    assert len(per_obj["non_cond_frame_outputs"]) == N_FRAMES - 1
    kept = session.state["output_dict_per_obj"][0]["non_cond_frame_outputs"]
    assert len(kept) <= window
    assert min(kept) >= N_FRAMES - window
    assert state_entries(session.state) < state_entries(full_session.state)
    # outputs + bookkeeping within the window (+1 new frame), the conditioning frame, one cache
    assert session.max_entries <= 2 * (window + 1) + 3 < state_entries(full_session.state)


def test_too_small_a_window_changes_results(engine, frames, untrimmed):
    """The equality above is meaningful: dropping memory the model reads does change results."""
    reference, _ = untrimmed
    session = VideoSession(
        engine.model, frames, [FramePrompt(0, 1, box=Box(8, 16, 24, 32))], trim=True, window=2
    )
    out = list(session.run(start_frame=0, max_frames=5))  # memory 2+ frames back is dropped
    assert [f.frame for f in out] == list(range(6))
    assert any(a.scores != b.scores for a, b in zip(reference, out))


def test_frames_are_read_lazily_and_once(engine, frames):
    source = CountingFrames(frames[:8])
    gen = track_frames(engine.model, source, [FramePrompt(2, 1, box=Box(8, 16, 24, 32))], start_frame=2)
    first = next(gen)
    assert first.frame == 2
    assert max(source.reads) <= 2  # nothing beyond the current frame was read
    rest = list(gen)
    assert [f.frame for f in rest] == [3, 4, 5, 6, 7]
    assert sorted(set(source.reads)) == [0, 2, 3, 4, 5, 6, 7]  # 0: frame size; no decode ahead


def test_reverse_and_max_frames_and_several_objects(engine, frames):
    prompts = [FramePrompt(5, 1, box=Box(8, 16, 24, 32)), FramePrompt(5, 7, mask=np.pad(np.ones((8, 8), bool), ((4, 36), (40, 16))))]
    out = list(track_frames(engine.model, frames[:8], prompts, start_frame=5, reverse=True, max_frames=3))
    assert [f.frame for f in out] == [5, 4, 3, 2]
    assert all(set(f.masks) == {1, 7} for f in out)
    assert all(f.masks[1].shape == (48, 64) and f.masks[1].dtype == bool for f in out)


def test_cancel_stops_cleanly(engine, frames):
    token = CancelToken()
    gen = track_frames(engine.model, frames[:6], [FramePrompt(0, 1, box=Box(8, 16, 24, 32))], start_frame=0, cancel=token)
    next(gen)
    token.cancel()
    with pytest.raises(CancelledError):
        next(gen)


@pytest.mark.parametrize(
    "frames_, prompts, message",
    [
        ([], [FramePrompt(0, 1, box=Box(1, 1, 5, 5))], "empty"),
        ([np.zeros((16, 16, 3), np.uint8)] * 2, [], "at least one prompt"),
        ([np.zeros((16, 16, 3), np.uint8)] * 2, [FramePrompt(3, 1, box=Box(1, 1, 5, 5))], "outside"),
        ([np.zeros((16, 16, 3), np.uint8)] * 2, [FramePrompt(0, 1, box=Box(1, 1, 30, 5))], "outside the image"),
        ([np.zeros((16, 16, 3), np.uint8)] * 2, [FramePrompt(0, 1, mask=np.ones((8, 8), bool))], "shape"),
    ],
)
def test_bad_input(engine, frames_, prompts, message):
    with pytest.raises(InvalidInputError, match=message):
        list(track_frames(engine.model, frames_, prompts, start_frame=0))


def test_mismatched_frame_sizes(engine):
    frames_ = [np.zeros((16, 16, 3), np.uint8), np.zeros((16, 20, 3), np.uint8)]
    with pytest.raises(InvalidInputError, match="same size"):
        list(track_frames(engine.model, frames_, [FramePrompt(0, 1, box=Box(1, 1, 5, 5))], start_frame=0))


# -- one encoding per slice: the key slice's encoder output is shared ---------------------------
class EncoderCounter:
    """Counts forward calls of the model's image encoder (a forward hook)."""

    def __init__(self, model) -> None:
        self.calls = 0
        self._handle = model.image_encoder.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output) -> None:
        self.calls += 1

    def remove(self) -> None:
        self._handle.remove()


def _fresh_volume(seed: int, n: int = 9):
    from polypsam.geometry import Volume

    frames = moving_disc_frames(n, seed=seed)
    return Volume(np.stack([f[..., 0].astype(np.int16) for f in frames]))


def test_propagation_encodes_every_slice_once(tiny_checkpoint):
    from conftest import TEST_IMAGE_SIZE, TINY_CONFIG
    from polypsam.propagation import propagate
    from polypsam.engines import engine_for

    eng = engine_for(tiny_checkpoint, TINY_CONFIG, device="cpu", image_size=TEST_IMAGE_SIZE)
    volume = _fresh_volume(seed=11)
    counter = EncoderCounter(eng.model)
    try:
        result = propagate(eng, volume, Box(10, 14, 30, 34), (0, 8), key_slice=4)
    finally:
        counter.remove()
        eng.close()
    assert result.slices == (0, 8)
    # 9 slices, 9 encodings: the key slice's 2-D encoding also serves both tracking directions
    # (before sharing it was encoded three times: 11).
    assert counter.calls == 9


def test_shared_encoding_gives_the_same_results(tiny_checkpoint):
    from conftest import TEST_IMAGE_SIZE, TINY_CONFIG
    from polypsam.propagation import propagate
    from polypsam.engines import engine_for
    from polypsam.sam2_adapter.video import BackboneCache

    volume = _fresh_volume(seed=12)
    refinement = [FramePrompt(frame=7, obj_id=1, box=Box(12, 14, 34, 36))]
    results = []
    for share in (True, False):
        eng = engine_for(tiny_checkpoint, TINY_CONFIG, device="cpu", image_size=TEST_IMAGE_SIZE)
        if not share:
            eng._backbones = BackboneCache(max_items=0)
        counter = EncoderCounter(eng.model)
        try:
            results.append((propagate(eng, volume, Box(10, 14, 30, 34), (0, 8), key_slice=3,
                                      refinements=refinement), counter.calls, eng._backbones.hits))
        finally:
            counter.remove()
            eng.close()
    (shared, n_shared, hits), (plain, n_plain, no_hits) = results
    np.testing.assert_array_equal(shared.labelmap.array, plain.labelmap.array)
    assert shared.slice_scores == plain.slice_scores
    assert hits > 0 and no_hits == 0
    assert n_shared == 9 and n_plain > n_shared


def test_sam2_progress_bar_is_silenced_only_on_the_tracking_thread(engine, frames, capfd):
    import threading

    import sam2.sam2_video_predictor as svp
    from tqdm import tqdm

    from polypsam.sam2_adapter.video import _quiet_sam2_progress

    out = list(track_frames(engine.model, frames[:4], [FramePrompt(0, 1, box=Box(8, 16, 24, 32))],
                            start_frame=0))
    assert len(out) == 4
    assert "propagate in video" not in capfd.readouterr().err
    other = {}
    with _quiet_sam2_progress():
        items = [1, 2]
        assert svp.tqdm(items) is items  # silenced here
        worker = threading.Thread(target=lambda: other.update(bar=svp.tqdm(items, disable=True)))
        worker.start()
        worker.join()
    assert isinstance(other["bar"], tqdm), "another thread still gets sam2's real bar"
    assert isinstance(svp.tqdm(items, disable=True), tqdm), "and so does this one afterwards"
