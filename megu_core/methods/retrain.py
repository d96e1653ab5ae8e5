"""The two retrain references: the gold retrain from scratch, and the cheaper head-reset retrain.

Both train on the whole retain set with the original model's training configuration
(`UnlearnContext.train_config`). `retrain` re-initialises every weight, which makes it the
model every unlearning method is measured against. `retrain_head` re-initialises only the
classification head. It keeps features learnt from the forget set, so it is reported under
its own name and never as the gold standard. The retrain of SSD's public code is close to it:
that code re-initialises only the model's top-level layers, the stem and the head.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from torch import nn

from megu_core.methods.base import UnlearnContext, UnlearningMethod, UnlearnResult
from megu_core.methods.registry import register_method
from megu_core.methods.shared import reinitialise
from megu_core.training import TrainConfig, train_classifier


@dataclass(frozen=True)
class RetrainParams:
    """Overrides of the original's training schedule; None keeps the original's value."""

    epochs: float | None = None


def retrain_config(ctx: UnlearnContext, epochs: float | None, name: str) -> TrainConfig:
    """Return the original model's TrainConfig, with `epochs` replaced when given."""
    if ctx.train_config is None:
        raise ValueError(
            f"{name} repeats the original model's training run, but the unlearning context has "
            "no train_config; pass UnlearnContext(train_config=...) with the original's TrainConfig"
        )
    if epochs is None:
        return ctx.train_config
    values = ctx.train_config.to_dict()
    values.update(epochs=epochs, warmup_epochs=min(ctx.train_config.warmup_epochs, epochs))
    return TrainConfig(**values)


def train_on_retain(
    ctx: UnlearnContext, model: nn.Module, cfg: TrainConfig, label: str
) -> UnlearnResult:
    """Train `model` on the whole retain set with `cfg` and time it."""
    images, labels = ctx.retain_data(subset=0)
    started = time.perf_counter()
    result = train_classifier(model, images, labels, cfg, ctx.device, label, progress=ctx.progress)
    return UnlearnResult(model.eval(), time.perf_counter() - started, result)


@register_method("retrain")
class Retrain(UnlearningMethod):
    """Gold retrain: a fresh initialisation trained on the retain set with the original's schedule.

    NOTE: the unlearn stage's cache key covers the original model's weights but not the
    training configuration itself, so a changed `train` section reaches this method only
    through a retrained original (not through an imported one).
    """

    Params = RetrainParams

    def unlearn(self, ctx: UnlearnContext) -> UnlearnResult:
        cfg = retrain_config(ctx, self.params.epochs, self.name)
        model = reinitialise(ctx.student(), cfg.seed)
        return train_on_retain(ctx, model, cfg, "retrain")


@register_method("retrain_head")
class RetrainHead(UnlearningMethod):
    """Head-reset retrain: the original with a re-initialised head, trained on the retain set."""

    Params = RetrainParams

    def unlearn(self, ctx: UnlearnContext) -> UnlearnResult:
        cfg = retrain_config(ctx, self.params.epochs, self.name)
        model = ctx.student()
        head = getattr(model, "head", None)
        if not isinstance(head, nn.Module):
            raise ValueError(
                f"retrain_head needs a model with a `head` module; {type(model).__name__} has none"
            )
        reinitialise(head, cfg.seed)
        return train_on_retain(ctx, model, cfg, "retrain head")
