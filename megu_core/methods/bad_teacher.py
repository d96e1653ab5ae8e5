"""Bad Teacher (Chundawat et al.): distil from a competent and an incompetent teacher.

The student starts from the original model. On retain samples it matches the original (the
competent teacher); on forget samples it matches a randomly initialised copy of the
architecture (the incompetent teacher). Loss: KL(teacher || student) at temperature T.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from megu_core.errors import ConfigError
from megu_core.methods.base import UnlearnContext, UnlearningMethod, UnlearnResult, run_finetuning
from megu_core.methods.registry import register_method
from megu_core.methods.shared import (
    concat_rows,
    distillation_kl,
    plain_batches,
    reinitialise,
    seeded_fraction,
)
from megu_core.training import Batch, StepOutput


@dataclass(frozen=True)
class BadTeacherParams:
    """Published settings (SSD's code): 1 epoch, Adam lr 1e-4, 30% of the retain set, T = 1, batch 256."""

    epochs: float = 1.0
    lr: float = 1e-4
    retain_fraction: float = 0.3  # of the whole retain set, not of the budget's retain subset
    temperature: float = 1.0
    batch_size: int = 256

    def __post_init__(self) -> None:
        if not 0 < self.retain_fraction <= 1:
            raise ConfigError(
                f"method.bad_teacher.retain_fraction must be in (0, 1], got {self.retain_fraction}"
            )
        if self.temperature <= 0:
            raise ConfigError(
                f"method.bad_teacher.temperature must be positive, got {self.temperature}"
            )


@register_method("bad_teacher")
class BadTeacher(UnlearningMethod):
    """Distil retain samples from the original and forget samples from a random network."""

    Params = BadTeacherParams

    def unlearn(self, ctx: UnlearnContext) -> UnlearnResult:
        forget = ctx.forget_data()
        retain = seeded_fraction(
            ctx.retain_data(subset=0), self.params.retain_fraction, ctx.budget.seed
        )
        images, _ = concat_rows(forget, retain)
        is_forget = torch.zeros(len(images), dtype=torch.bool, device=ctx.device)
        is_forget[: len(forget[1])] = True
        # The batch labels carry the forget flag, since the teachers replace the true labels.
        batches = plain_batches(ctx, (images, is_forget.long()), self.params.batch_size)

        competent = ctx.frozen_original()
        incompetent = reinitialise(copy.deepcopy(competent), ctx.budget.seed + 1).eval()
        temperature = self.params.temperature

        def step(model, batch: Batch) -> StepOutput:
            with torch.no_grad():
                flag = batch.y.bool()[:, None]  # (b, 1)
                teacher = torch.where(flag, incompetent(batch.x), competent(batch.x))  # (b, C)
            loss = distillation_kl(model(batch.x), teacher, temperature)
            return StepOutput(loss, images=len(batch.y))

        cfg = ctx.budget.train_config(
            epochs=self.params.epochs,
            lr=self.params.lr,
            optimizer="adam",
            weight_decay=0.0,
            schedule="constant",
        )
        return run_finetuning(ctx, ctx.student(), batches, step, cfg, "bad teacher")
