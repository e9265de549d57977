"""Benchmark: a click → mask on an already encoded slice (decoder only), CPU (issue 11).

For each image size: the slice is encoded once (``segment_2d`` with a box), then N clicks are
timed through ``engine.segment_2d(slice, [Prompt(points=...)])`` (the cache hit path: prompt
coercion and checks, intensity mapping, the embedding lookup by content, prompt encoder, mask
decoder, upsampling to the slice size and thresholding). In the same calls, forward hooks time
SAM2's own prompt encoder + mask decoder. Printed per size: median wall per click, median decoder
time, and their ratio (goal <= 1.2), plus the multimask (three candidates) variant. Goals:
<= 50 ms per click at image size 512, <= 150 ms at 1024. Weights are random (same compute).

"Slice shown → box placed → mask" (issue 19, ``--shown N``): the viewer stops on a slice (first
directly, then after scrolling past three slices 20 ms apart), each shown with
:class:`polypsam.prefetch.Prefetcher` (the background encoding of the slice on screen, cancelled
and replaced when the slice changes);
after one encoder time (a cold encoding of another slice timed just before, in the same trial) a
box is placed on the slice shown and ``segment_2d`` is timed until the mask is back. Printed: median box → mask
wall (goal <= 100 ms at 512), the same for a box on a slice never shown (cold, encoder included),
how many boxes still waited for their slice's encoding, and the encodings begun/finished per
trial (the passed-over slices' are cancelled).

Example::

    python benchmarks/bench_click.py --sizes 512 1024 --clicks 30
    python benchmarks/bench_click.py --sizes 512 --clicks 0 --shown 10 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_propagation import ForwardTimer, WINDOW, build_engine, make_volume  # noqa: E402


def measure(engine, image, clicks: int, multimask: bool) -> dict:
    import torch

    from polypsam.engine import Prompt
    from polypsam.preprocess import Window

    window = Window(*WINDOW)
    h, w = image.shape
    rng = np.random.default_rng(1)
    timer = ForwardTimer(engine.model)
    walls, decoder = [], []
    try:
        for i in range(clicks + 3):
            points = [(float(rng.uniform(0.3, 0.6) * w), float(rng.uniform(0.3, 0.6) * h))]
            labels = [1]
            if i % 2:  # every other click adds an exclude point, as a refinement would
                points.append((float(rng.uniform(0.0, 0.2) * w), float(rng.uniform(0.0, 0.2) * h)))
                labels.append(0)
            before = timer.total
            start = time.perf_counter()
            (res,) = engine.segment_2d(image, [Prompt(points=points, labels=labels)],
                                       intensity=window, multimask=multimask)
            wall = time.perf_counter() - start
            if i >= 3:  # first calls warm torch's allocator
                walls.append(wall)
                decoder.append(timer.total - before)
    finally:
        timer.remove()
    assert timer.per_module["image_encoder"] == 0.0, "a click ran the image encoder"
    wall_ms, dec_ms = statistics.median(walls) * 1e3, statistics.median(decoder) * 1e3
    return {"multimask": multimask, "clicks": clicks, "wall_ms": round(wall_ms, 2),
            "decoder_ms": round(dec_ms, 2), "ratio": round(sum(walls) / sum(decoder), 3),
            "torch_threads": torch.get_num_threads()}


def measure_shown(engine, volume, slices, trials: int, scroll: int) -> dict:
    """Slices shown (``scroll`` passed over 20 ms apart, then one stopped on) → box after one
    encoder time → mask. ``slices`` yields indices of slices never given to the engine."""
    import torch

    from polypsam.geometry import Box
    from polypsam.prefetch import Prefetcher
    from polypsam.preprocess import Window

    window = Window(*WINDOW)
    h, w = volume.shape[1:]
    box = Box(w * 0.3, h * 0.35, w * 0.6, h * 0.65)
    encoder_times = []
    counts = {"begun": 0, "finished": 0}

    def count(name):
        return lambda *_: counts.__setitem__(name, counts[name] + 1)

    enc = engine.model.image_encoder
    hooks = [enc.register_forward_pre_hook(count("begun")),
             enc.register_forward_hook(count("finished"))]
    prefetcher = Prefetcher()
    shown, cold, waited = [], [], []
    try:
        for trial in range(trials + 1):
            start = time.perf_counter()  # one encoder time, now (the shared machine's load drifts)
            engine.encode(volume.array[next(slices)], intensity=window)
            encoder_s = time.perf_counter() - start
            for _ in range(scroll):  # scrolling past slices
                prefetcher.show(engine, volume.array[next(slices)], intensity=window)
                time.sleep(0.02)
            k = next(slices)
            prefetcher.show(engine, volume.array[k], intensity=window)
            time.sleep(encoder_s)  # the slice has been on screen for one encoder time
            waited.append(not prefetcher.current.finished)
            start = time.perf_counter()
            engine.segment_2d(volume.array[k], [box], intensity=window)
            wall = time.perf_counter() - start
            start = time.perf_counter()  # the same box on a slice never shown (cold)
            engine.segment_2d(volume.array[next(slices)], [box], intensity=window)
            cold_wall = time.perf_counter() - start
            if trial:  # the first trial warms the allocator
                encoder_times.append(encoder_s)
                shown.append(wall)
                cold.append(cold_wall)
    finally:
        prefetcher.hide()
        for handle in hooks:
            handle.remove()
    per_trial = trials + 1
    counts["begun"] -= 2 * per_trial  # the timed encoding and the cold box of each trial
    counts["finished"] -= 2 * per_trial
    return {"scenario": "slice shown -> box -> mask", "scrolled_past": scroll, "trials": trials,
            "encoder_ms": round(statistics.median(encoder_times) * 1e3, 1),
            "shown_box_ms": round(statistics.median(shown) * 1e3, 2),
            "shown_box_max_ms": round(max(shown) * 1e3, 2),
            "cold_box_ms": round(statistics.median(cold) * 1e3, 2),
            "ratio_shown_over_cold": round(statistics.median(shown) / statistics.median(cold), 3),
            "box_waited_for_encoding": sum(waited[1:]),
            "encodings_begun_per_trial": round(counts["begun"] / per_trial, 2),
            "encodings_finished_per_trial": round(counts["finished"] / per_trial, 2),
            "torch_threads": torch.get_num_threads()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[512, 1024])
    parser.add_argument("--slice-size", type=int, default=512, help="CT slice size (pixels)")
    parser.add_argument("--clicks", type=int, default=30)
    parser.add_argument("--shown", type=int, default=10,
                        help="trials of 'slice shown -> box -> mask' (0: skip)")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's); 1 is steadier on a shared machine")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from polypsam.engine import Prompt
    from polypsam.preprocess import Window

    image = make_volume(1, args.slice_size).array[0]
    for size in args.sizes:
        engine = build_engine(size, args.checkpoint, args.precision)
        engine.segment_2d(image, [Prompt(box=(100, 100, 300, 300))], intensity=Window(*WINDOW))
        runs = engine.encoder_runs
        for multimask in ((False, True) if args.clicks else ()):
            out = measure(engine, image, args.clicks, multimask)
            out.update(image_size=size, slice=list(image.shape),
                       encoder_runs_during_clicks=engine.encoder_runs - runs,
                       device=os.environ.get("BENCH_DEVICE", "cpu"))
            print(json.dumps(out), flush=True)
        if args.shown:
            # distinct slices (the CT has 112): each scenario uses (scroll + 3) per trial
            volume = make_volume(1 + 9 * (args.shown + 1), args.slice_size)
            slices = iter(range(1, volume.shape[0]))  # slice 0 is the clicks' image, encoded
            for scroll in (0, 3):
                out = measure_shown(engine, volume, slices, args.shown, scroll)
                out.update(image_size=size, slice=list(image.shape),
                           device=os.environ.get("BENCH_DEVICE", "cpu"))
                print(json.dumps(out), flush=True)
        engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
