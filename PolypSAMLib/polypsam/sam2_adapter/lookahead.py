"""Encoding the next frames of a tracking pass in small batches, ahead of memory attention.

SAM2's video predictor encodes each frame alone when it reaches it (``_get_image_feature``), which
leaves a GPU mostly idle during the image encoder. The image encoder does not depend on the
memory bank, so the frames a pass will visit next can be encoded together in one
``forward_image`` call and handed to SAM2 one at a time through the place it looks first
(``inference_state["cached_features"]``). The features are the same up to float rounding
(``Testing/test_video.py`` checks it). On a CPU one frame at a time measured as fast or faster
(BENCHMARKS.md), so the default batch is 1 there and a larger one on CUDA.
"""

from __future__ import annotations

from typing import Callable, Sequence

DEFAULT_CUDA_BATCH = 4


def resolve_encoder_batch(batch: int, device) -> int:
    """Frames encoded together while tracking: ``batch``, or for 0 the device's default."""
    from ..errors import InvalidInputError

    batch = int(batch)
    if batch < 0:
        raise InvalidInputError(f"encoder batch must be >= 0 (0: automatic), got {batch}")
    if batch == 0:
        return DEFAULT_CUDA_BATCH if device.type == "cuda" else 1
    return batch


def split_backbone(backbone_out: dict, count: int) -> list[dict]:
    """A batched ``forward_image`` output as ``count`` single-frame outputs (views, no copies)."""
    out = []
    for i in range(count):
        item = {}
        for key, value in backbone_out.items():
            if isinstance(value, (list, tuple)):
                item[key] = [v[i:i + 1] for v in value]
            else:
                item[key] = value[i:i + 1]
        out.append(item)
    return out


class EncoderLookahead:
    """Seeds ``state["cached_features"]`` with frames encoded ``batch`` at a time, in visit order.

    ``order`` is the frames the pass will run ``_get_image_feature`` on (prompted frames left
    out), ``tensor(i)`` frame ``i``'s ``3 x S x S`` model input and ``autocast`` the context the
    encoder runs in. :meth:`seed` is called before SAM2 computes a frame.
    """

    def __init__(self, model, order: Sequence[int], tensor: Callable[[int], object],
                 batch: int, autocast: Callable[[], object]) -> None:
        self.model = model
        self.order = list(order)
        self.position = {frame: i for i, frame in enumerate(self.order)}
        self.tensor = tensor
        self.batch = max(1, int(batch))
        self.autocast = autocast
        self.ready: dict[int, tuple] = {}  # frame -> (1 x 3 x S x S input, backbone output)
        self.batches = 0  # forward_image calls made here (tests and benchmarks look at it)

    def seed(self, state: dict, frame: int) -> None:
        """Put ``frame``'s encoder output where SAM2 looks first (encoding a batch if needed)."""
        import torch

        if frame not in self.position or frame in state["cached_features"]:
            return
        if frame not in self.ready:
            start = self.position[frame]
            frames = self.order[start:start + self.batch]
            images = torch.stack([self.tensor(i) for i in frames])
            with torch.inference_mode(), self.autocast():
                backbone = self.model.forward_image(images)
            self.batches += 1
            self.ready = {}  # frames passed over (a cancelled pass) are not kept
            for i, (f, out) in enumerate(zip(frames, split_backbone(backbone, len(frames)))):
                self.ready[f] = (images[i:i + 1], out)
        state["cached_features"][frame] = self.ready.pop(frame)
