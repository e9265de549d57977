"""Where a propagation process's memory goes before any slice is tracked (fixed costs).

Prints resident memory (VmRSS) and peak (ru_maxrss) after each step in one process: importing
torch, building the engine (random-weight SAM2.1 tiny), one 2-D encoding, and tracking 4 slices.
``--with-torchvision`` also imports torchvision after torch, to show what it would cost (PolypSAM
does not import it; sam2's ``SAM2ImagePredictor`` would).

    python benchmarks/probe_fixed_memory.py --image-size 512
"""

from __future__ import annotations

import argparse
import resource
import sys
from pathlib import Path


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def report(step: str) -> None:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{step:28s} RSS {rss_mb():7.0f} MB   peak {peak:7.0f} MB", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--image-size", type=int, default=512)
    p.add_argument("--with-torchvision", action="store_true")
    args = p.parse_args()
    import warnings

    warnings.filterwarnings("ignore")
    report("start")
    import torch  # noqa: F401

    report(f"import torch {torch.__version__}")
    if args.with_torchvision:
        import torchvision  # noqa: F401

        report("import torchvision")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_propagation as bench
    from polypsam.engine import FramePrompt
    from polypsam.preprocess import Window

    engine = bench.build_engine(args.image_size, None)
    report("engine built")
    volume = bench.make_volume(4, 256)
    window = Window(*bench.WINDOW)
    res = engine.segment_2d(volume.array[1], [bench.bench_box(256)], intensity=window)
    report("first 2-D encoding")
    for _ in engine.track(volume.array, [FramePrompt(frame=1, obj_id=1, mask=res[0].mask)],
                          start_frame=1, intensity=window):
        pass
    report("tracked 3 slices")
    print(f"torchvision imported: {'torchvision' in sys.modules}")


if __name__ == "__main__":
    main()
