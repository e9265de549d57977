"""Benchmark of key-slice propagation (polypsam.propagation + polypsam.sam2_adapter.video) against SAM2's path.

Prints three measurements (issue 3):

(a) overhead: wall time of ``propagate`` per slice / time spent inside SAM2's own forward calls
    (image encoder, prompt encoder + mask decoder, memory attention, memory encoder), measured
    with forward pre-hooks and hooks in the same run. Goal <= 1.15.
(b) memory: peak RSS (``ru_maxrss``) of a fresh process propagating through N_LARGE slices /
    through N_SMALL slices. Goal <= 1.2 (memory O(1) in the number of slices).
(c) official path: the same volume and box through SAM2's own route (slices written as a JPEG
    folder, ``init_state``, ``add_new_points_or_box`` with the box on the key slice,
    ``propagate_in_video`` forward then backward), fresh process each, each warmed up on 4
    slices of its own route: wall ratio (ours / official) goal <= 1.0, peak-RSS ratio goal
    <= 0.5 at N_LARGE slices. Both start from the box and end with a labelmap. ``--concurrent``
    runs the two processes at the same time with ``--threads`` each, so that load from other
    jobs on a shared machine hits both alike.
(d) ``--compare-batches``: ours with ``--encoder-batch N`` against ours encoding one slice at a
    time, N_LARGE slices, two processes at once on a CPU, one after the other on CUDA (wall
    ratio; masks equal on what fraction of voxels).

``--precision`` (auto/fp32/bf16) and ``--encoder-batch`` set PolypSAM's engine. On CUDA
(``BENCH_DEVICE=cuda``) the official path runs as Meta's ``sam2/benchmark.py`` runs it: built by
``build_sam2_video_predictor(..., vos_optimized=True)``, under bfloat16 autocast, TF32 matmuls on
Ampere and later; the (b)/(c) numbers then also report peak GPU memory. There is no ``--backend``:
ONNX Runtime did not pay on the CPU (BENCHMARKS.md, ``probe_onnx_encoder.py``).

Weights are random (compute and memory equal those of real weights). The volume is the
TotalSegmentator example CT from the shared data (resampled in-plane to --slice-size and mirrored
along K to the slice count), or a synthetic volume if that file is absent.

Examples::

    python benchmarks/bench_propagation.py --image-size 512 --overhead-slices 24 --skip-memory --skip-official
    python benchmarks/bench_propagation.py --image-size 256 --small 50 --large 300
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("POLYPSAM_SHARED_DATA", REPO.parent / "shared" / "data"))
CT = DATA / "ct" / "totalsegmentator" / "example_ct.nii.gz"
CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
WINDOW = (40.0, 400.0)  # abdomen


def make_volume(n_slices: int, size: int):
    """``n_slices`` x size x size int16 CT (real CT mirrored along K) and its geometry."""
    from polypsam.geometry import Volume, VolumeGeometry

    if CT.is_file():
        import SimpleITK as sitk

        arr = sitk.GetArrayFromImage(sitk.ReadImage(str(CT))).astype(np.int16)
    else:  # synthetic: a moving bright disc in noise
        rng = np.random.default_rng(0)
        arr = rng.normal(0, 30, size=(64, 128, 128)).astype(np.int16)
        yy, xx = np.mgrid[:128, :128]
        for k in range(64):
            arr[k][(yy - 64) ** 2 + (xx - 50 - k // 2) ** 2 < 300] = 120
    k_src, j_src, i_src = arr.shape
    period = 2 * k_src - 2
    ks = np.arange(n_slices) % period
    ks = np.where(ks < k_src, ks, period - ks)
    js = (np.arange(size) * j_src // size).clip(0, j_src - 1)
    is_ = (np.arange(size) * i_src // size).clip(0, i_src - 1)
    vol = arr[ks][:, js][:, :, is_]
    return Volume(np.ascontiguousarray(vol), VolumeGeometry(spacing=(0.8, 0.8, 2.0)))


def bench_box(size: int):
    from polypsam.geometry import Box

    return Box(size * 0.3, size * 0.35, size * 0.6, size * 0.65)


def bench_checkpoint(checkpoint: str | None) -> str:
    """``checkpoint``, or a random-weight tiny checkpoint in the official layout (built once)."""
    import torch

    from polypsam.sam2_adapter.model import build_model, save_checkpoint

    if checkpoint is None:
        path = Path(tempfile.gettempdir()) / "polypsam_bench_tiny_random.pt"
        if not path.is_file():  # concurrent workers may both build it: the write is atomic
            torch.manual_seed(0)
            save_checkpoint(build_model(CONFIG, None, "cpu"), path)
        checkpoint = str(path)
    return checkpoint


def build_engine(image_size: int, checkpoint: str | None, precision: str = "auto",
                 encoder_batch: int = 0):
    from dataclasses import replace

    from polypsam.engines import create_engine, settings_for

    settings = settings_for(bench_checkpoint(checkpoint), CONFIG,
                            device=os.environ.get("BENCH_DEVICE", "cpu"), image_size=image_size,
                            precision=precision)
    return create_engine(replace(settings, encoder_batch=encoder_batch))


def official_model(image_size: int, checkpoint: str | None):
    """``(SAM2VideoPredictor, autocast context factory)`` as SAM2's own code runs it.

    On CUDA: Meta's builder with ``vos_optimized=True``, bfloat16 autocast and TF32 on Ampere+
    (``sam2/benchmark.py``). On the CPU: the same model PolypSAM builds, in float32 (SAM2's
    README uses autocast on CUDA only).
    """
    import contextlib

    import torch

    device = os.environ.get("BENCH_DEVICE", "cpu")
    if not device.startswith("cuda"):
        return build_engine(image_size, checkpoint, precision="fp32").model, contextlib.nullcontext
    from sam2.build_sam import build_sam2_video_predictor

    if torch.cuda.get_device_properties(torch.device(device)).major >= 8:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    feat = image_size // 16
    overrides = [f"++model.image_size={image_size}"] + [
        f"++model.memory_attention.layer.{a}.feat_sizes=[{feat},{feat}]"
        for a in ("self_attention", "cross_attention")]
    model = build_sam2_video_predictor(CONFIG, bench_checkpoint(checkpoint), device=device,
                                       vos_optimized=True, hydra_overrides_extra=overrides)
    return model, lambda: torch.autocast("cuda", dtype=torch.bfloat16)


class ForwardTimer:
    """Accumulates the wall time spent inside chosen modules' forward calls."""

    MODULES = ("image_encoder", "sam_prompt_encoder", "sam_mask_decoder", "memory_attention",
               "memory_encoder")

    def __init__(self, model) -> None:
        import torch

        self.total = 0.0
        self.per_module = {name: 0.0 for name in self.MODULES}
        self._starts: dict[str, float] = {}
        self._sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
        self._handles = []
        for name in self.MODULES:
            module = getattr(model, name)
            self._handles.append(module.register_forward_pre_hook(self._pre(name)))
            self._handles.append(module.register_forward_hook(self._post(name)))

    def _pre(self, name):
        def hook(module, inputs):
            self._sync()
            self._starts[name] = time.perf_counter()
        return hook

    def _post(self, name):
        def hook(module, inputs, output):
            self._sync()
            dt = time.perf_counter() - self._starts.pop(name)
            self.per_module[name] += dt
            self.total += dt
        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def warm_up(engine, size: int) -> None:
    """First calls of torch ops are slow (allocator, kernels): run 4 slices before measuring."""
    from polypsam.preprocess import Window
    from polypsam.propagation import propagate

    propagate(engine, make_volume(4, size), bench_box(size), (0, 3), intensity=Window(*WINDOW))


