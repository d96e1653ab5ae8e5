"""The noise pair in both modes, its clipping, and the mixed feature targets z*."""

import pytest
import torch
from torch import nn

from megu_core.megu import (
    NoiseConfig,
    build_noise_pairs,
    class_prototypes,
    mixed_feature_targets,
    optimized_noise_pair,
    shared_subspace,
    specific_subspace,
    subspace_noise_pair,
    transition_matrix,
)

DIM, NUM_CLASSES, TARGET = 8, 4, 0
FAST = NoiseConfig(steps=30)


def _head() -> nn.Linear:
    """A frozen head whose class c reads feature coordinate c."""
    head = nn.Linear(DIM, NUM_CLASSES)
    with torch.no_grad():
        head.weight.zero_()
        head.weight[:, :NUM_CLASSES] = 3.0 * torch.eye(NUM_CLASSES)
        head.bias.zero_()
    return head


def _forget_features(num_samples: int = 12) -> torch.Tensor:
    """Features of target-class samples: strong on coordinate 0, a little on the others."""
    generator = torch.Generator().manual_seed(0)
    features = 0.3 * torch.rand(num_samples, DIM, generator=generator)
    features[:, TARGET] += 1.0
    return features  # (n, d)


def _perturbing(num_samples: int = 12) -> torch.Tensor:
    return torch.tensor([1, 3] * (num_samples // 2))  # (n,)


def _transition() -> torch.Tensor:
    return transition_matrix({TARGET: {1: 0.9, 2: 0.2, 3: 0.7}}, NUM_CLASSES, tau=0.1)


def _prototypes() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.rand(NUM_CLASSES, DIM, generator=generator) + torch.eye(NUM_CLASSES, DIM)


def test_negative_noise_raises_target_loss():
    pair = optimized_noise_pair(_forget_features(), TARGET, _perturbing(), _head(), FAST)

    assert pair.diagnostics["target_ce_negative"] > pair.diagnostics["target_ce_original"]


def test_positive_noise_lowers_perturbing_loss():
    pair = optimized_noise_pair(_forget_features(), TARGET, _perturbing(), _head(), FAST)

    assert pair.diagnostics["perturbing_ce_positive"] < pair.diagnostics["perturbing_ce_original"]


def test_noise_norms_respect_clip():
    features = _forget_features()
    cfg = NoiseConfig(steps=30, lr=1.0, rho=0.0, clip=0.1)

    pair = optimized_noise_pair(features, TARGET, _perturbing(), _head(), cfg)

    radius = 0.1 * features.norm(dim=1).mean().item()
    assert pair.clip_radius == pytest.approx(radius)
    assert pair.negative.norm().item() <= radius * (1 + 1e-5)
    assert pair.positive.norm().item() <= radius * (1 + 1e-5)
    assert pair.negative.norm().item() == pytest.approx(radius, rel=1e-4)


def test_optimized_pair_shapes():
    pair = optimized_noise_pair(_forget_features(), TARGET, _perturbing(), _head(), FAST)

    assert pair.negative.shape == (DIM,)
    assert pair.positive.shape == (DIM,)
    assert pair.negative_norms.shape == (12,)
    assert pair.predictions.shape == (12,)


def test_predictions_are_head_argmax_on_mixed():
    features = _forget_features()
    head = _head()

    pair = optimized_noise_pair(features, TARGET, _perturbing(), head, FAST)

    expected = head(pair.mixed_targets(features)).argmax(dim=1)
    assert torch.equal(pair.predictions, expected)


def test_head_stays_frozen():
    head = _head()
    weight_before = head.weight.detach().clone()

    optimized_noise_pair(_forget_features(), TARGET, _perturbing(), head, FAST)

    assert torch.equal(head.weight, weight_before)
    assert head.weight.grad is None


def test_optimized_pair_is_deterministic():
    first = optimized_noise_pair(_forget_features(), TARGET, _perturbing(), _head(), FAST)
    second = optimized_noise_pair(_forget_features(), TARGET, _perturbing(), _head(), FAST)

    assert torch.equal(first.negative, second.negative)
    assert torch.equal(first.positive, second.positive)


def test_use_negative_zeroes_positive():
    cfg = NoiseConfig(steps=10, use="negative")

    pair = optimized_noise_pair(_forget_features(), TARGET, _perturbing(), _head(), cfg)

    assert torch.count_nonzero(pair.positive) == 0
    assert torch.count_nonzero(pair.negative) > 0


def test_use_positive_zeroes_negative():
    cfg = NoiseConfig(steps=10, use="positive")

    pair = optimized_noise_pair(_forget_features(), TARGET, _perturbing(), _head(), cfg)

    assert torch.count_nonzero(pair.negative) == 0
    assert torch.count_nonzero(pair.positive) > 0


def test_random_forgetting_scales_norms():
    cfg = NoiseConfig(steps=10, random_scale=0.5)
    features, perturbing, head = _forget_features(), _perturbing(), _head()

    full = optimized_noise_pair(features, TARGET, perturbing, head, cfg)
    scaled = optimized_noise_pair(features, TARGET, perturbing, head, cfg, random_forgetting=True)

    torch.testing.assert_close(scaled.negative_norms, 0.5 * full.negative_norms)
    torch.testing.assert_close(scaled.positive_norms, 0.5 * full.positive_norms)


def test_feature_width_mismatch_rejected():
    with pytest.raises(ValueError, match=r"head expects 8"):
        optimized_noise_pair(torch.ones(3, 5), TARGET, torch.tensor([1, 1, 1]), _head(), FAST)


def test_shared_basis_is_orthonormal():
    basis = shared_subspace(_prototypes(), [1, 3])

    assert basis.shape == (DIM, 3)
    torch.testing.assert_close(basis.T @ basis, torch.eye(3, dtype=basis.dtype))


def test_shared_basis_drops_dependent_prototypes():
    prototypes = _prototypes()
    prototypes[2] = 2.0 * prototypes[1]

    basis = shared_subspace(prototypes, [1, 2])

    assert basis.shape == (DIM, 2)


def test_specific_basis_orthogonal_to_shared():
    shared = shared_subspace(_prototypes(), [1, 3])

    specific = specific_subspace(_forget_features(), shared, rank=3)

    assert specific.shape == (DIM, 3)
    torch.testing.assert_close(shared.T @ specific, torch.zeros(3, 3, dtype=shared.dtype))


def test_specific_rank_limited_by_data():
    shared = shared_subspace(_prototypes(), [1])

    specific = specific_subspace(_forget_features(num_samples=2), shared, rank=8)

    assert specific.shape == (DIM, 2)


def test_subspace_pair_shapes_and_bases():
    pair = subspace_noise_pair(
        _forget_features(),
        TARGET,
        _perturbing(),
        _prototypes(),
        _transition()[TARGET],
        _head(),
        NoiseConfig(),
    )

    assert pair.mode == "subspace"
    assert pair.related == (1, 3, 2)
    assert pair.negative.shape == (12, DIM)
    assert pair.positive.shape == (12, DIM)
    assert pair.shared_basis.shape == (DIM, 4)
    assert pair.specific_basis.shape == (DIM, 4)
    assert pair.negative_norms.shape == (12,)


def test_subspace_negative_inside_specific():
    pair = subspace_noise_pair(
        _forget_features(),
        TARGET,
        _perturbing(),
        _prototypes(),
        _transition()[TARGET],
        _head(),
        NoiseConfig(),
    )

    shared_part = pair.negative @ pair.shared_basis  # (n, k)
    torch.testing.assert_close(shared_part, torch.zeros_like(shared_part), atol=1e-5, rtol=0)


def test_subspace_positive_inside_shared():
    pair = subspace_noise_pair(
        _forget_features(),
        TARGET,
        _perturbing(),
        _prototypes(),
        _transition()[TARGET],
        _head(),
        NoiseConfig(),
    )

    projected = (pair.positive @ pair.shared_basis) @ pair.shared_basis.T
    torch.testing.assert_close(projected, pair.positive, atol=1e-5, rtol=0)


def test_subspace_matches_closed_form():
    features, prototypes = _forget_features(), _prototypes()
    cfg = NoiseConfig(mode="subspace", alpha=1.0, eta=0.5)

    pair = subspace_noise_pair(
        features, TARGET, _perturbing(), prototypes, _transition()[TARGET], _head(), cfg
    )

    shared, specific = pair.shared_basis, pair.specific_basis
    expected_negative = -(features @ specific) @ specific.T
    expected_positive = 0.5 * ((prototypes[_perturbing()] - features) @ shared) @ shared.T
    torch.testing.assert_close(pair.negative, expected_negative, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(pair.positive, expected_positive, atol=1e-5, rtol=1e-4)


def test_class_prototypes_are_class_means():
    features = torch.tensor([[1.0, 0.0], [3.0, 2.0], [0.0, 4.0]])
    labels = torch.tensor([0, 0, 1])

    prototypes = class_prototypes(features, labels, num_classes=2)

    torch.testing.assert_close(prototypes, torch.tensor([[2.0, 1.0], [0.0, 4.0]]))


def test_class_prototypes_missing_class_raises():
    with pytest.raises(ValueError, match=r"classes \[1\] have no features"):
        class_prototypes(torch.ones(2, 3), torch.tensor([0, 2]), num_classes=3)


@pytest.mark.parametrize("mode", ["optimized", "subspace"])
def test_mixed_targets_follow_concepts(mode):
    cfg = NoiseConfig(mode=mode, steps=10)
    features = torch.cat([_forget_features(4), _forget_features(6).roll(1, dims=1)])  # (10, d)
    concepts = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    perturbing = torch.tensor([1, 3, 1, 3, 2, 2, 3, 0, 0, 2])
    transition = transition_matrix(
        {0: {1: 0.9, 2: 0.2, 3: 0.7}, 1: {0: 0.3, 2: 0.8, 3: 0.5}}, NUM_CLASSES, tau=0.1
    )

    pairs = build_noise_pairs(
        features, concepts, perturbing, _head(), transition, _prototypes(), cfg
    )
    mixed = mixed_feature_targets(features, concepts, pairs)

    assert sorted(pairs) == [0, 1]
    assert mixed.shape == (10, DIM)
    torch.testing.assert_close(mixed[4:], pairs[1].mixed_targets(features[4:]))
    torch.testing.assert_close(mixed[:4], pairs[0].mixed_targets(features[:4]))


def test_mixed_targets_missing_pair_raises():
    features = _forget_features(4)
    pairs = build_noise_pairs(
        features,
        torch.zeros(4, dtype=torch.long),
        _perturbing(4),
        _head(),
        _transition(),
        None,
        FAST,
    )

    with pytest.raises(ValueError, match=r"no noise pair for concept 2"):
        mixed_feature_targets(features, torch.tensor([0, 0, 2, 2]), pairs)


def test_subspace_mode_requires_prototypes():
    with pytest.raises(ValueError, match=r"class_prototypes"):
        build_noise_pairs(
            _forget_features(4),
            torch.zeros(4, dtype=torch.long),
            _perturbing(4),
            _head(),
            _transition(),
            None,
            NoiseConfig(mode="subspace"),
        )
