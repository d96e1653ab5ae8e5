"""SSD, selective synaptic dampening (Foster et al.): no training, one multiplicative edit.

1. Importance of each parameter: the diagonal of the Fisher information, estimated as the
   mean over mini-batches of the squared gradient of the cross-entropy, once on the forget set
   (I_f) and once on the whole training set (I_D).
2. Selection: parameters with I_f > alpha * I_D are specialised to the forget set.
3. Dampening: each selected parameter is multiplied by min(1, lambda * I_D / I_f).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from megu_core.errors import ConfigError
from megu_core.methods.base import UnlearnContext, UnlearningMethod, UnlearnResult
from megu_core.methods.registry import register_method
from megu_core.methods.shared import gradients_enabled, timed_result
from megu_core.training import TensorBatches

Importance = dict[str, torch.Tensor]  # parameter name -> squared-gradient mean, same shape


@dataclass(frozen=True)
class SsdParams:
    """Published settings for ResNets (SSD's code): lambda 1, alpha 10, batch 64."""

    dampening: float = 1.0  # lambda
    selection: float = 10.0  # alpha; the authors halve it for ViT
    batch_size: int = 64  # the importance is a mean over batches, so it depends on this size
    full_subset: int = 0  # training images for I_D; 0: the whole training set, as published

    def __post_init__(self) -> None:
        if self.dampening <= 0 or self.selection <= 0:
            raise ConfigError(
                f"method.ssd.dampening and selection must be positive, got {self.dampening} "
                f"and {self.selection}"
            )


def importance(
    model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], batch_size: int, device: torch.device
) -> Importance:
    """Mean over batches of the squared gradient of the batch cross-entropy, per parameter.

    Runs in eval mode, so batch-norm statistics stay as they are. The model's weights and
    requires_grad flags are not changed.
    """
    totals = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
    batches = TensorBatches(*data, batch_size, device, augment=False, drop_last=False)

    with gradients_enabled(model):
        for batch in batches:
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(batch.x), batch.y).backward()
            for name, param in model.named_parameters():
                if param.grad is not None:  # None for a parameter the forward pass skips
                    totals[name] += param.grad.detach().pow(2)
    return {name: total / len(batches) for name, total in totals.items()}


@torch.no_grad()
def dampen(
    model: nn.Module, forget: Importance, full: Importance, selection: float, dampening: float
) -> dict[str, torch.Tensor]:
    """Multiply parameters with forget importance > selection * full importance by min(1, dampening * full / forget).

    Returns the boolean selection mask of every parameter.
    """
    masks = {}
    for name, param in model.named_parameters():
        if name not in forget:
            continue
        selected = forget[name] > selection * full[name]
        factor = (dampening * full[name] / forget[name]).clamp(max=1.0)
        param[selected] = param[selected] * factor[selected]
        masks[name] = selected
    return masks


@register_method("ssd")
class Ssd(UnlearningMethod):
    """Selective synaptic dampening of the parameters specialised to the forget set."""

    Params = SsdParams

    def unlearn(self, ctx: UnlearnContext) -> UnlearnResult:
        started = time.perf_counter()
        model = ctx.student()
        train = ctx.dataset.train
        full_data = (train.images, train.labels)
        if 0 < self.params.full_subset < len(train):
            generator = torch.Generator().manual_seed(ctx.budget.seed)
            rows = torch.randperm(len(train), generator=generator)[: self.params.full_subset]
            full_data = (train.images[rows], train.labels[rows])

        forget_importance = importance(model, ctx.forget_data(), self.params.batch_size, ctx.device)
        full_importance = importance(model, full_data, self.params.batch_size, ctx.device)
        masks = dampen(
            model, forget_importance, full_importance, self.params.selection, self.params.dampening
        )

        selected = sum(int(mask.sum()) for mask in masks.values())
        total = sum(mask.numel() for mask in masks.values())
        return timed_result(model, started, dampened_parameters=selected, parameters=total)
