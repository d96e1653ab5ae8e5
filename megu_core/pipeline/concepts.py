"""Stage `concepts`: oracle scores per target concept, the transition matrix, perturbing labels and soft targets."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F

from megu_core.artifacts import read_frame, write_table
from megu_core.checkpoint import load_checkpoint
from megu_core.data import Dataset
from megu_core.devices import resolve_device
from megu_core.errors import CheckpointError
from megu_core.inference import predict
from megu_core.megu.oracle_common import nearest_to_prototype
from megu_core.megu.oracles import ConceptOracle, create_oracle
from megu_core.megu.transition import (
    auto_beta,
    candidate_classes,
    perturbing_labels,
    random_soft_targets,
    subclass_candidates,
    transition_matrix,
)
from megu_core.pipeline.common import StageOutput, load_prepared
from megu_core.pipeline.config import PipelineConfig
from megu_core.pipeline.features import FORGET_SPLIT, read_features
from megu_core.plots import transition_heatmap

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TargetConcept:
    """A concept to forget: its name, the transition-matrix row it owns and its candidate classes."""

    name: str
    row: int  # the output class: the forgotten class, the superclass of a fine concept, or a sample's class
    candidates: tuple[int, ...]
    fine_class: int | None = None


def target_concepts(
    request_kind: str,
    target_classes: tuple[int, ...],
    target_fine_class: int | None,
    forget_labels: torch.Tensor,
    class_names: list[str],
    fine_class_names: list[str] | None,
    fine_to_class: list[int] | None,
) -> list[TargetConcept]:
    """List the target concepts of a request: forgotten classes, one fine class, or each class hit by random forgetting."""
    num_classes = len(class_names)
    if request_kind == "class":
        return [
            TargetConcept(
                class_names[t], t, tuple(candidate_classes(num_classes, t, target_classes))
            )
            for t in target_classes
        ]
    if request_kind == "subclass":
        row = int(fine_to_class[target_fine_class])
        candidates = tuple(subclass_candidates(target_fine_class, fine_to_class, num_classes))
        return [
            TargetConcept(fine_class_names[target_fine_class], row, candidates, target_fine_class)
        ]
    present = sorted(set(forget_labels.tolist()))
    return [
        TargetConcept(class_names[c], c, tuple(candidate_classes(num_classes, c))) for c in present
    ]


def query_concepts(
    cfg: PipelineConfig,
    features_path: Path,
    checkpoint: Path,
    ids_hash: str,
    test_confidence: float,
    out_dir: Path,
    oracle: ConceptOracle | None = None,
) -> StageOutput:
    """Ask the oracle once per target concept, build T, and derive each forget sample's perturbing label and q."""
    dataset, request = load_prepared(cfg, ids_hash)
    class_names = list(dataset.class_names)
    forget = read_features(features_path)[FORGET_SPLIT]
    concepts = target_concepts(
        request.kind,
        request.target_classes,
        request.target_fine_class,
        forget["labels"],
        class_names,
        dataset.fine_class_names,
        dataset.fine_to_class,
    )
    oracle = oracle or create_oracle(cfg.oracle)
    identity = oracle.identity()

    exemplars = {}
    if oracle.uses_exemplars:
        rows = _concept_rows(concepts, forget["labels"], request.kind)
        exemplars = select_exemplars(
            concepts, rows, forget["features"], forget["sample_ids"], dataset, cfg.oracle.exemplars
        )
    scores, score_rows = score_concepts(oracle, concepts, class_names, exemplars)
    matrix = transition_matrix(scores, len(class_names), cfg.transition.tau)  # (C, C)

    device = torch.device("cpu")
    model, _ = load_checkpoint(checkpoint, device)
    with torch.no_grad():
        p0 = F.softmax(model.head(forget["features"]).float(), dim=1)  # (n_f, C)
    labels, soft, beta = _perturbing_targets(
        cfg, request.kind, concepts, forget, p0, matrix, test_confidence
    )

    files = {
        "concept_scores": out_dir / "concept_scores.parquet",
        "transition_matrix": out_dir / "transition_matrix.parquet",
        "perturbing_labels": out_dir / "perturbing_labels.parquet",
        "transition_heatmap": out_dir / "transition_matrix.png",
    }
    _write_concept_files(files, score_rows, matrix, class_names, concepts, identity)
    write_table(
        pd.DataFrame(
            {
                "sample_id": forget["sample_ids"],
                "target_index": _concept_rows(concepts, forget["labels"], request.kind).numpy(),
                "perturbing_label": labels.numpy(),
                "soft_target": pd.Series(list(soft.numpy().astype(np.float32)), dtype=object),
            }
        ),
        files["perturbing_labels"],
        "perturbing_labels",
    )

    summary = {
        "oracle": identity,
        "oracle_stats": asdict(oracle.stats),
        "exemplars": {c.name: exemplars[c.row].sample_ids for c in concepts if c.row in exemplars},
        "beta": beta,
        "concepts": {
            c.name: _top_candidates(scores[c.row], matrix[c.row], class_names)
            for c in concepts[:20]
        },
        "perturbing_label_counts": {
            class_names[k]: int(v)
            for k, v in zip(*np.unique(labels.numpy(), return_counts=True), strict=True)
        },
    }
    return StageOutput(files, summary)


