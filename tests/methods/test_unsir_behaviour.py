"""UNSIR's error-maximising noise and its impair/repair schedule."""

from __future__ import annotations

import copy

import torch

from megu_core.methods import get_method
from megu_core.methods.unsir import ImpairBatches, error_maximising_noise, per_class_rows


def test_noise_maximises_forget_class_loss(make_context):
    ctx = make_context()
    target = ctx.request.target_classes[0]

    result = error_maximising_noise(
        ctx.frozen_original(), target, (8, 3, 32, 32), steps=25, lr=0.1, weight=0.0, seed=0
    )

    assert result.final_loss > result.initial_loss + 1.0
    assert result.noise.shape == (8, 3, 32, 32)


def test_penalised_noise_still_raises_loss(make_context):
    ctx = make_context()
    target = ctx.request.target_classes[0]

    result = error_maximising_noise(
        ctx.frozen_original(), target, (8, 3, 32, 32), steps=25, lr=0.1, weight=0.1, seed=0
    )

    assert result.final_loss > result.initial_loss + 0.5


def test_noise_leaves_model_unchanged(make_context):
    ctx = make_context()
    model = ctx.frozen_original()
    before = copy.deepcopy(model.state_dict())

    error_maximising_noise(model, 0, (4, 3, 32, 32), steps=5, lr=0.1, weight=0.1, seed=0)

    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_impair_batches_mix_noise_and_retain(make_context):
    ctx = make_context()
    noise = torch.randn(4, 3, 32, 32)
    images, labels = ctx.retain_data()

    batches = ImpairBatches(
        noise, torch.zeros(4, dtype=torch.long), 10, (images, labels), 16, torch.device("cpu"), 0
    )
    seen = torch.cat([batch.y for batch in batches])

    assert len(batches) == (40 + len(labels)) // 16
    assert int((seen == 0).sum()) > 0
    assert int((seen != 0).sum()) > 0


def test_per_class_rows_caps_each_class():
    labels = torch.tensor([0] * 10 + [1] * 3 + [2] * 7)

    rows = per_class_rows(labels, 5, seed=0)

    counts = torch.bincount(labels[rows], minlength=3)
    assert counts.tolist() == [5, 3, 5]


def test_unsir_subclass_noise_targets_superclass(make_context):
    ctx = make_context("subclass:apple")

    result = get_method("unsir")().unlearn(ctx)

    assert result.details["noise_classes"] == [0]  # apple sits in red_things
    assert result.details["noise_steps"] == 250


def test_unsir_class_noise_raises_loss(make_context):
    result = get_method("unsir")().unlearn(make_context("class:red_things"))

    assert result.details["noise_steps"] == 25
    assert (
        result.details["noise_class_loss_after"][0] > result.details["noise_class_loss_before"][0]
    )
