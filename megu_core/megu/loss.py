"""MeGU's finetuning loss: retain CE, forget re-alignment, the feature target and optional KD.

L = CE(f(x_r), y_r)
    + lambda_f    * CE(f(x_f), q(x_f))          soft-target re-alignment to the perturbing classes
    + lambda_feat * ||g(x_f) - z*(x_f)||^2 / d  pull toward the mixed feature target (z* fixed)
    + lambda_kd   * KL(f0(x_r) || f(x_r))       optional retain distillation from the frozen f0
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from megu_core.megu.config import MeguLossConfig


def _check_batch(
    x_retain: torch.Tensor,
    y_retain: torch.Tensor,
    x_forget: torch.Tensor,
    q_forget: torch.Tensor,
    z_star: torch.Tensor,
) -> None:
    if y_retain.shape != (x_retain.shape[0],):
        raise ValueError(
            f"y_retain must have shape ({x_retain.shape[0]},) to match x_retain, got {tuple(y_retain.shape)}"
        )
    num_forget = x_forget.shape[0]
    if num_forget == 0:
        raise ValueError("x_forget is empty; draw at least one forget sample per step")
    if q_forget.dim() != 2 or q_forget.shape[0] != num_forget:
        raise ValueError(
            f"q_forget must have shape ({num_forget}, C) to match x_forget, got {tuple(q_forget.shape)}"
        )
    if z_star.dim() != 2 or z_star.shape[0] != num_forget:
        raise ValueError(
            f"z_star must have shape ({num_forget}, d) to match x_forget, got {tuple(z_star.shape)}"
        )


def megu_loss(
    model: nn.Module,
    f0: nn.Module | None,
    x_retain: torch.Tensor,
    y_retain: torch.Tensor,
    x_forget: torch.Tensor,
    q_forget: torch.Tensor,
    z_star: torch.Tensor,
    cfg: MeguLossConfig,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Return the total loss and each unweighted term as a float for logging.

    `model` must expose `features` and `head`. Retain and forget images go through one
    forward pass, so batch norm normalises over the mixed batch. A forget-only batch (often
    a single class) would drag the running statistics toward the forgotten class. The terms dict
    has "retain_ce", "forget_ce", "feature_mse", "retain_kd" (only when lambda_kd > 0) and
    "total". `f0` is used only when lambda_kd > 0 and must then be in eval mode.
    """
    _check_batch(x_retain, y_retain, x_forget, q_forget, z_star)
    num_retain = x_retain.shape[0]

    features = model.features(torch.cat([x_retain, x_forget]))  # (n_r + n_f, d)
    logits = model.head(features)  # (n_r + n_f, C)
    logits_retain, logits_forget = logits[:num_retain], logits[num_retain:]
    features_forget = features[num_retain:]  # (n_f, d)
    if q_forget.shape[1] != logits.shape[1] or z_star.shape[1] != features.shape[1]:
        raise ValueError(
            f"q_forget (n_f, C) and z_star (n_f, d) must match the model's C={logits.shape[1]} "
            f"and d={features.shape[1]}, got {tuple(q_forget.shape)} and {tuple(z_star.shape)}"
        )

    retain_ce = F.cross_entropy(logits_retain.float(), y_retain)
    forget_ce = F.cross_entropy(logits_forget.float(), q_forget.float())  # soft-target CE
    feature_mse = (features_forget.float() - z_star.detach().float()).pow(2).sum(dim=1).mean()
    feature_mse = feature_mse / features.shape[1]

    total = retain_ce
    if cfg.lambda_f > 0:
        total = total + cfg.lambda_f * forget_ce
    if cfg.lambda_feat > 0:
        total = total + cfg.lambda_feat * feature_mse
    terms = {
        "retain_ce": float(retain_ce.detach()),
        "forget_ce": float(forget_ce.detach()),
        "feature_mse": float(feature_mse.detach()),
    }

    if cfg.lambda_kd > 0:
        retain_kd = _retain_distillation(f0, x_retain, logits_retain)
        total = total + cfg.lambda_kd * retain_kd
        terms["retain_kd"] = float(retain_kd.detach())

    terms["total"] = float(total.detach())
    return total, terms


def _retain_distillation(
    f0: nn.Module | None, x_retain: torch.Tensor, logits_retain: torch.Tensor
) -> torch.Tensor:
    """KL(f0(x_r) || f(x_r)), averaged over the batch, with f0 frozen."""
    if f0 is None:
        raise ValueError("lambda_kd > 0 needs the original model f0; pass it or set lambda_kd to 0")
    if f0.training:
        raise ValueError(
            "f0 is in training mode, so its forward pass would update its batch-norm statistics; "
            "call f0.eval() before finetuning"
        )

    with torch.no_grad():
        teacher_log_probs = F.log_softmax(f0(x_retain).float(), dim=1)  # (n_r, C)
    student_log_probs = F.log_softmax(logits_retain.float(), dim=1)  # (n_r, C)
    return F.kl_div(student_log_probs, teacher_log_probs, log_target=True, reduction="batchmean")
