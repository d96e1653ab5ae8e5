"""The transition matrix T and the perturbing labels and soft targets it yields.

Row T[t] spreads a target concept over its candidate classes: softmax(score / tau) over
the candidates, zero elsewhere. Rows of classes that are not targets are the identity.
A sub-class concept (a fine class inside an output class) fills the row of its output
class, because only forget samples read T and they all belong to the concept.

NOTE: the matrix has one row per output class, so two fine concepts of one superclass
cannot share it. Keep their rows apart and pass each to `perturbing_labels` directly.
"""

from __future__ import annotations

import logging
import math
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch.nn import functional as F

log = logging.getLogger(__name__)

# T is clamped to this before the log, so an underflowed entry gives a large finite penalty
# instead of -inf.
_TINY = torch.finfo(torch.float32).tiny


def _check_class(name: str, value: int, num_classes: int) -> int:
    """Return `value` as a Python int, accepting NumPy and 0-d tensor integers, or raise."""
    message = f"{name} must be a class index in [0, {num_classes - 1}], got {value!r}"
    if isinstance(value, bool):
        raise ValueError(message)
    try:
        index = operator.index(value)
    except TypeError as exc:
        raise ValueError(message) from exc
    if not 0 <= index < num_classes:
        raise ValueError(message)
    return index


def candidate_classes(
    num_classes: int, own_class: int, forgotten_classes: Iterable[int] = ()
) -> list[int]:
    """Return the output classes a forget sample may be re-aligned to.

    `own_class` is the class the target concept belongs to: the forgotten class itself for
    class forgetting, the superclass for sub-class forgetting, the sample's class for random
    forgetting. Every class in `forgotten_classes` is excluded as well, so that forgetting
    several classes never sends one forgotten class onto another.
    """
    excluded = {_check_class("own_class", own_class, num_classes)}
    for forgotten in forgotten_classes:
        excluded.add(_check_class("forgotten class", forgotten, num_classes))

    candidates = [c for c in range(num_classes) if c not in excluded]
    if not candidates:
        raise ValueError(
            f"no candidate classes remain after excluding classes {sorted(excluded)} of "
            f"{num_classes}; a forget request must leave at least one output class"
        )
    return candidates


def subclass_candidates(
    fine_class: int, fine_to_class: Sequence[int], num_classes: int
) -> list[int]:
    """Return the candidates of a fine concept: every output class but its own superclass."""
    fine_class = _check_class("fine_class", fine_class, len(fine_to_class))
    return candidate_classes(num_classes, int(fine_to_class[fine_class]))


def transition_row(
    candidate_scores: Mapping[int, float], num_classes: int, tau: float
) -> torch.Tensor:
    """Return softmax(score / tau) over the candidates and zero elsewhere, shape (C,)."""
    if tau <= 0:
        raise ValueError(f"tau must be greater than 0, got {tau!r}")
    if not candidate_scores:
        raise ValueError("candidate_scores is empty; a target concept needs at least one candidate")

    candidates = sorted(candidate_scores)
    scores = torch.tensor([float(candidate_scores[c]) for c in candidates], dtype=torch.float64)
    candidates = [_check_class("candidate", c, num_classes) for c in candidates]
    if not torch.isfinite(scores).all() or (scores < 0).any() or (scores > 1).any():
        raise ValueError(f"oracle scores must lie in [0, 1], got {scores.tolist()}")

    row = torch.zeros(num_classes, dtype=torch.float64)
    row[candidates] = torch.softmax(scores / tau, dim=0)
    return row.float()


def transition_matrix(
    scores: Mapping[int, Mapping[int, float]], num_classes: int, tau: float
) -> torch.Tensor:
    """Build T (C, C): a softmax row for each target class in `scores`, identity rows elsewhere.

    `scores[t][c]` is the oracle score of candidate class c for the target concept in row t.
    """
    matrix = torch.eye(num_classes)
    for key, candidate_scores in scores.items():
        target = _check_class("target class", key, num_classes)
        if target in candidate_scores:
            raise ValueError(
                f"target class {target} is among its own candidates {sorted(candidate_scores)}; "
                "build the candidates with candidate_classes()"
            )
        matrix[target] = transition_row(candidate_scores, num_classes, tau)
    return matrix


