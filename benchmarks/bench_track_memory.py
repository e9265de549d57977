"""Peak memory of Slicer's Track on a 300-frame 512 x 512 RGB video (slicer-core, real MRML).

The scene holds the video as a sequence of 300 RGB frames (236 MB) with a browser; a box on frame
0 is tracked through all frames into a segmentation sequence, then tracked again (the second
Track replaces the sequence and keeps an undo step for the first one), as the module's Track
button does it (engine on the calling thread). What is measured is PolypSAM's side: the model is
SAM2.1 tiny with random weights at image size 256 (``--image-size``), so SAM2's own memory is small
and constant per frame; masks are whatever random weights give.

For each Track: the peak resident memory (RSS, sampled every 2 ms from ``/proc/self/statm``) above
the RSS just before it, the peak of NumPy/Python allocations (``tracemalloc``), and the RSS kept
after it (the new segmentation sequence, undo steps). Before the first Track, a 4-frame warm-up
Track lets torch allocate its working set, and freed memory is returned to the system
(``malloc_trim``) before every measurement.

With ``--writes N`` no model runs: N versions of 300 frames' masks (each covering the whole frame,
as random weights' masks do) are written into the segmentation sequence as Track's write phase
writes them, one undo step each, and the RSS kept after each write shows what undo holds.

Run (any version of the library: the script uses the one-request API where it exists)::

    PYTHONPATH=$PWD/PolypSAMLib .venv/bin/python benchmarks/bench_track_memory.py [--frames 300]
    PYTHONPATH=$PWD/PolypSAMLib .venv/bin/python benchmarks/bench_track_memory.py --writes 10
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "Testing"))

MB = 1024 * 1024
CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


class PeakRSS:
    """The highest RSS seen while the block runs (a sampling thread)."""

    def __enter__(self) -> "PeakRSS":
        self.start = self.peak = rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, rss())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())


def frames(n: int, height: int, width: int):
    """A textured background with a bright disc moving across the frames (a stand-in polyp)."""
    rng = np.random.default_rng(0)
    background = rng.integers(40, 90, size=(height, width, 3)).astype(np.uint8)
    yy, xx = np.mgrid[:height, :width]
    for t in range(n):
        rgb = background.copy()
        cx = width * 0.3 + (width * 0.4) * t / max(n - 1, 1)
        rgb[(yy - height * 0.5) ** 2 + (xx - cx) ** 2 < (height * 0.12) ** 2] = (200, 120, 110)
        yield rgb


def track(engine, browser, roi, segmentation) -> str:
    """The module's Track with whichever API this version of the library has."""
    from polypsam import mrml

    if hasattr(mrml, "Request"):  # one request and one entry point (issue 17)
        request = mrml.Request("track", browser_node=browser, rois=[roi], segmentation_node=segmentation)
        return mrml.run(request, engine).summary
    from polypsam.mrml import operations

    return operations.track(engine, browser, [roi], segmentation).summary


def write_version(browser, segmentation, frames_count: int, size: int, version: int) -> None:
    """Track's write phase for one version of the masks: an undo step, then the sequence write."""
    from polypsam import mrml

    yy, xx = np.mgrid[:size, :size]

    def mask(t: int) -> np.ndarray:
        return ((yy + xx + t + version) % 7) < 3  # its bounding box is the whole frame

    if hasattr(mrml, "Request"):  # the one writer (issue 17)
        from polypsam.mrml.writer import SequenceWrite, write

        masks = {t: {"Polyp": mask(t)} for t in range(frames_count)}
        write(segmentation, [SequenceWrite(browser, masks, ["Polyp"], {"operation": "track"}, "polyp")])
        return
    from polypsam.mrml.tracking import _write_sequence

    _write_sequence(browser, segmentation, {t: {"Polyp": mask(t)} for t in range(frames_count)},
                    ["Polyp"], {"operation": "track"}, "polyp")


