"""Benchmark: slice shown → box placed → mask written, on real MRML (slicer-core), CPU.

The module's path without Qt, on real MRML: a CT volume in the scene, the Red slice view's node,
and :class:`polypsam.mrml.BackgroundEncoding` following them as the widget does (the slice node's
``ModifiedEvent`` → the slice shown → ``Prefetcher.show``). Per trial: one encoder time is taken
(a cold encoding of another slice, timed now: the shared machine's load drifts); the view is moved
past ``scroll`` slices 20 ms apart (0 or 3; the two settings alternate trial by trial), then stops
on slice k (``SetSliceOffset``: the MRML event starts its background encoding); after one encoder
time a box ROI is placed on slice k, and the timer runs from the box placed to the mask written:
Segment as the widget runs it (``mrml.start`` on the engine's worker thread, polled every 50 ms,
then ``run.write()``: the scene read, the model, the Segment Editor's masking rule, one undo step,
provenance, the segment written into the segmentation). The same box on a slice never shown is
timed as the cold case. Both masks go to segment "Lesion" and are undone after the trial, so
every trial writes into the same segmentation (the undo snapshot grows with what the
segmentation holds).

Printed per scroll setting: median box → mask-written wall (goal: <= 100 ms at image size 512 on
this CPU once the slice was shown for one encoder time), its maximum, the cold median, their
ratio, how many boxes still waited for their slice's encoding, the encodings begun/finished per
trial (the scrolled-past slices' are cancelled). Qt (progress dialog, repaint) is not included.
Weights are random (same compute); set ``POLYPSAM_SHARED_DATA`` for the shared CT's pixels.

Example::

    POLYPSAM_SHARED_DATA=../shared/data python benchmarks/bench_slicer_click.py \
        --size 512 --trials 10 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "Testing")]
from bench_propagation import build_engine, make_volume  # noqa: E402

SPACING = (0.7, 0.7, 2.5)


def box_mask_written(scene, volume, segmentation, worker, engine, k: int, name: str) -> float:
    """Place a box ROI on slice ``k``; seconds from the box placed to the mask written."""
    from slicer_fixtures import add_roi_on_ijk

    from polypsam import mrml

    _, h, w = volume.GetImageData().GetDimensions()[::-1]
    roi = add_roi_on_ijk(scene, volume, (w * 0.45, h * 0.5, k), (w * 0.3, h * 0.3, 1), name=name)
    start = time.perf_counter()
    request = mrml.Request("segment", input_node=volume, rois=[roi], segmentation_node=segmentation,
                           window_preset="abdomen")
    run = mrml.start(request, engine, mrml.RunContext(worker=worker))
    while not run.wait(0.05):  # the widget's poll
        pass
    run.check()
    result = run.write()
    wall = time.perf_counter() - start
    assert f"slice(s) {k}" in result.summary, result.summary
    scene.RemoveNode(roi)
    return wall


def trial(scene, volume, view, background, engine, worker, segmentation, slices,
          scroll: int) -> dict:
    """One trial: one encoder time, ``scroll`` slices passed over, the slice stopped on shown for
    that encoder time, then a box there and a box on a slice never shown (both to mask written,
    into segment "Lesion"; both writes are undone after, so every trial writes the same way)."""
    from polypsam import mrml

    z = lambda k: k * SPACING[2]  # noqa: E731 - the volume's origin is 0
    intensity = mrml.intensity_for(volume, "abdomen")
    start = time.perf_counter()
    engine.encode(mrml.volume_voxels(volume)[next(slices)], intensity=intensity)
    encoder_s = time.perf_counter() - start
    for _ in range(scroll):  # scrolling past slices: each starts and is cancelled
        view.SetSliceOffset(z(next(slices)))
        time.sleep(0.02)
    k = next(slices)
    view.SetSliceOffset(z(k))  # the view stops on slice k: its encoding starts (MRML event)
    time.sleep(encoder_s)  # shown for one encoder time
    waited = not background.current.finished
    shown = box_mask_written(scene, volume, segmentation, worker, engine, k, "Lesion")
    cold = box_mask_written(scene, volume, segmentation, worker, engine, next(slices), "Lesion")
    assert mrml.undo(segmentation) and mrml.undo(segmentation)  # each trial starts from no lesion
    return {"encoder": encoder_s, "shown": shown, "cold": cold, "waited": waited}


def summary(trials: list[dict], scroll: int, begun: int, finished: int) -> dict:
    import torch

    median = lambda key: statistics.median(t[key] for t in trials)  # noqa: E731
    return {"scenario": "slicer: slice shown -> box -> mask written", "scrolled_past": scroll,
            "trials": len(trials), "encoder_ms": round(median("encoder") * 1e3, 1),
            "shown_box_ms": round(median("shown") * 1e3, 2),
            "shown_box_max_ms": round(max(t["shown"] for t in trials) * 1e3, 2),
            "cold_box_ms": round(median("cold") * 1e3, 2),
            "ratio_shown_over_cold": round(median("shown") / median("cold"), 3),
            "box_waited_for_encoding": sum(t["waited"] for t in trials),
            "encodings_begun_per_trial": round(begun / len(trials), 2),
            "encodings_finished_per_trial": round(finished / len(trials), 2),
            "torch_threads": torch.get_num_threads()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="model image size")
    parser.add_argument("--slice-size", type=int, default=512, help="CT slice size (pixels)")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's); 1 is steadier on a shared machine")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from slicer_fixtures import add_volume, ijk_to_ras_matrix, init_slicer_core

    from polypsam import mrml
    from polypsam.background import EngineWorker

    scene = init_slicer_core().scene
    scrolls = (0, 3)
    n_slices = sum((args.trials + 1) * (s + 3) for s in scrolls)
    array = make_volume(n_slices, args.slice_size).array
    volume = add_volume(scene, array, ijk_to_ras_matrix(SPACING), name="ct")
    volume.CreateDefaultDisplayNodes()
    view = scene.CreateNodeByClass("vtkMRMLSliceNode")
    view.SetLayoutName("Red")
    view = scene.AddNode(view)
    view.SetOrientationToAxial()
    segmentation = mrml.new_segmentation(scene, volume)
    engine = build_engine(args.size, args.checkpoint, args.precision)
    worker = EngineWorker()
    background = mrml.BackgroundEncoding(scene, lambda: engine)
    parameters = types.SimpleNamespace(
        inputVolume=volume, inputSequenceBrowser=None, rois=[], outputSegmentation=segmentation,
        keySlice=-1, sliceRangeStart=-1, sliceRangeEnd=-1, windowPreset="abdomen")
    background.follow(parameters)  # the module is entered, an engine loaded
    slices = iter(range(n_slices))
    results: dict[int, list[dict]] = {scroll: [] for scroll in scrolls}
    counts = {scroll: [0, 0] for scroll in scrolls}  # encodings begun, finished (shown ones)
    current = [scrolls[0]]
    enc = engine.model.image_encoder
    hooks = [enc.register_forward_pre_hook(lambda *_: counts[current[0]].__setitem__(
                 0, counts[current[0]][0] + 1)),
             enc.register_forward_hook(lambda *_: counts[current[0]].__setitem__(
                 1, counts[current[0]][1] + 1))]
    try:
        for n in range(args.trials + 1):  # the settings alternate: the load drifts alike
            for scroll in scrolls:
                current[0] = scroll
                before = list(counts[scroll])
                out = trial(scene, volume, view, background, engine, worker, segmentation, slices,
                            scroll)
                if n == 0:  # the first trial warms the allocator
                    counts[scroll] = before
                else:
                    results[scroll].append(out)
                    counts[scroll][0] -= 2  # the timed encoding and the cold box
                    counts[scroll][1] -= 2
        for scroll in scrolls:
            out = summary(results[scroll], scroll, *counts[scroll])
            out.update(image_size=args.size, volume=list(array.shape),
                       device=os.environ.get("BENCH_DEVICE", "cpu"))
            print(json.dumps(out), flush=True)
    finally:
        for handle in hooks:
            handle.remove()
        background.stop()
        worker.close()
        engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
