"""The wire format shared by the PolypSAM server and its client (standard library + NumPy only).

* Arrays travel as raw C-order bytes, compressed with zstd (the ``zstandard`` wheel, when both
  sides have it) or zlib (standard library, always available): the codec is negotiated through
  the server's capabilities. The dtype is kept (int16 CT stays int16). An array is addressed by
  :func:`content_hash` (SHA-256 of dtype, shape and bytes), so one upload serves every request.
* Masks come back cropped to their bounding box, bit-packed (``np.packbits``) and zlib-compressed.
* Prompts are JSON objects: ``{"box": [x0, y0, x1, y1], "points": [[x, y], ...],
  "labels": [1, 0, ...], "mask": <packed mask>}``; every field is optional, so point and mask
  prompts travel the same way as boxes.
* Intensity: ``{"kind": "window", "level", "width"}`` or ``{"kind": "percentile", "low", "high"}``.

Nothing here uses pickle; every decoder checks sizes before it allocates.
"""

from __future__ import annotations

import base64
import hashlib
import math
import zlib
from typing import Any

import numpy as np

from ..errors import InvalidInputError

API_VERSION = "1.1"  # 1.1: segment takes prompts (box, points, mask) and multimask
ALLOWED_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")
MAX_NDIM = 4

try:  # optional: faster and smaller than zlib; the client works without it
    import zstandard as _zstd
except ImportError:  # pragma: no cover - depends on the environment
    _zstd = None


def available_codecs() -> list[str]:
    """Codecs this process can read and write, best first."""
    return (["zstd"] if _zstd is not None else []) + ["zlib", "none"]


def choose_codec(server_codecs: list[str]) -> str:
    """The best codec both sides have (zlib is always common)."""
    for codec in available_codecs():
        if codec in server_codecs:
            return codec
    return "none"


def compress(data: bytes, codec: str) -> bytes:
    if codec == "zstd":
        if _zstd is None:
            raise InvalidInputError("zstd is not installed here: pip install zstandard")
        return _zstd.ZstdCompressor(level=3).compress(data)
    if codec == "zlib":
        return zlib.compress(data, 1)
    if codec == "none":
        return bytes(data)
    raise InvalidInputError(f"unknown codec {codec!r}: use one of {', '.join(available_codecs())}")


def decompress(data: bytes, codec: str, expected: int) -> bytes:
    """Decompress to exactly ``expected`` bytes; a truncated or padded payload is an error."""
    try:
        if codec == "zstd":
            if _zstd is None:
                raise InvalidInputError("this server cannot read zstd (zstandard not installed)")
            import io

            # read at most one byte more than announced: a bomb cannot allocate more
            with _zstd.ZstdDecompressor().stream_reader(io.BytesIO(data)) as reader:
                out = reader.read(expected + 1)
        elif codec == "zlib":
            d = zlib.decompressobj()
            out = d.decompress(data, expected + 1)
            if not d.eof:
                raise InvalidInputError(
                    f"truncated or oversized upload: the zlib stream does not end after"
                    f" {expected} bytes")
        elif codec == "none":
            out = bytes(data)
        else:
            raise InvalidInputError(
                f"unknown codec {codec!r}: use one of {', '.join(available_codecs())}")
    except InvalidInputError:
        raise
    except Exception as exc:  # zlib.error, zstd.ZstdError
        raise InvalidInputError(f"corrupt or truncated {codec} upload: {exc}") from exc
    if len(out) != expected:
        raise InvalidInputError(
            f"truncated upload: the dtype and shape need {expected} bytes, the body decodes to"
            f" {len(out)}")
    return out


def check_dtype_shape(dtype: str, shape: list[int] | tuple[int, ...], max_bytes: int) -> int:
    """Validate an announced array and return its size in bytes."""
    if dtype not in ALLOWED_DTYPES:
        raise InvalidInputError(f"dtype {dtype!r} is not accepted: use one of {', '.join(ALLOWED_DTYPES)}")
    if not 1 <= len(shape) <= MAX_NDIM or any(int(s) < 1 for s in shape):
        raise InvalidInputError(f"shape {list(shape)} is not accepted: 1 to {MAX_NDIM} positive sizes")
    # Python integers: a product past 64 bits (4294967296 x 4294967296) must not wrap to 0
    nbytes = math.prod(int(s) for s in shape) * np.dtype(dtype).itemsize
    if nbytes > max_bytes:
        raise InvalidInputError(
            f"array of {nbytes} bytes exceeds the server's limit of {max_bytes} bytes per array")
    return nbytes