def related_classes(row: torch.Tensor, n_rel: int) -> list[int]:
    """Return the `n_rel` classes with the largest mass in a transition row, largest first."""
    if n_rel < 1:
        raise ValueError(f"n_rel must be at least 1, got {n_rel}")
    values, order = torch.sort(row, descending=True, stable=True)
    return [int(c) for c, v in zip(order.tolist(), values.tolist(), strict=True) if v > 0][:n_rel]


@dataclass(frozen=True)
class PerturbingTargets:
    """Per forget sample: the perturbing label and the soft target q over the candidates."""

    labels: torch.Tensor  # (n,) int64, argmax of log T[t, c] + omega * log p0(c | x)
    soft_targets: torch.Tensor  # (n, C) float32, zero outside the candidates, rows sum to 1


def _select_row(transition: torch.Tensor, target: int | None) -> torch.Tensor:
    if transition.dim() == 1:
        return transition
    if transition.dim() == 2 and transition.shape[0] == transition.shape[1]:
        if target is None:
            raise ValueError("a (C, C) transition matrix needs `target`, the row of the concept")
        return transition[_check_class("target", target, transition.shape[0])]
    raise ValueError(
        f"transition must be a row (C,) or a matrix (C, C), got shape {tuple(transition.shape)}"
    )


def _check_probabilities(name: str, probs: torch.Tensor, num_classes: int) -> None:
    if probs.dim() != 2 or probs.shape[1] != num_classes:
        raise ValueError(f"{name} must have shape (n, {num_classes}), got {tuple(probs.shape)}")
    if not torch.isfinite(probs).all() or (probs < 0).any():
        raise ValueError(
            f"{name} must contain finite probabilities (a softmax), got negative or NaN values"
        )


def perturbing_labels(
    transition: torch.Tensor,
    p0: torch.Tensor,
    candidates: Sequence[int],
    omega: float = 1.0,
    tau_q: float = 2.0,
    target: int | None = None,
) -> PerturbingTargets:
    """Combine the concept prior T[t] with f0's evidence p0 into perturbing labels and soft targets.

    `transition` is the concept's row (C,), or the matrix (C, C) with `target` naming the row.
    y_pert = argmax over candidates of log T[t, c] + omega * log p0(c | x), and
    q = softmax over candidates of the same scores divided by tau_q.
    """
    row = _select_row(transition, target).double()  # (C,)
    num_classes = row.shape[0]
    _check_probabilities("p0", p0, num_classes)
    if omega < 0:
        raise ValueError(f"omega must be 0 or greater, got {omega!r}")
    if tau_q <= 0:
        raise ValueError(f"tau_q must be greater than 0, got {tau_q!r}")
    if len(candidates) == 0:
        raise ValueError("candidates is empty; pass the classes the concept may be re-aligned to")

    mask = torch.zeros(num_classes, dtype=torch.bool)
    for candidate in candidates:
        mask[_check_class("candidate", candidate, num_classes)] = True

    log_prior = torch.log(row.clamp_min(_TINY))  # (C,)
    # A zero in p0 is an underflow below the smallest normal number of its dtype, so clamping
    # there keeps the log finite (and omega = 0 free of 0 * -inf = NaN). Such a candidate
    # still gets log p0 of about -87 for float32, far below the spread of log T at tau = 0.1.
    log_evidence = torch.log(p0.double().clamp_min(torch.finfo(p0.dtype).tiny))  # (n, C)
    scores = log_prior + omega * log_evidence  # (n, C)
    scores = scores.masked_fill(~mask, -math.inf)

    labels = scores.argmax(dim=1)  # (n,)
    soft_targets = torch.softmax(scores / tau_q, dim=1)  # (n, C), exp(-inf) = 0 off the candidates
    return PerturbingTargets(labels=labels, soft_targets=soft_targets.float())