def writes_only(args, scene, browser) -> None:
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "written")
    first = rss()
    print("| write | RSS kept after it (above the RSS before the first) | time |")
    print("|---|---|---|")
    for n in range(1, args.writes + 1):
        start = time.perf_counter()
        write_version(browser, segmentation, args.frames, args.size, n)
        trim()
        print(f"| {n} | {(rss() - first) / MB:.0f} MB | {time.perf_counter() - start:.1f} s |",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--size", type=int, default=512, help="frame height and width")
    parser.add_argument("--image-size", type=int, default=256, help="SAM2's input size")
    parser.add_argument("--tracks", type=int, default=2)
    parser.add_argument("--writes", type=int, default=0,
                        help="no model: write this many versions of the masks (undo memory)")
    parser.add_argument("--no-tracemalloc", action="store_true", help="RSS only (tracemalloc slows torch down)")
    args = parser.parse_args()

    import tempfile

    from slicer_fixtures import add_rgb_video, add_roi_on_ijk, init_slicer_core

    import polypsam

    if args.writes:
        core = init_slicer_core()
        print(f"library: {Path(polypsam.__file__).parent}")
        browser = add_rgb_video(core.scene, list(frames(args.frames, args.size, args.size)))
        core.logics["sequences"].UpdateProxyNodesFromSequences(browser)
        trim()
        writes_only(args, core.scene, browser)
        return

    import torch
    from polypsam.engines import engine_for
    from polypsam.sam2_adapter.model import build_model, save_checkpoint

    torch.manual_seed(0)
    checkpoint = save_checkpoint(build_model(CONFIG, None, "cpu"),
                                 Path(tempfile.mkdtemp()) / "sam2.1_hiera_tiny_random.pt")
    engine = engine_for(checkpoint, CONFIG, device="cpu", image_size=args.image_size)
    core = init_slicer_core()
    scene = core.scene
    sequences = core.logics["sequences"]
    print(f"library: {Path(polypsam.__file__).parent}  torch threads: {torch.get_num_threads()}")

    warm = add_rgb_video(scene, list(frames(4, args.size, args.size)), name="warm-up")
    sequences.UpdateProxyNodesFromSequences(warm)
    proxy = warm.GetProxyNode(warm.GetMasterSequenceNode())
    roi = add_roi_on_ijk(scene, proxy, (args.size * 0.3, args.size * 0.5, 0),
                         (args.size * 0.3, args.size * 0.3, 1), "Polyp")
    track(engine, warm, roi, scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "warm-up seg"))

    trim()
    before_scene = rss()
    browser = add_rgb_video(scene, list(frames(args.frames, args.size, args.size)))
    sequences.UpdateProxyNodesFromSequences(browser)
    trim()
    scene_mb = (rss() - before_scene) / MB
    frames_mb = args.frames * args.size * args.size * 3 / MB
    print(f"video: {args.frames} frames {args.size}x{args.size} RGB = {frames_mb:.0f} MB of pixels;"
          f" RSS grew {scene_mb:.0f} MB when the scene got them")
    proxy = browser.GetProxyNode(browser.GetMasterSequenceNode())
    roi = add_roi_on_ijk(scene, proxy, (args.size * 0.3, args.size * 0.5, 0),
                         (args.size * 0.3, args.size * 0.3, 1), "Polyp")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "tracked")
    first = rss()
    print("| Track | peak RSS above the RSS before it | NumPy/Python peak (tracemalloc) |"
          " RSS kept after it | time |")
    print("|---|---|---|---|---|")
    for n in range(1, args.tracks + 1):
        trim()
        if not args.no_tracemalloc:
            tracemalloc.start()
        start = time.perf_counter()
        with PeakRSS() as peak:
            summary = track(engine, browser, roi, segmentation)
        seconds = time.perf_counter() - start
        _, traced = tracemalloc.get_traced_memory() if tracemalloc.is_tracing() else (0, float("nan"))
        tracemalloc.stop()
        trim()
        print(f"| {n} | {(peak.peak - peak.start) / MB:.0f} MB | {traced / MB:.0f} MB |"
              f" {(rss() - first) / MB:.0f} MB | {seconds:.0f} s |", flush=True)
    print("last:", summary)
    engine.close()


if __name__ == "__main__":
    main()
