"""Frozen-encoder image features, computed once and cached on disk by content.

With a frozen image encoder the decoder's inputs for an image never change, so fine-tuning
computes them once (``model.forward_image`` → :func:`polypsam.sam2_adapter.image.image_features`, the
inference path) and every epoch after that runs only the prompt encoder and the mask decoder.

The key is content-addressed: a hash of the model-ready image (:func:`polypsam.sam2_adapter.video.image_digest`),
the encoder weights (the base checkpoint's SHA256), the config file's content, the image size and
the storage dtype. Entries are plain tensors written with ``torch.save`` and read with
``weights_only=True`` (no pickle), one file per image under ``<root>/<key[:2]>/<key>.pt``.
Training always uses the stored values (cast back to float32), whether they were just computed or
read from disk, so a resumed run sees exactly what the first run saw.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import InvalidInputError
from ..sam2_adapter.model import resolve_config_path

DTYPES = ("float16", "float32")
_FORMAT = "polypsam-embedding-v1"


def default_root() -> Path:
    from ..checkpoints import cache_dir

    return cache_dir() / "embeddings"


class EmbeddingCache:
    """Image features of a frozen encoder, on disk and (within ``memory_budget`` bytes) in memory."""

    def __init__(self, model, *, root: Path, base_sha256: str, config: str, image_size: int,
                 device, dtype: str = "float16", memory_budget: int = 2 << 30) -> None:
        import torch

        if dtype not in DTYPES:
            raise InvalidInputError(f"embedding cache dtype must be one of {DTYPES}, got {dtype!r}")
        self.model = model
        self.root = Path(root)
        self.device = torch.device(device)
        self.image_size = int(image_size)
        self.dtype = getattr(torch, dtype)
        config_text = resolve_config_path(config).read_bytes()
        self._identity = hashlib.sha256(
            repr((_FORMAT, base_sha256, hashlib.sha256(config_text).hexdigest(), self.image_size,
                  dtype)).encode()).hexdigest()
        self._memory: dict[str, tuple] = {}
        self._budget = memory_budget
        self._used = 0
        self.computed = 0  # encoder runs (cache misses)
        self.loaded = 0  # entries read from disk

    def key(self, rgb: np.ndarray) -> str:
        from ..sam2_adapter.video import image_digest

        return hashlib.sha256((self._identity + image_digest(rgb)).encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.pt"

    def prepare(self, samples: Sequence, progress=None) -> list[str]:
        """Compute (or find) the features of every sample; returns their keys in order."""
        keys = []
        for sample in samples:
            rgb = sample.load_rgb()
            key = self.key(rgb)
            if key not in self._memory and not self._path(key).is_file():
                self._compute(key, rgb)
            keys.append(key)
            if progress is not None:
                progress.update(1)
        return keys

    def _compute(self, key: str, rgb: np.ndarray) -> None:
        import torch

        from ..sam2_adapter.image import image_features, model_input

        with torch.no_grad():
            batch = model_input(rgb, self.image_size, self.device)[None]
            image_embed, high_res = image_features(self.model, self.model.forward_image(batch))
        tensors = {"image_embed": image_embed[0], "feat_s0": high_res[0][0],
                   "feat_s1": high_res[1][0]}
        tensors = {k: v.detach().to("cpu", self.dtype).contiguous() for k, v in tensors.items()}
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        torch.save(tensors, tmp)
        os.replace(tmp, path)
        self.computed += 1

    def _entry(self, key: str) -> tuple:
        """The three tensors of one image, from memory or disk (kept in memory if they fit).

        On a CPU an entry is kept as float32 (converted once, not at every step) while that fits
        ``memory_budget``, else as stored; for a GPU it stays as stored on the CPU (half the
        bytes to move per step when stored in float16). The values are the same either way.
        """
        entry = self._memory.get(key)
        if entry is not None:
            return entry
        entry = self._read(key)
        if self.device.type == "cpu":
            ready = tuple(t.float() for t in entry)
            if self._keep(key, ready):
                return ready
        self._keep(key, entry)
        return entry

    def _keep(self, key: str, entry: tuple) -> bool:
        size = sum(t.numel() * t.element_size() for t in entry)
        if self._used + size > self._budget:
            return False
        self._memory[key] = entry
        self._used += size
        return True

    def get(self, key: str) -> tuple:
        """``(image_embed, (feat_s0, feat_s1))`` for one image: float32 on the device, batch 1."""
        return self.batch([key])

    def _read(self, key: str) -> tuple:
        import torch

        path = self._path(key)
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
            entry = (data["image_embed"], data["feat_s0"], data["feat_s1"])
        except Exception as exc:  # a truncated or foreign file: compute it again next time
            path.unlink(missing_ok=True)
            raise InvalidInputError(
                f"cached embedding {path} could not be read ({type(exc).__name__}); it was removed,"
                " run again to recompute it"
            ) from exc
        self.loaded += 1
        return entry

    def batch(self, keys: Sequence[str]) -> tuple:
        """Features of several images (a key may repeat) stacked along the batch dimension.

        Float32 on the device; one gather and one conversion for the whole batch.
        """
        import torch

        parts = [self._entry(k) for k in keys]
        image_embed, s0, s1 = (
            torch.stack([p[i] for p in parts]).to(self.device, non_blocking=True).float()
            for i in range(3)
        )
        return image_embed, (s0, s1)
