"""Time writing a propagated mask into a segment: changed region only vs. the whole volume.

A 512 x 512 x 300 volume; the propagated mask (an ellipsoid) lies in a 260 x 200 x 100 voxel box.
Compared:

* ``polypsam.mrml.write_mask_to_segment(..., region=box)`` with the region-sized crop (new
  segment; and rewriting an existing segment whose old mask lies inside the region);
* ``slicer.util.updateSegmentBinaryLabelmapFromArray`` with the full array (Slicer's usual way).

Run: ``.venv/bin/python benchmarks/bench_segment_write.py [--repeats 5]`` (needs slicer-core).
Prints the median and min of each in milliseconds and the speed-up.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "Testing"))

SHAPE = (300, 512, 512)  # K, J, I
REGION = (120, 379, 150, 349, 100, 199)  # i0, i1, j0, j1, k0, k1: 260 x 200 x 100 voxels


def _timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from slicer_fixtures import add_volume, init_slicer_core

    ns = init_slicer_core()
    slicer, scene = ns.slicer, ns.scene
    from polypsam import mrml

    ijk_to_ras = np.diag([0.7, 0.7, 2.5, 1.0])
    volume = add_volume(scene, np.zeros(SHAPE, np.int16), ijk_to_ras, name="ct")
    i0, i1, j0, j1, k0, k1 = REGION
    kk, jj, ii = np.ogrid[k0 : k1 + 1, j0 : j1 + 1, i0 : i1 + 1]
    crop = (
        ((kk - (k0 + k1) / 2) / 50) ** 2 + ((jj - (j0 + j1) / 2) / 100) ** 2
        + ((ii - (i0 + i1) / 2) / 130) ** 2 <= 1
    )
    full = np.zeros(SHAPE, np.uint8)
    full[k0 : k1 + 1, j0 : j1 + 1, i0 : i1 + 1] = crop

    counter = iter(range(10**6))

    def region_new_segment() -> None:
        seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"s{next(counter)}")
        mrml.write_mask_to_segment(seg, "Polyp", crop, volume, region=REGION)

    rewrite_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "rewrite")
    mrml.write_mask_to_segment(rewrite_node, "Polyp", crop, volume, region=REGION)

    def region_rewrite() -> None:
        mrml.write_mask_to_segment(rewrite_node, "Polyp", crop, volume, region=REGION)

    def slicer_full() -> None:
        seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"f{next(counter)}")
        seg.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        segment_id = seg.GetSegmentation().AddEmptySegment("", "Polyp")
        slicer.util.updateSegmentBinaryLabelmapFromArray(full, seg, segment_id, volume)

    # correctness: all three give the same voxels
    check = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "check")
    mrml.write_mask_to_segment(check, "Polyp", crop, volume, region=REGION)
    got = mrml.export_segment_labelmap(check, volume) > 0
    assert np.array_equal(got, full > 0), "region write landed on other voxels"
    assert np.array_equal(mrml.export_segment_labelmap(rewrite_node, volume) > 0, full > 0)

    results = {
        "polypsam region write (new segment)": _timed(region_new_segment, args.repeats),
        "polypsam region write (rewrite segment)": _timed(region_rewrite, args.repeats),
        "slicer.util.updateSegmentBinaryLabelmapFromArray (full)": _timed(slicer_full, args.repeats),
    }
    print(f"volume {SHAPE[2]}x{SHAPE[1]}x{SHAPE[0]} (IxJxK), changed region "
          f"{i1 - i0 + 1}x{j1 - j0 + 1}x{k1 - k0 + 1}, {int(crop.sum())} voxels set, "
          f"{args.repeats} repeats")
    for name, times in results.items():
        print(f"  {name:58s} median {statistics.median(times):7.1f} ms   min {min(times):7.1f} ms")
    base = statistics.median(results["slicer.util.updateSegmentBinaryLabelmapFromArray (full)"])
    ours = statistics.median(results["polypsam region write (new segment)"])
    print(f"  speed-up (median, new segment): {base / ours:.1f}x")


if __name__ == "__main__":
    main()