@dataclass(frozen=True)
class Exemplars:
    """The images an MLLM oracle is shown for one target concept."""

    sample_ids: list[str]
    images: torch.Tensor  # (k, 3, h, w) uint8


def select_exemplars(
    concepts: list[TargetConcept],
    rows: torch.Tensor,  # (n_f,) transition-matrix row of each forget sample's concept
    features: torch.Tensor,  # (n_f, d) original-model features of the forget samples
    sample_ids: list[str],
    dataset: Dataset,
    k: int,
) -> dict[int, Exemplars]:
    """Pick, per concept, the k forget samples nearest its prototype mu_t, with their images."""
    position = {sample_id: i for i, sample_id in enumerate(dataset.train.sample_ids)}
    selected = {}
    for concept in concepts:
        members = (rows == concept.row).nonzero().flatten()  # (n_t,)
        nearest = members[nearest_to_prototype(features[members], k)]  # (k,)
        ids = [sample_ids[i] for i in nearest.tolist()]
        images = dataset.train.images[torch.tensor([position[i] for i in ids])]  # (k, 3, h, w)
        selected[concept.row] = Exemplars(ids, images)
    return selected


def score_concepts(
    oracle: ConceptOracle,
    concepts: list[TargetConcept],
    class_names: list[str],
    exemplars: dict[int, Exemplars],
) -> tuple[dict[int, dict[int, float]], list[dict]]:
    """Ask the oracle once per target concept, never per sample.

    Returns the scores as {row: {candidate: score}} and one concept_scores row per pair.
    """
    identity = oracle.identity()
    scores: dict[int, dict[int, float]] = {}
    score_rows = []
    for concept in concepts:
        images = exemplars[concept.row].images if concept.row in exemplars else None
        values = oracle.score(concept.name, [class_names[c] for c in concept.candidates], images)
        scores[concept.row] = {c: float(v) for c, v in zip(concept.candidates, values, strict=True)}
        for c, v in scores[concept.row].items():
            score_rows.append(
                {
                    "target": concept.name,
                    "target_index": concept.row,
                    "candidate": class_names[c],
                    "candidate_index": c,
                    "score": v,
                    "oracle": identity.get("backend", ""),
                    "model": identity.get("model", ""),
                    "prompt_version": identity.get("prompt_version", ""),
                }
            )
    return scores, score_rows


def score_checkpoint_concepts(
    cfg: PipelineConfig,
    checkpoint: Path | None,
    out_dir: Path,
    oracle: ConceptOracle | None = None,
) -> StageOutput:
    """Score the target concepts of `cfg.forget` and write their scores, T and its heatmap.

    Needs no other stage's outputs: the library side of `megu concepts`. `checkpoint` is
    the original model, whose features choose the exemplars; only MLLM oracles need it.
    """
    dataset, request = load_prepared(cfg)
    class_names = list(dataset.class_names)
    forget_labels = dataset.train.labels[torch.from_numpy(request.indices)]  # (n_f,)
    concepts = target_concepts(
        request.kind,
        request.target_classes,
        request.target_fine_class,
        forget_labels,
        class_names,
        dataset.fine_class_names,
        dataset.fine_to_class,
    )
    oracle = oracle or create_oracle(cfg.oracle)

    exemplars = {}
    if oracle.uses_exemplars:
        features = _forget_features(cfg, checkpoint, dataset, request.indices)  # (n_f, d)
        rows = _concept_rows(concepts, forget_labels, request.kind)
        ids = [dataset.train.sample_ids[i] for i in request.indices]
        exemplars = select_exemplars(concepts, rows, features, ids, dataset, cfg.oracle.exemplars)

    started = time.perf_counter()
    scores, score_rows = score_concepts(oracle, concepts, class_names, exemplars)
    seconds = time.perf_counter() - started
    matrix = transition_matrix(scores, len(class_names), cfg.transition.tau)  # (C, C)

    files = {
        "concept_scores": out_dir / "concept_scores.parquet",
        "transition_matrix": out_dir / "transition_matrix.parquet",
        "transition_heatmap": out_dir / "transition_matrix.png",
    }
    _write_concept_files(files, score_rows, matrix, class_names, concepts, oracle.identity())
    summary = {
        "request": request.request.spec,
        "oracle": oracle.identity(),
        "oracle_stats": asdict(oracle.stats),
        "oracle_seconds": seconds,
        "exemplars": {c.name: exemplars[c.row].sample_ids for c in concepts if c.row in exemplars},
        "concepts": {
            c.name: _top_candidates(scores[c.row], matrix[c.row], class_names) for c in concepts
        },
    }
    return StageOutput(files, summary)


