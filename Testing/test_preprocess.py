"""Intensity preprocessing: CT windows, percentile scaling, RGB passthrough."""

from __future__ import annotations

import numpy as np
import pytest

from polypsam.errors import InvalidInputError
from polypsam.preprocess import CT_WINDOWS, Percentile, Window, parse_intensity, to_model_rgb


def test_window_maps_level_minus_half_width_to_zero_and_plus_to_one():
    hu = np.array([[-1000, -160, 40, 240, 3000]] * 2, dtype=np.int16)
    out = to_model_rgb(hu, Window(40, 400))
    np.testing.assert_allclose(out[0, :, 0], [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-6)
    assert out.shape == (2, 5, 3) and out.dtype == np.float32
    assert np.array_equal(out[..., 0], out[..., 2])


def test_presets_cover_common_ct_windows():
    assert set(CT_WINDOWS) >= {"abdomen", "lung", "bone", "brain", "soft_tissue"}
    assert parse_intensity("lung") == CT_WINDOWS["lung"]
    assert parse_intensity("soft-tissue") == CT_WINDOWS["soft_tissue"]
    assert parse_intensity("50,350") == Window(50, 350)
    assert parse_intensity("custom:-600,1500") == Window(-600, 1500)
    assert parse_intensity("percentile") == Percentile()
    assert parse_intensity("percentile:1,99") == Percentile(1, 99)


@pytest.mark.parametrize("text", ["liver-ish", "1,2,3", "percentile:5"])
def test_unknown_intensity_setting(text):
    with pytest.raises(InvalidInputError, match="intensity setting"):
        parse_intensity(text)


def test_bad_window_and_percentile():
    with pytest.raises(InvalidInputError, match="positive width"):
        Window(40, 0)
    with pytest.raises(InvalidInputError, match="percentiles"):
        Percentile(90, 10)


def test_percentile_scaling_is_robust_to_outliers():
    rng = np.random.default_rng(0)
    mr = rng.normal(500, 50, size=(64, 64)).astype(np.float32)
    mr[0, 0] = 1e6
    out = to_model_rgb(mr)
    assert 0.4 < float(np.median(out)) < 0.6
    assert out.max() == 1.0 and out.min() == 0.0


def test_constant_image_does_not_divide_by_zero():
    out = to_model_rgb(np.full((8, 8), 7, dtype=np.uint16))
    assert np.all(out == 0)


def test_rgb_passthrough_keeps_channel_order():
    rgb = np.zeros((4, 5, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 255, 51, 0
    out = to_model_rgb(rgb)
    np.testing.assert_allclose(out[0, 0], [1.0, 0.2, 0.0], atol=1e-6)


def test_volume_voxels_are_never_modified():
    hu = np.arange(-500, 500, dtype=np.int16).reshape(20, 50)
    before = hu.copy()
    to_model_rgb(hu, Window(40, 400))
    np.testing.assert_array_equal(hu, before)
