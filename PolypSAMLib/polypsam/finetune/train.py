"""Fine-tune SAM2 on annotated frames and slices: the Polyps-SAM2 recipe.

Frozen image encoder (its features cached on disk, :mod:`.embedding_cache`), prompt encoder and
mask decoder trained with Dice + binary cross-entropy, AdamW (lr 1e-4), batch size 4; the
learning rate halves when validation Dice stops improving, down to 1e-5; the model is saved in
SAM2's official layout whenever validation Dice improves.

The forward pass is PolypSAM's inference path (:func:`polypsam.sam2_adapter.image.box_logits`, equal to
Meta's ``SAM2ImagePredictor``) with gradients, and the model stays in eval mode as at inference
(SAM2's decoder picks its single mask by stability only in eval mode; SAM2 tiny has no dropout
or drop-path to switch off). "Frozen encoder" means everything before the cached features: the
Hiera trunk and FPN neck, the decoder's ``conv_s0``/``conv_s1`` projections and the no-memory
embedding; ``train="all"`` trains those too.

Training steps are made faster without changing what is computed (all per batch of box prompts,
for cached and encoder-each-step features alike): the decoder's ``LayerNorm2d`` runs as the fused
``layer_norm`` (equal up to float rounding), the image embedding enters channels-last, the
gradient at the upscaling gets its output's memory layout, the backward skips oneDNN on a CPU,
and the loss's bilinear upsampling is two matrix products. Validation is the inference path
unchanged. ``Testing/test_finetune_speed.py`` checks loss and gradients against the plain
computation.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..errors import InvalidInputError
from .data import Sample
from .metrics import mask_metrics, mean_metrics

TRAIN_MODES = ("decoder", "decoder+prompt", "all")


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything one fine-tuning run depends on (the CLI's options)."""

    data: str
    output: str
    base: str = "sam2.1_hiera_tiny"
    config: Optional[str] = None
    image_size: Optional[int] = None
    epochs: int = 200
    batch_size: int = 4
    lr: float = 1e-4
    min_lr: float = 1e-5
    lr_factor: float = 0.5
    patience: int = 10
    weight_decay: float = 0.01
    val_split: float = 0.2
    val: Optional[str] = None
    train: str = "decoder+prompt"
    augment: bool = False
    box_jitter: float = 0.0
    seed: int = 0
    device: str = "auto"
    resume: bool = False
    overwrite: bool = False  # delete an earlier run's checkpoint and state at OUTPUT first
    window: Optional[str] = None
    label: Optional[int] = None
    cache_dir: Optional[str] = None
    cache_dtype: str = "float16"
    cache_features: bool = True
    allow_download: bool = False

    def check(self) -> None:
        if self.train not in TRAIN_MODES:
            raise InvalidInputError(f"--train must be one of {', '.join(TRAIN_MODES)}, got {self.train!r}")
        for name in ("epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise InvalidInputError(f"--{name.replace('_', '-')} must be at least 1")
        if not self.lr > 0 or not self.min_lr > 0:
            raise InvalidInputError("--lr and the minimum learning rate must be positive")
        if not 0 <= self.box_jitter <= 1:
            raise InvalidInputError(f"--box-jitter must lie in [0, 1], got {self.box_jitter}")
        if not str(self.output).endswith(".pt"):
            raise InvalidInputError(f"the output checkpoint must end in .pt, got {self.output}")

    @property
    def frozen_encoder(self) -> bool:
        return self.train != "all"

    @property
    def cached(self) -> bool:
        """Training features come from the cache (frozen encoder, no image augmentation)."""
        return self.cache_features and self.frozen_encoder and not self.augment


@dataclass
class FinetuneResult:
    checkpoint: Path
    sidecar: Path
    metrics_csv: Path
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_dice: float = float("-inf")


def trainable_names(model, mode: str) -> list[str]:
    """Parameters trained in ``mode`` (everything else gets ``requires_grad=False``)."""
    prefixes = {
        "decoder": ("sam_mask_decoder.",),
        "decoder+prompt": ("sam_mask_decoder.", "sam_prompt_encoder."),
        "all": ("sam_mask_decoder.", "sam_prompt_encoder.", "image_encoder.", "no_mem_embed"),
    }[mode]
    feature_path = ("sam_mask_decoder.conv_s0.", "sam_mask_decoder.conv_s1.")
    names = []
    for name, param in model.named_parameters():
        train = name.startswith(prefixes) and (mode == "all" or not name.startswith(feature_path))
        param.requires_grad_(train)
        if train:
            names.append(name)
    return names


def dice_bce_loss(logits, targets):
    """Mean over prompts of soft Dice loss + binary cross-entropy (logits, targets: P x S x S)."""
    import torch
    import torch.nn.functional as F

    probs = torch.sigmoid(logits).flatten(1)
    flat = targets.flatten(1)
    dice = 1 - (2 * (probs * flat).sum(1) + 1) / (probs.sum(1) + flat.sum(1) + 1)
    bce = F.binary_cross_entropy_with_logits(logits.flatten(1), flat, reduction="none").mean(1)
    return (dice + bce).mean()


def component_targets(sample: Sample, image_size: int):
    """One ``S x S`` float target per box of ``sample`` (area-resized, thresholded at 0.5)."""
    import torch
    import torch.nn.functional as F

    comps = torch.from_numpy(sample.components.astype(np.int64))
    ids = torch.arange(1, len(sample.boxes) + 1).view(-1, 1, 1)
    masks = (comps[None] == ids).float()[None]
    resized = F.interpolate(masks, size=(image_size, image_size), mode="area")[0]
    return resized >= 0.5


def jitter_boxes(boxes, width: float, height: float, fraction: float, generator):
    """Boxes moved by Gaussian noise of ``fraction`` × their side (at most 2 sigma), kept inside."""
    import torch

    if fraction <= 0:
        return boxes
    sides = torch.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], 1).repeat(1, 2)
    sigma = sides * fraction
    noise = (torch.randn(boxes.shape, generator=generator) * sigma).clamp(-2 * sigma, 2 * sigma)
    out = boxes + noise
    out[:, 0::2] = out[:, 0::2].clamp(0, width - 1)
    out[:, 1::2] = out[:, 1::2].clamp(0, height - 1)
    x0, x1 = torch.minimum(out[:, 0], out[:, 2]), torch.maximum(out[:, 0], out[:, 2])
    y0, y1 = torch.minimum(out[:, 1], out[:, 3]), torch.maximum(out[:, 1], out[:, 3])
    return torch.stack([x0, y0, x1, y1], 1)


