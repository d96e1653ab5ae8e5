"""Unlearning metrics: accuracies, membership-inference attacks and gaps to a reference model.

One evaluator computes everything from a single forward pass over each split, and keeps the
per-sample outputs (loss, confidence, entropy, prediction) as a table.
Accuracies and MIA (confidence) are in percent; MIA (entropy) is a fraction, as in the
published tables this benchmark is compared with.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn
from torch.nn import functional as F

from megu_core.data.dataset import Dataset, ImageSplit
from megu_core.forget import ResolvedForgetRequest
from megu_core.inference import predict

log = logging.getLogger(__name__)

# The metrics whose mean absolute difference to the gold retrain is the Avg. Gap.
AVG_GAP_METRICS = ("forget_accuracy", "retain_accuracy", "test_accuracy", "mia_confidence")

METRIC_LABELS = {
    "forget_accuracy": "forget acc (%)",
    "retain_accuracy": "retain acc (%)",
    "test_accuracy": "test acc (%)",
    "test_forgotten_accuracy": "test acc, forgotten (%)",
    "test_retained_accuracy": "test acc, retained (%)",
    "mia_entropy": "MIA entropy",
    "mia_confidence": "MIA confidence (%)",
    "avg_gap": "Avg. Gap",
}


@dataclass
class SampleOutputs:
    """Per-sample outputs of a model on one split."""

    split: str
    sample_ids: tuple[str, ...]
    labels: torch.Tensor  # (n,)
    prediction: torch.Tensor  # (n,)
    loss: torch.Tensor  # (n,) cross-entropy against the label
    confidence: torch.Tensor  # (n,) max softmax probability
    entropy: torch.Tensor  # (n,) softmax entropy in nats
    true_prob: torch.Tensor  # (n,) softmax probability of the label

    @property
    def correct(self) -> torch.Tensor:
        return self.prediction == self.labels


def sample_outputs(
    model: nn.Module, split: ImageSplit, device: torch.device, batch_size: int = 512
) -> SampleOutputs:
    """Run the model once over a split and derive every per-sample quantity from the logits."""
    logits, _ = predict(model, split.images, device, batch_size)
    return outputs_from_logits(split.name, split.sample_ids, split.labels, logits)


def outputs_from_logits(
    split: str, sample_ids, labels: torch.Tensor, logits: torch.Tensor
) -> SampleOutputs:
    """Per-sample loss, confidence, entropy, prediction and true-label probability from logits (n, C)."""
    log_probs = F.log_softmax(logits.float(), dim=1)
    probs = log_probs.exp()
    return SampleOutputs(
        split=split,
        sample_ids=tuple(sample_ids),
        labels=labels,
        prediction=logits.argmax(1),
        loss=F.nll_loss(log_probs, labels, reduction="none"),
        confidence=probs.max(1).values,
        entropy=-(probs * log_probs).sum(1),
        true_prob=probs.gather(1, labels[:, None]).squeeze(1),
    )


def accuracy(correct: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Accuracy in percent over the samples selected by `mask` (NaN if none are selected)."""
    values = correct if mask is None else correct[mask]
    return float(values.float().mean() * 100) if values.numel() else float("nan")


def mia_member_fraction(
    members: np.ndarray, non_members: np.ndarray, targets: np.ndarray, seed: int = 0
) -> float:
    """Fraction of `targets` that a class-balanced logistic regression calls members.

    The attack is fitted on one scalar per sample, members (label 1) against non-members (label 0).
    """
    x = np.concatenate([members, non_members]).reshape(-1, 1).astype(np.float64)
    y = np.concatenate([np.ones(len(members)), np.zeros(len(non_members))])
    attack = LogisticRegression(class_weight="balanced", random_state=seed)
    attack.fit(x, y)
    return float(attack.predict(targets.reshape(-1, 1).astype(np.float64)).mean())


def mia_entropy(train: SampleOutputs, test: SampleOutputs, forget_mask: torch.Tensor) -> float:
    """MIA (entropy): retain samples are members, test samples non-members; fraction of forget samples called members."""
    return mia_member_fraction(
        train.entropy[~forget_mask].numpy(),
        test.entropy.numpy(),
        train.entropy[forget_mask].numpy(),
    )


