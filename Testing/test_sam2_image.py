"""PolypSAM's torchvision-free 2-D path gives what Meta's ``SAM2ImagePredictor`` gives.

``polypsam.sam2_adapter.image`` calls SAM2's modules directly instead of going through
``SAM2ImagePredictor`` (which imports torchvision for its input transforms). These tests run
Meta's predictor on the same model, images and boxes and compare embeddings, masks and scores;
they need torchvision and are skipped where it is not installed (a CPU-only install).
A subprocess check shows that 2-D segmentation and propagation never import torchvision.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from conftest import TEST_IMAGE_SIZE, TINY_CONFIG, synthetic_rgb
from polypsam.geometry import Box
from polypsam.preprocess import Window, to_model_rgb


@pytest.fixture(scope="module")
def meta_predictor(engine):
    pytest.importorskip("torchvision", reason="Meta's SAM2ImagePredictor needs torchvision")
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    with warnings.catch_warnings():  # torch>=2.10 deprecates the jit.script sam2's transforms use
        warnings.simplefilter("ignore")
        predictor = SAM2ImagePredictor(engine.model)
    s = TEST_IMAGE_SIZE  # the predictor hard-codes the feature sizes of image size 1024
    predictor._bb_feat_sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]
    return predictor


def _ct_slice(height: int, width: int) -> np.ndarray:
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[:height, :width]
    hu = rng.normal(-50, 30, size=(height, width))
    hu[(yy - height / 2) ** 2 + (xx - width / 3) ** 2 < (height / 5) ** 2] = 60.0
    return hu.astype(np.int16)


CASES = [
    ("rgb non-square", synthetic_rgb(96, 150, seed=21), None, [Box(20, 15, 90, 70), Box(100, 40, 149, 95)]),
    ("rgb taller than wide", synthetic_rgb(130, 70, seed=22), None, [Box(5, 30, 60, 110)]),
    ("ct slice", _ct_slice(120, 100), Window(40, 400), [Box(10, 30, 60, 90), Box(0, 0, 99, 119)]),
]


@pytest.mark.parametrize("name,image,intensity,boxes", CASES, ids=[c[0] for c in CASES])
def test_masks_and_scores_equal_meta_image_predictor(engine, meta_predictor, name, image, intensity, boxes):
    ours = engine.segment_2d(image, boxes, intensity=intensity)
    rgb = to_model_rgb(image, intensity)
    with torch.inference_mode():
        meta_predictor.set_image(rgb)
        for box, result in zip(boxes, ours):
            masks, scores, _ = meta_predictor.predict(box=box.as_xyxy(), multimask_output=False)
            assert result.mask.shape == image.shape[:2]
            np.testing.assert_array_equal(result.mask, masks[0] > 0)
            assert result.score == pytest.approx(float(scores[0]), abs=1e-5)


def test_embedding_equals_meta_image_predictor(engine, meta_predictor):
    image = synthetic_rgb(88, 140, seed=23)
    with torch.inference_mode():
        engine.segment_2d(image, [Box(10, 10, 60, 60)])
        ours = engine._cache[next(reversed(engine._cache))]
        meta_predictor.set_image(to_model_rgb(image))
        theirs = meta_predictor._features
    torch.testing.assert_close(ours.image_embed, theirs["image_embed"], atol=1e-5, rtol=0)
    assert len(ours.high_res_feats) == len(theirs["high_res_feats"]) == 2
    for a, b in zip(ours.high_res_feats, theirs["high_res_feats"]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_segmentation_and_propagation_do_not_import_torchvision(tiny_checkpoint):
    """The whole library path runs in a process where torchvision is never imported."""
    script = f"""