def content_hash(array: np.ndarray) -> str:
    """SHA-256 of an array's dtype, shape and C-order bytes (the address of an upload)."""
    array = np.ascontiguousarray(array)
    h = hashlib.sha256(f"{array.dtype.str}|{','.join(map(str, array.shape))}|".encode())
    h.update(memoryview(array).cast("B"))
    return h.hexdigest()


def wire_array(array: np.ndarray) -> np.ndarray:
    """``array`` in a dtype the wire accepts, little-endian and C-ordered (bool -> uint8)."""
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    array = np.ascontiguousarray(array, dtype=dtype)
    if array.dtype.name not in ALLOWED_DTYPES:
        raise InvalidInputError(
            f"arrays of dtype {array.dtype} cannot be sent: use one of {', '.join(ALLOWED_DTYPES)}")
    return array


def encode_array(array: np.ndarray, codec: str) -> tuple[dict[str, Any], bytes]:
    """``(meta, body)`` for an upload: meta has sha256, dtype, shape, codec."""
    array = wire_array(array)
    meta = {"sha256": content_hash(array), "dtype": array.dtype.name,
            "shape": list(array.shape), "codec": codec}
    return meta, compress(memoryview(array).cast("B"), codec)


def decode_array(body: bytes, *, sha256: str, dtype: str, shape: list[int], codec: str,
                 max_bytes: int) -> np.ndarray:
    """The array of an upload, checked against its announced hash, dtype and shape."""
    nbytes = check_dtype_shape(dtype, shape, max_bytes)
    raw = decompress(body, codec, nbytes)
    array = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        raise InvalidInputError("the array contains NaN or infinite values")
    if content_hash(array) != sha256:
        raise InvalidInputError(
            "the upload does not match its sha256 (corrupt, truncated or wrongly announced)")
    return array


