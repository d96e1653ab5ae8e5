"""Unlearning metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from megu_core.checkpoint import ModelSpec
from megu_core.data import DatasetSpec, load_dataset
from megu_core.forget import resolve_forget_request
from megu_core.metrics import (
    accuracy,
    evaluate,
    format_metrics_table,
    gaps,
    mia_member_fraction,
    outputs_from_logits,
)
from tests.factories import write_parquet_dataset


def test_outputs_from_logits_hand_computed():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    labels = torch.tensor([0, 1])

    out = outputs_from_logits("train", ["a", "b"], labels, logits)

    assert out.prediction.tolist() == [0, 0]
    assert out.confidence.tolist() == pytest.approx([0.5, 0.75])
    assert out.true_prob.tolist() == pytest.approx([0.5, 0.25])
    assert out.loss.tolist() == pytest.approx([math.log(2), math.log(4)])
    assert out.entropy[0].item() == pytest.approx(math.log(2))
    assert out.entropy[1].item() == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))


def test_accuracy_in_percent_with_mask():
    correct = torch.tensor([True, False, True, True])

    assert accuracy(correct) == pytest.approx(75.0)
    assert accuracy(correct, torch.tensor([True, True, False, False])) == pytest.approx(50.0)
    assert math.isnan(accuracy(correct, torch.zeros(4, dtype=torch.bool)))


def test_mia_separates_member_like_targets():
    rng = np.random.default_rng(0)
    members = rng.uniform(0.0, 0.2, 500)  # low entropy, like training data
    non_members = rng.uniform(0.8, 1.0, 500)

    assert mia_member_fraction(members, non_members, np.full(10, 0.05)) == 1.0
    assert mia_member_fraction(members, non_members, np.full(10, 0.95)) == 0.0
    assert mia_member_fraction(members, non_members, np.array([0.1, 0.9])) == 0.5


def test_mia_is_class_balanced():
    members = np.linspace(0.0, 0.6, 5000)
    non_members = np.linspace(0.4, 1.0, 100)  # 50x fewer non-members

    # Balanced weights put the threshold near the midpoint 0.5, not far toward the minority.
    assert mia_member_fraction(members, non_members, np.array([0.45])) == 1.0
    assert mia_member_fraction(members, non_members, np.array([0.55])) == 0.0


def test_gaps_and_avg_gap_hand_computed():
    metrics = {
        "forget_accuracy": 10.0,
        "retain_accuracy": 90.0,
        "test_accuracy": 80.0,
        "mia_confidence": 96.0,
        "mia_entropy": 0.3,
    }
    reference = {
        "forget_accuracy": 0.0,
        "retain_accuracy": 92.0,
        "test_accuracy": 81.0,
        "mia_confidence": 100.0,
        "mia_entropy": 0.2,
    }

    result = gaps(metrics, reference)

    assert result["gap_forget_accuracy"] == pytest.approx(10.0)
    assert result["gap_mia_entropy"] == pytest.approx(0.1)
    assert result["avg_gap"] == pytest.approx((10 + 2 + 1 + 4) / 4)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = write_parquet_dataset(tmp_path_factory.mktemp("data") / "tiny", {"train": 6, "test": 3})
    return load_dataset(DatasetSpec(str(root)), cache_dir=tmp_path_factory.mktemp("cache"))


def test_evaluate_matches_per_sample_table(tiny):
    torch.manual_seed(0)
    model = ModelSpec("resnet18", tiny.num_classes, 4).build()
    request = resolve_forget_request("class:blue_things", tiny)

    evaluation = evaluate(model, tiny, request, torch.device("cpu"))

    table = evaluation.per_sample
    train = table[table.split == "train"]
    test = table[table.split == "test"]
    forget = train[train.in_forget]
    assert len(table) == len(tiny.train) + len(tiny.test)
    assert len(forget) == 12
    assert set(forget.label) == {2}
    assert evaluation.metrics["forget_accuracy"] == pytest.approx(
        (forget.prediction == forget.label).mean() * 100
    )
    retained_test = test[test.label != 2]
    assert evaluation.metrics["test_retained_accuracy"] == pytest.approx(
        (retained_test.prediction == retained_test.label).mean() * 100
    )
    assert 0.0 <= evaluation.metrics["mia_entropy"] <= 1.0
    assert 0.0 <= evaluation.metrics["mia_confidence"] <= 100.0


def test_evaluate_against_itself_has_zero_gap(tiny):
    torch.manual_seed(0)
    model = ModelSpec("resnet18", tiny.num_classes, 4).build()
    request = resolve_forget_request("random:10", tiny)
    device = torch.device("cpu")

    reference = evaluate(model, tiny, request, device)
    evaluation = evaluate(model, tiny, request, device, reference=reference)

    assert evaluation.metrics["avg_gap"] == pytest.approx(0.0)
    assert math.isnan(evaluation.metrics["test_forgotten_accuracy"])


def test_metrics_table_has_one_row_per_model():
    table = format_metrics_table(
        {
            "original": {"forget_accuracy": 80.0, "mia_entropy": 0.3441},
            "retrain": {"forget_accuracy": 0.0, "mia_entropy": float("nan")},
        }
    )

    lines = table.splitlines()
    assert lines[0] == "| model | forget acc (%) | MIA entropy |"
    assert lines[2] == "| original | 80.00 | 0.344 |"
    assert lines[3] == "| retrain | 0.00 | - |"
