"""Transition matrix, perturbing labels, soft targets and the automatic beta."""

import math

import pytest
import torch

from megu_core.megu import (
    auto_beta,
    candidate_classes,
    mean_confidence,
    perturbing_labels,
    random_soft_targets,
    related_classes,
    subclass_candidates,
    transition_matrix,
    transition_row,
)

CAT, DOG, TRUCK, FROG = 0, 1, 2, 3
SCORES = {CAT: {DOG: 0.8, TRUCK: 0.4, FROG: 0.6}}


def test_candidates_exclude_own_class():
    assert candidate_classes(4, CAT) == [DOG, TRUCK, FROG]


def test_candidates_exclude_all_forgotten_classes():
    assert candidate_classes(5, CAT, forgotten_classes=[CAT, TRUCK]) == [1, 3, 4]


def test_candidates_exhausted_raises():
    with pytest.raises(ValueError, match=r"no candidate classes remain"):
        candidate_classes(2, 0, forgotten_classes=[1])


def test_candidates_reject_out_of_range_class():
    with pytest.raises(ValueError, match=r"class index in \[0, 3\]"):
        candidate_classes(4, 4)


def test_subclass_candidates_exclude_superclass():
    fine_to_class = [0, 0, 1, 1, 2, 2]  # six fine classes in three superclasses

    assert subclass_candidates(3, fine_to_class, num_classes=3) == [0, 2]


def test_transition_rows_sum_to_one():
    matrix = transition_matrix(SCORES, num_classes=4, tau=0.1)

    torch.testing.assert_close(matrix.sum(dim=1), torch.ones(4))


def test_transition_row_zero_outside_candidates():
    matrix = transition_matrix(SCORES, num_classes=4, tau=0.1)

    assert matrix[CAT, CAT] == 0.0
    assert (matrix[CAT, [DOG, TRUCK, FROG]] > 0).all()


def test_transition_identity_for_non_targets():
    matrix = transition_matrix(SCORES, num_classes=4, tau=0.1)

    torch.testing.assert_close(matrix[1:], torch.eye(4)[1:])


def test_transition_row_is_softmax_of_scores():
    row = transition_row({1: 0.8, 2: 0.4}, num_classes=3, tau=0.1)

    expected_dog = 1.0 / (1.0 + math.exp(-4.0))  # exp(8) / (exp(8) + exp(4))
    assert row[1].item() == pytest.approx(expected_dog, rel=1e-6)
    assert row[2].item() == pytest.approx(1.0 - expected_dog, rel=1e-5)


def test_smaller_tau_sharpens_row():
    sharp = transition_matrix(SCORES, num_classes=4, tau=0.05)
    smooth = transition_matrix(SCORES, num_classes=4, tau=0.5)

    assert sharp[CAT, DOG] > smooth[CAT, DOG]
    assert sharp[CAT, TRUCK] < smooth[CAT, TRUCK]


def test_uniform_scores_give_uniform_row():
    row = transition_row({1: 0.5, 2: 0.5, 3: 0.5}, num_classes=4, tau=0.1)

    torch.testing.assert_close(row, torch.tensor([0.0, 1 / 3, 1 / 3, 1 / 3]))


def test_target_among_own_candidates_rejected():
    with pytest.raises(ValueError, match=r"among its own candidates"):
        transition_matrix({0: {0: 0.5, 1: 0.5}}, num_classes=2, tau=0.1)


def test_scores_outside_unit_interval_rejected():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        transition_row({1: 1.5}, num_classes=2, tau=0.1)


def test_related_classes_ranked_by_mass():
    row = transition_matrix(SCORES, num_classes=4, tau=0.1)[CAT]

    assert related_classes(row, 2) == [DOG, FROG]
    assert related_classes(row, 10) == [DOG, FROG, TRUCK]


def _p0():
    return torch.tensor(
        [
            [0.50, 0.02, 0.03, 0.45],  # f0 rates this cat frog-like
            [0.60, 0.30, 0.05, 0.05],  # f0 rates this cat dog-like
            [0.90, 0.00, 0.10, 0.00],  # zero probability on dog and frog
        ]
    )


def test_omega_zero_gives_argmax_of_row():
    matrix = transition_matrix(SCORES, num_classes=4, tau=0.1)

    targets = perturbing_labels(matrix, _p0(), [DOG, TRUCK, FROG], omega=0.0, target=CAT)

    assert targets.labels.tolist() == [DOG, DOG, DOG]


def test_omega_adds_model_evidence():
    matrix = transition_matrix(SCORES, num_classes=4, tau=0.1)

    targets = perturbing_labels(matrix[CAT], _p0(), [DOG, TRUCK, FROG], omega=1.0)

    # Relative log T is 0 for dog, -2 for frog and -4 for truck; log p0 moves the first sample
    # to frog, and the third, with p0 = 0 on dog and frog, to truck.
    assert targets.labels.tolist() == [FROG, DOG, TRUCK]


def test_zero_probability_stays_finite():
    row = transition_matrix(SCORES, num_classes=4, tau=0.1)[CAT]

    targets = perturbing_labels(row, _p0(), [DOG, TRUCK, FROG], omega=1.0)

    assert torch.isfinite(targets.soft_targets).all()


