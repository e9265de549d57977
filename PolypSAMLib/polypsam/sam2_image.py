"""Box-prompted 2-D segmentation computed with SAM2's own modules, without torchvision.

This is what ``SAM2ImagePredictor.set_image`` followed by ``predict(box=..., multimask_output=
False)`` computes (``Testing/test_sam2_image.py`` checks it against Meta's predictor wherever
torchvision is installed): the image encoder, the no-memory embedding that SAM2 adds to a frame
without memory, the prompt encoder with the box as two corner points (labels 2 and 3), the mask
decoder, and the low-resolution logits resized to the input size.

Meta's predictor imports torchvision only for its input transforms (resize, normalise); doing
that step here with ``torch.nn.functional`` lets a CPU-only install skip torchvision, whose
import alone costs about 160 MB of memory. The video path (:mod:`polypsam.video`) uses the very
same :func:`model_input`, so a slice is encoded identically for its 2-D mask and for tracking,
and one encoding serves both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .geometry import Box

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MASK_THRESHOLD = 0.0  # SAM2's logit threshold for a binary mask


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


def predict_box(model, embedding: ImageEmbedding, box: Box) -> tuple[np.ndarray, float]:
    """One box → (H x W bool mask, SAM2's predicted IoU), a single mask output."""
    import torch
    import torch.nn.functional as F

    boxes = torch.tensor([[box.x0, box.y0, box.x1, box.y1]], dtype=torch.float32)
    low_res, iou = box_logits(model, embedding.image_embed, embedding.high_res_feats, boxes,
                              embedding.height, embedding.width)
    logits = F.interpolate(
        low_res.float(), (embedding.height, embedding.width), mode="bilinear", align_corners=False
    )
    mask = (logits[0, 0] > MASK_THRESHOLD).cpu().numpy()
    return mask, float(iou[0, 0])
