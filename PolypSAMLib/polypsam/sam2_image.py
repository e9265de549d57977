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
    import torch
    import torch.nn.functional as F

    tensor = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)[None]
    if tensor.shape[-2:] != (image_size, image_size):
        tensor = F.interpolate(
            tensor, size=(image_size, image_size), mode="bilinear", align_corners=False,
            antialias=True,
        )
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1)
    tensor = (tensor[0].clamp_(0.0, 1.0) - mean) / std
    return tensor if device is None else tensor.to(device)


@dataclass(frozen=True)
class ImageEmbedding:
    """One encoded image: the decoder's inputs and the size masks are returned at."""

    image_embed: object  # torch.Tensor, 1 x C x S/16 x S/16 (with the no-memory embedding)
    high_res_feats: tuple  # torch.Tensors at S/4 and S/8
    height: int
    width: int


def embed_image(model, backbone_out: dict, height: int, width: int) -> ImageEmbedding:
    """The mask decoder's inputs from an image-encoder output (``model.forward_image``)."""
    _, vision_feats, _, feat_sizes = model._prepare_backbone_features(backbone_out)
    if model.directly_add_no_mem_embed:  # a single image is a frame without memory
        vision_feats[-1] = vision_feats[-1] + model.no_mem_embed
    feats = [
        feat.permute(1, 2, 0).reshape(1, -1, *size) for feat, size in zip(vision_feats, feat_sizes)
    ]
    return ImageEmbedding(feats[-1], tuple(feats[:-1]), int(height), int(width))


def predict_box(model, embedding: ImageEmbedding, box: Box) -> tuple[np.ndarray, float]:
    """One box → (H x W bool mask, SAM2's predicted IoU), a single mask output."""
    import torch
    import torch.nn.functional as F

    device = embedding.image_embed.device
    corners = torch.tensor([[[box.x0, box.y0], [box.x1, box.y1]]], dtype=torch.float32, device=device)
    # Pixel corners → the model's square input, in the order sam2's transform_coords uses.
    corners[..., 0] = corners[..., 0] / embedding.width
    corners[..., 1] = corners[..., 1] / embedding.height
    corners = corners * model.image_size
    labels = torch.tensor([[2, 3]], dtype=torch.int, device=device)  # box top-left, bottom-right
    sparse, dense = model.sam_prompt_encoder(points=(corners, labels), boxes=None, masks=None)
    low_res, iou, _, _ = model.sam_mask_decoder(
        image_embeddings=embedding.image_embed,
        image_pe=model.sam_prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=False,
        repeat_image=False,
        high_res_features=list(embedding.high_res_feats),
    )
    logits = F.interpolate(
        low_res.float(), (embedding.height, embedding.width), mode="bilinear", align_corners=False
    )
    mask = (logits[0, 0] > MASK_THRESHOLD).cpu().numpy()
    return mask, float(iou[0, 0])
