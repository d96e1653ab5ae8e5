"""Stage `noise`: the positive/negative feature-noise pair per target concept and each forget sample's z*."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from megu_core.artifacts import read_frame, write_table
from megu_core.checkpoint import load_checkpoint
from megu_core.megu.noise import build_noise_pairs, class_prototypes, mixed_feature_targets
from megu_core.pipeline.common import StageOutput
from megu_core.pipeline.concepts import read_perturbing_labels, read_transition_matrix
from megu_core.pipeline.config import PipelineConfig
from megu_core.pipeline.features import FORGET_SPLIT, REFERENCE_SPLIT, read_features

log = logging.getLogger(__name__)


def build_noise(
    cfg: PipelineConfig,
    features_path: Path,
    perturbing_path: Path,
    transition_path: Path,
    checkpoint: Path,
    request_kind: str,
    out_dir: Path,
) -> StageOutput:
    """Build the noise pairs against the frozen head h0 and write the mixed feature targets z*."""
    features = read_features(features_path)
    forget, reference = features[FORGET_SPLIT], features[REFERENCE_SPLIT]
    perturbing = (
        read_perturbing_labels(perturbing_path).set_index("sample_id").loc[forget["sample_ids"]]
    )
    matrix = read_transition_matrix(transition_path)
    model, _ = load_checkpoint(checkpoint, "cpu")

    # Prototypes come from R plus the forget set, since R contains no sample of a forgotten class.
    prototypes = class_prototypes(
        torch.cat([reference["features"], forget["features"]]),
        torch.cat([reference["labels"], forget["labels"]]),
        matrix.shape[0],
    )
    concepts = torch.as_tensor(perturbing["target_index"].to_numpy(dtype=np.int64))
    perturbing_labels = torch.as_tensor(perturbing["perturbing_label"].to_numpy(dtype=np.int64))
    pairs = build_noise_pairs(
        forget["features"],
        concepts,
        perturbing_labels,
        model.head,
        matrix,
        prototypes,
        cfg.noise,
        random_forgetting=request_kind in ("random", "ids"),
    )
    z_star = mixed_feature_targets(forget["features"], concepts, pairs)  # (n_f, d)

    files = {
        "noise_pairs": out_dir / "noise_pairs.parquet",
        "noise_per_sample": out_dir / "noise_per_sample.parquet",
    }
    write_table(_pair_frame(pairs), files["noise_pairs"], "noise_pairs")
    write_table(
        _per_sample_frame(forget["sample_ids"], concepts, pairs, z_star),
        files["noise_per_sample"],
        "noise_per_sample",
    )
    if cfg.noise.mode == "subspace":
        files["subspaces"] = out_dir / "subspaces.parquet"
        write_table(_subspace_frame(pairs), files["subspaces"], "subspaces")

    summary = {
        "mode": cfg.noise.mode,
        "use": cfg.noise.use,
        "concepts": {int(c): _pair_summary(pair) for c, pair in list(pairs.items())[:20]},
        "head_agreement_with_perturbing": float(
            (
                torch.cat([pairs[c].predictions for c in sorted(pairs)])
                == _grouped(perturbing_labels, concepts, pairs)
            )
            .float()
            .mean()
        ),
    }
    return StageOutput(files, summary)


def _grouped(values: torch.Tensor, concepts: torch.Tensor, pairs) -> torch.Tensor:
    """`values` reordered concept by concept, matching the order of each pair's per-sample outputs."""
    return torch.cat([values[(concepts == c).nonzero().flatten()] for c in sorted(pairs)])


def _pair_summary(pair) -> dict:
    summary = {key: round(float(value), 4) for key, value in pair.diagnostics.items()}
    summary["mean_negative_norm"] = round(float(pair.negative_norms.mean()), 4)
    summary["mean_positive_norm"] = round(float(pair.positive_norms.mean()), 4)
    if pair.clip_radius is not None:
        summary["clip_radius"] = round(pair.clip_radius, 4)
    return summary


def _pair_frame(pairs) -> pd.DataFrame:
    rows = []
    for concept, pair in pairs.items():
        for kind, vector, loss_key in (
            ("negative", pair.negative, "target_ce_negative"),
            ("positive", pair.positive, "perturbing_ce_positive"),
        ):
            mean_vector = (
                vector if vector.dim() == 1 else vector.mean(0)
            )  # subspace mode: per-sample noises
            rows.append(
                {
                    "target_index": int(concept),
                    "kind": kind,
                    "vector": mean_vector.float().numpy(),
                    "norm": float(mean_vector.norm()),
                    "final_loss": pair.diagnostics.get(loss_key),
                }
            )
    frame = pd.DataFrame(rows)
    frame["vector"] = pd.Series(list(frame["vector"]), dtype=object)
    return frame


def _per_sample_frame(sample_ids, concepts, pairs, z_star) -> pd.DataFrame:
    negative = torch.empty(len(sample_ids))
    positive = torch.empty(len(sample_ids))
    prediction = torch.empty(len(sample_ids), dtype=torch.long)
    for concept, pair in pairs.items():
        members = (concepts == concept).nonzero().flatten()
        negative[members] = pair.negative_norms.float()
        positive[members] = pair.positive_norms.float()
        prediction[members] = pair.predictions
    return pd.DataFrame(
        {
            "sample_id": list(sample_ids),
            "target_index": concepts.numpy(),
            "negative_norm": negative.double().numpy(),
            "positive_norm": positive.double().numpy(),
            "head_prediction": prediction.numpy(),
            "feature_target": pd.Series(list(z_star.float().numpy()), dtype=object),
        }
    )


def _subspace_frame(pairs) -> pd.DataFrame:
    rows = []
    for concept, pair in pairs.items():
        for kind, basis in (("shared", pair.shared_basis), ("specific", pair.specific_basis)):
            if basis is None:
                continue
            for rank in range(basis.shape[1]):
                rows.append(
                    {
                        "target_index": int(concept),
                        "kind": kind,
                        "rank": rank,
                        "basis_vector": basis[:, rank].float().numpy(),
                    }
                )
    frame = pd.DataFrame(rows)
    frame["basis_vector"] = pd.Series(list(frame["basis_vector"]), dtype=object)
    return frame


def read_feature_targets(path: Path, sample_ids: list[str]) -> torch.Tensor:
    """z* (n_f, d) in the order of `sample_ids`."""
    frame = read_frame(path, "noise_per_sample").set_index("sample_id").loc[sample_ids]
    return torch.as_tensor(np.stack(frame["feature_target"].to_numpy()))