def run_ours(n: int, size: int, image_size: int, checkpoint: str | None, timers: bool,
             precision: str = "auto", encoder_batch: int = 0, masks_to: str | None = None) -> dict:
    from polypsam.preprocess import Window
    from polypsam.propagation import propagate

    engine = build_engine(image_size, checkpoint, precision, encoder_batch)
    warm_up(engine, size)
    volume = make_volume(n, size)
    timer = ForwardTimer(engine.model) if timers else None
    t0 = time.perf_counter()
    result = propagate(engine, volume, bench_box(size), (0, n - 1), intensity=Window(*WINDOW))
    wall = time.perf_counter() - t0
    if masks_to:
        np.save(masks_to, result.labelmap.array > 0, allow_pickle=False)
    out = {"path": "ours", "slices": n, "wall_s": wall, "per_slice_s": wall / n,
           "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "voxels": int((result.labelmap.array > 0).sum()), "precision": engine.precision,
           "encoder_batch": engine.encoder_batch, **environment()}
    if timer is not None:
        out["forward_s"] = timer.total
        out["overhead"] = wall / timer.total
        out["per_module_s"] = {k: round(v, 3) for k, v in timer.per_module.items()}
        timer.remove()
    return out


def official_route(model, volume, box, autocast) -> tuple[np.ndarray, float]:
    """SAM2's own route on ``volume``: JPEG folder, init_state, the box on the key slice, both
    directions, inside ``autocast()``. Returns the labelmap and the seconds spent writing JPEGs."""
    import torch
    from PIL import Image

    from polypsam.preprocess import Window, to_model_rgb

    n = volume.shape[0]
    window = Window(*WINDOW)
    key = (n - 1) // 2
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        for k in range(n):
            rgb = (to_model_rgb(volume.array[k], window) * 255 + 0.5).astype(np.uint8)
            Image.fromarray(rgb).save(f"{folder}/{k:05d}.jpg", quality=95)
        t_jpeg = time.perf_counter() - t0
        with torch.inference_mode(), autocast():
            state = model.init_state(folder)
            model.add_new_points_or_box(state, key, 1, box=box.as_xyxy())
            labels = np.zeros(volume.shape, np.uint8)
            for reverse in (False, True):
                for k, _ids, logits in model.propagate_in_video(state, start_frame_idx=key,
                                                                reverse=reverse):
                    labels[k] = (logits[0, 0] > 0).cpu().numpy()
    return labels, t_jpeg


