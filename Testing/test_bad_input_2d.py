"""Bad input to 2-D segmentation and to model loading gives a clear error naming the problem."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import TINY_CONFIG, synthetic_rgb
from polypsam.checkpoints import resolve_checkpoint
from polypsam.errors import CheckpointError, DeviceError, InvalidInputError
from polypsam.geometry import Box
from polypsam.engines import engine_for
from polypsam.sam2_adapter.model import build_model, select_device


@pytest.mark.parametrize(
    "box,message",
    [
        (Box(-5, 10, 50, 60), "outside the image"),
        (Box(10, 10, 200, 60), "outside the image"),
        (Box(60, 10, 20, 50), "inverted"),
        (Box(10, 50, 60, 20), "inverted"),
        (Box(10, 10, 10, 60), "zero width or height"),
        (Box(10, float("nan"), 60, 60), "non-finite"),
    ],
)
def test_bad_boxes(engine, box, message):
    with pytest.raises(InvalidInputError, match=message):
        engine.segment_2d(synthetic_rgb(100, 160), [box])


def test_box_needs_four_numbers():
    with pytest.raises(InvalidInputError, match="4 numbers"):
        Box.from_sequence([1, 2, 3])


def test_no_boxes(engine):
    with pytest.raises(InvalidInputError, match="at least one box"):
        engine.segment_2d(synthetic_rgb(), [])


def test_nan_image(engine):
    image = np.zeros((50, 60), dtype=np.float32)
    image[3, 4] = np.nan
    with pytest.raises(InvalidInputError, match="NaN"):
        engine.segment_2d(image, [Box(1, 1, 20, 20)])


@pytest.mark.parametrize("shape", [(50, 60, 4), (50, 60, 2), (2, 50, 60, 3), (60,)])
def test_wrong_channels_or_dimensions(engine, shape):
    with pytest.raises(InvalidInputError, match="channels|2-D image"):
        engine.segment_2d(np.zeros(shape, dtype=np.uint8), [Box(1, 1, 20, 20)])


def test_float_rgb_is_refused(engine):
    with pytest.raises(InvalidInputError, match="uint8"):
        engine.segment_2d(np.zeros((50, 60, 3), dtype=np.float32), [Box(1, 1, 20, 20)])


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        engine_for(tmp_path / "absent.pt", TINY_CONFIG, device="cpu")


def test_corrupt_checkpoint(tmp_path):
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"this is not a zip archive" * 100)
    with pytest.raises(CheckpointError, match="could not be read"):
        engine_for(bad, TINY_CONFIG, device="cpu")


def test_truncated_checkpoint(tmp_path, tiny_checkpoint):
    cut = tmp_path / "truncated.pt"
    cut.write_bytes(tiny_checkpoint.read_bytes()[: 1 << 20])
    with pytest.raises(CheckpointError, match="could not be read"):
        engine_for(cut, TINY_CONFIG, device="cpu")


def test_checkpoint_without_model_key(tmp_path):
    import torch

    odd = tmp_path / "odd.pt"
    torch.save({"weights": {}}, odd)
    with pytest.raises(CheckpointError, match="official SAM2 format"):
        engine_for(odd, TINY_CONFIG, device="cpu")


def test_config_checkpoint_mismatch(tiny_checkpoint):
    # A tiny checkpoint loaded into the small config: same keys for most layers, other shapes.
    with pytest.raises(CheckpointError, match="does not match config"):
        engine_for(tiny_checkpoint, "configs/sam2.1/sam2.1_hiera_s.yaml", device="cpu")


def test_unknown_config():
    with pytest.raises(InvalidInputError, match="config .* not found"):
        build_model("configs/sam2.1/no_such_model.yaml", None, "cpu")


@pytest.mark.parametrize("device", ["tpu", "gpu0", "banana"])
def test_unknown_device(device):
    with pytest.raises(DeviceError, match="device"):
        select_device(device)


def test_unavailable_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available on this machine")
    with pytest.raises(DeviceError, match="CUDA is not available"):
        select_device("cuda")


def test_auto_device_is_usable():
    assert select_device("auto").type in {"cpu", "cuda", "mps"}


def test_bad_image_size(tiny_checkpoint):
    with pytest.raises(InvalidInputError, match="image size"):
        engine_for(tiny_checkpoint, TINY_CONFIG, device="cpu", image_size=300)


def test_custom_checkpoint_resolves_with_sha256(tiny_checkpoint):
    import hashlib

    resolved = resolve_checkpoint(str(tiny_checkpoint), config=TINY_CONFIG)
    assert resolved.sha256 == hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest()
    assert resolved.config == TINY_CONFIG
