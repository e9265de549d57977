"""Prompted 2-D segmentation computed with SAM2's own modules, without torchvision.

This is what ``SAM2ImagePredictor.set_image`` followed by ``predict(point_coords, point_labels,
box, mask_input, multimask_output)`` computes (``Testing/test_sam2_image.py`` checks it against
Meta's predictor wherever torchvision is installed): the image encoder, the no-memory embedding
that SAM2 adds to a frame without memory, the prompt encoder with the box as two corner points
(labels 2 and 3) followed by the clicks (labels 1 include, 0 exclude) and the mask input, the
mask decoder, and the low-resolution logits resized to the input size.

A binary mask prompt becomes SAM2's low-resolution mask input (:func:`mask_to_logits`) the way
SAM2's video predictor turns ``add_new_mask`` into logits, so a mask + clicks prompt gives on a
frame what ``add_new_mask`` followed by ``add_new_points_or_box`` gives there.

Meta's predictor imports torchvision only for its input transforms (resize, normalise); doing
that step here with ``torch.nn.functional`` lets a CPU-only install skip torchvision, whose
import alone costs about 160 MB of memory. The video path (:mod:`polypsam.sam2_adapter.video`) uses the very
same :func:`model_input`, so a slice is encoded identically for its 2-D mask and for tracking,
and one encoding serves both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..engine import Prompt
from ..geometry import Box

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MASK_THRESHOLD = 0.0  # SAM2's logit threshold for a binary mask
# SAM2Base._use_mask_as_output: a binary mask as logits +10 inside, -10 outside.
MASK_LOGIT_SCALE, MASK_LOGIT_BIAS = 20.0, -10.0


def model_input(rgb: np.ndarray, image_size: int, device=None):
    """``rgb`` (H x W x 3 float in [0, 1]) as SAM2's input: resized square, ImageNet-normalised.

    Returns a ``3 x S x S`` float32 tensor: bilinear resizing with antialiasing (as torchvision's
    ``Resize`` in sam2's transforms and ``load_video_frames``), then ``(x - mean) / std``.
    """
    tensor = normalize_input(resize_input(rgb, image_size))
    return tensor if device is None else tensor.to(device)


def resize_input(rgb: np.ndarray, image_size: int):
    """``rgb`` resized to a ``3 x S x S`` float32 tensor in [0, 1] (not yet normalised)."""
    import torch
    import torch.nn.functional as F

    tensor = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)[None]
    if tensor.shape[-2:] != (image_size, image_size):
        tensor = F.interpolate(
            tensor, size=(image_size, image_size), mode="bilinear", align_corners=False,
            antialias=True,
        )
    return tensor[0].clamp_(0.0, 1.0)


def normalize_input(tensor):
    """ImageNet normalisation of ``... x 3 x S x S`` values in [0, 1] (SAM2's input statistics)."""
    import torch

    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=tensor.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=tensor.device).view(3, 1, 1)
    return (tensor - mean) / std


@dataclass(frozen=True)
class ImageEmbedding:
    """One encoded image: the decoder's inputs and the size masks are returned at."""

    image_embed: object  # torch.Tensor, 1 x C x S/16 x S/16 (with the no-memory embedding)
    high_res_feats: tuple  # torch.Tensors at S/4 and S/8
    height: int
    width: int


def image_features(model, backbone_out: dict) -> tuple:
    """``(image_embed, high_res_feats)`` for a batch of encoder outputs (``model.forward_image``).

    ``image_embed`` is ``B x C x S/16 x S/16`` with the no-memory embedding SAM2 adds to a frame
    without memory; ``high_res_feats`` are the decoder's skip features at S/4 and S/8.
    """
    _, vision_feats, _, feat_sizes = model._prepare_backbone_features(backbone_out)
    if model.directly_add_no_mem_embed:  # a single image is a frame without memory
        vision_feats[-1] = vision_feats[-1] + model.no_mem_embed
    feats = [
        feat.permute(1, 2, 0).reshape(feat.shape[1], -1, *size)
        for feat, size in zip(vision_feats, feat_sizes)
    ]
    return feats[-1], tuple(feats[:-1])


def embed_image(model, backbone_out: dict, height: int, width: int) -> ImageEmbedding:
    """The mask decoder's inputs from an image-encoder output (``model.forward_image``)."""
    image_embed, high_res_feats = image_features(model, backbone_out)
    return ImageEmbedding(image_embed, high_res_feats, int(height), int(width))


def box_logits(model, image_embed, high_res_feats, boxes, height: int, width: int):
    """Low-resolution mask logits and predicted IoU for ``N`` boxes, one per embedding row.

    ``boxes`` is an ``N x 4`` float tensor of pixel ``x0, y0, x1, y1`` in an ``height`` x
    ``width`` image (numbers, or one per box); ``image_embed`` and ``high_res_feats`` have batch
    size ``N`` (row ``i`` is the image box ``i`` belongs to). Returns ``(N x 1 x S/4 x S/4
    logits, N x 1 IoU)``. This is the inference path (:func:`predict_box`) and, with gradients,
    fine-tuning's forward pass.
    """
    import torch

    corners = boxes.reshape(-1, 2, 2).to(dtype=torch.float32, device=image_embed.device)
    # Pixel corners → the model's square input, in the order sam2's transform_coords uses.
    size = np.stack(np.broadcast_arrays(np.asarray(width), np.asarray(height)), axis=-1)
    scale = torch.tensor(size, dtype=torch.float32, device=corners.device).reshape(-1, 1, 2)
    corners = corners / scale * model.image_size
    labels = torch.tensor([[2, 3]], dtype=torch.int, device=corners.device)  # box corners
    labels = labels.expand(corners.shape[0], 2)
    sparse, dense = model.sam_prompt_encoder(points=(corners, labels), boxes=None, masks=None)
    low_res, iou, _, _ = model.sam_mask_decoder(
        image_embeddings=image_embed,
        image_pe=model.sam_prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=False,
        repeat_image=False,
        high_res_features=list(high_res_feats),
    )
    return low_res, iou


def mask_to_logits(model, mask: np.ndarray, device=None):
    """A binary ``H x W`` mask as SAM2's mask input: ``1 x 1 x S/4 x S/4`` logits (S = image size).

    The conversion of SAM2's video predictor for ``add_new_mask``: resized to the model's square
    input (bilinear, antialiased, thresholded at 0.5), +10/-10 logits inside/outside, then
    downsampled (bilinear, antialiased) to the low resolution of the decoder's output, which is
    the mask input size of the prompt encoder (256 x 256 at image size 1024). These are exactly
    the low-resolution logits ``SAM2Base._use_mask_as_output`` stores for a mask prompt.
    """
    import torch
    import torch.nn.functional as F

    size = int(model.image_size)
    tensor = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
    if device is not None:
        tensor = tensor.to(device)
    if tensor.shape[-2:] != (size, size):
        tensor = F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False,
                               antialias=True)
        tensor = (tensor >= 0.5).float()
    high = tensor * MASK_LOGIT_SCALE + MASK_LOGIT_BIAS
    low_size = tuple(model.sam_prompt_encoder.mask_input_size)
    return F.interpolate(high, size=low_size, mode="bilinear", align_corners=False, antialias=True)


