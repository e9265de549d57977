"""The prompt protocol (polypsam.engine.Prompt, FramePrompt, MaskResult): checks and plain types."""

from __future__ import annotations

import json

import numpy as np
import pytest

from polypsam.engine import FramePrompt, MaskResult, Prompt, as_prompts
from polypsam.errors import InvalidInputError
from polypsam.geometry import Box


def test_boxes_numbers_and_prompts_coerce_to_prompts():
    out = as_prompts([Box(1, 2, 10, 12), [0, 0, 5, 5], Prompt(points=[(3, 4)], labels=[1])], 20, 16)
    assert [p.box for p in out[:2]] == [Box(1, 2, 10, 12), Box(0, 0, 5, 5)]
    assert out[2].points == ((3.0, 4.0),) and out[2].labels == (1,)
    assert as_prompts((1, 2, 3, 4))[0].box == Box(1, 2, 3, 4)
    assert len(as_prompts(np.array([[1, 2, 3, 4], [2, 3, 4, 5]]))) == 2


@pytest.mark.parametrize("make,message", [
    (lambda: Prompt(points=[(1, 1)], labels=[0]), "exclude points alone"),
    (lambda: Prompt(), "empty"),
    (lambda: Prompt(points=[(1, 1), (2, 2)], labels=[1]), "2 points but 1 point labels"),
    (lambda: Prompt(points=[(1, 1)], labels=[2]), "must be 1 .include. or 0"),
    (lambda: Prompt(points=[(1, 1, 1)], labels=[1]), "pairs of numbers"),
    (lambda: Prompt(points=[(float("nan"), 1)], labels=[1]), "non-finite"),
    (lambda: Prompt(mask=np.ones((2, 2, 2), bool)), "must be 2-D"),
    (lambda: FramePrompt(3, 1, points=[(1, 1)], labels=[0]), "object 1 on frame 3: exclude points"),
    (lambda: FramePrompt(3, 1), "needs a box, points or a mask"),
])
def test_bad_prompts_name_the_problem(make, message):
    with pytest.raises(InvalidInputError, match=message):
        make()


@pytest.mark.parametrize("prompt,message", [
    (Prompt(points=[(20, 3)], labels=[1]), r"point \(20, 3\) lies outside the image"),
    (Prompt(box=Box(0, 0, 5, 5), points=[(-1, 3)], labels=[0]), "outside the image"),
    (Prompt(mask=np.ones((4, 4), bool)), r"mask prompt has shape \(4, 4\); the image is 16 x 20"),
    (Prompt(mask=np.zeros((16, 20), bool)), "mask prompt is empty"),
    (Prompt(box=Box(0, 0, 25, 5)), "outside the image"),
])
def test_prompts_are_checked_against_the_image(prompt, message):
    with pytest.raises(InvalidInputError, match=message):
        as_prompts([prompt], 20, 16)


def test_exclude_points_with_a_box_or_mask_are_fine():
    as_prompts([Prompt(box=Box(0, 0, 5, 5), points=[(9, 9)], labels=[0])], 20, 16)
    mask = np.zeros((16, 20), bool)
    mask[2:5, 2:5] = True
    as_prompts([Prompt(mask=mask, points=[(9, 9)], labels=[0])], 20, 16)


def test_plain_dicts_round_trip_through_json_with_masks_apart():
    mask = np.zeros((16, 20), bool)
    mask[2:5, 2:5] = True
    p = Prompt(box=Box(1, 2, 10, 12), points=[(3, 4), (5, 6)], labels=[1, 0], mask=mask)
    data = json.loads(json.dumps(p.to_dict()))
    assert data == {"box": [1.0, 2.0, 10.0, 12.0], "points": [[3.0, 4.0], [5.0, 6.0]],
                    "labels": [1, 0], "has_mask": True}
    back = Prompt.from_dict(data, mask)
    assert (back.box, back.points, back.labels) == (p.box, p.points, p.labels)
    np.testing.assert_array_equal(back.mask, mask)
    with pytest.raises(InvalidInputError, match="no mask was sent"):
        Prompt.from_dict(data)
    with pytest.raises(InvalidInputError, match="unknown fields"):
        Prompt.from_dict({**data, "extra": 1}, mask)

    fp = FramePrompt(7, 2, points=[(3, 4)], labels=[1])
    fdata = json.loads(json.dumps(fp.to_dict()))
    assert fdata["frame"] == 7 and fdata["obj_id"] == 2 and fdata["has_mask"] is False
    back_fp = FramePrompt.from_dict(fdata)
    assert (back_fp.frame, back_fp.obj_id, back_fp.points, back_fp.labels) == (7, 2, ((3.0, 4.0),), (1,))

    cands = (mask, ~mask, mask)
    res = MaskResult(mask=cands[1], score=0.8, box=None, prompt=p, candidates=cands,
                     candidate_scores=(0.1, 0.8, 0.3))
    assert res.best == 1
    rdata = json.loads(json.dumps(res.to_dict()))
    assert rdata["candidate_scores"] == [0.1, 0.8, 0.3] and rdata["shape"] == [16, 20]
    back_res = MaskResult.from_dict(rdata, cands[1], cands, prompt_mask=mask)
    assert back_res.best == 1 and back_res.score == 0.8 and back_res.prompt.labels == (1, 0)


def test_frame_prompts_accept_an_empty_mask_but_check_its_size():
    empty = FramePrompt(2, 1, mask=np.zeros((16, 20), bool))
    assert empty.validate(20, 16) is empty  # "absent on this frame" is a prompt for a tracker
    with pytest.raises(InvalidInputError, match=r"shape \(16, 20\); the image is 10 x 20"):
        empty.validate(20, 10)
    both = FramePrompt(2, 1, box=Box(1, 1, 5, 5), mask=np.ones((16, 20), bool), points=[(3, 3)], labels=[0])
    assert both.has_clicks and both.prompt.box == Box(1, 1, 5, 5)
