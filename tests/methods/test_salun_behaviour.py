"""SalUn's saliency mask and the restriction of its updates to salient weights."""

from __future__ import annotations

import copy

import torch

from megu_core.methods import get_method
from megu_core.methods.salun import SalunParams, saliency_mask

CPU = torch.device("cpu")


def test_mask_keeps_requested_fraction(make_context):
    ctx = make_context()
    model = copy.deepcopy(ctx.original)

    masks = saliency_mask(model, ctx.forget_data(), 0.25, 256, CPU)

    salient = sum(int(mask.sum()) for mask in masks.values())
    total = sum(mask.numel() for mask in masks.values())
    assert salient == int(0.25 * total)


def test_mask_ranks_by_gradient_magnitude(make_context):
    ctx = make_context()
    model = copy.deepcopy(ctx.original)

    half = saliency_mask(model, ctx.forget_data(), 0.5, 256, CPU)
    tenth = saliency_mask(model, ctx.forget_data(), 0.1, 256, CPU)

    for name in half:
        assert not bool((tenth[name] & ~half[name]).any()), name


def test_salun_updates_only_salient_weights(make_context):
    ctx = make_context()
    params = SalunParams(epochs=3.0)
    masks = saliency_mask(
        copy.deepcopy(ctx.original),
        ctx.forget_data(),
        params.saliency_fraction,
        params.batch_size,
        CPU,
    )
    before = {name: p.detach().clone() for name, p in ctx.original.named_parameters()}

    result = get_method("salun")(params).unlearn(ctx)

    changed_salient = 0
    for name, param in result.model.named_parameters():
        changed = param.detach() != before[name]
        assert not bool((changed & ~masks[name]).any()), f"{name}: a non-salient weight changed"
        changed_salient += int(changed.sum())
    assert changed_salient > 0
    assert result.details["salient_weights"] == sum(int(m.sum()) for m in masks.values())
