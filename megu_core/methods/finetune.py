"""Finetune: train the original model on the retain set alone, relying on catastrophic forgetting."""

from __future__ import annotations

from dataclasses import dataclass

from megu_core.methods.base import UnlearnContext, UnlearningMethod, UnlearnResult, run_finetuning
from megu_core.methods.registry import register_method
from megu_core.training import TensorBatches, cross_entropy_step


@dataclass(frozen=True)
class FinetuneParams:
    """Overrides of the shared budget; None keeps the budget's value."""

    epochs: float | None = None
    lr: float | None = None


@register_method("finetune")
class Finetune(UnlearningMethod):
    """Finetune the original model on the retain set alone."""

    Params = FinetuneParams

    def unlearn(self, ctx: UnlearnContext) -> UnlearnResult:
        images, labels = ctx.retain_data()
        budget = ctx.budget
        cfg = budget.train_config(
            epochs=self.params.epochs or budget.epochs, lr=self.params.lr or budget.lr
        )
        batches = TensorBatches(
            images, labels, budget.retain_batch_size, ctx.device, budget.augment, True, budget.seed
        )
        return run_finetuning(ctx, ctx.student(), batches, cross_entropy_step(), cfg, "finetune")
