"""Benchmark of fine-tuning: seconds per epoch with cached encoder features ÷ without (issue 14).

Same data, seed, model (SAM2.1 tiny by default, random weights saved in the official layout and
loaded back) and recipe (frozen image encoder, prompt encoder + mask decoder trained, batch 4):
one trainer feeds the decoder the frozen encoder's features from the cache (stored float16, held in
memory as float32 after the first read, as ``polypsam finetune`` does on a CPU),
the other runs the frozen encoder every step. An epoch is what ``polypsam finetune`` runs per
epoch (:func:`polypsam.finetune.train.train_epoch`, then validation, which reads cached float32
features in both cases). The two kinds of epoch alternate in one process, so load from other
jobs on a shared machine hits both alike; the ratio is the median of the per-round ratios.
The one-time feature computation is printed separately. Goal: ratio <= 0.1 at image size 512.

Data: the shared polyp images (Kvasir-SEG and CVC-ClinicDB, ../shared/data/polyp), copied into
one images/ + masks/ folder.

Example::

    python benchmarks/bench_finetune.py --image-size 512 --rounds 3 --threads 1
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "PolypSAMLib"))


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
    parser.add_argument("--config", default="configs/sam2.1/sam2.1_hiera_t.yaml")
    parser.add_argument("--rounds", type=int, default=3, help="epochs of each kind, alternating")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--shared-data", type=Path, default=REPO.parent / "shared" / "data")
    args = parser.parse_args()

    import torch

    from polypsam.checkpoints import sha256_file
    from polypsam.finetune import FinetuneConfig
    from polypsam.finetune.data import load_dataset, split_samples
    from polypsam.finetune.embedding_cache import EmbeddingCache
    from polypsam.finetune.train import Trainer, make_optimizer, train_epoch, trainable_names
    from polypsam.sam2_adapter.model import build_model, save_checkpoint, select_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = polyp_folder(args.shared_data, tmp / "data")
        torch.manual_seed(0)
        base = save_checkpoint(build_model(args.config, None, "cpu"), tmp / "base.pt")
        model = build_model(args.config, base, device, image_size=args.image_size)
        trainable_names(model, "decoder+prompt")
        train_set, val_set = split_samples(load_dataset(data), 0.2, 0)
        cfg = FinetuneConfig(data=str(data), output=str(tmp / "x.pt"), image_size=args.image_size)
        common = dict(root=tmp / "features", base_sha256=sha256_file(base), config=args.config,
                      image_size=args.image_size, device=device)
        train_cache = EmbeddingCache(model, dtype="float16", **common)
        val_cache = EmbeddingCache(model, dtype="float32", **common)
        began = time.perf_counter()
        train_keys, val_keys = train_cache.prepare(train_set), val_cache.prepare(val_set)
        features = time.perf_counter() - began
        trainers = {}
        for cached in (True, False):
            trainer = Trainer(model, replace(cfg, cache_features=cached),
                              image_size=args.image_size, device=device, train_set=train_set,
                              val_set=val_set, train_cache=train_cache if cached else None,
                              val_cache=val_cache)
            trainer.train_keys, trainer.val_keys = train_keys, val_keys
            trainers[cached] = (trainer, make_optimizer(model, cfg), torch.Generator().manual_seed(0))

        def epoch(cached: bool) -> float:
            trainer, optimizer, generator = trainers[cached]
            start = time.perf_counter()
            train_epoch(trainer, optimizer, generator, cfg.batch_size)
            trainer.validate()
            if device.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - start

        epoch(True), epoch(False)  # warm-up round
        times = {True: [], False: []}
        for _ in range(args.rounds):
            for cached in (True, False):
                times[cached].append(epoch(cached))
        ratios = [c / e for c, e in zip(times[True], times[False])]
        ratio = statistics.median(ratios)
        prompts = sum(len(s.boxes) for s in train_set)
        print(f"config {args.config}, image size {args.image_size}, {len(train_set)} training images"
              f" ({prompts} box prompts), {len(val_set)} validation images, torch"
              f" {torch.__version__}, threads {torch.get_num_threads()}, device {device}")
        print(f"one-time feature computation: {features:.2f} s for {len(train_set) + len(val_set)}"
              " images")
        print("seconds per epoch, cached features:", [round(t, 3) for t in times[True]])
        print("seconds per epoch, encoder each step:", [round(t, 3) for t in times[False]])
        print(f"ratio cached / encoder each step (median of rounds {[round(r, 3) for r in ratios]}):"
              f" {ratio:.3f} (goal <= 0.1: {'met' if ratio <= 0.1 else 'missed'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
