"""The main job on a sensible default: segment a colonoscopy frame from its box, write out/.

Uses SAM2.1 tiny from the user cache (downloaded with SHA256 pinning when the internet is
reachable). Where the weights cannot be had (an offline machine), it says so and, unless
``--no-fallback`` is given, runs the same pipeline on a random-weight SAM2.1 tiny checkpoint so
the installation can be checked end to end; those masks are meaningless and the run says so,
on the terminal and on the overlay itself (``--random-weights`` chooses them without trying to
download).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def sample_frame(out: Path) -> tuple[Path, list[int]]:
    """A real CVC-ClinicDB frame from ../shared/data when present, else a synthetic frame."""
    manifest = SHARED / "manifest.json"
    if manifest.is_file():
        entry = next(e for e in json.loads(manifest.read_text())["polyp"]
                     if e["dataset"] == "cvc_clinicdb")
        return SHARED / entry["image"], entry["bbox_xyxy"]
    from PIL import Image

    yy, xx = np.mgrid[:288, :384]
    frame = np.full((288, 384, 3), (150, 70, 60), dtype=np.uint8)
    frame[(yy - 150) ** 2 + (xx - 180) ** 2 < 60 ** 2] = (230, 150, 140)
    path = out / "synthetic_frame.png"
    Image.fromarray(frame).save(path)
    return path, [120, 90, 240, 210]


RANDOM_NOTE = "RANDOM WEIGHTS: a pipeline check only; these masks mean nothing"


def model_arguments(allow_fallback: bool, out: Path,
                    random_weights: bool = False) -> tuple[list[str], bool]:
    """``(the CLI's model options, whether the weights are random)``."""
    from polypsam.checkpoints import resolve_checkpoint
    from polypsam.errors import CheckpointError

    try:
        if not random_weights:
            resolve_checkpoint("sam2.1_hiera_tiny", download=True)
            return ["--checkpoint", "sam2.1_hiera_tiny"], False
    except CheckpointError as exc:
        print(f"[demo] real weights unavailable: {exc}", file=sys.stderr)
        if not allow_fallback:
            raise SystemExit(2)
    from polypsam.sam2_adapter.model import build_model, save_checkpoint

    path = out / "random_sam2.1_hiera_tiny.pt"
    if not path.is_file():
        save_checkpoint(build_model("configs/sam2.1/sam2.1_hiera_t.yaml", None, "cpu"), path)
    print("[demo] WARNING: running on RANDOM weights to check the pipeline; masks are meaningless."
          + ("" if random_weights else
             " Place sam2.1_hiera_tiny.pt at the path above for real results."), file=sys.stderr)
    return ["--checkpoint", str(path), "--config", "configs/sam2.1/sam2.1_hiera_t.yaml"], True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=REPO / "out")
    parser.add_argument("--no-fallback", action="store_true",
                        help="fail instead of using random weights when real ones are missing")
    parser.add_argument("--random-weights", action="store_true",
                        help="use random weights without trying to download (a pipeline check)")
    args = parser.parse_args()
    if args.random_weights and args.no_fallback:
        parser.error("--random-weights and --no-fallback exclude each other")
    args.out.mkdir(parents=True, exist_ok=True)
    from polypsam.cli import main as cli_main

    image, box = sample_frame(args.out)
    mask, overlay = args.out / "demo_mask.png", args.out / "demo_overlay.png"
    model, random = model_arguments(not args.no_fallback, args.out, args.random_weights)
    argv = ["segment", str(image), "--box", *map(str, box), "-o", str(mask),
            "--overlay", str(overlay), *model]
    print("[demo] polypsam " + " ".join(argv))
    code = cli_main(argv)
    if code == 0 and random:  # the overlay says so too
        mark_random(image, mask, box, overlay)
    if code == 0:
        print(f"[demo] look at {overlay}")
    return code


def mark_random(image: Path, mask: Path, box: list[int], overlay: Path) -> None:
    """Draw the overlay again with the legend saying the weights are random (also in its text)."""
    from polypsam import io
    from polypsam.geometry import Box
    from polypsam.overlay import draw_overlay

    picture = draw_overlay(io.read_image(image), io.read_image(mask), boxes=[Box(*box)],
                           note=RANDOM_NOTE)
    io.write_png(picture, overlay, text={"polypsam:note": RANDOM_NOTE})


if __name__ == "__main__":
    sys.exit(main())
