"""Plumbing shared by every unlearning method: the context, the budget and the retain/forget batches.

A method file then reads as: forget loss, retain loss, their combination.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from megu_core.config import from_dict
from megu_core.data.dataset import Dataset
from megu_core.forget import ResolvedForgetRequest
from megu_core.training import Batch, StepFn, TensorBatches, TrainConfig, TrainResult, train_loop

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UnlearnBudget:
    """The finetuning budget every method gets, so that methods are compared at equal cost.

    Defaults: 2 epochs over a 10,000-image retain subset, SGD lr 0.01 with cosine decay,
    forget batches of 32 beside retain batches of 128.
    """

    epochs: float = 2.0
    retain_subset: int = 10_000  # 0 or less: the whole retain set
    retain_batch_size: int = 128
    forget_batch_size: int = 32  # 1 forget sample for every 4 retain samples
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    optimizer: str = "sgd"
    schedule: str = "cosine"
    augment: bool = True
    seed: int = 0

    def train_config(self, **changes: Any) -> TrainConfig:
        """Build the TrainConfig of a finetuning run with this budget (`changes` override fields)."""
        values = dict(
            epochs=self.epochs,
            batch_size=self.retain_batch_size,
            optimizer=self.optimizer,
            lr=self.lr,
            momentum=self.momentum,
            nesterov=False,
            weight_decay=self.weight_decay,
            warmup_epochs=0.0,
            schedule=self.schedule,
            augment=self.augment,
            seed=self.seed,
        )
        values.update(changes)
        return TrainConfig(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class UnlearnContext:
    """Everything a method may use: the original model, the data, the request and stage outputs."""

    original: nn.Module  # frozen reference; methods work on a copy
    dataset: Dataset
    request: ResolvedForgetRequest
    device: torch.device
    budget: UnlearnBudget = field(default_factory=UnlearnBudget)
    inputs: dict[str, Any] = field(default_factory=dict)  # stage outputs a method needs, by name
    progress: bool = True
    train_config: TrainConfig | None = None  # the original's training run, repeated by retraining

    @property
    def forget_mask(self) -> torch.Tensor:
        return self.request.forget_mask(len(self.dataset.train))

    def forget_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (n_f, 3, h, w) uint8 and labels of the forget set, in request order."""
        rows = torch.from_numpy(self.request.indices)
        return self.dataset.train.images[rows], self.dataset.train.labels[rows]

    def retain_data(self, subset: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and labels of the retain set, or of a seeded random subset of it."""
        rows = torch.nonzero(~self.forget_mask).squeeze(1)
        limit = self.budget.retain_subset if subset is None else subset
        if 0 < limit < len(rows):
            generator = torch.Generator().manual_seed(self.budget.seed)
            rows = rows[torch.randperm(len(rows), generator=generator)[:limit]].sort().values
        return self.dataset.train.images[rows], self.dataset.train.labels[rows]

    def frozen_original(self) -> nn.Module:
        """Return the original model in eval mode with gradients off (a teacher or reference)."""
        model = self.original.to(self.device).eval()
        for param in model.parameters():
            param.requires_grad_(False)
        return model

    def student(self) -> nn.Module:
        """Return a trainable copy of the original model."""
        model = copy.deepcopy(self.original).to(self.device)
        for param in model.parameters():
            param.requires_grad_(True)
        return model.train()


@dataclass
class UnlearnResult:
    """The unlearned model, the wall time of the unlearning step alone and the training summary."""

    model: nn.Module
    seconds: float
    train: TrainResult | None = None
    details: dict[str, Any] = field(default_factory=dict)


class UnlearningMethod:
    """Base class of registered methods; subclasses set `Params` and implement `unlearn`."""

    name: ClassVar[str] = ""
    Params: ClassVar[type] = object  # a dataclass of hyperparameters with published defaults
    # Set or bump when a change to the method's code or defaults changes the models it writes,
    # so that cached unlearn stages of the old code are not reused; None keeps the first keys.
    cache_version: ClassVar[str | None] = None

    def __init__(self, params: Any | None = None) -> None:
        self.params = params if params is not None else self.Params()

    @classmethod
    def from_config(cls, values: dict[str, Any] | None) -> UnlearningMethod:
        """Build the method from a plain mapping of hyperparameters, rejecting unknown keys."""
        return cls(from_dict(cls.Params, values or {}, prefix=f"method.{cls.name}."))

    def unlearn(self, ctx: UnlearnContext) -> UnlearnResult:
        raise NotImplementedError(f"{type(self).__name__} does not implement unlearn()")

    def params_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.params) if dataclasses.is_dataclass(self.params) else {}


@dataclass
class PairedBatch:
    """A retain batch and a forget batch drawn side by side."""

    retain: Batch
    forget: Batch


class RetainForgetBatches:
    """Yields one retain batch and one forget batch per step; forget batches cycle as needed.

    An epoch is one pass over the retain images.
    """

    def __init__(
        self,
        retain: tuple[torch.Tensor, torch.Tensor],
        forget: tuple[torch.Tensor, torch.Tensor],
        budget: UnlearnBudget,
        device: torch.device,
    ) -> None:
        self.retain = TensorBatches(
            *retain, budget.retain_batch_size, device, budget.augment, True, budget.seed
        )
        self.forget = TensorBatches(
            *forget, budget.forget_batch_size, device, budget.augment, True, budget.seed + 1
        )
        self._forget_stream = self.forget.forever()

    def __len__(self) -> int:
        return len(self.retain)

    def __iter__(self) -> Iterator[PairedBatch]:
        for retain_batch in self.retain:
            yield PairedBatch(retain_batch, next(self._forget_stream))


def run_finetuning(
    ctx: UnlearnContext,
    model: nn.Module,
    batches,
    step_fn: StepFn,
    cfg: TrainConfig,
    description: str,
) -> UnlearnResult:
    """Run the shared training loop on `model` and time it; the shared tail of most methods."""
    started = time.perf_counter()
    result = train_loop(
        model, batches, len(batches), step_fn, cfg, ctx.device, description, progress=ctx.progress
    )
    return UnlearnResult(model.eval(), time.perf_counter() - started, result)
