"""Stage `features`: penultimate features of the original model on the forget set and a retain reference set."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F

from megu_core.artifacts import read_frame, write_table
from megu_core.checkpoint import load_checkpoint
from megu_core.data import Dataset
from megu_core.devices import resolve_device
from megu_core.forget import ResolvedForgetRequest
from megu_core.inference import predict
from megu_core.metrics import accuracy, outputs_from_logits
from megu_core.pipeline.common import StageOutput, load_prepared
from megu_core.pipeline.config import PipelineConfig

log = logging.getLogger(__name__)

FORGET_SPLIT = "forget"
REFERENCE_SPLIT = "retain_reference"


def retain_reference_rows(
    dataset: Dataset, request: ResolvedForgetRequest, per_class: int, seed: int
) -> np.ndarray:
    """Up to `per_class` seeded random retain samples of every class (the reference set R)."""
    retain = ~request.forget_mask(len(dataset.train)).numpy()
    labels = dataset.train.labels.numpy()
    generator = np.random.default_rng(seed)
    rows = []
    for label in range(dataset.num_classes):
        candidates = np.flatnonzero(retain & (labels == label))
        if len(candidates) > per_class:
            candidates = generator.choice(candidates, size=per_class, replace=False)
        rows.append(np.sort(candidates))
    return np.concatenate(rows)


def extract_features(
    cfg: PipelineConfig, checkpoint: Path, ids_hash: str, out_dir: Path
) -> StageOutput:
    """Write features.parquet: g0(x), prediction and confidence for D_f and R, with no augmentation."""
    device = resolve_device(cfg.device)
    dataset, request = load_prepared(cfg, ids_hash)
    model, _ = load_checkpoint(checkpoint, device)

    groups = {
        FORGET_SPLIT: request.indices,
        REFERENCE_SPLIT: retain_reference_rows(
            dataset, request, cfg.features.retain_per_class, cfg.features.seed
        ),
    }
    frames = [_feature_frame(model, dataset, rows, split, device) for split, rows in groups.items()]
    path = out_dir / "features.parquet"
    write_table(pd.concat(frames, ignore_index=True), path, "features")

    # The mean test confidence of f0 is the target of beta in random forgetting.
    test_logits, _ = predict(model, dataset.test.images, device)
    test = outputs_from_logits("test", dataset.test.sample_ids, dataset.test.labels, test_logits)
    summary = {
        "num_forget": len(groups[FORGET_SPLIT]),
        "num_reference": len(groups[REFERENCE_SPLIT]),
        "feature_dim": int(model.feature_dim),
        "test_confidence": float(test.confidence.mean()),
        "test_accuracy": accuracy(test.correct),
    }
    return StageOutput({"features": path}, summary)


def _feature_frame(model, dataset: Dataset, rows: np.ndarray, split: str, device) -> pd.DataFrame:
    train = dataset.train
    index = torch.from_numpy(rows)
    logits, features = predict(model, train.images[index], device, with_features=True)
    probs = F.softmax(logits, dim=1)
    fine = None if train.fine_labels is None else train.fine_labels[index].numpy()
    return pd.DataFrame(
        {
            "sample_id": [train.sample_ids[i] for i in rows],
            "split": split,
            "label": train.labels[index].numpy(),
            "fine_label": fine,
            "prediction": logits.argmax(1).numpy(),
            "confidence": probs.max(1).values.numpy().astype(np.float32),
            "feature": pd.Series(list(features.numpy()), dtype=object),
        }
    )


def read_features(path: Path) -> dict[str, dict]:
    """Read features.parquet back as tensors per split: ids, labels, fine labels and features (n, d)."""
    table = read_frame(path, "features")
    result = {}
    for split, frame in table.groupby("split", sort=False):
        result[split] = {
            "sample_ids": frame["sample_id"].tolist(),
            "labels": torch.tensor(frame["label"].to_numpy(dtype=np.int64)),
            "fine_labels": None
            if frame["fine_label"].isna().all()
            else torch.tensor(frame["fine_label"].to_numpy(dtype=np.int64)),
            "features": torch.from_numpy(np.stack(frame["feature"].to_numpy())),
        }
    return result
