"""Reading and writing images, frames and volumes (PIL for PNG/JPEG, SimpleITK for volumes).

Volumes keep their physical grid: :func:`read_volume` returns ``array[k, j, i]`` with origin,
spacing and direction, and :func:`write_volume` writes them back unchanged. Outputs are written
atomically through :class:`OutputStage`: a failed run leaves no partial file or folder.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
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


def write_png(array: np.ndarray, path: str | Path, text: dict[str, str] | None = None) -> Path:
    """Write a 2-D uint8/uint16 array or an RGB uint8 array as PNG (``text``: tEXt chunks)."""
    from PIL import Image, PngImagePlugin

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if array.ndim == 2 and array.dtype not in (np.uint8, np.uint16):
        array = array.astype(np.uint16 if array.max(initial=0) > 255 else np.uint8)
    info = None
    if text:
        info = PngImagePlugin.PngInfo()
        for key, value in text.items():
            info.add_text(key, value)
    Image.fromarray(array).save(path, pnginfo=info)
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


class OutputStage:
    """Outputs written under temporary names and moved into place together at :meth:`commit`.

    ``stage.path(target)`` is where to write ``target`` now: the same name in a hidden folder
    ``.polypsam-partial-*`` beside it (same file system, so the move is a rename). Paths inside
    a staged folder stay inside its temporary copy. :meth:`commit` renames everything into
    place; an existing folder target receives the new files one by one (each complete).
    :meth:`discard` (what an error or Ctrl-C calls) removes the temporary folders and any
    folder made for them, so a failed run leaves nothing behind.
    """

    PREFIX = ".polypsam-partial-"

    def __init__(self) -> None:
        self._temp: dict[Path, Path] = {}  # parent folder -> its temporary folder
        self._targets: dict[Path, Path] = {}  # target -> temporary path
        self._made: list[Path] = []  # folders made only to hold outputs

    def path(self, target: str | Path) -> Path:
        target = Path(target).absolute()
        for staged, temp in self._targets.items():
            if staged in target.parents:
                return temp / target.relative_to(staged)
        if target not in self._targets:
            parent = target.parent
            if parent not in self._temp:
                missing = [p for p in (parent, *parent.parents) if not p.exists()]
                parent.mkdir(parents=True, exist_ok=True)
                self._made += missing[-1:]
                self._temp[parent] = parent / f"{self.PREFIX}{secrets.token_hex(4)}"
                self._temp[parent].mkdir()
            self._targets[target] = self._temp[parent] / target.name
        return self._targets[target]

    def final(self, path: str | Path) -> Path:
        """The path ``path`` (a temporary one) will have after :meth:`commit`."""
        path = Path(path).absolute()
        for parent, temp in self._temp.items():
            if path == temp or temp in path.parents:
                return parent / path.relative_to(temp)
        return path

    def commit(self) -> None:
        for parent, temp in self._temp.items():  # refuse before anything moves
            for entry in temp.iterdir():
                _check_move(entry, parent / entry.name)
        for parent, temp in self._temp.items():
            for entry in sorted(temp.iterdir()):
                _move_into_place(entry, parent / entry.name)
            temp.rmdir()
        self._temp.clear()
        self._targets.clear()
        self._made.clear()

    def discard(self) -> None:
        for temp in self._temp.values():
            shutil.rmtree(temp, ignore_errors=True)
        for folder in self._made:  # made for these outputs: removed unless something else is there
            if not any(f.is_file() for f in folder.rglob("*")):
                shutil.rmtree(folder, ignore_errors=True)
        self._temp.clear()
        self._targets.clear()
        self._made.clear()


def _check_move(source: Path, target: Path) -> None:
    if source.is_dir() and target.is_dir():
        for entry in source.iterdir():
            _check_move(entry, target / entry.name)
    elif target.is_dir():
        raise InvalidInputError(f"cannot write {target}: a folder of that name is in the way")
    elif source.is_dir() and target.exists():
        raise InvalidInputError(f"cannot write the folder {target}: a file of that name is in"
                                " the way")


def _move_into_place(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target``; a folder onto an existing folder merges file by file."""
    if source.is_dir() and target.is_dir():
        for entry in sorted(source.iterdir()):
            _move_into_place(entry, target / entry.name)
        source.rmdir()
    else:
        os.replace(source, target)


def _first_line(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__
