"""PolypSAM's torchvision-free 2-D path gives what Meta's ``SAM2ImagePredictor`` gives.

``polypsam.sam2_image`` calls SAM2's modules directly instead of going through
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