def boxes_of_masks(masks):
    """Inclusive boxes of ``K x S x S`` masks; returns ``(boxes, kept index)`` (empty dropped)."""
    import torch

    boxes, kept = [], []
    for i, m in enumerate(masks):
        ys, xs = torch.nonzero(m > 0.5, as_tuple=True)
        if ys.numel() < 4 or xs.max() == xs.min() or ys.max() == ys.min():
            continue
        boxes.append(torch.stack([xs.min(), ys.min(), xs.max(), ys.max()]).float())
        kept.append(i)
    return (torch.stack(boxes) if boxes else torch.zeros(0, 4)), kept


def bilinear_matrix(size_in: int, size_out: int, device=None):
    """``size_out x size_in`` matrix of 1-D linear resizing with ``align_corners=False``: the
    weights ``F.interpolate`` uses, so ``A @ X @ A.T`` is its bilinear resize of a square ``X``."""
    import torch
    import torch.nn.functional as F

    eye = torch.eye(size_in, dtype=torch.float32)[:, None, :]
    resized = F.interpolate(eye, size=size_out, mode="linear", align_corners=False)[:, 0, :]
    return resized.T.contiguous().to(device)


@contextmanager
def grad_layout_like_output(module):
    """Within the block, gradients reaching ``module``'s output take its memory layout.

    SAM2's mask decoder upscales a channels-last view of the transformer output, while the
    gradient coming back from the mask product is contiguous; ``gelu_backward`` on mixed layouts
    takes a slow path (about 8x slower on a CPU). Only the gradient's layout changes; the
    forward pass and every value stay as they are.
    """
    import torch

    def hook(_module, _inputs, output):
        if output.requires_grad and not output.is_contiguous() and output.is_contiguous(
                memory_format=torch.channels_last):
            output.register_hook(lambda grad: grad.contiguous(memory_format=torch.channels_last))

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def fused_layer_norm_2d(module):
    """Within the block, SAM2's ``LayerNorm2d`` ``module`` runs as PyTorch's fused ``layer_norm``.

    The same function (biased variance over channels, ``eps`` inside the square root, the
    module's weight and bias), equal up to float rounding; SAM2 spells it out as eight
    element-wise operations, whose forward and backward cost 28 ms per batch of 5 prompts at
    512 on one CPU thread, against 4 ms fused. Used for training steps only; inference
    (and so validation) keeps SAM2's own forward.
    """
    import torch.nn.functional as F
    from sam2.modeling.sam2_utils import LayerNorm2d

    if type(module) is not LayerNorm2d or "forward" in vars(module):
        yield
        return

    def forward(x):
        channels_last = x.permute(0, 2, 3, 1)
        out = F.layer_norm(channels_last, (x.shape[1],), module.weight, module.bias, module.eps)
        return out.permute(0, 3, 1, 2)

    module.forward = forward  # an instance attribute: nn.Module.__call__ picks it up
    try:
        yield
    finally:
        del module.forward


