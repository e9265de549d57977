"""Benchmark: a click → mask on an already encoded slice (decoder only), CPU (issue 11).

For each image size: the slice is encoded once (``segment_2d`` with a box), then N clicks are
timed through ``engine.segment_2d(slice, [Prompt(points=...)])`` (the cache hit path: prompt
coercion and checks, intensity mapping, the embedding lookup by content, prompt encoder, mask
decoder, upsampling to the slice size and thresholding). In the same calls, forward hooks time
SAM2's own prompt encoder + mask decoder. Printed per size: median wall per click, median decoder
time, and their ratio (goal <= 1.2), plus the multimask (three candidates) variant. Goals:
<= 50 ms per click at image size 512, <= 150 ms at 1024. Weights are random (same compute).

Example::

    python benchmarks/bench_click.py --sizes 512 1024 --clicks 30
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[512, 1024])
    parser.add_argument("--slice-size", type=int, default=512, help="CT slice size (pixels)")
    parser.add_argument("--clicks", type=int, default=30)
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
        engine = build_engine(size, args.checkpoint)
        engine.segment_2d(image, [Prompt(box=(100, 100, 300, 300))], intensity=Window(*WINDOW))
        runs = engine.encoder_runs
        for multimask in (False, True):
            out = measure(engine, image, args.clicks, multimask)
            out.update(image_size=size, slice=list(image.shape),
                       encoder_runs_during_clicks=engine.encoder_runs - runs,
                       device=os.environ.get("BENCH_DEVICE", "cpu"))
            print(json.dumps(out), flush=True)
        engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
