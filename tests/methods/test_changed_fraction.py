"""The unlearn stage records how much of the original model a method changed."""

from __future__ import annotations

import copy

import torch

from megu_core.methods import get_method
from megu_core.pipeline.unlearn import changed_fraction


def test_identical_models_changed_nothing(original_model):
    assert changed_fraction(original_model, copy.deepcopy(original_model)) == 0.0


def test_one_changed_entry_counts(original_model):
    edited = copy.deepcopy(original_model)
    total = sum(p.numel() for p in original_model.parameters())

    with torch.no_grad():
        edited.head.bias[0] += 1.0

    assert changed_fraction(original_model, edited) == 1 / total


def test_ssd_without_selection_changes_nothing(make_context):
    ctx = make_context()  # the published alpha 10 cannot select on this forget class

    unchanged = get_method("ssd")().unlearn(ctx)
    dampened = get_method("ssd").from_config({"selection": 2.0}).unlearn(make_context())

    assert changed_fraction(ctx.original, unchanged.model) == 0.0
    assert changed_fraction(ctx.original, dampened.model) > 0.0
