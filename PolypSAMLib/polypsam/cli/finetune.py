"""``polypsam finetune``: fine-tune SAM2 on annotated frames or CT slices (Polyps-SAM2 recipe)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .options import EXIT_INTERRUPTED


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "finetune", help="fine-tune SAM2 on your annotated frames or CT slices",
        description="Fine-tune SAM2's prompt encoder and mask decoder (frozen image encoder, its"
                    " features cached on disk) with Dice + BCE, AdamW, and a learning rate that"
                    " halves when validation Dice stops improving. Writes the best checkpoint in"
                    " SAM2's official layout, a JSON sidecar (OUT.pt.json: config, image size,"
                    " base checkpoint, metrics), OUT.metrics.csv and OUT.metrics.png.")
    p.add_argument("data", type=Path,
                   help="folder with images/ and masks/ (Kvasir-SEG/CVC-ClinicDB layout; volumes"
                        " with labelmaps work too) or a manifest CSV with columns image,mask[,split]")
    p.add_argument("-o", "--output", type=Path, required=True, help="best checkpoint, .pt")
    p.add_argument("--checkpoint", "--base", dest="base", default="sam2.1_hiera_tiny",
                   help="checkpoint to start from: registry name or .pt file, as --checkpoint of"
                        " the other commands; --base is the older spelling (default: %(default)s)")
    p.add_argument("--config", help="SAM2 config of a custom --checkpoint (else from its sidecar)")
    p.add_argument("--image-size", type=int, default=None,
                   help="model input size (default: the base checkpoint's)")
    p.add_argument("--epochs", type=int, default=200, help="passes over the training data (default: 200)")
    p.add_argument("--batch-size", type=int, default=4, help="images per step (default: 4)")
    p.add_argument("--lr", type=float, default=1e-4,
                   help="AdamW learning rate (default: %(default)s)")
    p.add_argument("--min-lr", type=float, default=1e-5,
                   help="the learning rate halves on a validation-Dice plateau down to this"
                        " (default: %(default)s)")
    p.add_argument("--patience", type=int, default=10,
                   help="epochs without a better validation Dice before the LR halves"
                        " (default: %(default)s)")
    split = p.add_mutually_exclusive_group()
    split.add_argument("--val-split", type=float, default=0.2,
                       help="fraction of images (of volumes, for CT) held out (default: 0.2)")
    split.add_argument("--val", type=Path, default=None, help="separate validation data")
    p.add_argument("--train", choices=("decoder", "decoder+prompt", "all"), default="decoder+prompt",
                   help="what is trained (default: %(default)s; 'all' also trains the image"
                        " encoder and runs it every step: a GPU job)")
    p.add_argument("--augment", action="store_true",
                   help="Gaussian blur and colour jitter; flips and affine scale/shift on images"
                        " and masks together (runs the encoder every step)")
    p.add_argument("--box-jitter", type=float, default=0.0,
                   help="move training boxes by Gaussian noise of this fraction of their side,"
                        " as in SAM's training, e.g. 0.1 (default: %(default)s: off)")
    p.add_argument("--window", default=None,
                   help="intensity of scalar images (CT volumes, grey frames): abdomen |"
                        " soft_tissue | lung | bone | brain, LEVEL,WIDTH or"
                        " percentile[:LOW,HIGH] (default: abdomen when the data holds volumes,"
                        " else percentile). Recorded in the sidecar; inference with the"
                        " checkpoint applies it unless --window")
    p.add_argument("--label", type=int, default=None,
                   help="labelmap value of the lesion in volumes (default: any non-zero)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the split, batch order, jitter and augmentation"
                        " (default: %(default)s)")
    p.add_argument("--device", default="auto",
                   help="auto (cuda, mps, cpu), cpu, cuda, cuda:N, mps (default: %(default)s)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the last finished epoch (state in OUT.pt.state/)")
    p.add_argument("--overwrite", action="store_true",
                   help="start again where OUT.pt or its saved state exist, deleting them (without"
                        " --resume or --overwrite, an earlier run at OUT.pt is refused)")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="where image features are cached (default: PolypSAM's cache directory)")
    p.add_argument("--cache-dtype", choices=("float16", "float32"), default="float16",
                   help="storage type of cached training features (default: %(default)s)")
    p.add_argument("--no-feature-cache", action="store_true",
                   help="run the frozen encoder every step instead of caching its features")
    p.add_argument("--no-download", action="store_true",
                   help="never download base weights; fail if they are not in the cache")
    p.set_defaults(handler=run_finetune)


def run_finetune(args: argparse.Namespace) -> int:
    from ..finetune import FinetuneConfig, finetune

    cfg = FinetuneConfig(
        data=str(args.data), output=str(args.output), base=args.base, config=args.config,
        image_size=args.image_size, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        min_lr=args.min_lr, patience=args.patience, val_split=args.val_split,
        val=str(args.val) if args.val else None, train=args.train, augment=args.augment,
        box_jitter=args.box_jitter, seed=args.seed, device=args.device, resume=args.resume,
        overwrite=args.overwrite,
        window=args.window, label=args.label,
        cache_dir=str(args.cache_dir) if args.cache_dir else None, cache_dtype=args.cache_dtype,
        cache_features=not args.no_feature_cache,
        allow_download=not args.no_download)
    try:
        result = finetune(cfg)
    except KeyboardInterrupt:
        print(f"polypsam: interrupted; {args.output} and its state hold the last finished epoch:"
              " run the same command with --resume to continue", file=sys.stderr)
        return EXIT_INTERRUPTED
    best = next(r for r in result.history if r["epoch"] == result.best_epoch)
    print(f"best epoch {result.best_epoch}: validation Dice {best['val_dice']:.4f},"
          f" IoU {best['val_iou']:.4f}")
    print(f"wrote {result.checkpoint} (+ {result.sidecar.name}, {result.metrics_csv.name})")
    recorded = json.loads(result.sidecar.read_text(encoding="utf-8")).get("intensity")
    if recorded:
        print(f"scalar images were mapped with {recorded['description']}: inference with this"
              " checkpoint applies it unless --window says otherwise")
    return 0
