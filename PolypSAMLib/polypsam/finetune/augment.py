"""Augmentations of the Polyps-SAM2 recipe, on the model-sized square image and its masks.

Gaussian blur and colour jitter (brightness, contrast, saturation) change the image only;
horizontal/vertical flips and an affine scale/shift move the image and the target masks
together, and the box prompts are recomputed from the moved masks. Every random number comes
from the caller's ``torch.Generator``, so a seeded run (and a resumed one) repeats exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class AugmentSettings:
    flip_p: float = 0.5  # each of horizontal and vertical
    scale: tuple[float, float] = (0.9, 1.1)
    shift: float = 0.1  # fraction of the image size
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)


def _uniform(generator, low: float, high: float) -> float:
    import torch

    return low + (high - low) * float(torch.rand((), generator=generator))


def augment(image, masks, generator, settings: AugmentSettings = AugmentSettings()):
    """``image`` (3 x S x S in [0, 1]) and ``masks`` (K x S x S float {0, 1}) augmented alike."""
    import torch
    import torch.nn.functional as F

    s = settings
    if _uniform(generator, 0, 1) < s.flip_p:
        image, masks = image.flip(-1), masks.flip(-1)
    if _uniform(generator, 0, 1) < s.flip_p:
        image, masks = image.flip(-2), masks.flip(-2)
    scale = _uniform(generator, *s.scale)
    tx, ty = (_uniform(generator, -s.shift, s.shift) * 2 for _ in range(2))  # grid units [-1, 1]
    theta = torch.tensor([[1 / scale, 0, -tx / scale], [0, 1 / scale, -ty / scale]],
                         dtype=torch.float32, device=image.device)[None]
    grid = F.affine_grid(theta, [1, 1, *image.shape[-2:]], align_corners=False)
    image = F.grid_sample(image[None], grid, mode="bilinear", padding_mode="zeros",
                          align_corners=False)[0]
    if masks.shape[0]:
        masks = F.grid_sample(masks[None], grid.expand(1, -1, -1, -1), mode="bilinear",
                              padding_mode="zeros", align_corners=False)[0]
        masks = (masks > 0.5).float()
    image = _colour_jitter(image, generator, s)
    if _uniform(generator, 0, 1) < s.blur_p:
        image = gaussian_blur(image, _uniform(generator, *s.blur_sigma))
    return image.clamp(0.0, 1.0), masks


def _colour_jitter(image, generator, s: AugmentSettings):
    brightness = _uniform(generator, 1 - s.brightness, 1 + s.brightness)
    contrast = _uniform(generator, 1 - s.contrast, 1 + s.contrast)
    saturation = _uniform(generator, 1 - s.saturation, 1 + s.saturation)
    image = (image * brightness).clamp(0.0, 1.0)
    grey = (0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2])
    image = ((image - grey.mean()) * contrast + grey.mean()).clamp(0.0, 1.0)
    grey = (0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2])[None]
    return ((image - grey) * saturation + grey).clamp(0.0, 1.0)


def gaussian_blur(image, sigma: float):
    """Separable Gaussian blur of a ``C x H x W`` tensor (reflected borders)."""
    import torch
    import torch.nn.functional as F

    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=image.device)
    kernel = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    kernel = kernel / kernel.sum()
    c = image.shape[0]
    out = F.pad(image[None], (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    out = F.conv2d(out, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return out[0]