def run_official(n: int, size: int, image_size: int, checkpoint: str | None) -> dict:
    """The official route, warmed up on 4 slices of its own (not through PolypSAM's path)."""
    model, autocast = official_model(image_size, checkpoint)
    official_route(model, make_volume(4, size), bench_box(size), autocast)
    volume = make_volume(n, size)
    t0 = time.perf_counter()
    _labels, t_jpeg = official_route(model, volume, bench_box(size), autocast)
    wall = time.perf_counter() - t0
    return {"path": "official", "slices": n, "wall_s": wall, "jpeg_s": t_jpeg,
            "per_slice_s": wall / n,
            "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            **environment()}


def environment() -> dict:
    """What the process ran with: torch build, whether torchvision was ever imported, and on
    CUDA the GPU and its peak memory."""
    import torch

    out = {"torch": torch.__version__, "torchvision_imported": "torchvision" in sys.modules}
    if os.environ.get("BENCH_DEVICE", "cpu").startswith("cuda"):
        out.update(gpu=torch.cuda.get_device_name(),
                   peak_gpu_mb=torch.cuda.max_memory_allocated() / 2**20)
    return out


def worker_command(args: argparse.Namespace, path: str, n: int, timers: bool = False,
                   encoder_batch: int | None = None, masks_to: str | None = None) -> list[str]:
    batch = args.encoder_batch if encoder_batch is None else encoder_batch
    cmd = [sys.executable, __file__, "--worker", path, "--n", str(n), "--slice-size",
           str(args.slice_size), "--image-size", str(args.image_size), "--precision",
           args.precision, "--encoder-batch", str(batch)]
    if masks_to:
        cmd += ["--masks-to", masks_to]
    if args.checkpoint:
        cmd += ["--checkpoint", args.checkpoint]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if timers:
        cmd.append("--timers")
    return cmd


def finish(cmd: list[str], proc: subprocess.Popen) -> dict:
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"worker failed: {' '.join(cmd)}\n{err[-3000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    print(f"  {json.dumps(result)}", flush=True)
    return result


def in_subprocess(args: argparse.Namespace, path: str, n: int, timers: bool = False) -> dict:
    cmd = worker_command(args, path, n, timers)
    return finish(cmd, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))


def concurrently(args: argparse.Namespace, n: int) -> tuple[dict, dict]:
    """Ours and the official path for ``n`` slices, as two processes running at the same time."""
    cmds = [worker_command(args, path, n) for path in ("ours", "official")]
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c in cmds]
    return finish(cmds[0], procs[0]), finish(cmds[1], procs[1])


