"""Gradient ascent: maximise the cross-entropy of the forget set, with no retain data."""

from __future__ import annotations

from dataclasses import dataclass

from torch.nn import functional as F

from megu_core.methods.base import UnlearnContext, UnlearningMethod, UnlearnResult, run_finetuning
from megu_core.methods.registry import register_method
from megu_core.methods.shared import plain_batches
from megu_core.training import Batch, StepOutput


@dataclass(frozen=True)
class GradientAscentParams:
    """Published settings of SalUn's GA baseline (its README): 5 epochs over the forget set, SGD lr 1e-4, batch 256."""

    epochs: float = 5.0  # passes over the forget set
    lr: float = 1e-4  # the ascent has no bound, so a large rate destroys the model in a few steps
    batch_size: int = 256


@register_method("gradient_ascent")
class GradientAscent(UnlearningMethod):
    """Gradient ascent on the forget set: SGD steps along +grad CE(f(x_f), y_f)."""

    Params = GradientAscentParams

    def unlearn(self, ctx: UnlearnContext) -> UnlearnResult:
        batches = plain_batches(ctx, ctx.forget_data(), self.params.batch_size)
        cfg = ctx.budget.train_config(
            epochs=self.params.epochs, lr=self.params.lr, schedule="constant"
        )

        def step(model, batch: Batch) -> StepOutput:
            logits = model(batch.x)
            loss = -F.cross_entropy(logits, batch.y)
            return StepOutput(loss, int((logits.argmax(1) == batch.y).sum()), len(batch.y))

        return run_finetuning(ctx, ctx.student(), batches, step, cfg, "gradient ascent")
