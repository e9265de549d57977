"""The main job on a sensible default: segment a sample colonoscopy-like frame from its box.

Writes the README's sample inputs into ``out/`` (made here, no data needed): ``sample_frame.png``
(a synthetic polyp-like frame, 384x288) and ``sample_video.mp4`` (five frames of it, the polyp
drifting), then segments the frame (``out/demo_mask.png``, ``out/demo_overlay.png``).

Uses SAM2.1 tiny from the user cache (downloaded with SHA256 pinning when the internet is
reachable). Where the weights cannot be had (an offline machine), it says so and, unless
``--no-fallback`` is given, runs the same pipeline on a random-weight SAM2.1 tiny checkpoint
(``out/random_sam2.1_hiera_tiny.pt``, with a sidecar naming its config, so ``--checkpoint PATH``
alone loads it) so the installation can be checked end to end; those masks are meaningless and
the run says so, on the terminal and on the overlay itself (``--random-weights`` chooses them
without trying to download).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
#: The sample frame's polyp box (x0 y0 x1 y1, pixels), as the README's examples give it.
SAMPLE_BOX = (120, 90, 240, 210)
SAMPLE_SIZE = (288, 384)  # rows, columns: CVC-ClinicDB's frame size
VIDEO_FRAMES = 5
VIDEO_STEP = 4  # pixels the polyp moves right and down per frame
RANDOM_NOTE = "RANDOM WEIGHTS: a pipeline check only; these masks mean nothing"


def synthetic_frame(shift: int = 0, seed: int = 0) -> np.ndarray:
    """A colonoscopy-like RGB frame: reddish mucosa, darker towards the edges, and a paler
    round polyp centred at (180, 150) + ``shift`` (radius 60, inside :data:`SAMPLE_BOX` at 0)."""
    rows, cols = SAMPLE_SIZE
    yy, xx = np.mgrid[:rows, :cols].astype(np.float32)
    rng = np.random.default_rng(seed)
    vignette = 1.0 - 0.45 * (((yy - rows / 2) / rows) ** 2 + ((xx - cols / 2) / cols) ** 2) * 4
    frame = np.stack([150 * vignette, 70 * vignette, 60 * vignette], axis=-1)
    inside = (yy - 150 - shift) ** 2 + (xx - 180 - shift) ** 2 < 60 ** 2
    shade = 1.0 - 0.25 * ((yy - 120 - shift) ** 2 + (xx - 160 - shift) ** 2) / (80 ** 2)
    frame[inside] = np.stack([230 * shade, 150 * shade, 140 * shade], axis=-1)[inside]
    frame += rng.normal(0.0, 4.0, frame.shape)
    return np.clip(frame, 0, 255).astype(np.uint8)


def write_samples(out: Path) -> tuple[Path, Path]:
    """Write ``out/sample_frame.png`` and ``out/sample_video.mp4`` (same content every time)."""
    from PIL import Image

    frame = out / "sample_frame.png"
    Image.fromarray(synthetic_frame()).save(frame)
    video = out / "sample_video.mp4"
    write_video([synthetic_frame(i * VIDEO_STEP, seed=i) for i in range(VIDEO_FRAMES)], video)
    return frame, video


def write_video(frames: list[np.ndarray], path: Path, fps: int = 5) -> None:
    """An MPEG-4 video of ``frames`` (PyAV, installed by set-up), written atomically."""
    import av

    tmp = path.with_name(path.name + ".partial.mp4")
    with av.open(str(tmp), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = 4_000_000
        for rgb in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    tmp.replace(path)


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
    path = random_checkpoint(out)
    print("[demo] WARNING: running on RANDOM weights to check the pipeline; masks are meaningless."
          + ("" if random_weights else
             " Place sam2.1_hiera_tiny.pt at the path above for real results.")
          + f" Other commands take them with --checkpoint {path}", file=sys.stderr)
    return ["--checkpoint", str(path)], True


def random_checkpoint(out: Path) -> Path:
    """``out/random_sam2.1_hiera_tiny.pt`` (made once) with a sidecar naming its config and image
    size, so ``--checkpoint PATH`` alone loads it; the sidecar says the weights are random."""
    from polypsam.checkpoints import checkpoint_sidecar_path, write_checkpoint_sidecar
    from polypsam.sam2_adapter.model import build_model, save_checkpoint

    path = out / "random_sam2.1_hiera_tiny.pt"
    if not path.is_file():
        save_checkpoint(build_model(CONFIG, None, "cpu"), path)
    if not checkpoint_sidecar_path(path).is_file():
        write_checkpoint_sidecar(path, {"config": CONFIG, "image_size": 1024,
                                        "weights": RANDOM_NOTE + " (scripts/demo.py)"})
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
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

    image, video = write_samples(args.out)
    print(f"[demo] sample inputs: {image}, {video}")
    mask, overlay = args.out / "demo_mask.png", args.out / "demo_overlay.png"
    model, random = model_arguments(not args.no_fallback, args.out, args.random_weights)
    argv = ["segment", str(image), "--box", *map(str, SAMPLE_BOX), "-o", str(mask),
            "--overlay", str(overlay), *model]
    print("[demo] polypsam " + " ".join(argv))
    code = cli_main(argv)
    if code == 0 and random:  # the overlay says so too
        mark_random(image, mask, list(SAMPLE_BOX), overlay)
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