class Trainer:
    """One batch's loss and one validation pass for a model, its data and its settings."""

    def __init__(self, model, cfg: FinetuneConfig, *, image_size: int, device, train_set,
                 val_set, train_cache=None, val_cache=None) -> None:
        import torch

        self.model, self.cfg, self.size = model, cfg, int(image_size)
        self.device = torch.device(device)
        self.train_set, self.val_set = list(train_set), list(val_set)
        self.train_cache, self.val_cache = train_cache, val_cache
        self.targets = [component_targets(s, self.size) for s in self.train_set]
        self.train_keys: list[str] = []
        self.val_keys: list[str] = []
        self._upsamplers: dict = {}

    # -- features --------------------------------------------------------------------------
    def _encode(self, images, grad: bool):
        import torch

        from ..sam2_adapter.image import image_features

        with torch.set_grad_enabled(grad):
            return image_features(self.model, self.model.forward_image(images.to(self.device)))

    def _model_inputs(self, samples: Sequence[Sample]):
        import torch

        from ..sam2_adapter.image import model_input

        return torch.stack([model_input(s.load_rgb(), self.size) for s in samples])

    # -- training --------------------------------------------------------------------------
    def batch_loss(self, indices: Sequence[int], generator):
        """Dice + BCE of one batch of training samples (all boxes of each sample)."""
        import torch

        from ..sam2_adapter.image import box_logits, normalize_input, resize_input
        from .augment import augment

        samples = [self.train_set[i] for i in indices]
        rows, boxes, targets, widths, heights, images = [], [], [], [], [], []
        for b, (i, sample) in enumerate(zip(indices, samples)):
            target = self.targets[i].float()
            if self.cfg.augment:
                image, moved = augment(resize_input(sample.load_rgb(), self.size), target, generator)
                sample_boxes, kept = boxes_of_masks(moved)
                if kept:
                    target = moved[kept]
                else:  # the transform moved every object out: use the sample as it is
                    image = resize_input(sample.load_rgb(), self.size)
                    scale = torch.tensor([self.size / sample.width, self.size / sample.height] * 2)
                    sample_boxes = torch.tensor([bx.to_list() for bx in sample.boxes]) * scale
                images.append(normalize_input(image))
                width = height = self.size
            else:
                sample_boxes = torch.tensor([bx.to_list() for bx in sample.boxes], dtype=torch.float32)
                width, height = sample.width, sample.height
            sample_boxes = jitter_boxes(sample_boxes, width, height, self.cfg.box_jitter, generator)
            rows += [b] * len(sample_boxes)
            boxes.append(sample_boxes)
            targets.append(target)
            widths += [width] * len(sample_boxes)
            heights += [height] * len(sample_boxes)
        if self.cfg.cached:  # one row per box prompt, gathered straight from the cache
            image_embed, high_res = self.train_cache.batch([self.train_keys[indices[r]]
                                                            for r in rows])
        else:
            batch = torch.stack(images) if images else self._model_inputs(samples)
            image_embed, high_res = self._encode(batch, grad=not self.cfg.frozen_encoder)
            index = torch.tensor(rows, device=image_embed.device)
            image_embed, high_res = image_embed[index], [f[index] for f in high_res]
        # Channels-last: the decoder's transformer reads the embedding as tokens x channels, so
        # its projections and residual adds (and their gradients) work on contiguous tensors
        # instead of copying a transposed view. Same values, about 6% faster on a CPU.
        image_embed = image_embed.contiguous(memory_format=torch.channels_last)
        upscaling = self.model.sam_mask_decoder.output_upscaling
        with grad_layout_like_output(upscaling[-1]), fused_layer_norm_2d(upscaling[1]):
            low_res, _ = box_logits(self.model, image_embed, list(high_res), torch.cat(boxes),
                                    heights, widths)
        logits = self._upsample(low_res[:, 0])
        return dice_bce_loss(logits, torch.cat(targets).to(logits.device))

    def _upsample(self, low_res):
        """``P x s x s`` logits → ``P x S x S``: ``F.interpolate(..., mode="bilinear",
        align_corners=False)`` as two matrix products (same weights; equal up to float rounding,
        and 3x faster than interpolate's backward on a CPU)."""
        key = (low_res.shape[-1], low_res.device)
        if key not in self._upsamplers:
            self._upsamplers[key] = bilinear_matrix(low_res.shape[-1], self.size, low_res.device)
        matrix = self._upsamplers[key]
        return matrix @ (low_res @ matrix.T)

    def backward(self, loss) -> None:
        """``loss.backward()``; with a frozen encoder on a CPU, without oneDNN.

        Only the mask decoder's 2x2 transposed convolutions are affected: their backward runs
        PyTorch's own kernel, about 1.5x faster here than oneDNN's on channels-last inputs. The
        forward pass, which is the inference path, is left as it is; with ``train="all"`` the
        encoder's backward keeps oneDNN.
        """
        import torch

        if not (self.cfg.frozen_encoder and self.device.type == "cpu"):
            loss.backward()
            return
        enabled = torch.backends.mkldnn.enabled
        torch.backends.mkldnn.enabled = False
        try:
            loss.backward()
        finally:
            torch.backends.mkldnn.enabled = enabled

    # -- validation ------------------------------------------------------------------------
    def validate(self) -> tuple[dict[str, float], list[dict[str, float]]]:
        """Mean metrics over validation images: union of the masks of all its boxes vs. truth.

        Computed as inference computes it (:func:`polypsam.sam2_adapter.image.predict_box` at the
        image's own size), so loading the saved checkpoint in an engine gives the same masks.
        """
        import torch

        from ..sam2_adapter.image import ImageEmbedding, predict_box

        per_image = []
        with torch.inference_mode():
            for n, sample in enumerate(self.val_set):
                if self.val_cache is not None:
                    image_embed, high_res = self.val_cache.get(self.val_keys[n])
                else:
                    image_embed, high_res = self._encode(self._model_inputs([sample]), grad=False)
                embedding = ImageEmbedding(image_embed, high_res, sample.height, sample.width)
                pred = np.zeros(sample.mask.shape, dtype=bool)
                for box in sample.boxes:
                    pred |= predict_box(self.model, embedding, box)[0]
                per_image.append(mask_metrics(pred, sample.mask))
        return mean_metrics(per_image), per_image


