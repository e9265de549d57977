"""Contract tests: what SAM2 receives from PolypSAM, pinned independently of SAM2's own code.

With random weights, masks are meaningless; these tests are the guard against swapped x/y,
off-by-one boxes, wrong channel order, wrong normalisation and masks mapped back wrongly.
Inputs are deliberately non-square so that a transposition cannot go unnoticed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import TEST_IMAGE_SIZE, synthetic_rgb
from polypsam.geometry import Box
from polypsam.preprocess import Window

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


class Recorder:
    """Records the inputs/outputs of SAM2 modules through forward hooks (no behaviour change)."""

    def __init__(self, model):
        self.images: list[torch.Tensor] = []
        self.prompts: list[dict] = []
        self.decoder_outputs: list[tuple] = []
        self._handles = [
            model.image_encoder.register_forward_pre_hook(self._on_image),
            model.sam_prompt_encoder.register_forward_pre_hook(self._on_prompt, with_kwargs=True),
            model.sam_mask_decoder.register_forward_hook(self._on_decoder),
        ]

    def _on_image(self, module, args):
        self.images.append(args[0].detach().clone())

    def _on_prompt(self, module, args, kwargs):
        self.prompts.append({k: (v[0].clone(), v[1].clone()) if k == "points" and v is not None else v
                             for k, v in kwargs.items()})

    def _on_decoder(self, module, args, output):
        self.decoder_outputs.append(tuple(o.detach().clone() for o in output[:2]))

    def close(self):
        for handle in self._handles:
            handle.remove()


@pytest.fixture
def recorder(engine):
    rec = Recorder(engine.model)
    yield rec
    rec.close()


def fresh_image(height, width, seed):
    """A random RGB image never seen before by the engine's embedding cache."""
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def expected_model_input(rgb01: np.ndarray, size: int) -> torch.Tensor:
    """Independent computation: HWC float [0,1] -> CHW, antialiased bilinear resize, ImageNet norm."""
    chw = torch.from_numpy(rgb01).permute(2, 0, 1)[None].float()
    resized = F.interpolate(chw, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return (resized[0] - IMAGENET_MEAN) / IMAGENET_STD


def test_image_is_resized_normalised_and_rgb_ordered(engine, recorder):
    height, width = 90, 150
    rgb = fresh_image(height, width, seed=1)
    rgb[:, :, 0] = 255  # pure red channel: R must arrive first, normalised with R's mean/std
    engine.segment_2d(rgb, [Box(10, 10, 60, 50)])
    (received,) = recorder.images
    assert received.shape == (1, 3, TEST_IMAGE_SIZE, TEST_IMAGE_SIZE)
    expected = expected_model_input(rgb.astype(np.float32) / 255.0, TEST_IMAGE_SIZE)
    torch.testing.assert_close(received[0], expected, atol=2e-3, rtol=0)
    red = (1.0 - 0.485) / 0.229
    torch.testing.assert_close(received[0, 0], torch.full_like(received[0, 0], red), atol=1e-4, rtol=0)


def test_scalar_ct_slice_is_windowed_and_replicated(engine, recorder):
    rng = np.random.default_rng(2)
    hu = rng.integers(-1000, 1500, size=(70, 110)).astype(np.int16)
    window = Window(40, 400)
    engine.segment_2d(hu, [Box(5, 5, 50, 40)], intensity=window)
    scaled = np.clip((hu.astype(np.float32) - (40 - 200)) / 400, 0, 1)
    expected = expected_model_input(np.repeat(scaled[:, :, None], 3, axis=2), TEST_IMAGE_SIZE)
    torch.testing.assert_close(recorder.images[0][0], expected, atol=2e-3, rtol=0)


@pytest.mark.parametrize("height,width", [(100, 160), (180, 90)])
def test_box_reaches_prompt_encoder_in_model_coordinates(engine, recorder, height, width):
    box = Box(12, 30, 71, 55)
    engine.segment_2d(fresh_image(height, width, seed=height), [box])
    coords, labels = recorder.prompts[-1]["points"]
    sx, sy = TEST_IMAGE_SIZE / width, TEST_IMAGE_SIZE / height
    expected = torch.tensor([[[12 * sx, 30 * sy], [71 * sx, 55 * sy]]])
    torch.testing.assert_close(coords.float(), expected, atol=1e-4, rtol=0)
    assert labels.tolist() == [[2, 3]]  # SAM2's box-corner labels: top-left, bottom-right


def test_mask_is_decoder_logits_resized_to_input(engine, recorder):
    height, width = 96, 144
    (result,) = engine.segment_2d(fresh_image(height, width, seed=7), [Box(20, 10, 100, 80)])
    low_res, iou = recorder.decoder_outputs[-1]
    assert low_res.shape[-2:] == (TEST_IMAGE_SIZE // 4, TEST_IMAGE_SIZE // 4)
    expected = F.interpolate(low_res.float(), (height, width), mode="bilinear", align_corners=False)
    expected_mask = (expected[0, 0] > 0).numpy()
    assert result.mask.shape == (height, width) and result.mask.dtype == bool
    np.testing.assert_array_equal(result.mask, expected_mask)
    assert result.score == pytest.approx(float(iou.flatten()[0]), abs=1e-6)


def test_agrees_with_sam2_image_predictor_transforms(engine):
    """Our independent expectation matches SAM2's own SAM2Transforms on a non-square image."""
    pytest.importorskip("torchvision", reason="sam2's SAM2Transforms needs torchvision")
    from sam2.utils.transforms import SAM2Transforms

    rgb01 = fresh_image(77, 131, seed=3).astype(np.float32) / 255.0
    theirs = SAM2Transforms(TEST_IMAGE_SIZE, mask_threshold=0.0)(rgb01)
    torch.testing.assert_close(theirs, expected_model_input(rgb01, TEST_IMAGE_SIZE), atol=2e-3, rtol=0)
    box = torch.tensor([[12.0, 30.0, 71.0, 55.0]])
    scaled = SAM2Transforms(TEST_IMAGE_SIZE, 0.0).transform_boxes(box, normalize=True, orig_hw=(77, 131))
    torch.testing.assert_close(
        scaled, torch.tensor([[[12 * 256 / 131, 30 * 256 / 77], [71 * 256 / 131, 55 * 256 / 77]]])
    )


def test_new_box_on_encoded_image_runs_only_the_decoder(engine, recorder):
    rgb = synthetic_rgb(100, 140, seed=11)
    before = engine.encoder_runs
    first = engine.segment_2d(rgb, [Box(20, 20, 80, 70)])
    second = engine.segment_2d(rgb.copy(), [Box(60, 30, 130, 90)])
    assert engine.encoder_runs == before + 1
    assert len(recorder.images) == 1 and len(recorder.decoder_outputs) == 2
    assert first[0].mask.shape == second[0].mask.shape == (100, 140)
    engine.segment_2d(synthetic_rgb(100, 140, seed=12), [Box(20, 20, 80, 70)])
    assert engine.encoder_runs == before + 2


def test_several_boxes_give_one_mask_each_in_order(engine):
    rgb = synthetic_rgb(120, 160, seed=5)
    boxes = [Box(10, 10, 60, 60), Box(80, 40, 150, 110), Box(30, 70, 70, 115)]
    results = engine.segment_2d(rgb, boxes)
    assert [r.box for r in results] == boxes
    assert all(r.mask.shape == (120, 160) and 0.0 <= r.score <= 1.5 for r in results)
