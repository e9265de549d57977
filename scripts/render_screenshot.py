"""Render the extension's screenshot (Resources/Screenshots/PolypSAM-1.png) offscreen.

A CT slice in the abdomen window with a segment's contour and its box prompt drawn the way
PolypSAM's overlays draw them (:func:`polypsam.overlay.draw_overlay`), upscaled for the
Extensions Catalog. Default data: TotalSegmentator's example CT (Apache-2.0) from
``../shared/data`` with its liver label as the segment::

    .venv/bin/python scripts/render_screenshot.py [CT.nii.gz LABELS.nii.gz LABEL] [-o OUT.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "ct" / "totalsegmentator"


def main() -> int:
    from polypsam import io
    from polypsam.geometry import box_of_mask
    from polypsam.overlay import draw_overlay
    from polypsam.preprocess import CT_WINDOWS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ct", nargs="?", type=Path, default=DATA / "example_ct_sm.nii.gz")
    parser.add_argument("labels", nargs="?", type=Path, default=DATA / "example_seg.nii.gz")
    parser.add_argument("label", nargs="?", type=int, default=5)
    parser.add_argument("-o", "--output", type=Path,
                        default=REPO / "Resources" / "Screenshots" / "PolypSAM-1.png")
    parser.add_argument("--scale", type=int, default=4)
    args = parser.parse_args()
    ct, labels = io.read_volume(args.ct), io.read_volume(args.labels)
    mask = labels.array == args.label
    k = int(np.argmax(mask.sum(axis=(1, 2))))  # the slice where the segment is largest
    box = box_of_mask(mask[k])
    picture = draw_overlay(ct.array[k], mask[k].astype(np.uint8), CT_WINDOWS["abdomen"], boxes=[box],
                           legend=False, min_side=0)  # no legend or enlarging: flipped and scaled below
    # LPS-stored slice shown as Slicer's axial view shows it (patient's right on the left).
    picture = picture[::-1, ::-1]
    image = Image.fromarray(picture).resize(
        (picture.shape[1] * args.scale, picture.shape[0] * args.scale), Image.NEAREST)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    image.save(args.output)
    print(f"wrote {args.output} (slice {k}, box {box.describe()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
