"""Volume geometry against SimpleITK's physical space, on oblique, flipped and left-handed grids."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from polypsam import io
from polypsam.errors import InvalidInputError
from polypsam.geometry import LPS_TO_RAS, Box, Volume, VolumeGeometry, box_of_mask


def rotation(z_deg: float, x_deg: float) -> np.ndarray:
    z, x = np.radians(z_deg), np.radians(x_deg)
    rz = np.array([[np.cos(z), -np.sin(z), 0], [np.sin(z), np.cos(z), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(x), -np.sin(x)], [0, np.sin(x), np.cos(x)]])
    return rz @ rx


GRIDS = {
    "identity": np.eye(3),
    "oblique": rotation(25, 12),
    "flipped": np.diag([-1.0, -1.0, 1.0]) @ rotation(10, 0),
    "left_handed": rotation(30, 0) @ np.diag([1.0, 1.0, -1.0]),
}


@pytest.mark.parametrize("name", GRIDS)
def test_ijk_to_lps_and_ras_match_simpleitk(name):
    direction = GRIDS[name]
    geometry = VolumeGeometry((-12.5, 40.0, 7.25), (0.7, 0.9, 2.5), tuple(direction.ravel()))
    image = io.volume_to_sitk(Volume(np.zeros((6, 7, 8), np.int16), geometry))
    for ijk in [(0, 0, 0), (7, 0, 0), (0, 6, 5), (3, 2, 1)]:
        lps = image.TransformIndexToPhysicalPoint(ijk)
        np.testing.assert_allclose(geometry.ijk_to_lps() @ [*ijk, 1], [*lps, 1], atol=1e-9)
        np.testing.assert_allclose(geometry.ijk_to_ras()[:3] @ [*ijk, 1], LPS_TO_RAS @ lps, atol=1e-9)
    back = VolumeGeometry.from_ijk_to_ras(geometry.ijk_to_ras())
    np.testing.assert_allclose(back.origin, geometry.origin, atol=1e-9)
    np.testing.assert_allclose(back.spacing, geometry.spacing, atol=1e-9)
    np.testing.assert_allclose(back.direction, geometry.direction, atol=1e-9)


def test_volume_round_trip_keeps_geometry(tmp_path):
    geometry = VolumeGeometry((1.0, 2.0, 3.0), (0.5, 0.5, 3.0), tuple(GRIDS["left_handed"].ravel()))
    volume = Volume(np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6), geometry)
    for suffix in (".nrrd", ".nii.gz"):
        back = io.read_volume(io.write_volume(volume, tmp_path / f"v{suffix}"))
        np.testing.assert_array_equal(back.array, volume.array)
        np.testing.assert_allclose(back.geometry.ijk_to_lps(), geometry.ijk_to_lps(), atol=1e-5)


def test_bad_geometry_and_volumes():
    with pytest.raises(InvalidInputError, match="positive"):
        VolumeGeometry(spacing=(1.0, 0.0, 1.0))
    with pytest.raises(InvalidInputError, match="3-D"):
        Volume(np.zeros((4, 5)))
    with pytest.raises(InvalidInputError, match="3-D"):
        Volume(np.zeros((2, 3, 4, 5)))
    with pytest.raises(InvalidInputError, match="differs"):
        Volume(np.zeros((2, 3, 4))).with_array(np.zeros((2, 3, 5)))


def test_read_volume_refuses_4d_and_vector_images(tmp_path):
    four_d = sitk.Image([4, 5, 3, 2], sitk.sitkInt16)
    sitk.WriteImage(four_d, str(tmp_path / "v4.nrrd"))
    with pytest.raises(InvalidInputError, match="4-D"):
        io.read_volume(tmp_path / "v4.nrrd")
    rgb = sitk.Image([4, 5, 3], sitk.sitkVectorUInt8, 3)
    sitk.WriteImage(rgb, str(tmp_path / "rgb.nrrd"))
    with pytest.raises(InvalidInputError, match="components"):
        io.read_volume(tmp_path / "rgb.nrrd")
    with pytest.raises(InvalidInputError, match="not found"):
        io.read_volume(tmp_path / "absent.nrrd")


def test_box_of_mask_is_inclusive_xy():
    mask = np.zeros((10, 20), bool)
    mask[2:5, 7:15] = True  # rows 2..4, columns 7..14
    assert box_of_mask(mask) == Box(7, 2, 14, 4)
    assert box_of_mask(np.zeros((3, 3), bool)) is None
