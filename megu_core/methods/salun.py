"""SalUn, saliency unlearning (Fan et al.): random-label unlearning on the salient weights only.

1. Saliency: the magnitude of the gradient of the forget-set cross-entropy at the original
   weights; the largest `saliency_fraction` of all weights, ranked globally, are salient.
2. Random-label unlearning: train on the union of the forget set, relabelled to random other
   classes, and the retain data. Gradients of non-salient weights are zeroed, and weight decay
   applies to salient weights only, so every non-salient weight keeps its original value.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from megu_core.errors import ConfigError
from megu_core.methods.base import UnlearnContext, UnlearningMethod, UnlearnResult, run_finetuning
from megu_core.methods.registry import register_method
from megu_core.methods.shared import (
    concat_rows,
    gradients_enabled,
    plain_batches,
    random_other_labels,
)
from megu_core.training import Batch, StepOutput, TensorBatches

Mask = dict[str, torch.Tensor]  # parameter name -> bool tensor of its shape, True where salient


@dataclass(frozen=True)
class SalunParams:
    """Published settings (SalUn's README, CIFAR-10 random forgetting): 10 epochs, SGD lr 0.1, batch 256, top half."""

    epochs: float = 10.0  # passes over the union of relabelled forget samples and retain data
    lr: float = 0.1  # constant, with the budget's momentum and weight decay
    batch_size: int = 256
    saliency_fraction: float = 0.5  # share of all weights that are salient and trained

    def __post_init__(self) -> None:
        if not 0 < self.saliency_fraction <= 1:
            raise ConfigError(
                f"method.salun.saliency_fraction must be in (0, 1], got {self.saliency_fraction}"
            )


def saliency_mask(
    model: nn.Module,
    forget: tuple[torch.Tensor, torch.Tensor],
    fraction: float,
    batch_size: int,
    device: torch.device,
) -> Mask:
    """Mark the `fraction` of weights with the largest |sum over forget batches of grad CE|.

    Computed in eval mode at the model's current weights, which stay unchanged.
    """
    gradients = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
    with gradients_enabled(model):
        for batch in TensorBatches(*forget, batch_size, device, augment=False, drop_last=False):
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(batch.x), batch.y).backward()
            for name, param in model.named_parameters():
                if param.grad is not None:  # None for a parameter the forward pass skips
                    gradients[name] += param.grad.detach()

    flat = torch.cat([g.abs().flatten() for g in gradients.values()])  # (total weights,)
    count = max(1, int(fraction * flat.numel()))
    salient = torch.zeros_like(flat, dtype=torch.bool)
    salient[flat.argsort(descending=True)[:count]] = True

    masks, start = {}, 0
    for name, gradient in gradients.items():
        masks[name] = salient[start : start + gradient.numel()].view_as(gradient)
        start += gradient.numel()
    return masks


@register_method("salun")
class Salun(UnlearningMethod):
    """Random-label unlearning restricted to the weights salient for the forget set."""

    Params = SalunParams

    def unlearn(self, ctx: UnlearnContext) -> UnlearnResult:
        params = self.params
        model = ctx.student()
        forget_images, forget_labels = ctx.forget_data()
        masks = saliency_mask(
            model,
            (forget_images, forget_labels),
            params.saliency_fraction,
            params.batch_size,
            ctx.device,
        )

        relabelled = random_other_labels(
            forget_labels, ctx.dataset.num_classes, ctx.request.target_classes, ctx.budget.seed
        )
        data = concat_rows((forget_images, relabelled), ctx.retain_data())
        batches = plain_batches(ctx, data, params.batch_size)

        weight_decay = ctx.budget.weight_decay
        decayed = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]

        def step(model, batch: Batch) -> StepOutput:
            logits = model(batch.x)
            cross_entropy = F.cross_entropy(logits, batch.y)
            # L2 in the loss instead of the optimiser, so the masked gradient also masks decay.
            l2 = sum(p.pow(2).sum() for p in decayed)
            loss = cross_entropy + 0.5 * weight_decay * l2
            return StepOutput(loss, int((logits.argmax(1) == batch.y).sum()), len(batch.y))

        handles = [
            param.register_hook(lambda grad, mask=masks[name]: grad * mask)
            for name, param in model.named_parameters()
            if name in masks
        ]
        cfg = ctx.budget.train_config(
            epochs=params.epochs, lr=params.lr, weight_decay=0.0, schedule="constant"
        )
        try:
            result = run_finetuning(ctx, model, batches, step, cfg, "salun")
        finally:
            for handle in handles:
                handle.remove()

        salient = sum(int(mask.sum()) for mask in masks.values())
        result.details["salient_weights"] = salient
        return result
