"""Per-frame exports: PNG label masks and COCO JSON (frames, videos and CT slices alike).

Slice/frame ``n`` of the labelmap is ``array[n]`` (rows = J, columns = I), so a CT volume
exports one image per K slice and a frame stack one image per frame.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..geometry import Volume
from .segments import Segment

COCO_ENCODINGS = ("rle", "polygon")


def write_pngs(volume: Volume, folder: Path, names: Sequence[str]) -> list[Path]:
    """One PNG per slice/frame holding the label values (8-bit, or 16-bit above 255)."""
    from ..io import write_png

    folder.mkdir(parents=True, exist_ok=True)
    return [write_png(volume.array[n], folder / f"{names[n]}.png")
            for n in range(volume.shape[0])]


def coco_document(volume: Volume, segments: Sequence[Segment], names: Sequence[str],
                  provenance: Mapping, encoding: str = "rle") -> dict:
    """A COCO dataset: one image per slice/frame, one category per segment, one annotation per
    segment present in an image (all its pixels there, iscrowd 0).

    ``encoding="rle"``: compressed RLE (pycocotools), decodes to exactly the same pixels;
    ``"polygon"``: outer and hole-free contours as polygons (OpenCV), as annotation tools draw
    them; small differences at the border are inherent to polygons.
    """
    from pycocotools import mask as mask_utils

    if encoding not in COCO_ENCODINGS:
        raise ValueError(f"COCO encoding must be one of {COCO_ENCODINGS}, got {encoding!r}")
    n, height, width = volume.shape
    info = {"description": "PolypSAM segmentation", "version": provenance.get("polypsam_version"),
            "year": int(str(provenance.get("date", "0000"))[:4] or 0),
            "date_created": provenance.get("date"), "contributor": "PolypSAM",
            "url": "", "polypsam_provenance": dict(provenance)}
    images, annotations = [], []
    for k in range(n):
        images.append({"id": k + 1, "file_name": f"{names[k]}.png", "width": int(width),
                       "height": int(height), "frame_index": k})
        plane = volume.array[k]
        for seg in segments:
            mask = plane == seg.label
            if not mask.any():
                continue
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            ann = {"id": len(annotations) + 1, "image_id": k + 1, "category_id": seg.label,
                   "iscrowd": 0, "area": float(mask_utils.area(rle)),
                   "bbox": [float(v) for v in mask_utils.toBbox(rle)]}
            if encoding == "rle":
                ann["segmentation"] = {"size": [int(height), int(width)],
                                       "counts": rle["counts"].decode("ascii")}
            else:
                ann["segmentation"] = mask_polygons(mask)
            annotations.append(ann)
    categories = [{"id": s.label, "name": s.name, "supercategory": s.category[2],
                   "color": list(s.color), "terminology": {"category": list(s.category),
                                                          "type": list(s.type)}}
                  for s in segments]
    return {"info": info, "licenses": [], "images": images, "annotations": annotations,
            "categories": categories}


def mask_polygons(mask: np.ndarray) -> list[list[float]]:
    """Outer contours of a 2-D mask as COCO polygons ``[x0, y0, x1, y1, ...]`` (pixel edges).

    OpenCV traces the centres of border pixels; each vertex is moved half a pixel outwards
    (COCO's polygons run along pixel edges), and one-pixel specks become unit squares.
    """
    import cv2

    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_NONE)
    polygons = []
    for c in contours:
        pts = c[:, 0, :].astype(float)
        if len(pts) < 3:
            x0, y0 = pts.min(axis=0)
            x1, y1 = pts.max(axis=0)
            pts = np.array([[x0, y0], [x1 + 1, y0], [x1 + 1, y1 + 1], [x0, y1 + 1]], float)
        else:
            pts = _grow_half_pixel(pts)
        polygons.append([round(float(v), 2) for v in pts.ravel()])
    return polygons


def _grow_half_pixel(pts: np.ndarray) -> np.ndarray:
    """Move each vertex of a pixel-centre contour half a pixel outwards along the axis-rounded
    normal of its neighbours, so the polygon covers whole border pixels."""
    prev_, next_ = np.roll(pts, 1, axis=0), np.roll(pts, -1, axis=0)
    tangent = next_ - prev_
    normal = np.stack([tangent[:, 1], -tangent[:, 0]], axis=1)
    length = np.linalg.norm(normal, axis=1, keepdims=True)
    length[length == 0] = 1.0
    normal /= length
    # orient normals away from the polygon (signed area tells the winding)
    area = 0.5 * np.sum(pts[:, 0] * next_[:, 1] - next_[:, 0] * pts[:, 1])
    if area < 0:
        normal = -normal
    return pts + 0.5 * np.sign(normal) * (np.abs(normal) > 0.3)


def write_coco(volume: Volume, path: Path, segments: Sequence[Segment], names: Sequence[str],
               provenance: Mapping, encoding: str = "rle") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(coco_document(volume, segments, names, provenance, encoding)))
    return path