import sys
import numpy as np
from polypsam.engines import engine_for
from polypsam.propagation import propagate
from polypsam.geometry import Box
from polypsam.preprocess import Window
engine = engine_for({str(tiny_checkpoint)!r}, {TINY_CONFIG!r}, device="cpu", image_size=256)
rng = np.random.default_rng(0)
volume = rng.normal(0, 50, size=(5, 64, 80)).astype(np.int16)
(res,) = engine.segment_2d(volume[2], [Box(10, 10, 50, 40)], intensity=Window(40, 400))
out = propagate(engine, volume, Box(10, 10, 50, 40), (0, 4), intensity=Window(40, 400))
assert out.labelmap.array.shape == volume.shape
print("torchvision" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "False"


# -- clicks, masks and candidates -----------------------------------------------------------------
def _disc_mask(height: int, width: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:height, :width]
    return (yy - cy) ** 2 + (xx - cx) ** 2 < r**2


def _prompt_cases():
    from polypsam.engine import Prompt

    rgb = synthetic_rgb(96, 150, seed=31)
    ct = _ct_slice(120, 100)
    rgb_mask = _disc_mask(96, 150, 48, 60, 18)
    ct_mask = _disc_mask(120, 100, 60, 33, 20)
    return [
        ("rgb one click", rgb, None, Prompt(points=[(60, 48)], labels=[1])),
        ("rgb clicks in and out", rgb, None, Prompt(points=[(60, 48), (120, 20), (70, 50)], labels=[1, 0, 1])),
        ("rgb box and clicks", rgb, None, Prompt(box=Box(20, 15, 90, 70), points=[(60, 48), (25, 20)], labels=[1, 0])),
        ("rgb mask only", rgb, None, Prompt(mask=rgb_mask)),
        ("rgb mask and exclude click", rgb, None, Prompt(mask=rgb_mask, points=[(60, 48)], labels=[0])),
        ("ct box clicks and mask", ct, Window(40, 400),
         Prompt(box=Box(10, 30, 60, 90), points=[(33, 60), (90, 110)], labels=[1, 0], mask=ct_mask)),
        ("ct one click", ct, Window(40, 400), Prompt(points=[(33.5, 60.25)], labels=[1])),
    ]


@pytest.mark.parametrize("multimask", [False, True], ids=["single", "multimask"])
@pytest.mark.parametrize("case", _prompt_cases(), ids=lambda c: c[0])
def test_prompts_equal_meta_image_predictor(engine, meta_predictor, case, multimask):
    from polypsam.sam2_adapter.image import mask_to_logits

    _, image, intensity, prompt = case
    (ours,) = engine.segment_2d(image, [prompt], intensity=intensity, multimask=multimask)
    kwargs = {}
    if prompt.points:
        kwargs.update(point_coords=np.array(prompt.points, np.float32), point_labels=np.array(prompt.labels))
    if prompt.box is not None:
        kwargs["box"] = prompt.box.as_xyxy()
    if prompt.mask is not None:
        kwargs["mask_input"] = mask_to_logits(engine.model, prompt.mask)[0].numpy()
    with torch.inference_mode():
        meta_predictor.set_image(to_model_rgb(image, intensity))
        masks, scores, _ = meta_predictor.predict(multimask_output=multimask, **kwargs)
    if multimask:
        assert len(ours.candidates) == 3 and len(ours.candidate_scores) == 3
        for mine, theirs in zip(ours.candidates, masks):
            np.testing.assert_array_equal(mine, theirs > 0)
        np.testing.assert_allclose(ours.candidate_scores, scores, atol=1e-5, rtol=0)
        best = int(np.argmax(scores))
        assert ours.best == best
        np.testing.assert_array_equal(ours.mask, masks[best] > 0)
    else:
        assert ours.candidates == () and ours.candidate_scores == ()
        np.testing.assert_array_equal(ours.mask, masks[0] > 0)
    assert ours.mask.shape == image.shape[:2]
    assert ours.score == pytest.approx(float(scores.max() if multimask else scores[0]), abs=1e-5)
    assert ours.prompt is prompt and ours.box == prompt.box


def test_mask_prompt_logits_are_those_of_sam2_video_add_new_mask(engine):
    """The binary → logits conversion is the one SAM2's video predictor applies to a mask."""
    from polypsam.sam2_adapter.image import mask_to_logits
    from polypsam.sam2_adapter.video import LazyFrames, new_inference_state

    frames = [synthetic_rgb(96, 150, seed=40)]
    mask = _disc_mask(96, 150, 40, 70, 22)
    state = new_inference_state(engine.model, LazyFrames(frames, engine.model.image_size))
    with torch.inference_mode():
        engine.model.add_new_mask(state, 0, 1, mask)
        theirs = state["temp_output_dict_per_obj"][0]["cond_frame_outputs"][0]["pred_masks"]
        ours = mask_to_logits(engine.model, mask)
    assert ours.shape == theirs.shape == (1, 1, TEST_IMAGE_SIZE // 4, TEST_IMAGE_SIZE // 4)
    torch.testing.assert_close(ours, theirs.float(), atol=1e-5, rtol=0)


def test_click_on_an_encoded_image_runs_only_the_decoder(engine, monkeypatch):
    from polypsam.engine import Prompt

    image = synthetic_rgb(90, 130, seed=41)
    engine.segment_2d(image, [Box(20, 20, 80, 70)])  # the slice is encoded once
    runs = engine.encoder_runs
    calls = []
    original = engine.model.forward_image
    monkeypatch.setattr(engine.model, "forward_image", lambda *a, **k: calls.append(1) or original(*a, **k))
    for clicks in ([(50, 45)], [(50, 45), (100, 20)]):
        engine.segment_2d(image, [Prompt(points=clicks, labels=[1] * len(clicks))], multimask=True)
    engine.segment_2d(image.copy(), [Prompt(box=Box(20, 20, 80, 70), points=[(10, 10)], labels=[0])])
    assert calls == [] and engine.encoder_runs == runs
    engine.segment_2d(synthetic_rgb(90, 130, seed=42), [Prompt(points=[(50, 45)], labels=[1])])
    assert calls == [1] and engine.encoder_runs == runs + 1  # a new image is encoded


def test_bad_click_prompts_name_the_problem(engine):
    from polypsam.engine import Prompt
    from polypsam.errors import InvalidInputError

    image = synthetic_rgb(60, 80, seed=43)
    with pytest.raises(InvalidInputError, match=r"point \(80, 10\) lies outside the image"):
        engine.segment_2d(image, [Prompt(points=[(80, 10)], labels=[1])])
    with pytest.raises(InvalidInputError, match="mask prompt has shape"):
        engine.segment_2d(image, [Prompt(mask=np.ones((60, 81), bool))])
    with pytest.raises(InvalidInputError, match="mask prompt is empty"):
        engine.segment_2d(image, [Prompt(mask=np.zeros((60, 80), bool))])
    with pytest.raises(InvalidInputError, match="object 2: .*outside"):
        engine.segment_2d(image, [Box(1, 1, 9, 9), Prompt(points=[(5, 70)], labels=[1])])
