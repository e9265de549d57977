"""Server benchmarks: one-slice round trip vs in-process, and bytes on the wire for a CT volume.

Starts a real ``polypsam serve`` on 127.0.0.1 with a random-weight SAM2.1 tiny checkpoint (the
model's accuracy does not matter here; its cost does). Both processes get the same thread count.

(a) one slice: ``segment_2d`` on distinct slices (every call encodes its image), median time
    through the server ÷ median in-process time; also the same for a repeated slice (cached
    embedding: only the prompt encoder and decoder run, so the HTTP overhead shows most).
(b) wire: a synthetic 512 x 512 x 300 int16 CT, a 60 x 60 x 40 ROI propagated with
    :func:`polypsam.propagation.propagate`: bytes sent and received by the client for the first
    and a repeated request, beside the MedSAM2 plugin's approach (the whole volume as an
    uncompressed ``.npz`` in every request).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_server.py
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "PolypSAMLib"))
sys.path.insert(0, str(REPO / "Testing"))

TINY_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"


def tiny_checkpoint(folder: Path) -> Path:
    import torch

    from polypsam.sam2_adapter.model import build_model, save_checkpoint

    torch.manual_seed(0)
    return save_checkpoint(build_model(TINY_CONFIG, None, "cpu"), folder / "tiny_random.pt")


def synthetic_ct(nk: int = 300, nj: int = 512, ni: int = 512, seed: int = 0) -> np.ndarray:
    """Air around an elliptic body (soft tissue, a spine, a bright lesion), CT-like noise."""
    rng = np.random.default_rng(seed)
    jj, ii = np.mgrid[:nj, :ni]
    body = ((jj - nj / 2) / (nj * 0.38)) ** 2 + ((ii - ni / 2) / (ni * 0.45)) ** 2 < 1
    spine = (jj - nj * 0.7) ** 2 + (ii - ni / 2) ** 2 < (nj * 0.05) ** 2
    vol = np.empty((nk, nj, ni), np.int16)
    for k in range(nk):
        sl = np.full((nj, ni), -1000.0)
        sl[body] = 40 + 20 * np.sin(k / 30.0)
        sl[spine] = 700
        r = 20 + 10 * np.sin(np.pi * k / nk)
        sl[(jj - nj * 0.45) ** 2 + (ii - ni * 0.4) ** 2 < r ** 2] = 120
        noise = rng.normal(0, 12, (nj, ni))
        noise[~body] = rng.normal(0, 3, int((~body).sum()))
        vol[k] = np.round(sl + noise).astype(np.int16)
    return vol


def one_slice(server_url: str, local, args) -> dict:
    from polypsam.server.client import ServerEngine

    remote = ServerEngine(server_url)
    rng = np.random.default_rng(1)
    slices = [rng.normal(0, 40, (args.slice_size, args.slice_size)).astype(np.int16)
              for _ in range(args.repeats + 1)]
    box = [(40, 40, 140, 140)]
    for eng in (local, remote):  # warm-up
        eng.segment_2d(slices[-1], box)

    def timed(eng, images):
        out = []
        for img in images:
            t0 = time.perf_counter()
            eng.segment_2d(img, box)
            out.append(time.perf_counter() - t0)
        return statistics.median(out)

    res = {}
    res["local_new"] = timed(local, slices[:-1])
    res["server_new"] = timed(remote, slices[:-1])
    same = [slices[0]] * args.repeats
    res["local_cached"] = timed(local, same)
    res["server_cached"] = timed(remote, same)
    remote.close()
    return res


def wire_bytes(server_url: str, args) -> dict:
    from polypsam.propagation import propagate
    from polypsam.server.client import ServerEngine

    vol = synthetic_ct(args.slices, args.ct_size, args.ct_size)
    raw = vol.nbytes
    npz = io.BytesIO()
    np.savez(npz, image=vol)  # what the MedSAM2 plugin sends on every request
    k0 = args.slices // 2 - 20
    cy, cx = int(args.ct_size * 0.45), int(args.ct_size * 0.4)
    box = (cx - 30, cy - 30, cx + 29, cy + 29)  # 60 x 60 pixels
    remote = ServerEngine(server_url, timeout=600)
    out = {"raw": raw, "medsam2_request": npz.getbuffer().nbytes}
    for name in ("first", "repeat"):
        s0, v0, r0 = remote.bytes_sent, remote.voxel_bytes_sent, remote.bytes_received
        t0 = time.perf_counter()
        res = propagate(remote, vol, [box], (k0, k0 + 39))
        out[f"{name}_s"] = time.perf_counter() - t0
        out[f"{name}_sent"] = remote.bytes_sent - s0
        out[f"{name}_voxels"] = remote.voxel_bytes_sent - v0
        out[f"{name}_received"] = remote.bytes_received - r0
        out[f"{name}_labelled"] = int((res.labelmap.array > 0).sum())
    remote.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--slice-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--ct-size", type=int, default=512)
    parser.add_argument("--skip-wire", action="store_true")
    parser.add_argument("--skip-slice", action="store_true")
    args = parser.parse_args()

    from server_fixtures import ServerProcess

    from polypsam.engines import engine_for

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = tiny_checkpoint(Path(tmp))
        os.environ["POLYPSAM_CACHE_DIR"] = tmp
        server = ServerProcess(ckpt, extra=("--image-size", str(args.image_size)))
        try:
            if not args.skip_slice:
                local = engine_for(ckpt, TINY_CONFIG, device="cpu", image_size=args.image_size)
                r = one_slice(server.url, local, args)
                local.close()
                print(f"(a) image size {args.image_size}, {args.slice_size}^2 int16 slice,"
                      f" median of {args.repeats}, threads {os.environ.get('OMP_NUM_THREADS')}")
                print(f"    new slice:    in-process {r['local_new'] * 1e3:.1f} ms, server"
                      f" {r['server_new'] * 1e3:.1f} ms, ratio {r['server_new'] / r['local_new']:.3f}")
                print(f"    cached slice: in-process {r['local_cached'] * 1e3:.1f} ms, server"
                      f" {r['server_cached'] * 1e3:.1f} ms, ratio"
                      f" {r['server_cached'] / r['local_cached']:.3f}")
            if not args.skip_wire:
                w = wire_bytes(server.url, args)
                raw = w["raw"]
                print(f"(b) {args.ct_size}x{args.ct_size}x{args.slices} int16 CT ({raw} bytes raw),"
                      " 60x60x40 ROI")
                for name in ("first", "repeat"):
                    print(f"    {name}: sent {w[name + '_sent']} bytes"
                          f" ({100 * w[name + '_sent'] / raw:.2f} % of raw), voxel bytes"
                          f" {w[name + '_voxels']}, received {w[name + '_received']}"
                          f" ({100 * w[name + '_received'] / raw:.3f} %), {w[name + '_s']:.1f} s,"
                          f" {w[name + '_labelled']} voxels labelled")
                print(f"    MedSAM2 plugin: {w['medsam2_request']} bytes per request"
                      f" ({100 * w['medsam2_request'] / raw:.1f} % of raw), every request")
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