def _forget_features(
    cfg: PipelineConfig, checkpoint: Path | None, dataset: Dataset, indices: np.ndarray
) -> torch.Tensor:
    """Return the checkpoint's features g0(x) of the forget samples, shape (n_f, d)."""
    if checkpoint is None:
        raise CheckpointError(
            f"the {cfg.oracle.kind} oracle is shown the forget samples nearest each concept's "
            "prototype, which needs the original model: pass its checkpoint folder"
        )
    device = resolve_device(cfg.device)
    model, document = load_checkpoint(checkpoint, device)
    if document["model"]["num_classes"] != dataset.num_classes:
        raise CheckpointError(
            f"{checkpoint} predicts {document['model']['num_classes']} classes but dataset "
            f"{cfg.data.source!r} has {dataset.num_classes}; pass the dataset it was trained on"
        )
    images = dataset.train.images[torch.from_numpy(indices)]  # (n_f, 3, h, w)
    _, features = predict(model, images, device, with_features=True)
    return features


def _write_concept_files(
    files: dict[str, Path],
    score_rows: list[dict],
    matrix: torch.Tensor,
    class_names: list[str],
    concepts: list[TargetConcept],
    identity: dict[str, str],
) -> None:
    """Write concept_scores.parquet, transition_matrix.parquet and the heatmap PNG."""
    write_table(pd.DataFrame(score_rows), files["concept_scores"], "concept_scores")
    write_table(_matrix_frame(matrix, class_names), files["transition_matrix"], "transition_matrix")
    transition_heatmap(
        matrix.numpy(),
        class_names,
        [c.row for c in concepts][:20],
        files["transition_heatmap"],
        title=f"transition matrix ({identity.get('backend', '')} oracle)",
    )


def _perturbing_targets(cfg, kind, concepts, forget, p0, matrix, test_confidence):
    """Perturbing labels (n_f,) and soft targets (n_f, C); for random forgetting q keeps the true class."""
    labels = torch.empty(len(forget["labels"]), dtype=torch.long)
    soft = torch.zeros(len(forget["labels"]), matrix.shape[0])
    rows = _concept_rows(concepts, forget["labels"], kind)
    for concept in concepts:
        members = (rows == concept.row).nonzero().flatten()
        targets = perturbing_labels(
            matrix,
            p0[members],
            list(concept.candidates),
            cfg.transition.omega,
            cfg.transition.tau_q,
            target=concept.row,
        )
        labels[members] = targets.labels
        soft[members] = targets.soft_targets

    beta = None
    if kind in ("random", "ids"):
        beta_setting = cfg.transition.random_beta
        beta = (
            auto_beta(forget["labels"], matrix, test_confidence)
            if beta_setting == "auto"
            else float(beta_setting)
        )
        soft = random_soft_targets(forget["labels"], matrix, beta).float()
        log.info(
            "random forgetting: beta = %.3f (target mean confidence %.3f)", beta, test_confidence
        )
    return labels, soft, beta


def _concept_rows(concepts, labels: torch.Tensor, kind: str) -> torch.Tensor:
    """Return the transition-matrix row of each forget sample's concept."""
    if kind == "subclass":
        return torch.full_like(labels, concepts[0].row)
    return labels.clone()


def _matrix_frame(matrix: torch.Tensor, class_names: list[str]) -> pd.DataFrame:
    size = matrix.shape[0]
    rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    return pd.DataFrame(
        {
            "row": rows.ravel(),
            "column": cols.ravel(),
            "row_name": [class_names[r] for r in rows.ravel()],
            "column_name": [class_names[c] for c in cols.ravel()],
            "probability": matrix.double().numpy().ravel(),
        }
    )


def _top_candidates(
    scores: dict[int, float], row: torch.Tensor, class_names: list[str], k: int = 3
) -> list[dict]:
    top = sorted(scores, key=lambda c: -float(row[c]))[:k]
    return [
        {
            "class": class_names[c],
            "score": round(scores[c], 4),
            "probability": round(float(row[c]), 4),
        }
        for c in top
    ]


def read_transition_matrix(path: Path) -> torch.Tensor:
    """Rebuild the (C, C) matrix from its long-format Parquet table."""
    frame = read_frame(path, "transition_matrix")
    size = int(frame["row"].max()) + 1
    matrix = torch.zeros(size, size)
    matrix[frame["row"].to_numpy(), frame["column"].to_numpy()] = torch.tensor(
        frame["probability"].to_numpy(), dtype=torch.float32
    )
    return matrix


def read_perturbing_labels(path: Path) -> pd.DataFrame:
    return read_frame(path, "perturbing_labels")