def make_optimizer(model, cfg: FinetuneConfig):
    """AdamW over the trainable parameters (PyTorch's fused kernel where it exists: 6x faster
    steps on a CPU, deterministic)."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    try:
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    except (RuntimeError, TypeError):  # a device or torch build without the fused kernel
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def train_epoch(trainer: Trainer, optimizer, generator, batch_size: int, bar=None) -> float:
    """One pass over the training samples in a seeded random order; returns the mean loss."""
    import torch

    order = torch.randperm(len(trainer.train_set), generator=generator).tolist()
    losses = []
    for start in range(0, len(order), batch_size):
        loss = trainer.batch_loss(order[start:start + batch_size], generator)
        optimizer.zero_grad(set_to_none=True)
        trainer.backward(loss)
        optimizer.step()
        losses.append(float(loss.detach()))
        if bar is not None:
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            bar.update(1)
    return sum(losses) / len(losses)


def run_identity(cfg: FinetuneConfig, base_sha256: str, config: str, image_size: int,
                 train_fp: str, val_fp: str) -> dict:
    """What a resumed run must share with the run it continues (all but epochs and device)."""
    keep = asdict(cfg)
    for name in ("epochs", "device", "resume", "overwrite", "cache_dir", "allow_download",
                 "output"):
        keep.pop(name)
    return {**keep, "base_sha256": base_sha256, "config": config, "image_size": image_size,
            "train_fingerprint": train_fp, "val_fingerprint": val_fp}
