"""UNSIR (Tarun et al.): error-maximising input noise, then one impair and one repair epoch.

1. For each forgotten class, learn a batch of input noise that maximises the frozen original's
   cross-entropy for that class (with a penalty on the noise's squared norm).
2. Impair: train on copies of the noise labelled with the forgotten class, mixed with a few
   hundred retain samples per class.
3. Repair: train on those retain samples alone.

UNSIR needs forgotten classes (or the superclass of a forgotten sub-class), so it is not
defined for random or id-list forget requests.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from megu_core.data.augment import normalize
from megu_core.errors import ConfigError
from megu_core.methods.base import UnlearnContext, UnlearningMethod, UnlearnResult
from megu_core.methods.registry import register_method
from megu_core.training import Batch, TensorBatches, cross_entropy_step, train_loop

log = logging.getLogger(__name__)

# Noise steps by request kind, as SSD's code runs UNSIR.
NOISE_STEPS = {"class": 25, "subclass": 250}


@dataclass(frozen=True)
class UnsirParams:
    """Published settings of UNSIR as SSD's code runs it; epochs are fixed at one impair, one repair."""

    noise_steps: int | None = None  # None: 25 for class, 250 for sub-class requests
    noise_batch_size: int = 32  # noise images learnt per forgotten class
    noise_lr: float = 0.1  # Adam on the noise
    noise_weight: float = 0.1  # weight of the mean squared L2 norm of a noise image
    noise_copies: int = 80  # copies of each noise batch in the impair set
    retain_per_class: int = 500  # retain samples per class in the impair and repair sets
    impair_lr: float = 1e-4  # Adam, constant
    repair_lr: float = 1e-4  # Adam, constant
    impair_batch_size: int = 32
    repair_batch_size: int = 128

    def __post_init__(self) -> None:
        if self.noise_steps is not None and self.noise_steps < 1:
            raise ConfigError(
                f"method.unsir.noise_steps must be at least 1, got {self.noise_steps}"
            )


@dataclass
class NoiseResult:
    """Learnt noise (b, 3, h, w) in normalised input space and the class loss before and after."""

    noise: torch.Tensor
    initial_loss: float  # cross-entropy of the target class on the starting noise
    final_loss: float  # both measured with batch statistics, as the noise was learnt


def error_maximising_noise(
    model: nn.Module,
    target: int,
    shape: tuple[int, ...],
    steps: int,
    lr: float,
    weight: float,
    seed: int,
) -> NoiseResult:
    """Learn noise that maximises CE(model(noise), target) - weight * mean ||noise||^2, with Adam.

    The noise is learnt against a copy of `model` in training mode, as SSD's code does. Batch
    normalisation then uses the noise batch's own statistics, as in the impair step, so the
    norm penalty cannot win by shrinking the noise alone. Losses are measured the same way,
    and `model` itself is left unchanged.
    """
    device = next(model.parameters()).device
    working = copy.deepcopy(model).train()
    for param in working.parameters():
        param.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(shape, generator=generator).to(device).requires_grad_(True)
    optimizer = torch.optim.Adam([noise], lr=lr)
    labels = torch.full((shape[0],), target, dtype=torch.long, device=device)

    def class_loss() -> torch.Tensor:
        return F.cross_entropy(working(noise), labels)

    with torch.no_grad():
        initial = float(class_loss())
    for _ in range(steps):
        penalty = noise.pow(2).sum(dim=(1, 2, 3)).mean()
        loss = -class_loss() + weight * penalty
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        final = float(class_loss())
    return NoiseResult(noise.detach(), initial, final)


class ImpairBatches:
    """Shuffled batches from `copies` copies of each noise image and from uint8 retain images.

    Noise is already in normalised input space; retain images are normalised per batch.
    """

    def __init__(
        self,
        noise: torch.Tensor,  # (k, 3, h, w) float
        noise_labels: torch.Tensor,  # (k,)
        copies: int,
        retain: tuple[torch.Tensor, torch.Tensor],
        batch_size: int,
        device: torch.device,
        seed: int,
    ) -> None:
        self.noise = noise.to(device)
        self.noise_labels = noise_labels.to(device)
        self.num_noise = len(noise_labels) * copies
        self.retain_images = retain[0].to(device)
        self.retain_labels = retain[1].to(device)
        self.total = self.num_noise + len(self.retain_labels)
        self.batch_size = min(batch_size, self.total)
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def __len__(self) -> int:
        return self.total // self.batch_size

    def __iter__(self) -> Iterator[Batch]:
        order = torch.randperm(self.total, device=self.noise.device, generator=self.generator)
        for step in range(len(self)):
            index = order[step * self.batch_size : (step + 1) * self.batch_size]
            noise_rows = index[index < self.num_noise] % len(self.noise_labels)
            retain_rows = index[index >= self.num_noise] - self.num_noise
            x = torch.cat([self.noise[noise_rows], normalize(self.retain_images[retain_rows])])
            y = torch.cat([self.noise_labels[noise_rows], self.retain_labels[retain_rows]])
            yield Batch(x.contiguous(memory_format=torch.channels_last), y, index)


