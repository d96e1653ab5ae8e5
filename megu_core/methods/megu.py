"""MeGU: re-align forget samples to their perturbing concepts and pull their features to z*.

Inputs from the earlier stages, in forget-request order: `soft_targets` q (n_f, C) and
`feature_targets` z* (n_f, d). Each step draws a retain batch and a forget batch and minimises
CE(f(x_r), y_r) + lambda_f CE(f(x_f), q) + lambda_feat ||g(x_f) - z*||^2 / d
(+ lambda_kd KL(f0(x_r) || f(x_r))).
"""

from __future__ import annotations

from dataclasses import dataclass

from megu_core.megu.config import MeguLossConfig
from megu_core.megu.loss import megu_loss
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
class MeguParams:
    """Loss weights of MeGU's finetuning."""

    lambda_f: float = 1.0  # re-alignment to the perturbing concepts
    lambda_feat: float = (
        1.0  # the noise pair's feature target; 0 is the "re-alignment only" ablation
    )
    lambda_kd: float = 0.0  # optional retain distillation from the original model

    def loss_config(self) -> MeguLossConfig:
        return MeguLossConfig(self.lambda_f, self.lambda_feat, self.lambda_kd)


@register_method("megu")
class Megu(UnlearningMethod):
    """Machine-guided unlearning (MeGU) finetuning."""

    Params = MeguParams
    required_inputs = ("soft_targets", "feature_targets")

    def unlearn(self, ctx: UnlearnContext) -> UnlearnResult:
        missing = [name for name in self.required_inputs if name not in ctx.inputs]
        if missing:
            raise ValueError(
                f"MeGU needs the stage outputs {', '.join(missing)}; run the concepts and noise stages first"
            )
        forget_images, forget_labels = ctx.forget_data()
        soft_targets = ctx.inputs["soft_targets"].to(ctx.device)  # (n_f, C)
        feature_targets = ctx.inputs["feature_targets"].to(ctx.device)  # (n_f, d)
        if soft_targets.shape[0] != len(forget_labels) or feature_targets.shape[0] != len(
            forget_labels
        ):
            raise ValueError(
                f"soft_targets {tuple(soft_targets.shape)} and feature_targets {tuple(feature_targets.shape)} "
                f"must have one row per forget sample ({len(forget_labels)})"
            )

        loss_cfg = self.params.loss_config()
        f0 = ctx.frozen_original() if loss_cfg.lambda_kd > 0 else None
        model = ctx.student()
        batches = RetainForgetBatches(
            ctx.retain_data(), (forget_images, forget_labels), ctx.budget, ctx.device
        )

        def step(model, pair) -> StepOutput:
            rows = pair.forget.index  # rows of the forget set, to look up q and z*
            total, terms = megu_loss(
                model,
                f0,
                pair.retain.x,
                pair.retain.y,
                pair.forget.x,
                soft_targets[rows],
                feature_targets[rows],
                loss_cfg,
            )
            images = int(pair.retain.y.shape[0] + pair.forget.y.shape[0])
            return StepOutput(total, terms=terms, images=images)

        return run_finetuning(ctx, model, batches, step, ctx.budget.train_config(), "megu")
