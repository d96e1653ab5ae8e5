"""SSD selects parameters by importance ratio and dampens exactly those."""

from __future__ import annotations

import copy
import logging

import pytest
import torch

from megu_core.errors import ConfigError
from megu_core.methods import get_method
from megu_core.methods.ssd import (
    SsdParams,
    batch_count,
    dampen,
    full_importance,
    importance,
    selection_bound,
)

CPU = torch.device("cpu")
SELECTING = SsdParams(selection=2.0)  # the tiny forget class allows alpha below 4 only


def _importances(ctx, batch_size=64):
    """I_f, and I_D over the retain batches followed by the forget batches."""
    model = ctx.frozen_original()
    forget_data, retain_data = ctx.forget_data(), ctx.retain_data(subset=0)
    forget = importance(model, forget_data, batch_size, CPU)
    retain = importance(model, retain_data, batch_size, CPU)
    forget_batches = batch_count(len(forget_data[1]), batch_size)
    retain_batches = batch_count(len(retain_data[1]), batch_size)
    return forget, full_importance(forget, retain, forget_batches, retain_batches)


def test_full_importance_matches_one_pass_over_grouped_batches(make_context):
    ctx = make_context()
    model = ctx.frozen_original()
    forget_data, retain_data = ctx.forget_data(), ctx.retain_data(subset=0)
    _, full = _importances(ctx, batch_size=16)

    # The authors' loader: the retain set, then the forget set, in batches of 16 with no
    # batch mixing the two (48 forget and 144 retain images divide evenly).
    totals = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
    batches = 0
    for images, labels in (retain_data, forget_data):
        part = importance(model, (images, labels), 16, CPU)
        count = batch_count(len(labels), 16)
        for name in totals:
            totals[name] += part[name] * count
        batches += count

    for name, value in full.items():
        assert torch.allclose(value, totals[name] / batches), name


def test_selection_bound_counts_batches():
    assert selection_bound(forget_batches=79, retain_batches=704) == 783 / 79
    assert selection_bound(forget_batches=1, retain_batches=3) == 4.0


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

    masks = dampen(model, forget, full, selection=2.0, dampening=1.0)

    selected_total = 0
    for name, param in model.named_parameters():
        expected_mask = forget[name] > 2.0 * full[name]
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


def test_forget_importance_within_bound(make_context):
    ctx = make_context()
    forget, full = _importances(ctx)

    bound = selection_bound(forget_batches=1, retain_batches=3)
    for name, value in forget.items():
        assert bool((value <= bound * full[name] + 1e-12).all()), name


def test_published_alpha_warns_keeps_weights(make_context, caplog):
    ctx = make_context()

    with caplog.at_level(logging.WARNING, logger="megu_core.methods.ssd"):
        result = get_method("ssd")(SsdParams()).unlearn(ctx)

    assert result.details["dampened_parameters"] == 0
    assert result.details["selection_bound"] == 4.0
    assert "alpha must be below 4" in caplog.text
    assert "--set ssd.selection=VALUE" in caplog.text
    for name, value in result.model.state_dict().items():
        assert torch.equal(value, ctx.original.state_dict()[name]), name


def test_ssd_method_edits_only_selected_weights(make_context):
    ctx = make_context()
    forget, full = _importances(ctx)
    params = SELECTING

    result = get_method("ssd")(params).unlearn(make_context())

    after = dict(result.model.named_parameters())
    for name, original in ctx.original.named_parameters():
        selected = forget[name] > params.selection * full[name]
        changed = after[name].detach() != original.detach()
        assert not bool((changed & ~selected).any()), name
    assert result.details["dampened_parameters"] > 0


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"batch_size": 0}, "method.ssd.batch_size"),
        ({"batch_size": -5}, "method.ssd.batch_size"),
        ({"retain_subset": -1}, "method.ssd.retain_subset"),
    ],
)
def test_invalid_ssd_sizes_are_rejected(values, key):
    with pytest.raises(ConfigError, match=key):
        get_method("ssd").from_config(values)
