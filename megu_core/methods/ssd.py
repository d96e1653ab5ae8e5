"""SSD, selective synaptic dampening (Foster et al.): no training, one multiplicative edit.

1. Importance of each parameter: the diagonal of the Fisher information, estimated as the
   mean over mini-batches of the squared gradient of the cross-entropy, once on the forget set
   (I_f) and once on the whole training set (I_D).
2. Selection: parameters with I_f > alpha * I_D are specialised to the forget set.
3. Dampening: each selected parameter is multiplied by min(1, lambda * I_D / I_f).

I_D is averaged over the batches of the retain set followed by the batches of the forget set,
as the authors' unshuffled concatenation of the two loaders gives. The order matters because
forget samples' gradients add up in forget-only batches and mostly cancel in shuffled ones.
On a CIFAR-10 class, a shuffled I_D let alpha 10 select 37% of the weights, which left a
model that predicts one class.

NOTE: since I_D then contains the forget batches, I_f > alpha * I_D is impossible once alpha
times the forget set's share of the batches reaches 1 (10% of the data with alpha 10). SSD
then changes nothing and logs a warning that names the bound to go below.
"""

from __future__ import annotations

import logging
import math
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

log = logging.getLogger(__name__)

Importance = dict[str, torch.Tensor]  # parameter name -> squared-gradient mean, same shape


@dataclass(frozen=True)
class SsdParams:
    """Published settings for ResNets (SSD's code): lambda 1, alpha 10, batch 64."""

    dampening: float = 1.0  # lambda
    selection: float = 10.0  # alpha; the authors halve it for ViT
    batch_size: int = 64  # the importance is a mean over batches, so it depends on this size
    retain_subset: int = 0  # retain images in I_D; 0: the whole retain set, as published

    def __post_init__(self) -> None:
        if self.dampening <= 0 or self.selection <= 0:
            raise ConfigError(
                f"method.ssd.dampening and selection must be positive, got {self.dampening} "
                f"and {self.selection}"
            )
        if self.batch_size < 1:
            raise ConfigError(f"method.ssd.batch_size must be at least 1, got {self.batch_size}")
        if self.retain_subset < 0:
            raise ConfigError(
                f"method.ssd.retain_subset must be 0 (the whole retain set) or a positive "
                f"image count, got {self.retain_subset}"
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


def batch_count(num_samples: int, batch_size: int) -> int:
    """Number of batches `importance` averages over (the last partial batch included)."""
    return math.ceil(num_samples / batch_size)


def full_importance(
    forget: Importance, retain: Importance, forget_batches: int, retain_batches: int
) -> Importance:
    """I_D over the retain batches followed by the forget batches: the batch-weighted mean of both."""
    total = forget_batches + retain_batches
    return {
        name: (retain[name] * retain_batches + forget[name] * forget_batches) / total
        for name in forget
    }


def selection_bound(forget_batches: int, retain_batches: int) -> float:
    """Largest alpha that can still select a parameter: all batches / forget batches."""
    return (forget_batches + retain_batches) / forget_batches


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
    cache_version = "2"  # I_D over grouped retain and forget batches

    def unlearn(self, ctx: UnlearnContext) -> UnlearnResult:
        started = time.perf_counter()
        model = ctx.student()
        params = self.params
        forget_data = ctx.forget_data()
        retain_data = ctx.retain_data(subset=params.retain_subset)

        forget_batches = batch_count(len(forget_data[1]), params.batch_size)
        retain_batches = batch_count(len(retain_data[1]), params.batch_size)
        bound = selection_bound(forget_batches, retain_batches)
        if params.selection >= bound:
            log.warning(
                "SSD selection (alpha) %.3g cannot select any parameter: the forget set fills "
                "%d of the %d batches of I_D, so alpha must be below %.3g. Lower SSD's "
                "selection setting (megu benchmark: --set ssd.selection=VALUE)",
                params.selection,
                forget_batches,
                forget_batches + retain_batches,
                bound,
            )
            # Skipping the importances saves a pass over the training set. It also keeps the
            # model unchanged at alpha equal to the bound, where rounding could select a weight.
            total = sum(param.numel() for param in model.parameters())
            return timed_result(
                model, started, dampened_parameters=0, parameters=total, selection_bound=bound
            )

        forget_importance = importance(model, forget_data, params.batch_size, ctx.device)
        retain_importance = importance(model, retain_data, params.batch_size, ctx.device)
        full = full_importance(forget_importance, retain_importance, forget_batches, retain_batches)
        masks = dampen(model, forget_importance, full, params.selection, params.dampening)

        selected = sum(int(mask.sum()) for mask in masks.values())
        total = sum(mask.numel() for mask in masks.values())
        return timed_result(
            model, started, dampened_parameters=selected, parameters=total, selection_bound=bound
        )
