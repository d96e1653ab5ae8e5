"""Batched image preprocessing on the training device: normalisation, random crop and flip.

Working on whole uint8 batches already on the device keeps the training loop free of
per-image Python work, which would otherwise bound throughput on small models.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

# Per-channel statistics of CIFAR-10's training images; close enough for CIFAR-100 too.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def normalize(images: torch.Tensor, mean=CIFAR_MEAN, std=CIFAR_STD) -> torch.Tensor:
    """Convert a uint8 batch (b, 3, h, w) to normalised float32."""
    mean_t = torch.tensor(mean, device=images.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=images.device).view(1, 3, 1, 1)
    return (images.float().div_(255.0) - mean_t) / std_t


def random_crop_flip(
    images: torch.Tensor, padding: int = 4, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Randomly crop each image after zero padding and flip half of them horizontally.

    Works on any dtype; `images` is (b, c, h, w) and the result has the same shape.
    """
    batch, _, height, width = images.shape
    device = images.device

    padded = F.pad(images, (padding, padding, padding, padding))  # (b, c, h + 2p, w + 2p)
    offset_y = torch.randint(0, 2 * padding + 1, (batch,), device=device, generator=generator)
    offset_x = torch.randint(0, 2 * padding + 1, (batch,), device=device, generator=generator)

    # Gather the crop window of every image with one indexing operation.
    rows = (offset_y[:, None] + torch.arange(height, device=device)[None, :])[:, None, :, None]
    cols = (offset_x[:, None] + torch.arange(width, device=device)[None, :])[:, None, None, :]
    batch_index = torch.arange(batch, device=device)[:, None, None, None]
    channel_index = torch.arange(images.shape[1], device=device)[None, :, None, None]
    cropped = padded[batch_index, channel_index, rows, cols]  # (b, c, h, w)

    flip = torch.rand(batch, device=device, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], cropped.flip(3), cropped)