def test_soft_targets_zero_outside_candidates():
    row = transition_matrix(SCORES, num_classes=4, tau=0.1)[CAT]

    targets = perturbing_labels(row, _p0(), [DOG, TRUCK, FROG])

    assert (targets.soft_targets[:, CAT] == 0).all()
    torch.testing.assert_close(targets.soft_targets.sum(dim=1), torch.ones(3))


def test_soft_targets_match_formula():
    row = torch.tensor([0.0, 0.5, 0.25, 0.25])
    p0 = torch.tensor([[0.4, 0.2, 0.2, 0.2]])

    targets = perturbing_labels(row, p0, [1, 2, 3], omega=1.0, tau_q=2.0)

    # q is proportional to (T * p0) ** (1 / tau_q): sqrt(0.1), sqrt(0.05), sqrt(0.05).
    weights = torch.tensor([0.0, math.sqrt(0.1), math.sqrt(0.05), math.sqrt(0.05)])
    torch.testing.assert_close(targets.soft_targets[0], weights / weights.sum())


def test_larger_tau_q_softens_targets():
    row = transition_matrix(SCORES, num_classes=4, tau=0.1)[CAT]

    p0 = _p0()[:2]  # the third sample has a single candidate with p0 > 0

    sharp = perturbing_labels(row, p0, [DOG, TRUCK, FROG], tau_q=0.5)
    soft = perturbing_labels(row, p0, [DOG, TRUCK, FROG], tau_q=4.0)

    assert soft.soft_targets.max(dim=1).values.lt(sharp.soft_targets.max(dim=1).values).all()


def test_soft_target_argmax_is_label():
    row = transition_matrix(SCORES, num_classes=4, tau=0.1)[CAT]

    targets = perturbing_labels(row, _p0(), [DOG, TRUCK, FROG])

    assert targets.soft_targets.argmax(dim=1).tolist() == targets.labels.tolist()


def test_matrix_without_target_rejected():
    matrix = transition_matrix(SCORES, num_classes=4, tau=0.1)

    with pytest.raises(ValueError, match=r"needs `target`"):
        perturbing_labels(matrix, _p0(), [DOG])


def test_p0_with_wrong_width_rejected():
    row = transition_matrix(SCORES, num_classes=4, tau=0.1)[CAT]

    with pytest.raises(ValueError, match=r"shape \(n, 4\)"):
        perturbing_labels(row, torch.ones(2, 3) / 3, [DOG])


def _random_forget_setup():
    scores = {c: {o: 0.5 for o in range(3) if o != c} for c in range(3)}
    matrix = transition_matrix(scores, num_classes=3, tau=0.1)  # 0.5 on each other class
    labels = torch.tensor([0, 1, 2, 0])
    return matrix, labels


def test_random_soft_targets_keep_true_class():
    matrix, labels = _random_forget_setup()

    q = random_soft_targets(labels, matrix, beta=0.2)

    torch.testing.assert_close(q[0], torch.tensor([0.8, 0.1, 0.1]))
    torch.testing.assert_close(q.sum(dim=1), torch.ones(4))


def test_auto_beta_hits_target_confidence():
    matrix, labels = _random_forget_setup()

    beta = auto_beta(labels, matrix, target_confidence=0.85)
    confidence = mean_confidence(random_soft_targets(labels, matrix, beta))

    assert beta == pytest.approx(0.15, abs=1e-5)
    assert confidence == pytest.approx(0.85, abs=1e-5)


def test_auto_beta_full_confidence_gives_zero():
    matrix, labels = _random_forget_setup()

    assert auto_beta(labels, matrix, target_confidence=1.0) == 0.0


def test_auto_beta_clips_at_max_beta():
    scores = {c: {o: 0.5 for o in range(10) if o != c} for c in range(10)}
    matrix = transition_matrix(scores, num_classes=10, tau=0.1)  # 1/9 on each other class
    labels = torch.arange(10)

    beta = auto_beta(labels, matrix, target_confidence=0.05)

    # The confidence max(1 - beta, beta / 9) falls until beta = 0.9, where it is 0.1.
    assert beta == pytest.approx(0.9, abs=1e-5)


def test_auto_beta_stops_at_lowest_confidence():
    matrix = torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # one candidate per class
    labels = torch.tensor([0, 1])

    beta = auto_beta(labels, matrix, target_confidence=0.3)

    # The confidence max(1 - beta, beta) is lowest, 0.5, at beta = 0.5 and rises after it.
    assert beta == pytest.approx(0.5, abs=1e-5)


def test_auto_beta_rejects_empty_labels():
    matrix, _ = _random_forget_setup()

    with pytest.raises(ValueError, match=r"labels is empty"):
        auto_beta(torch.tensor([], dtype=torch.long), matrix, target_confidence=0.9)


def test_mean_confidence_of_probabilities():
    probs = torch.tensor([[0.9, 0.1], [0.4, 0.6]])

    assert mean_confidence(probs) == pytest.approx(0.75)
