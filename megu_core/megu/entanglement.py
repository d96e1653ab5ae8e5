"""The entanglement analysis: how much of a target concept's features it shares with related classes.

For each target concept t, U_t is the shared subspace of the noise pair's subspace mode
(the prototypes of the classes most related to t by the transition matrix, plus the mean
prototype). The shared energy share is ||Z_t P_U||_F^2 / ||Z_t||_F^2 over the forget
features Z_t; the rest is the residual share. Prototype cosine similarities between all
classes complete the picture. Run it on the original model's features and again on the
unlearned model's features, then compare; plotting is left to the caller.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from torch.nn import functional as F

from megu_core.megu.noise import shared_subspace
from megu_core.megu.transition import related_classes

CONCEPT_METRICS = ("shared_energy_share", "residual_energy_share", "related_cosine_mean")
CONCEPT_COLUMNS = [
    "stage",
    "concept",
    "concept_name",
    "related_classes",
    "num_samples",
    "shared_dim",
    *CONCEPT_METRICS,
]


@dataclass(frozen=True)
class EntanglementReport:
    """Tidy tables of one model's entanglement analysis."""

    concepts: pd.DataFrame  # one row per target concept
    similarities: pd.DataFrame  # one row per ordered pair of classes: cosine of their prototypes


def _class_name(class_names: Sequence[str] | None, index: int) -> str:
    return class_names[index] if class_names is not None else str(index)


def concept_entanglement(
    forget_features: torch.Tensor, prototypes: torch.Tensor, related: Sequence[int]
) -> dict[str, float]:
    """Return the energy shares of one concept's forget features (n, d) inside and outside U_t."""
    if forget_features.dim() != 2 or forget_features.shape[0] == 0:
        raise ValueError(
            f"forget_features must have shape (n, d) with n >= 1, got {tuple(forget_features.shape)}"
        )
    z = forget_features.double()  # (n, d)
    shared = shared_subspace(prototypes.double(), list(related))  # (d, k)

    total_energy = float(z.pow(2).sum())
    if total_energy == 0:
        raise ValueError("forget_features are all zero, so their energy shares are undefined")
    shared_energy = float((z @ shared).pow(2).sum())

    target_prototype = z.mean(dim=0, keepdim=True)  # (1, d)
    related_prototypes = prototypes.double()[list(related)]  # (n_rel, d)
    cosines = F.cosine_similarity(target_prototype, related_prototypes, dim=1)  # (n_rel,)

    return {
        "num_samples": float(z.shape[0]),
        "shared_dim": float(shared.shape[1]),
        "shared_energy_share": shared_energy / total_energy,
        "residual_energy_share": 1.0 - shared_energy / total_energy,
        "related_cosine_mean": float(cosines.mean()),
    }


def prototype_similarities(prototypes: torch.Tensor) -> torch.Tensor:
    """Return the cosine similarity of every pair of class prototypes, shape (C, C)."""
    unit = F.normalize(prototypes.double(), dim=1)  # (C, d)
    return (unit @ unit.T).float()


def entanglement_report(
    forget_features: Mapping[int, torch.Tensor],
    prototypes: torch.Tensor,
    transition: torch.Tensor,
    n_rel: int = 3,
    stage: str = "original",
    class_names: Sequence[str] | None = None,
) -> EntanglementReport:
    """Analyse one model: per concept energy shares, and all prototype similarities.

    `forget_features[t]` (n_t, d) are the forget features of the concept in row t of
    `transition` (C, C), and `prototypes` (C, d) the class prototypes, both from the model
    under analysis. `stage` names that model in the tables ("original", "unlearned").
    """
    if class_names is not None and len(class_names) != prototypes.shape[0]:
        raise ValueError(
            f"class_names has {len(class_names)} names but prototypes has {prototypes.shape[0]} classes"
        )

    rows = []
    for concept in sorted(forget_features):
        related = related_classes(transition[concept], n_rel)
        metrics = concept_entanglement(forget_features[concept], prototypes, related)
        rows.append(
            {
                "stage": stage,
                "concept": concept,
                "concept_name": _class_name(class_names, concept),
                "related_classes": [_class_name(class_names, c) for c in related],
                "num_samples": int(metrics["num_samples"]),
                "shared_dim": int(metrics["shared_dim"]),
                **{name: metrics[name] for name in CONCEPT_METRICS},
            }
        )

    similarity = prototype_similarities(prototypes)  # (C, C)
    num_classes = similarity.shape[0]
    pairs = [
        {
            "stage": stage,
            "class_a": _class_name(class_names, a),
            "class_b": _class_name(class_names, b),
            "cosine": float(similarity[a, b]),
        }
        for a in range(num_classes)
        for b in range(num_classes)
    ]
    return EntanglementReport(
        concepts=pd.DataFrame(rows, columns=CONCEPT_COLUMNS),
        similarities=pd.DataFrame(pairs, columns=["stage", "class_a", "class_b", "cosine"]),
    )


def compare_entanglement(before: EntanglementReport, after: EntanglementReport) -> pd.DataFrame:
    """Return one row per concept and metric with its value before, after and the change."""
    keys = ["concept", "concept_name"]
    long_before = before.concepts.melt(
        id_vars=keys, value_vars=list(CONCEPT_METRICS), var_name="metric"
    )
    long_after = after.concepts.melt(
        id_vars=keys, value_vars=list(CONCEPT_METRICS), var_name="metric"
    )

    merged = long_before.merge(
        long_after,
        on=[*keys, "metric"],
        how="outer",
        suffixes=("_before", "_after"),
        validate="one_to_one",
    )
    merged = merged.rename(columns={"value_before": "before", "value_after": "after"})
    merged["change"] = merged["after"] - merged["before"]
    return merged.sort_values([*keys, "metric"], ignore_index=True)