def mia_confidence(train: SampleOutputs, test: SampleOutputs, forget_mask: torch.Tensor) -> float:
    """MIA (confidence), SalUn's MIA-Efficacy: percent of forget samples called non-members on the true-label probability."""
    members = mia_member_fraction(
        train.true_prob[~forget_mask].numpy(),
        test.true_prob.numpy(),
        train.true_prob[forget_mask].numpy(),
    )
    return (1.0 - members) * 100


@dataclass
class Evaluation:
    """Aggregate metrics and the per-sample table of one model against one forget request."""

    metrics: dict[str, float]
    per_sample: pd.DataFrame


def evaluate(
    model: nn.Module,
    dataset: Dataset,
    request: ResolvedForgetRequest,
    device: torch.device,
    reference: Evaluation | None = None,
    batch_size: int = 512,
) -> Evaluation:
    """Compute every unlearning metric in one forward pass per split.

    With a `reference` (the gold retrain), adds `gap_<metric>` for each metric and `avg_gap`.
    """
    train = sample_outputs(model, dataset.train, device, batch_size)
    test = sample_outputs(model, dataset.test, device, batch_size)
    forget_mask = request.forget_mask(len(dataset.train))

    metrics = {
        "forget_accuracy": accuracy(train.correct, forget_mask),
        "retain_accuracy": accuracy(train.correct, ~forget_mask),
        "test_accuracy": accuracy(test.correct),
        "test_forgotten_accuracy": float("nan"),
        "test_retained_accuracy": float("nan"),
        "mia_entropy": mia_entropy(train, test, forget_mask),
        "mia_confidence": mia_confidence(train, test, forget_mask),
    }
    forgotten_test = request.forgotten_test_mask(dataset)
    if forgotten_test is not None:
        metrics["test_forgotten_accuracy"] = accuracy(test.correct, forgotten_test)
        metrics["test_retained_accuracy"] = accuracy(test.correct, ~forgotten_test)
    if reference is not None:
        metrics.update(gaps(metrics, reference.metrics))

    return Evaluation(metrics, per_sample_table(train, test, forget_mask))


def gaps(metrics: dict[str, float], reference: dict[str, float]) -> dict[str, float]:
    """Absolute difference to the reference for each metric, and the Avg. Gap."""
    base = [name for name in metrics if not name.startswith("gap_") and name != "avg_gap"]
    result = {
        f"gap_{name}": abs(metrics[name] - reference[name]) for name in base if name in reference
    }
    result["avg_gap"] = float(np.mean([result[f"gap_{name}"] for name in AVG_GAP_METRICS]))
    return result


def per_sample_table(
    train: SampleOutputs, test: SampleOutputs, forget_mask: torch.Tensor
) -> pd.DataFrame:
    """Build one row per training and test sample with its outputs and forget-set membership."""
    frames = []
    for outputs, in_forget in (
        (train, forget_mask),
        (test, torch.zeros(len(test.labels), dtype=torch.bool)),
    ):
        frames.append(
            pd.DataFrame(
                {
                    "sample_id": list(outputs.sample_ids),
                    "split": outputs.split,
                    "label": outputs.labels.numpy().astype(np.int64),
                    "prediction": outputs.prediction.numpy().astype(np.int64),
                    "loss": outputs.loss.numpy().astype(np.float64),
                    "confidence": outputs.confidence.numpy().astype(np.float64),
                    "entropy": outputs.entropy.numpy().astype(np.float64),
                    "true_prob": outputs.true_prob.numpy().astype(np.float64),
                    "in_forget": in_forget.numpy(),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def format_metrics_table(rows: dict[str, dict[str, float]]) -> str:
    """Render models' metrics as a Markdown table, one row per model."""
    names = [m for m in METRIC_LABELS if any(m in row for row in rows.values())]
    lines = [
        "| model | " + " | ".join(METRIC_LABELS[m] for m in names) + " |",
        "| --- |" + " ---: |" * len(names),
    ]
    for model_name, row in rows.items():
        cells = [_format_value(m, row.get(m, float("nan"))) for m in names]
        lines.append(f"| {model_name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _format_value(metric: str, value: float) -> str:
    if value is None or np.isnan(value):
        return "-"
    return f"{value:.3f}" if metric == "mia_entropy" else f"{value:.2f}"
