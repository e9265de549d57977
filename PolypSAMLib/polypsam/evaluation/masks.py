"""Loading masks for evaluation: image masks are binarised, integer label maps kept per label.

Rules of :func:`load_mask` with ``binarize=None`` (automatic):

* JPEG masks (lossy: Kvasir-SEG ships them with compression noise) are binarised.
* Colour PNG/BMP/TIFF masks (RGB/RGBA: CVC-ClinicDB ships 3-channel PNGs with stray greys) are
  binarised on their grey value.
* Single-channel images whose maximum reaches half their type's range (>= 128 for 8-bit,
  >= 32768 for 16-bit: a 0/255 mask) are binarised; those below stay label maps (label PNGs as
  ``polypsam segment``/``track`` write them: values 1..N). Palette PNGs keep their indices.
* Volumes (NIfTI, NRRD, MHA, DICOM) are integer label maps; non-integer values are refused.

Binarising thresholds at half the type's range (> 127 for 8-bit, > 32767 for 16-bit images) and
at > 0 for volumes; the result is label 1. ``binarize=True`` forces it, ``binarize=False`` keeps
integer values as labels (colour images are refused then: they are not label maps).

Images carry no spacing: they are 2-D grids of unit spacing, so their distances are in pixels
(rows say ``distance_unit`` ``px``). 3-D files with one slice are evaluated as 2-D images with
their in-plane spacing (mm).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InvalidInputError
from ..io import IMAGE_SUFFIXES, VOLUME_SUFFIXES, full_suffix, natural_key

MASK_SUFFIXES = IMAGE_SUFFIXES + tuple(s for s in VOLUME_SUFFIXES if s != ".dcm")


@dataclass
class LoadedMask:
    """An integer label image (SimpleITK, 2-D or 3-D) and where it came from."""

    image: object
    path: Path
    binarized: bool
    from_image_file: bool

    def labels(self) -> set[int]:
        import SimpleITK as sitk

        values = np.unique(sitk.GetArrayViewFromImage(self.image))
        return {int(v) for v in values if v != 0}


def load_mask(path: str | Path, binarize: bool | None = None) -> LoadedMask:
    """Read a mask image or label volume as integer labels (see the module's rules)."""
    path = Path(path)
    if not path.exists():
        raise InvalidInputError(f"mask not found: {path}")
    if path.is_file() and full_suffix(path) in IMAGE_SUFFIXES:
        return _load_image_mask(path, binarize)
    return _load_volume_mask(path, binarize)


def _load_image_mask(path: Path, binarize: bool | None) -> LoadedMask:
    import SimpleITK as sitk
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode == "P":
                array = np.asarray(img)
            elif mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LA"):
                array = np.asarray(img.convert("L"))
            else:
                array = np.asarray(img)
    except (UnidentifiedImageError, OSError) as exc:
        raise InvalidInputError(f"cannot read mask image {path}: {exc}") from exc
    colour = mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LA")
    if array.ndim != 2:
        raise InvalidInputError(f"mask image {path} is not a 2-D image (shape {array.shape})")
    if array.dtype.kind == "f" or array.dtype == bool:
        array = array.astype(np.int64)
    full = 65535 if array.dtype.itemsize >= 2 else 255
    if binarize is None:
        lossy = full_suffix(path) in (".jpg", ".jpeg")
        binarize = mode != "P" and (lossy or colour or int(array.max(initial=0)) > full // 2)
    if binarize:
        labels = (array > full // 2).astype(np.uint8)
    else:
        if colour:
            raise InvalidInputError(
                f"{path} is a colour image, not a label map; binarise it (drop --no-binarize)")
        labels = array.astype(np.uint16 if array.max(initial=0) > 255 else np.uint8)
    return LoadedMask(sitk.GetImageFromArray(labels), path, bool(binarize), True)


def _load_volume_mask(path: Path, binarize: bool | None) -> LoadedMask:
    from ..io import read_volume, volume_to_sitk

    volume = read_volume(path)
    array = volume.array
    if binarize:
        array = (array > 0).astype(np.uint8)
    else:
        if array.dtype.kind == "f":
            if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
                raise InvalidInputError(
                    f"{path} holds non-integer values; it is not a label map (use --binarize)")
        if array.min(initial=0) < 0:
            raise InvalidInputError(f"{path} holds negative values; it is not a label map")
        array = array.astype(np.uint16 if array.max(initial=0) > 255 else np.uint8)
    image = volume_to_sitk(volume.with_array(array))
    if image.GetSize()[2] == 1:
        image = image[:, :, 0]
    return LoadedMask(image, path, bool(binarize), False)


def describe_grid(image) -> str:
    """Size, spacing, origin and direction of a SimpleITK image, for error messages."""
    def fmt(values):
        return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"

    size = "x".join(str(s) for s in image.GetSize())
    return (f"size {size}, spacing {fmt(image.GetSpacing())}, origin {fmt(image.GetOrigin())},"
            f" direction {fmt(image.GetDirection())}")


def same_grid(a, b, tol: float = 1e-4) -> bool:
    """Whether two images share size, spacing, origin and direction (within ``tol``)."""
    if a.GetDimension() != b.GetDimension() or a.GetSize() != b.GetSize():
        return False
    scale = max(1.0, *map(abs, b.GetSpacing()))
    return (np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tol * scale)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tol * scale)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=tol))


