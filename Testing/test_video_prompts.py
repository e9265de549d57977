"""Clicks as tracking prompts: PolypSAM's streaming session equals Meta's SAM2VideoPredictor.

Meta's predictor reads a JPEG folder (``init_state``); PolypSAM reads frames from memory. The
frames are written as JPEGs at the model's input size (so Meta's PIL resize is a no-op) and the
decoded JPEGs are what PolypSAM gets, so both see the same pixels.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TEST_IMAGE_SIZE
from polypsam.engine import FramePrompt
from polypsam.errors import InvalidInputError
from polypsam.geometry import Box
from polypsam.sam2_adapter.video import VideoSession

N = 4


@pytest.fixture(scope="module")
def jpeg_frames(tmp_path_factory):
    folder = tmp_path_factory.mktemp("jpeg")
    s = TEST_IMAGE_SIZE
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:s, :s]
    frames = []
    for t in range(N):
        img = rng.integers(30, 80, size=(s, s, 3)).astype(np.uint8)
        img[(yy - 120 - 3 * t) ** 2 + (xx - 90 - 4 * t) ** 2 < 900] = (210, 120, 100)
        img[(yy - 60) ** 2 + (xx - 190 + 2 * t) ** 2 < 400] = (90, 200, 90)
        Image.fromarray(img).save(folder / f"{t}.jpg", quality=95)
        frames.append(np.asarray(Image.open(folder / f"{t}.jpg").convert("RGB")))
    return folder, frames


def _meta(model, folder, prompts, start, reverse):
    with torch.inference_mode():
        state = model.init_state(str(folder))
        for p in prompts:
            if p.mask is not None:
                model.add_new_mask(state, p.frame, p.obj_id, p.mask)
            if p.has_clicks:
                model.add_new_points_or_box(
                    state, p.frame, p.obj_id,
                    points=np.array(p.points, np.float32) if p.points else None,
                    labels=np.array(p.labels, np.int32) if p.points else None,
                    box=None if p.box is None else p.box.as_xyxy(),
                )
        out = {}
        for frame, obj_ids, logits in model.propagate_in_video(state, start_frame_idx=start, reverse=reverse):
            out[frame] = {int(o): (logits[i, 0] > 0).cpu().numpy() for i, o in enumerate(obj_ids)}
    return out


def _disc(cy, cx, r):
    s = TEST_IMAGE_SIZE
    yy, xx = np.mgrid[:s, :s]
    return (yy - cy) ** 2 + (xx - cx) ** 2 < r * r


CASES = {
    "clicks on the start frame": ([FramePrompt(1, 1, points=[(94, 123)], labels=[1])], 1, False),
    "clicks on two frames, two objects": ([
        FramePrompt(1, 1, points=[(94, 123), (200, 200)], labels=[1, 0]),
        FramePrompt(3, 1, points=[(103, 130)], labels=[1]),
        FramePrompt(1, 2, box=Box(150, 30, 220, 90), points=[(188, 60)], labels=[1]),
    ], 1, False),
    "mask corrected by clicks, backward": ([
        FramePrompt(3, 1, mask=_disc(129, 103, 28), points=[(30, 30)], labels=[0]),
        FramePrompt(1, 1, points=[(94, 123)], labels=[1]),
    ], 3, True),
}


@pytest.mark.parametrize("name", list(CASES))
def test_clicks_condition_tracking_as_in_meta_video_predictor(engine, jpeg_frames, name):
    prompts, start, reverse = CASES[name]
    folder, frames = jpeg_frames
    theirs = _meta(engine.model, folder, prompts, start, reverse)
    session = VideoSession(engine.model, frames, prompts, trim=False)
    ours = {fm.frame: fm.masks for fm in session.run(start_frame=start, reverse=reverse)}
    assert sorted(ours) == sorted(theirs)
    for frame in theirs:
        assert sorted(ours[frame]) == sorted(theirs[frame])
        for obj in theirs[frame]:
            np.testing.assert_array_equal(ours[frame][obj], theirs[frame][obj], err_msg=f"frame {frame} object {obj}")
    clicked = {p.frame for p in prompts}
    for obj_dict in session.state["output_dict_per_obj"].values():
        assert set(obj_dict["cond_frame_outputs"]) <= clicked  # every clicked frame conditions
    assert set().union(*(d["cond_frame_outputs"] for d in session.state["output_dict_per_obj"].values())) == clicked


def test_bad_click_prompts_on_frames(engine, jpeg_frames):
    _, frames = jpeg_frames
    s = TEST_IMAGE_SIZE
    with pytest.raises(InvalidInputError, match="outside the sequence's frames 0..3"):
        VideoSession(engine.model, frames, [FramePrompt(4, 1, points=[(5, 5)], labels=[1])])
    with pytest.raises(InvalidInputError, match=rf"object 1 on frame 2: point \({s}, 5\) lies outside"):
        VideoSession(engine.model, frames, [FramePrompt(2, 1, points=[(s, 5)], labels=[1])])
    with pytest.raises(InvalidInputError, match=r"mask prompt has shape \(4, 4\)"):
        VideoSession(engine.model, frames, [FramePrompt(2, 1, mask=np.ones((4, 4), bool))])
    # an empty mask is a prompt too: the object is absent on that frame
    VideoSession(engine.model, frames, [FramePrompt(2, 1, mask=np.zeros((s, s), bool))])


def test_click_repropagation_tracks_only_its_side_and_equals_a_full_run(engine):
    """Real SAM2: a click above the key slice re-tracks only forward; same labelmap as a full run."""
    from polypsam.engine import Prompt
    from polypsam.geometry import Volume
    from polypsam.propagation import propagate
    from test_video import moving_disc_frames

    volume = Volume(np.stack([f[..., 0].astype(np.int16) for f in moving_disc_frames(7, seed=13)]))
    key = Prompt(points=[(19, 26)], labels=[1])
    first = propagate(engine, volume, key, (0, 6), key_slice=3)
    assert first.tracked == {"backward": 3, "forward": 3}
    click = [FramePrompt(5, 1, points=[(21, 25), (50, 10)], labels=[1, 0])]
    again = propagate(engine, volume, key, (0, 6), key_slice=3, refinements=click, previous=first)
    assert again.tracked == {"forward": 3}
    full = propagate(engine, volume, key, (0, 6), key_slice=3, refinements=click)
    np.testing.assert_array_equal(again.labelmap.array, full.labelmap.array)
    np.testing.assert_array_equal(again.labelmap.array[:4], first.labelmap.array[:4])
    assert again.slice_scores == full.slice_scores
    assert again.conditioning_slices == (3, 5)
