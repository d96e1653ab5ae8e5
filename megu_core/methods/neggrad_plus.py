"""NegGrad+ (Kurmanji et al.): retain descent plus weighted forget ascent.

Each step draws a retain batch and a forget batch and minimises
beta * CE(f(x_r), y_r) - (1 - beta) * CE(f(x_f), y_f).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch.nn import functional as F

from megu_core.errors import ConfigError
from megu_core.methods.base import (
    RetainForgetBatches,
    UnlearnContext,
    UnlearningMethod,
    UnlearnResult,
    run_finetuning,
)
from megu_core.methods.registry import register_method
from megu_core.training import StepOutput


@dataclass(frozen=True)
class NegGradPlusParams:
    """Weight of the retain term; epochs, optimiser and batches come from the shared budget."""

    # NOTE: the published baseline settings give no beta. 0.95 is a value that public
    # reimplementations use, so tune it per scenario before drawing conclusions.
    beta: float = 0.95

    def __post_init__(self) -> None:
        if not 0 <= self.beta <= 1:
            raise ConfigError(f"method.neggrad_plus.beta must be in [0, 1], got {self.beta}")


@register_method("neggrad_plus")
class NegGradPlus(UnlearningMethod):
    """NegGrad+: descend on the retain loss while ascending on the forget loss."""

    Params = NegGradPlusParams

    def unlearn(self, ctx: UnlearnContext) -> UnlearnResult:
        beta = self.params.beta
        batches = RetainForgetBatches(ctx.retain_data(), ctx.forget_data(), ctx.budget, ctx.device)

        def step(model, pair) -> StepOutput:
            retain_logits = model(pair.retain.x)
            retain_loss = F.cross_entropy(retain_logits, pair.retain.y)

            forget_loss = F.cross_entropy(model(pair.forget.x), pair.forget.y)

            loss = beta * retain_loss - (1 - beta) * forget_loss
            correct = int((retain_logits.argmax(1) == pair.retain.y).sum())
            terms = {
                "retain_ce": float(retain_loss.detach()),
                "forget_ce": float(forget_loss.detach()),
            }
            return StepOutput(loss, correct, len(pair.retain.y), terms)

        return run_finetuning(
            ctx, ctx.student(), batches, step, ctx.budget.train_config(), "neggrad+"
        )