def match_grids(pred: LoadedMask, ref: LoadedMask, resample: bool = False):
    """PRED's labels on REF's grid: unchanged if they share it, else an error or a resampling.

    With ``resample=True`` PRED is resampled onto REF's grid with nearest-neighbour
    interpolation in physical space. Two image files (which carry no geometry) are taken to
    show the same field of view, so a prediction at another resolution is scaled onto REF's.
    """
    import SimpleITK as sitk

    a, b = pred.image, ref.image
    if same_grid(a, b):
        return a
    if a.GetDimension() != b.GetDimension():
        raise InvalidInputError(
            f"PRED {pred.path} is {a.GetDimension()}-D and GT {ref.path} is {b.GetDimension()}-D")
    if not resample:
        raise InvalidInputError(
            f"PRED and GT are on different grids:\n  PRED {pred.path}: {describe_grid(a)}\n"
            f"  GT   {ref.path}: {describe_grid(b)}\n"
            "resample PRED onto GT's grid with --resample (nearest neighbour)")
    if pred.from_image_file and ref.from_image_file:
        a = sitk.Image(a)
        spacing = [sb * nb / na for sb, nb, na in zip(b.GetSpacing(), b.GetSize(), a.GetSize())]
        a.SetSpacing(spacing)
        a.SetOrigin([ob - 0.5 * sb + 0.5 * sa
                     for ob, sb, sa in zip(b.GetOrigin(), b.GetSpacing(), spacing)])
        a.SetDirection(b.GetDirection())
    return sitk.Resample(a, b, sitk.Transform(), sitk.sitkNearestNeighbor, 0, a.GetPixelID())


def case_name(path: Path) -> str:
    """A file's name without its (full) suffix: ``case1.nii.gz`` -> ``case1``."""
    suffix = full_suffix(path)
    return path.name[: -len(suffix)] if suffix and path.name.lower().endswith(suffix) else path.stem


def mask_files(folder: Path, _prefix: str = "") -> dict[str, Path]:
    """Mask files of a folder by case name (natural order); two files of one name are refused.

    A subfolder of image masks is a video (or frame sequence): its frames are the cases
    ``SUBFOLDER/FRAME``. A subfolder of DICOM files is one volume.
    """
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir(), key=natural_key):
        if p.is_file() and full_suffix(p) in MASK_SUFFIXES:
            name = _prefix + case_name(p)
            if name in found:
                raise InvalidInputError(f"{folder} holds two masks named {case_name(p)}:"
                                        f" {found[name].name} and {p.name}")
            found[name] = p
        elif p.is_dir() and not _prefix and any(q.is_file() and full_suffix(q) in IMAGE_SUFFIXES
                                                for q in p.iterdir()):
            found.update(mask_files(p, p.name + "/"))
        elif p.is_dir() and any(q.suffix.lower() == ".dcm" or not q.suffix for q in p.iterdir()):
            found.setdefault(_prefix + p.name, p)
    return found


def pair_cases(pred: Path, ref: Path) -> list[tuple[str, Path, Path]]:
    """(case, pred, ref) pairs: two files, or two folders matched by case name (subfolders of
    frame masks, videos, give cases ``VIDEO/FRAME``, see :func:`mask_files`).

    Every reference needs a prediction (a missing one is an error naming it); predictions
    without a reference are ignored.
    """
    pred, ref = Path(pred), Path(ref)
    for what, p in (("PRED", pred), ("GT", ref)):
        if not p.exists():
            raise InvalidInputError(f"{what} not found: {p}")
    if _is_case_folder(pred) != _is_case_folder(ref):
        raise InvalidInputError(f"give two files or two folders: PRED {pred}, GT {ref}")
    if not _is_case_folder(ref):
        return [(case_name(ref), pred, ref)]
    preds, refs = mask_files(pred), mask_files(ref)
    if not refs:
        raise InvalidInputError(f"no masks in GT folder {ref}")
    missing = [n for n in refs if n not in preds]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise InvalidInputError(f"{len(missing)} reference case(s) have no prediction in {pred}:"
                                f" {shown}")
    return [(name, preds[name], refs[name]) for name in refs]


def _is_case_folder(path: Path) -> bool:
    """A folder of masks (not a DICOM series folder, which is one volume)."""
    if not path.is_dir():
        return False
    return any(q.is_file() and full_suffix(q) in MASK_SUFFIXES for q in path.iterdir()) or not any(
        q.is_file() for q in path.iterdir())