def compare_batches(args: argparse.Namespace, n: int) -> None:
    """(d) ours with ``--encoder-batch`` against one slice at a time, two processes at once."""
    with tempfile.TemporaryDirectory() as folder:
        paths = [f"{folder}/batch{b}.npy" for b in (args.encoder_batch, 1)]
        cmds = [worker_command(args, "ours", n, encoder_batch=b, masks_to=p)
                for b, p in zip((args.encoder_batch, 1), paths)]
        if os.environ.get("BENCH_DEVICE", "cpu").startswith("cuda"):  # one GPU: one at a time
            batched, single = (finish(c, subprocess.Popen(c, stdout=subprocess.PIPE,
                                                          stderr=subprocess.PIPE, text=True))
                               for c in cmds)
        else:  # a shared CPU: at the same time, so other load hits both alike
            procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True) for c in cmds]
            batched, single = finish(cmds[0], procs[0]), finish(cmds[1], procs[1])
        agree = float((np.load(paths[0]) == np.load(paths[1])).mean())
    print(f"(d) wall encoder batch {batched['encoder_batch']} / one at a time ="
          f" {batched['wall_s'] / single['wall_s']:.3f} ({batched['per_slice_s']:.3f} s/slice vs"
          f" {single['per_slice_s']:.3f}); masks equal on {agree:.6%} of voxels", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image-size", type=int, default=512, help="SAM2 input size (256/512/1024)")
    p.add_argument("--slice-size", type=int, default=256, help="in-plane size of the slices")
    p.add_argument("--overhead-slices", type=int, default=24)
    p.add_argument("--small", type=int, default=50)
    p.add_argument("--large", type=int, default=300)
    p.add_argument("--checkpoint", default=None, help="official-format .pt (default: random tiny)")
    p.add_argument("--skip-overhead", action="store_true")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--skip-official", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch threads per worker process")
    p.add_argument("--concurrent", action="store_true",
                   help="(c): run ours and the official path at the same time (use --threads 1)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="PolypSAM engine precision (the official path runs as SAM2 runs it)")
    p.add_argument("--encoder-batch", type=int, default=0,
                   help="frames PolypSAM encodes together while tracking (0: the device's default)")
    p.add_argument("--compare-batches", action="store_true",
                   help="(d): --encoder-batch against one at a time, two processes at once")
    p.add_argument("--masks-to", help=argparse.SUPPRESS)
    p.add_argument("--worker", choices=("ours", "official"), help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--timers", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:
        import warnings

        import torch

        warnings.filterwarnings("ignore")
        if args.threads:
            torch.set_num_threads(args.threads)
        if args.worker == "ours":
            res = run_ours(args.n, args.slice_size, args.image_size, args.checkpoint, args.timers,
                           args.precision, args.encoder_batch, args.masks_to)
        else:
            res = run_official(args.n, args.slice_size, args.image_size, args.checkpoint)
        print(json.dumps(res))
        return

    import torch

    print(f"torch {torch.__version__}, threads {args.threads or torch.get_num_threads()}, image size"
          f" {args.image_size}, slices {args.slice_size}x{args.slice_size}", flush=True)
    if not args.skip_overhead:
        print(f"(a) overhead, {args.overhead_slices} slices:", flush=True)
        r = in_subprocess(args, "ours", args.overhead_slices, timers=True)
        print(f"(a) overhead = wall / SAM2 forward = {r['overhead']:.3f}  (goal <= 1.15);"
              f" {r['per_slice_s']:.3f} s/slice", flush=True)
    large = None
    if not args.skip_memory:
        print(f"(b) memory, {args.small} vs {args.large} slices (fresh processes):", flush=True)
        small = in_subprocess(args, "ours", args.small)
        large = in_subprocess(args, "ours", args.large)
        print(f"(b) peak RSS {args.large}/{args.small} = {large['maxrss_mb'] / small['maxrss_mb']:.3f}"
              f" ({large['maxrss_mb']:.0f} MB / {small['maxrss_mb']:.0f} MB; goal <= 1.2)", flush=True)
    if args.compare_batches:
        print(f"(d) encoder batch {args.encoder_batch} vs 1, {args.large} slices (two processes"
              " at once):", flush=True)
        compare_batches(args, args.large)
        return
    if not args.skip_official:
        if args.concurrent:
            print(f"(c) ours and official path, {args.large} slices (two processes at once):",
                  flush=True)
            large, official = concurrently(args, args.large)
        else:
            print(f"(c) official path, {args.large} slices (fresh process):", flush=True)
            if large is None:
                large = in_subprocess(args, "ours", args.large)
            official = in_subprocess(args, "official", args.large)
        print(f"(c) wall ours/official = {large['wall_s'] / official['wall_s']:.3f} (goal <= 1.0;"
              f" official incl. {official['jpeg_s']:.1f} s JPEG writing; without it"
              f" {large['wall_s'] / (official['wall_s'] - official['jpeg_s']):.3f});"
              f" peak RSS ours/official = {large['maxrss_mb'] / official['maxrss_mb']:.3f}"
              f" ({large['maxrss_mb']:.0f} MB / {official['maxrss_mb']:.0f} MB; goal <= 0.5)",
              flush=True)


if __name__ == "__main__":
    main()
