"""Benchmark of fine-tuning: seconds per epoch with cached encoder features ÷ without (issue 14).

Both runs use the same data, seed, model (SAM2.1 tiny, random weights saved in the official
layout) and recipe (frozen image encoder, prompt encoder + mask decoder trained, batch size 4);
one feeds the decoder the frozen encoder's features from the on-disk cache, the other runs the
frozen encoder every step (``cache_features=False``). An epoch's time is its training steps plus
validation (validation reads cached float32 features in both runs); the one-time feature
computation of the cached run is printed separately. Goal: ratio <= 0.1 at image size 512.

Data: the shared polyp images (Kvasir-SEG and CVC-ClinicDB, ../shared/data/polyp), copied into
one images/ + masks/ folder.

Example::

    python benchmarks/bench_finetune.py --image-size 512 --epochs 3
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "PolypSAMLib"))
CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"


def polyp_folder(shared: Path, dest: Path) -> Path:
    for sub in ("images", "masks"):
        (dest / sub).mkdir(parents=True)
        for dataset in ("kvasir_seg", "cvc_clinicdb"):
            for f in sorted((shared / "polyp" / dataset / sub).iterdir()):
                shutil.copy(f, dest / sub / f.name)
    return dest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (first is skipped)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--shared-data", type=Path, default=REPO.parent / "shared" / "data")
    args = parser.parse_args()

    import torch

    from polypsam.finetune import FinetuneConfig, finetune
    from polypsam.sam2_model import build_model, save_checkpoint

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = polyp_folder(args.shared_data, tmp / "data")
        torch.manual_seed(0)
        base = save_checkpoint(build_model(CONFIG, None, "cpu"), tmp / "base.pt")
        per_epoch = {}
        for cached in (True, False):
            cfg = FinetuneConfig(data=str(data), output=str(tmp / f"out_{cached}.pt"),
                                 base=str(base), config=CONFIG, image_size=args.image_size,
                                 epochs=args.epochs, device=args.device, seed=0,
                                 cache_dir=str(tmp / "features"), cache_features=cached)
            began = time.perf_counter()
            result = finetune(cfg, progress=False)
            total = time.perf_counter() - began
            epochs = [r["seconds"] for r in result.history]
            steady = epochs[1:] or epochs
            per_epoch[cached] = statistics.median(steady)
            setup = total - sum(epochs)
            print(f"{'cached features' if cached else 'encoder each step'}: epochs {epochs} s;"
                  f" median after the first {per_epoch[cached]:.3f} s; run {total:.1f} s (model"
                  f" build, features, file writing: {setup:.1f} s)")
        ratio = per_epoch[True] / per_epoch[False]
        n = len(list((data / "images").iterdir()))
        print(f"images {n}, image size {args.image_size}, torch {torch.__version__},"
              f" threads {torch.get_num_threads()}, device {args.device}")
        print(f"seconds per epoch, cached / encoder each step: {per_epoch[True]:.3f} /"
              f" {per_epoch[False]:.3f} = {ratio:.3f} (goal <= 0.1: {'met' if ratio <= 0.1 else 'missed'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
