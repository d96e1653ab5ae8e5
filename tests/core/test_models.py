"""The model registry and the CIFAR ResNet-18."""

from __future__ import annotations

import pytest
import torch

from megu_core.models import create_model, list_models, register_model


def test_resnet18_exposes_features_and_head():
    model = create_model("resnet18", num_classes=7, base_width=4)
    x = torch.randn(3, 3, 32, 32)

    features = model.features(x)

    assert features.shape == (3, 4 * 8)
    assert model.feature_dim == 32
    assert torch.allclose(model(x), model.head(features))
    assert model(x).shape == (3, 7)


def test_width_scales_parameter_count():
    small = sum(p.numel() for p in create_model("resnet18", 10, 16).parameters())
    standard = sum(p.numel() for p in create_model("resnet18", 10, 64).parameters())

    assert 14 < standard / small < 17
    assert 11_000_000 < standard < 11_300_000


def test_stem_keeps_resolution():
    model = create_model("resnet18", 10, base_width=4)

    stem_out = model.stem(torch.randn(1, 3, 32, 32))

    assert stem_out.shape[-2:] == (32, 32)


def test_unknown_model_lists_registered():
    with pytest.raises(ValueError, match="registered models: resnet18"):
        create_model("resnet1000", 10)


def test_duplicate_registration_rejected():
    assert "resnet18" in list_models()
    with pytest.raises(ValueError, match="already registered"):
        register_model("resnet18")(lambda num_classes, base_width: None)