# -- masks --------------------------------------------------------------------------------------
def pack_mask(mask: np.ndarray) -> dict[str, Any]:
    """A boolean mask as its bounding box plus bit-packed pixels (``bits`` base64)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise InvalidInputError(f"a mask must be 2-D, got shape {mask.shape}")
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return {"shape": list(mask.shape), "bbox": None, "bits": ""}
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    bits = zlib.compress(np.packbits(mask[y0:y1, x0:x1], axis=None).tobytes(), 6)
    return {"shape": list(mask.shape), "bbox": [y0, y1, x0, x1],
            "bits": base64.b64encode(bits).decode("ascii")}


def unpack_mask(packed: dict[str, Any], max_pixels: int = 1 << 28) -> np.ndarray:
    """Inverse of :func:`pack_mask`, validating every field."""
    try:
        h, w = (int(v) for v in packed["shape"])
        bbox = packed.get("bbox")
        bits = packed.get("bits") or ""
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInputError(f"a packed mask needs shape [H, W], bbox and bits: {exc}") from exc
    if h < 1 or w < 1 or h * w > max_pixels:
        raise InvalidInputError(f"mask shape {h} x {w} is not accepted")
    mask = np.zeros((h, w), dtype=bool)
    if bbox is None:
        return mask
    try:
        y0, y1, x0, x1 = (int(v) for v in bbox)
        compressed = base64.b64decode(bits, validate=True)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"a packed mask has a bad bbox or bits: {exc}") from exc
    if not (0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w):
        raise InvalidInputError(f"mask bbox {bbox} lies outside the mask of {h} x {w}")
    n = (y1 - y0) * (x1 - x0)
    data = np.frombuffer(decompress(compressed, "zlib", (n + 7) // 8), dtype=np.uint8)
    mask[y0:y1, x0:x1] = np.unpackbits(data, count=n).reshape(y1 - y0, x1 - x0).astype(bool)
    return mask


# -- intensity and prompts ------------------------------------------------------------------------
def intensity_to_wire(intensity) -> dict[str, Any] | None:
    from ..preprocess import Percentile, Window

    if intensity is None:
        return None
    if isinstance(intensity, Window):
        return {"kind": "window", "level": float(intensity.level), "width": float(intensity.width)}
    if isinstance(intensity, Percentile):
        return {"kind": "percentile", "low": float(intensity.low), "high": float(intensity.high)}
    raise InvalidInputError(f"unknown intensity setting {intensity!r}")


def intensity_from_wire(data: dict[str, Any] | None):
    from ..preprocess import Percentile, Window

    if data is None:
        return None
    kind = data.get("kind")
    try:
        if kind == "window":
            return Window(float(data["level"]), float(data["width"]))
        if kind == "percentile":
            return Percentile(float(data["low"]), float(data["high"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInputError(f"intensity {data!r} is incomplete: {exc}") from exc
    raise InvalidInputError(f"intensity kind must be 'window' or 'percentile', got {kind!r}")


def box_to_wire(box) -> list[float]:
    from ..geometry import as_box

    b = as_box(box)
    return [float(b.x0), float(b.y0), float(b.x1), float(b.y1)]


def frame_prompt_to_wire(prompt) -> dict[str, Any]:
    """A :class:`~polypsam.engine.FramePrompt` as JSON (box, points, labels, mask: all optional)."""
    out: dict[str, Any] = {"frame": int(prompt.frame), "obj_id": int(prompt.obj_id)}
    if getattr(prompt, "box", None) is not None:
        out["box"] = box_to_wire(prompt.box)
    if getattr(prompt, "mask", None) is not None:
        out["mask"] = pack_mask(prompt.mask)
    points = getattr(prompt, "points", None)
    if points is not None:
        out["points"] = np.asarray(points, dtype=float).reshape(-1, 2).tolist()
        out["labels"] = [int(v) for v in np.asarray(prompt.labels).reshape(-1)]
    return out


def frame_prompt_from_wire(data: dict[str, Any]):
    from ..engine import FramePrompt
    from ..geometry import Box

    kwargs: dict[str, Any] = {"frame": int(data["frame"]), "obj_id": int(data["obj_id"])}
    if data.get("box") is not None:
        kwargs["box"] = Box.from_sequence(data["box"])
    if data.get("mask") is not None:
        kwargs["mask"] = unpack_mask(data["mask"])
    if data.get("points") is not None:
        kwargs["points"] = np.asarray(data["points"], dtype=np.float32).reshape(-1, 2)
        kwargs["labels"] = np.asarray(data.get("labels") or [], dtype=np.int32)
    try:
        return FramePrompt(**kwargs)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"prompt on frame {kwargs['frame']}: {exc}") from exc


def prompt_to_wire(prompt) -> dict[str, Any]:
    """A 2-D :class:`~polypsam.engine.Prompt` as JSON: box, points, labels, packed mask."""
    data = prompt.to_dict()
    data.pop("has_mask", None)
    data["mask"] = None if prompt.mask is None else pack_mask(prompt.mask)
    return data


def prompt_from_wire(data: dict[str, Any]):
    from ..engine import Prompt

    data = dict(data)
    mask = data.pop("mask", None)
    data["has_mask"] = mask is not None
    return Prompt.from_dict(data, None if mask is None else unpack_mask(mask))


def result_to_wire(result) -> dict[str, Any]:
    """A :class:`~polypsam.engine.MaskResult`: its JSON fields plus packed mask and candidates."""
    data = result.to_dict()
    data["mask"] = pack_mask(result.mask)
    data["candidates"] = [pack_mask(c) for c in result.candidates]
    return data


def result_from_wire(data: dict[str, Any], prompt=None):
    """Inverse of :func:`result_to_wire`; ``prompt`` (the one sent) gives back its mask."""
    from ..engine import MaskResult

    data = dict(data)
    mask = unpack_mask(data.pop("mask"))
    candidates = [unpack_mask(c) for c in data.pop("candidates", None) or []]
    prompt_mask = getattr(prompt, "mask", None) if (data.get("prompt") or {}).get("has_mask") else None
    return MaskResult.from_dict(data, mask, candidates, prompt_mask)
