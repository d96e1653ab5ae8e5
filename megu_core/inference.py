"""Batched inference without gradients: logits and penultimate features of a whole split."""

from __future__ import annotations

import torch
from torch import nn

from megu_core.data.augment import normalize
from megu_core.devices import autocast


@torch.no_grad()
def predict(
    model: nn.Module,
    images: torch.Tensor,
    device: torch.device,
    batch_size: int = 512,
    with_features: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Return float32 logits (n, C) on the CPU and, if asked, the features (n, d).

    The model is put in eval mode for the call and restored afterwards.
    """
    was_training = model.training
    model.eval().to(memory_format=torch.channels_last)  # matches the channels-last inputs below
    logits, features = [], []
    try:
        for start in range(0, images.shape[0], batch_size):
            x = normalize(images[start : start + batch_size].to(device, non_blocking=True))
            x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device):
                z = model.features(x)
                out = model.head(z)
            logits.append(out.float().cpu())
            if with_features:
                features.append(z.float().cpu())
    finally:
        model.train(was_training)
    all_logits = torch.cat(logits) if logits else torch.empty(0)
    if not with_features:
        return all_logits, None
    return all_logits, torch.cat(features) if features else torch.empty(0)
