"""Reading and writing images, frames and volumes (PIL for PNG/JPEG, SimpleITK for volumes).

Volumes keep their physical grid: :func:`read_volume` returns ``array[k, j, i]`` with origin,
spacing and direction, and :func:`write_volume` writes them back unchanged.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .errors import InvalidInputError
from .geometry import Volume, VolumeGeometry

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
VOLUME_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd", ".dcm")


def full_suffix(path: Path) -> str:
    """``.nii.gz`` for ``x.nii.gz``, otherwise the last suffix, lower-case."""
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def is_image_file(path: Path) -> bool:
    return path.is_file() and full_suffix(path) in IMAGE_SUFFIXES


def read_image(path: str | Path) -> np.ndarray:
    """A 2-D frame: ``H x W x 3`` uint8 for colour files, ``H x W`` for grey-scale ones."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("L", "I", "I;16", "I;16B", "F", "1"):
                return np.asarray(img.convert("F") if img.mode == "1" else img)
            return np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise InvalidInputError(f"cannot read image {path}: {exc}") from exc


def write_png(array: np.ndarray, path: str | Path) -> Path:
    """Write a 2-D uint8/uint16 array or an RGB uint8 array as PNG."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if array.ndim == 2 and array.dtype not in (np.uint8, np.uint16):
        array = array.astype(np.uint16 if array.max(initial=0) > 255 else np.uint8)
    Image.fromarray(array).save(path)
    return path


def read_volume(path: str | Path) -> Volume:
    """Read a NIfTI/NRRD/MHA file, a DICOM file or a DICOM series folder as a scalar volume."""
    import SimpleITK as sitk

    path = Path(path)
    if path.is_dir():
        image = _read_dicom_series(path)
    elif path.is_file():
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            raise InvalidInputError(f"cannot read volume {path}: {_first_line(exc)}") from exc
    else:
        raise InvalidInputError(f"file not found: {path}")
    return volume_from_sitk(image, str(path))


def volume_from_sitk(image, name: str = "volume") -> Volume:
    """A :class:`Volume` from a 3-D scalar SimpleITK image (2-D images become one slice)."""
    import SimpleITK as sitk

    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InvalidInputError(
            f"{name} has {image.GetNumberOfComponentsPerPixel()} components per voxel;"
            " a scalar volume is needed"
        )
    dim = image.GetDimension()
    if dim == 2:
        image = sitk.JoinSeries(image)
    elif dim != 3:
        raise InvalidInputError(f"{name} is {dim}-D; a 3-D volume is needed")
    geometry = VolumeGeometry(image.GetOrigin(), image.GetSpacing(), image.GetDirection())
    return Volume(sitk.GetArrayFromImage(image), geometry)


def volume_to_sitk(volume: Volume):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(volume.array)
    image.SetOrigin(volume.geometry.origin)
    image.SetSpacing(volume.geometry.spacing)
    image.SetDirection(volume.geometry.direction)
    return image


def write_volume(volume: Volume, path: str | Path) -> Path:
    """Write a volume (NRRD/NIfTI/MHA by suffix) with its geometry, compressed."""
    import SimpleITK as sitk

    path = Path(path)
    if full_suffix(path) not in (".nrrd", ".nii", ".nii.gz", ".mha"):
        raise InvalidInputError(f"volume output {path} must end in .nrrd, .nii, .nii.gz or .mha")
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(volume_to_sitk(volume), str(path), True)
    return path


def _read_dicom_series(folder: Path):
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise InvalidInputError(f"no DICOM series found in folder {folder}")
    if len(series) > 1:
        raise InvalidInputError(
            f"folder {folder} holds {len(series)} DICOM series; give a folder with one series"
        )
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder), series[0]))
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise InvalidInputError(f"cannot read DICOM series in {folder}: {_first_line(exc)}") from exc


def natural_key(path: Path) -> list:
    """Sort key so that ``frame2`` comes before ``frame10``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def list_frames(folder: str | Path) -> list[Path]:
    """Image files of a frame folder in natural order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InvalidInputError(f"frame folder not found: {folder}")
    frames = sorted((p for p in folder.iterdir() if is_image_file(p)), key=natural_key)
    if not frames:
        raise InvalidInputError(f"no PNG/JPEG frames in {folder}")
    return frames


def _first_line(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__