def per_class_rows(labels: torch.Tensor, per_class: int, seed: int) -> torch.Tensor:
    """Rows of up to `per_class` seeded random samples of every class present in `labels`."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=generator)
    chosen = []
    for label in labels.unique():
        members = order[labels[order] == label]
        chosen.append(members[:per_class])
    return torch.cat(chosen).sort().values


@register_method("unsir")
class Unsir(UnlearningMethod):
    """UNSIR: impair with error-maximising noise of the forgotten classes, then repair on retain data."""

    Params = UnsirParams

    def unlearn(self, ctx: UnlearnContext) -> UnlearnResult:
        kind = ctx.request.kind
        if kind not in NOISE_STEPS:
            raise ConfigError(
                f"UNSIR is not defined for {kind} forget requests ({ctx.request.request.spec}): its "
                "noise maximises the loss of a forgotten class. Use a class or subclass request, "
                "or another method"
            )
        started = time.perf_counter()
        params = self.params

        targets = self._target_classes(ctx)
        noises = [self._noise(ctx, target, offset) for offset, target in enumerate(targets)]
        noise = torch.cat([result.noise for result in noises])  # (k, 3, h, w)
        noise_labels = torch.cat(
            [
                torch.full((len(r.noise),), t, dtype=torch.long)
                for r, t in zip(noises, targets, strict=True)
            ]
        )

        images, labels = ctx.retain_data(subset=0)
        rows = per_class_rows(labels, params.retain_per_class, ctx.budget.seed)
        retain = (images[rows], labels[rows])

        model = ctx.student()
        impair = ImpairBatches(
            noise,
            noise_labels,
            params.noise_copies,
            retain,
            params.impair_batch_size,
            ctx.device,
            ctx.budget.seed,
        )
        self._train(ctx, model, impair, params.impair_lr, params.impair_batch_size, "unsir impair")
        repair = TensorBatches(
            *retain, params.repair_batch_size, ctx.device, False, True, ctx.budget.seed
        )
        result = self._train(
            ctx, model, repair, params.repair_lr, params.repair_batch_size, "unsir repair"
        )

        details = {
            "noise_classes": targets,
            "noise_steps": params.noise_steps or NOISE_STEPS[kind],
            "noise_class_loss_before": [r.initial_loss for r in noises],
            "noise_class_loss_after": [r.final_loss for r in noises],
        }
        return UnlearnResult(model.eval(), time.perf_counter() - started, result, details)

    def _target_classes(self, ctx: UnlearnContext) -> list[int]:
        if ctx.request.kind == "class":
            return list(ctx.request.target_classes)
        _, forget_labels = ctx.forget_data()  # a sub-class: its superclass is the output class
        return [int(label) for label in forget_labels.unique()]

    def _noise(self, ctx: UnlearnContext, target: int, offset: int) -> NoiseResult:
        params = self.params
        steps = params.noise_steps or NOISE_STEPS[ctx.request.kind]
        image_shape = tuple(ctx.dataset.train.images.shape[1:])
        result = error_maximising_noise(
            ctx.frozen_original(),
            target,
            (params.noise_batch_size, *image_shape),
            steps,
            params.noise_lr,
            params.noise_weight,
            ctx.budget.seed + offset,
        )
        log.info(
            "UNSIR noise for class %d: cross-entropy %.3f -> %.3f after %d steps",
            target,
            result.initial_loss,
            result.final_loss,
            steps,
        )
        return result

    def _train(self, ctx, model, batches, lr: float, batch_size: int, description: str):
        cfg = ctx.budget.train_config(
            epochs=1.0,
            lr=lr,
            optimizer="adam",
            weight_decay=0.0,
            schedule="constant",
            batch_size=batch_size,
        )
        return train_loop(
            model,
            batches,
            len(batches),
            cross_entropy_step(),
            cfg,
            ctx.device,
            description,
            progress=ctx.progress,
        )
