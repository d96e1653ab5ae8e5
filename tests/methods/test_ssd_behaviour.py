"""SSD selects parameters by importance ratio and dampens exactly those."""

from __future__ import annotations

import copy

import torch

from megu_core.methods import get_method
from megu_core.methods.ssd import SsdParams, dampen, importance

CPU = torch.device("cpu")


def _importances(ctx, batch_size=64):
    train = ctx.dataset.train
    model = ctx.frozen_original()
    forget = importance(model, ctx.forget_data(), batch_size, CPU)
    full = importance(model, (train.images, train.labels), batch_size, CPU)
    return forget, full


def test_importance_is_nonnegative_and_leaves_weights(make_context):
    ctx = make_context()
    before = copy.deepcopy(ctx.original.state_dict())

    forget, _ = _importances(ctx)

    assert all(bool((value >= 0).all()) for value in forget.values())
    for name, value in ctx.original.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_dampen_changes_exactly_selected_parameters(make_context):
    ctx = make_context()
    forget, full = _importances(ctx)
    model = copy.deepcopy(ctx.original)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}

    masks = dampen(model, forget, full, selection=10.0, dampening=1.0)

    selected_total = 0
    for name, param in model.named_parameters():
        expected_mask = forget[name] > 10.0 * full[name]
        factor = (full[name] / forget[name]).clamp(max=1.0)
        expected = torch.where(expected_mask, before[name] * factor, before[name])
        assert torch.equal(masks[name], expected_mask), name
        assert torch.allclose(param, expected), name
        changed = param != before[name]
        assert not bool((changed & ~expected_mask).any()), f"{name}: an unselected weight changed"
        selected_total += int(expected_mask.sum())
    assert selected_total > 0
    assert selected_total < sum(p.numel() for p in model.parameters())


def test_dampening_never_grows_a_weight(make_context):
    ctx = make_context()
    forget, full = _importances(ctx)
    model = copy.deepcopy(ctx.original)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}

    dampen(model, forget, full, selection=1.0, dampening=5.0)  # factors above 1 are clipped

    for name, param in model.named_parameters():
        assert bool((param.abs() <= before[name].abs()).all()), name


def test_ssd_method_edits_only_selected_weights(make_context):
    ctx = make_context()
    forget, full = _importances(ctx)
    params = SsdParams()

    result = get_method("ssd")(params).unlearn(make_context())

    after = dict(result.model.named_parameters())
    for name, original in ctx.original.named_parameters():
        selected = forget[name] > params.selection * full[name]
        changed = after[name].detach() != original.detach()
        assert not bool((changed & ~selected).any()), name
    assert result.details["dampened_parameters"] > 0
