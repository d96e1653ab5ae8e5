"""Batched on-device augmentation and normalisation."""

from __future__ import annotations

import torch

from megu_core.data.augment import normalize, random_crop_flip


def test_crop_flip_keeps_shape_and_dtype():
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)

    out = random_crop_flip(images, padding=4, generator=torch.Generator().manual_seed(0))

    assert out.shape == images.shape
    assert out.dtype == torch.uint8


def test_crop_is_shifted_window_of_padded_image():
    image = torch.arange(36, dtype=torch.float32).view(1, 1, 6, 6)
    padded = torch.nn.functional.pad(image, (2, 2, 2, 2))

    out = random_crop_flip(
        image.repeat(64, 1, 1, 1), padding=2, generator=torch.Generator().manual_seed(1)
    )

    windows = [padded[0, 0, y : y + 6, x : x + 6] for y in range(5) for x in range(5)]
    windows += [w.flip(1) for w in windows]
    for crop in out[:, 0]:
        assert any(torch.equal(crop, w) for w in windows)


def test_flip_applies_to_about_half():
    image = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4).repeat(400, 1, 1, 1)

    out = random_crop_flip(image, padding=0, generator=torch.Generator().manual_seed(2))

    flipped = (out[:, 0, 0, 0] == 3).float().mean()
    assert 0.4 < flipped < 0.6


def test_same_seed_same_augmentation():
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)

    first = random_crop_flip(images, generator=torch.Generator().manual_seed(3))
    second = random_crop_flip(images, generator=torch.Generator().manual_seed(3))

    assert torch.equal(first, second)


def test_normalize_maps_uint8_to_standardised_float():
    images = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)

    out = normalize(images, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))

    assert out.dtype == torch.float32
    assert torch.allclose(out, torch.ones_like(out))
