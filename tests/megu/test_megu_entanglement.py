"""The entanglement analysis: energy shares, prototype similarities and the comparison."""

import pytest
import torch

from megu_core.megu import (
    compare_entanglement,
    concept_entanglement,
    entanglement_report,
    prototype_similarities,
    transition_matrix,
)

NAMES = ("cat", "dog", "truck", "frog")


def _prototypes() -> torch.Tensor:
    return torch.tensor(
        [
            [1.0, 1.0, 0.0, 0.0, 0.0],
            [1.0, 0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0, 0.0],
            [0.0, 1.0, 0.0, 0.0, 0.0],
        ]
    )


def _transition() -> torch.Tensor:
    return transition_matrix({0: {1: 0.9, 2: 0.1, 3: 0.8}}, num_classes=4, tau=0.1)


def test_features_inside_shared_subspace():
    features = torch.tensor([[2.0, 1.0, 0.0, 0.0, 0.0], [0.0, 3.0, 0.0, 0.0, 0.0]])

    metrics = concept_entanglement(features, _prototypes(), related=[1, 3])

    assert metrics["shared_energy_share"] == pytest.approx(1.0)
    assert metrics["residual_energy_share"] == pytest.approx(0.0, abs=1e-12)


def test_features_outside_shared_subspace():
    features = torch.tensor([[0.0, 0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0, 2.0]])

    metrics = concept_entanglement(features, _prototypes(), related=[1, 3])

    assert metrics["shared_energy_share"] == pytest.approx(0.0, abs=1e-12)


def test_energy_share_of_mixed_features():
    features = torch.tensor([[1.0, 0.0, 0.0, 1.0, 0.0]])  # half in e0 (shared), half in e3

    metrics = concept_entanglement(features, _prototypes(), related=[1])

    # U_t spans prototype 1 (e0) and the mean prototype; e3 is orthogonal to both.
    assert metrics["shared_energy_share"] == pytest.approx(0.5)


def test_prototype_similarity_values():
    similarity = prototype_similarities(_prototypes())

    torch.testing.assert_close(similarity.diagonal(), torch.ones(4))
    assert similarity[1, 2].item() == pytest.approx(0.0)
    assert similarity[0, 1].item() == pytest.approx(2**-0.5)


def test_report_tables_are_tidy():
    features = {0: torch.tensor([[2.0, 1.0, 0.5, 0.0, 0.1]])}

    report = entanglement_report(features, _prototypes(), _transition(), n_rel=2, class_names=NAMES)

    row = report.concepts.iloc[0]
    assert len(report.concepts) == 1
    assert row["concept_name"] == "cat"
    assert row["related_classes"] == ["dog", "frog"]
    assert row["stage"] == "original"
    assert len(report.similarities) == 16
    assert set(report.similarities.columns) == {"stage", "class_a", "class_b", "cosine"}


def test_compare_reports_change():
    before_features = {0: torch.tensor([[2.0, 1.0, 0.0, 0.0, 0.0]])}
    after_features = {0: torch.tensor([[0.0, 0.0, 0.0, 2.0, 0.0]])}
    before = entanglement_report(before_features, _prototypes(), _transition(), n_rel=2)
    after = entanglement_report(
        after_features, _prototypes(), _transition(), n_rel=2, stage="unlearned"
    )

    comparison = compare_entanglement(before, after)

    shared = comparison.set_index("metric").loc["shared_energy_share"]
    assert len(comparison) == 3
    assert shared["before"] == pytest.approx(1.0)
    assert shared["after"] == pytest.approx(0.0, abs=1e-12)
    assert shared["change"] == pytest.approx(-1.0)


def test_class_names_length_checked():
    with pytest.raises(ValueError, match=r"class_names has 2 names"):
        entanglement_report({}, _prototypes(), _transition(), class_names=("a", "b"))


def test_zero_features_rejected():
    with pytest.raises(ValueError, match=r"all zero"):
        concept_entanglement(torch.zeros(2, 5), _prototypes(), related=[1])


def test_report_without_concepts_keeps_columns():
    report = entanglement_report({}, _prototypes(), _transition())

    assert report.concepts.empty
    assert "shared_energy_share" in report.concepts.columns
