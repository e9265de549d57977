"""Training data for fine-tuning: image/mask pairs and CT slices with lesions, with box prompts.

Three layouts are read:

* a folder in the Kvasir-SEG / CVC-ClinicDB layout: ``images/`` and ``masks/`` holding files
  with the same stem (``masks/`` may also be called ``labels/``); the files may be frames
  (PNG/JPEG...) or volumes (NIfTI/NRRD/MHA) with labelmaps;
* a manifest CSV with columns ``image`` and ``mask`` (paths relative to the CSV) and optionally
  ``split`` (``train``/``val``);
* for volumes, every slice ``array[k]`` whose labelmap holds the lesion becomes a sample,
  converted to RGB through a CT window (:mod:`polypsam.preprocess`).

One intensity mapping applies to every scalar sample (CT/MR slices, grey frames): the one given,
else the ``abdomen`` window when the data holds volumes, else percentiles 0.5-99.5; RGB frames
are used as they are. :attr:`Dataset.intensity` is that mapping (``None`` when every sample is
RGB): the fine-tuning sidecar records it, and inference with the checkpoint applies it.

Mask images are read as ``polypsam evaluate`` reads them
(:func:`polypsam.evaluation.masks.load_mask`): colour and JPEG masks, and grey masks reaching half
their range, are binarised at half the range (Kvasir-SEG ships RGB JPEGs with compression noise,
CVC-ClinicDB 3-channel PNGs with stray grey values); label images and labelmaps count ``label``
or any non-zero value. One box prompt per connected component (SimpleITK), specks below ``min_area`` of the image
dropped. Every problem is found before any training starts.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from ..errors import InvalidInputError
from ..geometry import Box
from ..io import IMAGE_SUFFIXES, VOLUME_SUFFIXES, full_suffix, natural_key
from ..preprocess import CT_WINDOWS, Intensity, Percentile, to_model_rgb

MASK_FOLDERS = ("masks", "labels")
DEFAULT_MIN_AREA = 5e-4  # components smaller than this fraction of the image are noise


@dataclass
class Sample:
    """One 2-D training item: the image (loaded on demand), its mask and one box per polyp."""

    name: str  # e.g. ``images/cju0qkwl.jpg`` or ``ct/case1.nii.gz#k12``
    group: str  # the source file: samples of one group go to the same split
    mask: np.ndarray  # H x W bool, the binarised ground truth
    components: np.ndarray  # H x W uint16, 0 background, i = pixels of boxes[i - 1]
    boxes: tuple[Box, ...]
    digest: str  # content of image and mask (for the data fingerprint)
    load_rgb: Callable[[], np.ndarray] = field(repr=False)  # model-ready H x W x 3 float [0, 1]
    mask_name: str = ""  # the mask file, relative like ``group``
    scalar: bool = False  # a scalar image (mapped by the dataset's intensity), not RGB

    @property
    def height(self) -> int:
        return int(self.mask.shape[0])

    @property
    def width(self) -> int:
        return int(self.mask.shape[1])


@dataclass
class Dataset:
    """Samples with an optional fixed split (from a manifest's ``split`` column)."""

    samples: list[Sample]
    splits: Optional[list[str]] = None  # per sample "train"/"val" when the data fixes it
    intensity: Intensity | None = None  # applied to the scalar samples; None: all are RGB


def components_and_boxes(mask: np.ndarray, min_area: float = DEFAULT_MIN_AREA):
    """Connected components (8-connectivity) of a bool mask and one inclusive box per component.

    Components below ``min_area`` × image area (and below 2 x 2 extent) are dropped as noise.
    Returns ``(uint16 component map, boxes)`` with component ``i`` drawn by ``boxes[i - 1]``.
    """
    import SimpleITK as sitk

    labelled = sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8)), True)
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(labelled)
    array = sitk.GetArrayFromImage(labelled)
    out = np.zeros(mask.shape, dtype=np.uint16)
    boxes = []
    limit = min_area * mask.size
    for label in stats.GetLabels():
        x, y, w, h = stats.GetBoundingBox(label)
        if stats.GetNumberOfPixels(label) < limit or w < 2 or h < 2:
            continue
        boxes.append(Box(float(x), float(y), float(x + w - 1), float(y + h - 1)))
        out[array == label] = len(boxes)
    return out, boxes