def prompt_points(model, embedding: ImageEmbedding, prompt: Prompt):
    """The prompt's box corners (labels 2, 3) then clicks (1, 0) in model input coordinates.

    Returns ``(coords 1 x N x 2, labels 1 x N)`` tensors, or ``None`` without box and points:
    the order and scaling of ``SAM2ImagePredictor._prep_prompts``/``_predict``.
    """
    import torch

    coords: list[tuple[float, float]] = []
    labels: list[int] = []
    if prompt.box is not None:
        coords += [(prompt.box.x0, prompt.box.y0), (prompt.box.x1, prompt.box.y1)]
        labels += [2, 3]
    coords += list(prompt.points)
    labels += list(prompt.labels)
    if not coords:
        return None
    device = embedding.image_embed.device
    xy = torch.tensor([coords], dtype=torch.float32, device=device)
    xy[..., 0] = xy[..., 0] / embedding.width
    xy[..., 1] = xy[..., 1] / embedding.height
    xy = xy * model.image_size
    return xy, torch.tensor([labels], dtype=torch.int, device=device)


def predict(
    model, embedding: ImageEmbedding, prompt: Prompt, *, multimask: bool = False, mask_input=None
) -> tuple[np.ndarray, np.ndarray]:
    """One object's prompt → (``C x H x W`` bool masks, ``C`` predicted IoU scores).

    ``C`` is 3 with ``multimask`` (SAM2's candidates, in its order), else 1. ``mask_input``
    overrides the prompt's mask with ready low-resolution logits (``1 x 1 x S/4 x S/4``).
    """
    import torch
    import torch.nn.functional as F

    box_only = (prompt.box is not None and not prompt.points and prompt.mask is None
                and mask_input is None and not multimask)
    if box_only:  # the path fine-tuning trains (box_logits): inference and training agree
        b = prompt.box
        boxes = torch.tensor([[b.x0, b.y0, b.x1, b.y1]], dtype=torch.float32)
        low_res, iou = box_logits(model, embedding.image_embed, embedding.high_res_feats, boxes,
                                  embedding.height, embedding.width)
    else:
        points = prompt_points(model, embedding, prompt)
        if mask_input is None and prompt.mask is not None:
            mask_input = mask_to_logits(model, prompt.mask, embedding.image_embed.device)
        sparse, dense = model.sam_prompt_encoder(points=points, boxes=None, masks=mask_input)
        low_res, iou, _, _ = model.sam_mask_decoder(
            image_embeddings=embedding.image_embed,
            image_pe=model.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=bool(multimask),
            repeat_image=False,
            high_res_features=list(embedding.high_res_feats),
        )
    logits = F.interpolate(
        low_res.float(), (embedding.height, embedding.width), mode="bilinear", align_corners=False
    )
    masks = (logits[0] > MASK_THRESHOLD).cpu().numpy()
    return masks, iou[0].float().cpu().numpy()


def predict_box(model, embedding: ImageEmbedding, box: Box) -> tuple[np.ndarray, float]:
    """One box → (H x W bool mask, SAM2's predicted IoU), a single mask output."""
    masks, scores = predict(model, embedding, Prompt(box=box))
    return masks[0], float(scores[0])
