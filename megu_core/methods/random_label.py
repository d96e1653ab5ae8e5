"""Random label, or amnesiac unlearning (Graves et al.).

Every forget sample gets a random other class once; the model then trains on the union of
the relabelled forget set and the retain data.
"""

from __future__ import annotations

from dataclasses import dataclass

from megu_core.methods.base import UnlearnContext, UnlearningMethod, UnlearnResult, run_finetuning
from megu_core.methods.registry import register_method
from megu_core.methods.shared import concat_rows, plain_batches, random_other_labels
from megu_core.training import cross_entropy_step


@dataclass(frozen=True)
class RandomLabelParams:
    """Published settings of the amnesiac baseline (SSD's code): 3 epochs, Adam lr 1e-4, batch 128."""

    epochs: float = 3.0  # passes over the union of relabelled forget samples and retain data
    lr: float = 1e-4
    batch_size: int = 128


@register_method("random_label")
class RandomLabel(UnlearningMethod):
    """Relabel forget samples to random other classes and train on them with the retain data."""

    Params = RandomLabelParams

    def unlearn(self, ctx: UnlearnContext) -> UnlearnResult:
        forget_images, forget_labels = ctx.forget_data()
        relabelled = random_other_labels(
            forget_labels,
            ctx.dataset.num_classes,
            ctx.request.target_classes,  # a forgotten class is never a random label
            ctx.budget.seed,
        )
        data = concat_rows((forget_images, relabelled), ctx.retain_data())
        batches = plain_batches(ctx, data, self.params.batch_size)
        cfg = ctx.budget.train_config(
            epochs=self.params.epochs,
            lr=self.params.lr,
            optimizer="adam",
            weight_decay=0.0,
            schedule="constant",
        )
        return run_finetuning(
            ctx, ctx.student(), batches, cross_entropy_step(), cfg, "random label"
        )
