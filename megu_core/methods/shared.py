"""Helpers that several baseline methods share: re-initialisation, random relabelling, distillation."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn import functional as F

from megu_core.methods.base import UnlearnContext, UnlearnResult
from megu_core.training import TensorBatches


def reinitialise(module: nn.Module, seed: int) -> nn.Module:
    """Draw fresh initial weights for every parameter of `module`, in place, from `seed`.

    Submodules are reset in registration order with their own `reset_parameters`, so a
    CifarResNet reset after `torch.manual_seed(seed)` gets the weights a newly built one gets.
    Raises ValueError when a parameter belongs to no module that can reset it.
    """
    torch.manual_seed(seed)
    covered: set[int] = set()
    for child in module.modules():
        if hasattr(child, "reset_parameters"):
            child.reset_parameters()
            covered.update(id(p) for p in child.parameters(recurse=False))

    missing = [name for name, p in module.named_parameters() if id(p) not in covered]
    if missing:
        raise ValueError(
            f"cannot re-initialise {type(module).__name__}: parameters {', '.join(missing[:5])} "
            "belong to no module with reset_parameters(); this method supports models built "
            "from standard torch layers only"
        )
    return module


def random_other_labels(
    labels: torch.Tensor, num_classes: int, excluded: tuple[int, ...], seed: int
) -> torch.Tensor:
    """Draw, per sample, a uniformly random class other than its label and the `excluded` classes."""
    generator = torch.Generator().manual_seed(seed)
    allowed = torch.ones(len(labels), num_classes)  # (n, C) weights of the classes a sample may get
    allowed[torch.arange(len(labels)), labels.cpu()] = 0.0
    if excluded:
        allowed[:, list(excluded)] = 0.0
    if bool((allowed.sum(1) == 0).any()):
        raise ValueError(
            f"no class is left to relabel to: {num_classes} classes, {len(excluded)} excluded"
        )
    return torch.multinomial(allowed, 1, generator=generator).squeeze(1).to(labels.device)


def distillation_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Compute KL(teacher || student) on outputs softened by `temperature`, batch mean, times T^2.

    The T^2 factor keeps gradient sizes comparable across temperatures, as in knowledge distillation.
    """
    log_student = F.log_softmax(student_logits.float() / temperature, dim=1)
    teacher = F.softmax(teacher_logits.float() / temperature, dim=1)
    return F.kl_div(log_student, teacher, reduction="batchmean") * temperature**2


def concat_rows(
    first: tuple[torch.Tensor, torch.Tensor], second: tuple[torch.Tensor, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack two (images, labels) sets into one, `first` rows before `second` rows."""
    return torch.cat([first[0], second[0]]), torch.cat([first[1], second[1]])


def seeded_fraction(
    data: tuple[torch.Tensor, torch.Tensor], fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Take a seeded random `fraction` of the rows of (images, labels), at least one row."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    images, labels = data
    count = max(1, round(fraction * len(labels)))
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randperm(len(labels), generator=generator)[:count].sort().values
    return images[rows], labels[rows]


def plain_batches(
    ctx: UnlearnContext,
    data: tuple[torch.Tensor, torch.Tensor],
    batch_size: int,
    seed_offset: int = 0,
) -> TensorBatches:
    """Shuffled batches of (images, labels) with the budget's augmentation; a last partial batch is dropped."""
    budget = ctx.budget
    return TensorBatches(
        *data, batch_size, ctx.device, budget.augment, True, budget.seed + seed_offset
    )


def timed_result(model: nn.Module, started: float, **details) -> UnlearnResult:
    """Wrap a model changed without the training loop in an UnlearnResult timed from `started`."""
    return UnlearnResult(model.eval(), time.perf_counter() - started, None, dict(details))


@contextmanager
def gradients_enabled(model: nn.Module) -> Iterator[nn.Module]:
    """Let every parameter of `model` receive gradients inside the block, in eval mode.

    Restores each parameter's requires_grad flag, the training mode and empty gradients on exit,
    so a frozen reference model can be analysed without being changed.
    """
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    was_training = model.training
    model.eval()
    for param in model.parameters():
        param.requires_grad_(True)
    try:
        yield model
    finally:
        model.zero_grad(set_to_none=True)
        for name, param in model.named_parameters():
            param.requires_grad_(flags[name])
        model.train(was_training)