def load_dataset(
    source: str | Path,
    *,
    intensity: Intensity | None = None,
    label: int | None = None,
    min_area: float = DEFAULT_MIN_AREA,
) -> Dataset:
    """Read a folder (``images/`` + ``masks/``) or a manifest CSV into samples (checked).

    ``intensity`` maps scalar images (default: see the module); RGB frames are used as they are.
    """
    source = Path(source).expanduser()
    if source.is_file() and source.suffix.lower() == ".csv":
        pairs, splits = _pairs_from_csv(source)
    elif source.is_dir():
        pairs, splits = _pairs_from_folder(source), None
    else:
        raise InvalidInputError(
            f"training data {source} not found: give a folder with images/ and masks/ or a"
            " manifest CSV with columns image,mask"
        )
    def is_volume(path: Path) -> bool:
        return full_suffix(path) in VOLUME_SUFFIXES or path.is_dir()

    if intensity is None:
        intensity = (CT_WINDOWS["abdomen"] if any(is_volume(i) for i, _ in pairs)
                     else Percentile())
    samples: list[Sample] = []
    sample_splits: list[str] = []
    for i, (image_path, mask_path) in enumerate(pairs):
        rel, mask_rel = _relative(image_path, source), _relative(mask_path, source)
        if is_volume(image_path):
            found = _volume_samples(image_path, mask_path, rel, intensity, label, min_area)
        else:
            found = [_image_sample(image_path, mask_path, rel, intensity, label, min_area)]
        for sample in found:
            sample.mask_name = mask_rel
        samples.extend(found)
        if splits is not None:
            sample_splits.extend([splits[i]] * len(found))
    if not samples:
        raise InvalidInputError(f"no samples with a lesion found in {source}")
    return Dataset(samples, sample_splits if splits is not None else None,
                   intensity if any(s.scalar for s in samples) else None)


def _relative(path: Path, source: Path) -> str:
    base = source.parent if source.is_file() else source
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return path.as_posix()


def _stem(path: Path) -> str:
    suffix = full_suffix(path)
    return path.name[: -len(suffix)] if suffix else path.name


def _data_files(folder: Path) -> list[Path]:
    allowed = IMAGE_SUFFIXES + VOLUME_SUFFIXES
    return sorted((p for p in folder.iterdir() if p.is_file() and full_suffix(p) in allowed),
                  key=natural_key)


def _pairs_from_folder(folder: Path) -> list[tuple[Path, Path]]:
    images = folder / "images"
    masks = next((folder / m for m in MASK_FOLDERS if (folder / m).is_dir()), None)
    if not images.is_dir() or masks is None:
        raise InvalidInputError(
            f"{folder} is not in the Kvasir-SEG/CVC-ClinicDB layout: it needs images/ and masks/"
            " folders with files of the same names (or give a manifest CSV)"
        )
    image_files = _data_files(images)
    mask_files = {_stem(p): p for p in _data_files(masks)}
    pairs, unmatched = [], []
    for image in image_files:
        mask = mask_files.pop(_stem(image), None)
        if mask is None:
            unmatched.append(image.name)
        else:
            pairs.append((image, mask))
    if not pairs:
        raise InvalidInputError(
            f"no image/mask pairs found in {folder}: {len(image_files)} file(s) in images/,"
            f" none with a file of the same name in {masks.name}/"
        )
    if unmatched or mask_files:
        parts = []
        if unmatched:
            parts.append(f"without a mask: {', '.join(unmatched[:3])}"
                         + (" ..." if len(unmatched) > 3 else ""))
        if mask_files:
            names = sorted(p.name for p in mask_files.values())
            parts.append(f"masks without an image: {', '.join(names[:3])}"
                         + (" ..." if len(names) > 3 else ""))
        raise InvalidInputError(f"unpaired files in {folder}: " + "; ".join(parts))
    return pairs


def _pairs_from_csv(path: Path) -> tuple[list[tuple[Path, Path]], Optional[list[str]]]:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        fields = [f.strip().lower() for f in (reader.fieldnames or [])]
        if "image" not in fields or "mask" not in fields:
            raise InvalidInputError(
                f"manifest {path.name} needs columns image and mask (found: {', '.join(fields)})"
            )
        rows = [{k.strip().lower(): (v or "").strip() for k, v in row.items() if k} for row in reader]
    pairs, splits = [], []
    for n, row in enumerate(rows, start=2):
        image, mask = path.parent / row["image"], path.parent / row["mask"]
        for p in (image, mask):
            if not p.exists():
                raise InvalidInputError(f"manifest {path.name} line {n}: file not found: {p}")
        split = row.get("split", "").lower()
        if split not in ("", "train", "val"):
            raise InvalidInputError(
                f"manifest {path.name} line {n}: split must be train or val, got {split!r}"
            )
        pairs.append((image, mask))
        splits.append(split)
    if not pairs:
        raise InvalidInputError(f"no image/mask pairs found in manifest {path}")
    has_split = any(splits)
    if has_split and not all(splits):
        raise InvalidInputError(f"manifest {path.name}: give a split for every row or for none")
    return pairs, (splits if has_split else None)


def _file_digest(path: Path) -> str:
    from ..checkpoints import sha256_file

    return sha256_file(path)


def read_mask(path: Path, label: int | None = None) -> np.ndarray:
    """A 2-D mask image as bool, read and binarised as ``polypsam evaluate`` reads it."""
    import SimpleITK as sitk

    from ..evaluation.masks import load_mask

    labels = sitk.GetArrayFromImage(load_mask(path).image)
    return labels == label if label is not None else labels != 0


_SCALAR_MODES = ("L", "I", "I;16", "I;16B", "F", "1")  # read as one channel by io.read_image


