"""The numeric precision SAM2's forward calls run at, as Meta's own code runs them.

SAM2's README runs every predictor under ``torch.autocast("cuda", dtype=torch.bfloat16)`` and
``sam2/benchmark.py`` also turns on TF32 matmuls on Ampere and later GPUs; SAM2's published
speeds are measured that way. PolypSAM does the same on CUDA by default:

* ``"auto"`` (default): ``"bf16"`` on a CUDA GPU that supports bfloat16, else ``"fp32"`` (the
  CPU and MPS keep float32, so CPU masks are unchanged by default);
* ``"bf16"``: SAM2's forward calls under bfloat16 autocast (CUDA, or the CPU's autocast, which
  runs the very same code and is what the tests use); on CUDA also TF32 matmuls on Ampere+;
* ``"fp32"``: plain float32, no autocast, no TF32.

Only the forward calls run under autocast; masks and scores leave the engine as ``bool`` and
``float`` exactly as in float32.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from ..errors import InvalidInputError

PRECISIONS = ("auto", "fp32", "bf16")


def check_precision(precision: str) -> str:
    """``precision`` lower-cased, or :class:`InvalidInputError` naming the choices."""
    value = (precision or "auto").strip().lower()
    if value not in PRECISIONS:
        raise InvalidInputError(
            f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    return value


def bf16_supported(device) -> bool:
    """Whether bfloat16 autocast is worth using on ``device`` (a CUDA GPU that supports it)."""
    import torch

    return device.type == "cuda" and torch.cuda.is_bf16_supported()


@dataclass(frozen=True)
class Precision:
    """The resolved precision (``"fp32"`` or ``"bf16"``) on one device type."""

    name: str
    device_type: str

    def autocast(self):
        """The context SAM2's forward calls run in: bfloat16 autocast, or nothing for fp32."""
        if self.name != "bf16":
            return contextlib.nullcontext()
        import torch

        return torch.autocast(self.device_type, dtype=torch.bfloat16)


def resolve_precision(precision: str, device) -> Precision:
    """``precision`` (auto/fp32/bf16) on ``device`` (a ``torch.device``) as a :class:`Precision`.

    ``bf16`` on MPS is refused (not measured there; MPS keeps float32). On a CUDA GPU of the
    Ampere generation or later, ``bf16`` also enables TF32 matmuls and convolutions, as
    ``sam2/benchmark.py`` does (a process-wide PyTorch setting).
    """
    value = check_precision(precision)
    if value == "auto":
        value = "bf16" if bf16_supported(device) else "fp32"
    if value == "bf16" and device.type == "mps":
        raise InvalidInputError("precision bf16 is not supported on MPS here: use fp32 (or auto)")
    if value == "bf16" and device.type == "cuda":
        import torch

        if not torch.cuda.is_bf16_supported():
            raise InvalidInputError(f"this GPU ({device}) has no bfloat16 support: use fp32")
        index = device.index if device.index is not None else torch.cuda.current_device()
        if torch.cuda.get_device_properties(index).major >= 8:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
    return Precision(value, device.type)
