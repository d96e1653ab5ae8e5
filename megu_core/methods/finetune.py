"""Finetune: train the original model on the retain set alone, relying on catastrophic forgetting."""

from __future__ import annotations

from dataclasses import dataclass

from megu_core.methods.base import UnlearnContext, UnlearningMethod, UnlearnResult, run_finetuning
from megu_core.methods.registry import register_method
from megu_core.training import TensorBatches, cross_entropy_step


@dataclass(frozen=True)
class FinetuneParams:
    """Epochs and learning rate of the retain finetuning; None takes the shared budget's value.

    Defaults are the published baseline (SSD's finetune: 5 epochs, SGD lr 0.02). Setting both
    to None gives the shared budget that MeGU gets (2 epochs, lr 0.01).
    """

    epochs: float | None = 5.0
    lr: float | None = 0.02


@register_method("finetune")
class Finetune(UnlearningMethod):
    """Finetune the original model on the retain set alone."""

    Params = FinetuneParams

    def unlearn(self, ctx: UnlearnContext) -> UnlearnResult:
        images, labels = ctx.retain_data()
        budget = ctx.budget
        epochs = budget.epochs if self.params.epochs is None else self.params.epochs
        lr = budget.lr if self.params.lr is None else self.params.lr
        cfg = budget.train_config(epochs=epochs, lr=lr)
        batches = TensorBatches(
            images, labels, budget.retain_batch_size, ctx.device, budget.augment, True, budget.seed
        )
        return run_finetuning(ctx, ctx.student(), batches, cross_entropy_step(), cfg, "finetune")