def _image_sample(image_path: Path, mask_path: Path, name: str, intensity: Intensity,
                  label: int | None, min_area: float) -> Sample:
    from PIL import Image, UnidentifiedImageError

    from ..io import read_image

    try:
        with Image.open(image_path) as img:  # header only: the pixels load when training needs them
            width, height = img.size
            scalar = img.mode in _SCALAR_MODES
    except (UnidentifiedImageError, OSError) as exc:
        raise InvalidInputError(f"cannot read image {image_path}: {exc}") from exc
    mask = read_mask(mask_path, label)
    if mask.shape != (height, width):
        raise InvalidInputError(
            f"image {image_path.name} is {width}x{height} but its mask {mask_path.name} is"
            f" {mask.shape[1]}x{mask.shape[0]}"
        )
    components, boxes = components_and_boxes(mask, min_area)
    if not boxes:
        raise InvalidInputError(
            f"mask {mask_path.name} is empty (no foreground above half its range)"
            if not mask.any() else f"mask {mask_path.name} holds only specks below the minimum area"
        )
    digest = hashlib.sha256((_file_digest(image_path) + _file_digest(mask_path)
                             + (repr(intensity) if scalar else "")).encode()).hexdigest()

    def load_rgb() -> np.ndarray:
        image = read_image(image_path)
        if image.shape[:2] != (height, width):
            raise InvalidInputError(f"image {image_path} changed while training")
        return to_model_rgb(image, intensity)

    return Sample(name, name, mask, components, tuple(boxes), digest, load_rgb, scalar=scalar)


def _volume_samples(image_path: Path, mask_path: Path, name: str, intensity: Intensity,
                    label: int | None, min_area: float) -> list[Sample]:
    from ..io import read_volume

    volume = read_volume(image_path)
    labels = read_volume(mask_path)
    if volume.shape != labels.shape:
        raise InvalidInputError(
            f"volume {image_path.name} has shape {volume.shape} (K, J, I) but its labelmap"
            f" {mask_path.name} has {labels.shape}"
        )
    window = intensity
    lesion = labels.array == label if label is not None else labels.array != 0
    samples = []
    for k in np.flatnonzero(lesion.reshape(lesion.shape[0], -1).any(axis=1)):
        mask = lesion[k]
        components, boxes = components_and_boxes(mask, min_area)
        if not boxes:
            continue
        pixels = np.ascontiguousarray(volume.array[k])
        digest = hashlib.sha256(pixels.tobytes() + np.packbits(mask).tobytes()
                                + repr((pixels.dtype.str, pixels.shape, window)).encode()).hexdigest()
        samples.append(Sample(f"{name}#k{int(k)}", name, mask, components, tuple(boxes), digest,
                              lambda pixels=pixels: to_model_rgb(pixels, window), scalar=True))
    if not samples:
        what = f"label {label}" if label is not None else "a lesion (non-zero label)"
        raise InvalidInputError(
            f"labelmap {mask_path.name} is empty: no slice holds {what}"
        )
    return samples


def split_samples(dataset: Dataset, val_fraction: float, seed: int,
                  val: Optional[Dataset] = None) -> tuple[list[Sample], list[Sample]]:
    """``(train, val)``: an explicit validation set, the manifest's split, or a seeded split.

    A seeded split keeps the slices of one volume together (by ``Sample.group``).
    """
    import torch

    samples = dataset.samples
    if val is not None:
        train_set, val_set = samples, val.samples
    elif dataset.splits is not None:
        train_set = [s for s, sp in zip(samples, dataset.splits) if sp == "train"]
        val_set = [s for s, sp in zip(samples, dataset.splits) if sp == "val"]
    else:
        if not 0.0 < val_fraction < 1.0:
            raise InvalidInputError(f"--val-split must lie between 0 and 1, got {val_fraction}")
        groups = sorted({s.group for s in samples}, key=lambda g: natural_key(Path(g)))
        generator = torch.Generator().manual_seed(seed)
        if len(groups) >= 2:
            order = [groups[i] for i in torch.randperm(len(groups), generator=generator).tolist()]
            n_val = min(len(groups) - 1, max(1, round(val_fraction * len(groups))))
            val_groups = set(order[:n_val])
            train_set = [s for s in samples if s.group not in val_groups]
            val_set = [s for s in samples if s.group in val_groups]
        else:
            order = torch.randperm(len(samples), generator=generator).tolist()
            n_val = min(len(samples) - 1, max(1, round(val_fraction * len(samples))))
            val_idx = set(order[:n_val])
            train_set = [s for i, s in enumerate(samples) if i not in val_idx]
            val_set = [s for i, s in enumerate(samples) if i in val_idx]
    if not train_set or not val_set:
        raise InvalidInputError(
            f"need at least one training and one validation sample, got {len(train_set)} and"
            f" {len(val_set)} (add data, or change --val-split / --val)"
        )
    return train_set, val_set


def fingerprint(samples: Sequence[Sample]) -> str:
    """SHA256 over sample names, image and mask contents and box prompts (order-sensitive)."""
    digest = hashlib.sha256()
    for s in samples:
        digest.update(s.name.encode() + b"\0" + s.digest.encode() + b"\0")
        digest.update(repr([b.to_list() for b in s.boxes]).encode())
    return digest.hexdigest()
