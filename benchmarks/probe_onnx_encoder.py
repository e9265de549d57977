"""Probe (issue 19): would ONNX Runtime (fp32) make SAM2's CPU path faster? Not shipped.

Exports SAM2.1 tiny's image encoder (``forward_image``: Hiera + FPN neck + the decoder's
high-resolution projections) to ONNX in a temporary folder and times it against PyTorch eager on
the same input, alternating the two, ``--repeats`` times, in one process with ``--threads``
threads each (medians; the first call of each is a warm-up). Then tries to export memory attention
(its RoPE uses complex numbers) at the shapes of a steady tracking step and reports the outcome.
Weights are random (compute is the same as with real weights).

Needs ``pip install onnx onnxruntime`` (not in PolypSAM's requirements: the backend did not pay,
see BENCHMARKS.md)::

    python benchmarks/probe_onnx_encoder.py --image-size 512 --threads 1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
import sys
import time
import warnings
from pathlib import Path

CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"


def encoder_module(model):
    import torch

    class Encoder(torch.nn.Module):
        def __init__(self, model) -> None:
            super().__init__()
            self.model = model

        def forward(self, x):
            out = self.model.forward_image(x)
            return tuple(out["backbone_fpn"]) + tuple(out["vision_pos_enc"])

    return Encoder(model).eval()


def session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def probe_encoder(model, size: int, threads: int, repeats: int, folder: Path) -> dict:
    import torch

    encoder = encoder_module(model)
    x = torch.randn(1, 3, size, size)
    path = folder / f"encoder_{size}.onnx"
    start = time.perf_counter()
    with torch.no_grad():
        torch.onnx.export(encoder, (x,), str(path), opset_version=17, dynamo=False)
    export_s = time.perf_counter() - start
    sess = session(path, threads)
    name = sess.get_inputs()[0].name
    torch_s, ort_s = [], []
    with torch.inference_mode():
        reference = encoder(x)
        for _ in range(repeats + 1):
            start = time.perf_counter()
            encoder(x)
            torch_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            outputs = sess.run(None, {name: x.numpy()})
            ort_s.append(time.perf_counter() - start)
    error = max(float((torch.from_numpy(o) - r).abs().max() / r.abs().max())
                for o, r in zip(outputs, reference))
    t, o = statistics.median(torch_s[1:]), statistics.median(ort_s[1:])
    return {"part": "image encoder", "export_s": round(export_s, 1), "torch_ms": round(t * 1e3, 1),
            "onnxruntime_ms": round(o * 1e3, 1), "speedup": round(t / o, 3),
            "max_relative_error": float(f"{error:.2e}")}


@contextlib.contextmanager
def quiet_stdout():
    """Standard output (file descriptor 1, C++ writers included) sent to /dev/null."""
    sys.stdout.flush()
    saved = os.dup(1)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 1)
        try:
            yield
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)


def probe_memory_attention(model, size: int, folder: Path) -> dict:
    """Export memory attention at a steady step's shapes (7 mask memories, 16 object pointers)."""
    import torch

    feat = size // 16
    d, mem_dim = model.memory_attention.d_model, model.mem_dim
    curr = torch.randn(feat * feat, 1, d)
    n_ptr = 16 * (d // mem_dim)
    memory = torch.randn(7 * feat * feat + n_ptr, 1, mem_dim)

    class Attention(torch.nn.Module):
        def __init__(self, attention) -> None:
            super().__init__()
            self.attention = attention

        def forward(self, curr, curr_pos, memory, memory_pos):
            return self.attention(curr=curr, curr_pos=curr_pos, memory=memory,
                                  memory_pos=memory_pos, num_obj_ptr_tokens=n_ptr)

    module = Attention(model.memory_attention).eval()
    try:
        with torch.no_grad(), quiet_stdout():  # a failed export prints its whole graph
            torch.onnx.export(module, (curr, torch.randn_like(curr), memory,
                                       torch.randn_like(memory)),
                              str(folder / "memory_attention.onnx"), opset_version=17,
                              dynamo=False)
    except Exception as exc:  # noqa: BLE001 - the outcome is what this probe reports
        return {"part": "memory attention", "exported": False,
                "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
    return {"part": "memory attention", "exported": True}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import onnxruntime
    import torch

    from polypsam.sam2_adapter.model import build_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(CONFIG, None, "cpu", image_size=args.image_size)
    with tempfile.TemporaryDirectory() as folder:
        for result in (probe_encoder(model, args.image_size, args.threads, args.repeats,
                                     Path(folder)),
                       probe_memory_attention(model, args.image_size, Path(folder))):
            result.update(image_size=args.image_size, threads=args.threads,
                          torch=torch.__version__, onnxruntime=onnxruntime.__version__)
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