def random_soft_targets(
    labels: torch.Tensor, transition: torch.Tensor, beta: float
) -> torch.Tensor:
    """Return q = (1 - beta) * onehot(y) + beta * T[y] for random forgetting, shape (n, C).

    A model retrained without random samples still classifies most of them correctly, with
    less confidence, so q keeps the true class and spreads mass `beta` along its concept row.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be between 0 and 1, got {beta!r}")
    num_classes = transition.shape[0]
    labels = labels.long()
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"labels must be class indices in [0, {num_classes - 1}], got values from "
            f"{int(labels.min())} to {int(labels.max())}"
        )
    onehot = F.one_hot(labels, num_classes).to(transition.dtype)  # (n, C)
    return (1.0 - beta) * onehot + beta * transition[labels]


def mean_confidence(probs: torch.Tensor) -> float:
    """Return the mean of the largest class probability of each row of `probs` (n, C)."""
    if probs.dim() != 2:
        raise ValueError(f"probs must have shape (n, C), got {tuple(probs.shape)}")
    _check_probabilities("probs", probs, probs.shape[1])
    if probs.shape[0] == 0:
        raise ValueError("probs has no rows; the mean confidence of an empty set is undefined")
    return float(probs.max(dim=1).values.double().mean())


def _minimise_convex(
    function: Callable[[float], float], low: float, high: float, tolerance: float
) -> float:
    """Find the minimiser of a convex function on [low, high] by golden-section search."""
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    while high - low > tolerance:
        left = high - ratio * (high - low)
        right = low + ratio * (high - low)
        if function(left) <= function(right):
            high = right
        else:
            low = left
    return (low + high) / 2.0


def auto_beta(
    labels: torch.Tensor,
    transition: torch.Tensor,
    target_confidence: float,
    max_beta: float = 0.9,
    tolerance: float = 1e-6,
) -> float:
    """Choose beta so the mean confidence (max probability) of q over the forget set hits a target.

    The target is normally the mean confidence of f0 on the test split. Each sample's
    confidence max_c q_c(x) is a maximum of functions linear in beta, so the mean is convex
    in beta: it falls from 1 at beta = 0 to a minimum and may rise after it (once beta * T[y, c]
    overtakes 1 - beta). The search therefore finds that minimum on [0, max_beta] first and
    bisects only on the falling part before it. A target below the lowest reachable
    confidence gets the minimising beta, so beta always lies in [0, max_beta].
    """
    if labels.numel() == 0:
        raise ValueError("labels is empty; auto_beta needs the labels of the forget set")
    if not 0.0 < target_confidence <= 1.0:
        raise ValueError(f"target_confidence must be in (0, 1], got {target_confidence!r}")
    if not 0.0 <= max_beta <= 1.0:
        raise ValueError(f"max_beta must be between 0 and 1, got {max_beta!r}")

    transition = transition.double()

    def confidence(beta: float) -> float:
        return mean_confidence(random_soft_targets(labels, transition, beta))

    if target_confidence >= confidence(0.0):
        return 0.0

    lowest = _minimise_convex(confidence, 0.0, max_beta, tolerance)
    if target_confidence <= confidence(lowest):
        log.warning(
            "target confidence %.4f is below the lowest reachable %.4f, so beta is %.4f",
            target_confidence,
            confidence(lowest),
            lowest,
        )
        return lowest

    low, high = 0.0, lowest  # confidence(low) > target >= confidence(high)
    while high - low > tolerance:
        middle = (low + high) / 2.0
        if confidence(middle) > target_confidence:
            low = middle
        else:
            high = middle
    return (low + high) / 2.0
