"""What an export writes beside the voxels: the labelmap's grid, its segments and provenance.

* :func:`as_labelmap` turns a :class:`~polypsam.geometry.Volume` of labels (a CT labelmap) or a
  stack of 2-D frame masks (``N x H x W``, or one ``H x W`` frame) into one volume plus a flag
  saying whether its slices are video/image frames.
* :class:`Segment`: label value, name, RGB colour and coded terminology (category + type, as
  DICOM SEG and Slicer's terminology entries need them); :func:`segments_for` builds them from
  the user's names/colours.
* :func:`make_provenance`: model, checkpoint SHA256, prompts, PolypSAM version and date.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .. import __version__
from ..errors import InvalidInputError
from ..geometry import Box, Volume
from ..overlay import PALETTE
from ..terminology import (  # noqa: F401  (re-exported: the export API names them)
    MORPHOLOGICALLY_ABNORMAL, SLICER_TERMINOLOGY_CONTEXT, TERMINOLOGY_PRESETS,
)


@dataclass(frozen=True)
class Segment:
    """One label of a labelmap as exported: name, colour (RGB 0-255) and coded terminology."""

    label: int
    name: str
    color: tuple[int, int, int]
    category: tuple[str, str, str]
    type: tuple[str, str, str]

    def as_dict(self) -> dict:
        return asdict(self)


def as_labelmap(labels: "Volume | np.ndarray | Sequence[np.ndarray]") -> tuple[Volume, bool]:
    """``(volume, is_frames)``: a labels volume as is, or a frame stack on a 1 mm grid."""
    if isinstance(labels, Volume):
        array, frames = labels.array, False
    else:
        array = np.asarray(labels) if not isinstance(labels, (list, tuple)) else np.stack(labels)
        if array.ndim == 2:
            array = array[None]
        if array.ndim != 3:
            raise InvalidInputError(
                f"labels must be a Volume, one H x W mask or N x H x W masks; got {array.shape}")
        frames = True
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if array.dtype.kind not in "iu":
        if not np.array_equal(array, np.round(array)):
            raise InvalidInputError("labels must be integers (a labelmap), got fractional values")
        array = array.astype(np.int64)
    if array.size and array.min() < 0:
        raise InvalidInputError("labels must be >= 0 (0 is background)")
    if array.size and array.max() > 65535:
        raise InvalidInputError(f"label {int(array.max())} is too large (at most 65535)")
    array = array.astype(np.uint8 if array.max(initial=0) < 256 else np.uint16)
    volume = labels.with_array(array) if isinstance(labels, Volume) else Volume(array)
    return volume, frames


def _normalise_color(value) -> tuple[int, int, int]:
    values = list(value)
    if len(values) != 3:
        raise InvalidInputError(f"a colour needs 3 values (R G B), got {value}")
    c = [float(v) for v in values]
    if all(0.0 <= v <= 1.0 for v in c) and any(isinstance(v, (float, np.floating))
                                               for v in values):
        c = [v * 255.0 for v in c]
    if not all(0 <= v <= 255 for v in c):
        raise InvalidInputError(f"colour {value} is outside 0-255 (or 0-1)")
    return tuple(int(round(v)) for v in c)  # type: ignore[return-value]


def _by_label(values, what: str) -> dict[int, object]:
    """A sequence applies to labels 1, 2, ...; a mapping names its labels."""
    if values is None:
        return {}
    if isinstance(values, Mapping):
        out = {int(k): v for k, v in values.items()}
    elif isinstance(values, str):
        out = {1: values}
    else:
        out = {i: v for i, v in enumerate(values, start=1)}
    if any(k <= 0 for k in out):
        raise InvalidInputError(f"{what} are for labels >= 1 (0 is background)")
    return out


def segments_for(volume: Volume, names=None, colours=None, terminology=None) -> list[Segment]:
    """Segments of the labels present in ``volume`` plus any label given a name.

    ``names`` / ``colours``: sequences for labels 1, 2, ... or mappings ``{label: value}``;
    colours are RGB 0-255 integers, or 0-1 floats (Slicer's style). ``terminology``: a preset name (``lesion``
    (default), ``polyp``, ``mass``, ``tissue``) for all segments, or a mapping label -> preset
    name or ``((scheme, value, meaning), (scheme, value, meaning))`` (category, type).
    """
    present = {int(v) for v in np.unique(volume.array) if v != 0}
    return segments_for_labels(present, names, colours, terminology)


def segments_for_labels(labels, names=None, colours=None, terminology=None) -> list[Segment]:
    """:func:`segments_for` for a set of label values (plus any label given a name).

    A segment without a name is named after its preset and label (``polyp_1``, ``lesion_2``),
    or ``Segment_N`` when its terminology is given as codes.
    """
    name_map = _by_label(names, "names")
    colour_map = _by_label(colours, "colours")
    if terminology is None or isinstance(terminology, str):
        term_map: dict[int, object] = {}
        default_term = terminology or "lesion"
    else:
        term_map, default_term = _by_label(terminology, "terminology"), "lesion"
    segments = []
    for label in sorted({int(v) for v in labels} | set(name_map)):
        term = term_map.get(label, default_term)
        default_name = f"Segment_{label}"
        if isinstance(term, str):
            if term not in TERMINOLOGY_PRESETS:
                raise InvalidInputError(f"unknown terminology {term!r}; choose one of"
                                        f" {', '.join(TERMINOLOGY_PRESETS)} or give codes")
            default_name = f"{term}_{label}"
            term = TERMINOLOGY_PRESETS[term]
        category, type_ = (tuple(str(x) for x in c) for c in term)  # type: ignore[union-attr]
        colour = colour_map.get(label, PALETTE[(label - 1) % len(PALETTE)])
        segments.append(Segment(label, str(name_map.get(label, default_name)),
                                _normalise_color(colour), category, type_))
    return segments


def segment_options(segments: Sequence[Mapping]) -> tuple[dict, dict, dict]:
    """``(names, colours, terminology)`` by label from a sidecar's ``segments`` list, to give
    a later export the same segments."""
    names, colours, terms = {}, {}, {}
    for s in segments:
        try:
            label = int(s["label"])
            names[label] = str(s["name"])
            colours[label] = tuple(int(v) for v in s["color"])
            terms[label] = (tuple(s["category"]), tuple(s["type"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInputError(f"a sidecar segment is incomplete ({s!r}): {exc}") from exc
    return names, colours, terms


def make_provenance(engine_info=None, *, prompts: Mapping | None = None,
                    source: str | Path | None = None, **extra) -> dict:
    """Provenance of a result: model, checkpoint (+SHA256), prompts, PolypSAM version, date.

    ``engine_info``: an :class:`~polypsam.engine.EngineInfo` (or its ``provenance()`` dict);
    ``prompts``: e.g. ``{"boxes": [...], "points": [...], "key_slice": 12, "key_frame": 3}``
    (:class:`~polypsam.geometry.Box` values become ``[x0, y0, x1, y1]``).
    """
    prov: dict = {"software": "PolypSAM", "polypsam_version": __version__,
                  "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    if engine_info is not None:
        info = engine_info.provenance() if hasattr(engine_info, "provenance") else dict(engine_info)
        prov.update({k: v for k, v in info.items() if k != "polypsam_version"})
    if prompts:
        prov["prompts"] = _jsonable(dict(prompts))
    if source is not None:
        prov["source"] = str(source)
    prov.update(_jsonable(extra))
    return prov


def complete_provenance(provenance: Mapping | None) -> dict:
    """The user's provenance with software, version and date filled in where missing."""
    base = make_provenance()
    base.update(_jsonable(dict(provenance or {})))
    return base


def provenance_summary(prov: Mapping, limit: int = 64) -> str:
    """One short line (model, checkpoint hash prefix), e.g. for DICOM's 64-character fields."""
    model = prov.get("model") or prov.get("checkpoint") or "model unknown"
    sha = str(prov.get("checkpoint_sha256") or "")[:12]
    text = f"PolypSAM {prov.get('polypsam_version', __version__)} {model}"
    return (text + (f" sha256:{sha}" if sha else ""))[:limit]


def _jsonable(value):
    if isinstance(value, Box):
        return value.to_list()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


def write_export_sidecar(path: Path, provenance: Mapping, segments: Sequence[Segment],
                         **extra) -> Path:
    """An export's provenance sidecar: JSON with the provenance and the segments (name, colour, terminology)."""
    import os

    doc = {"provenance": dict(provenance), "segments": [s.as_dict() for s in segments], **extra}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, path)
    return path
