"""Stages `prepare` and `train`: the sample table, the original model and the gold retrain."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from megu_core.artifacts import write_table
from megu_core.checkpoint import ModelSpec, load_checkpoint, save_checkpoint
from megu_core.config import ExperimentConfig
from megu_core.data import load_dataset
from megu_core.errors import CheckpointError
from megu_core.experiment import dataset_description, dataset_spec, train_original
from megu_core.pipeline.common import StageOutput, load_prepared
from megu_core.pipeline.config import PipelineConfig

log = logging.getLogger(__name__)


def prepare(cfg: PipelineConfig, out_dir: Path) -> StageOutput:
    """Decode the dataset (or hit its tensor cache), resolve the forget request, write samples.parquet."""
    dataset, request = load_prepared(cfg)
    forget_mask = request.forget_mask(len(dataset.train)).numpy()

    frames = []
    for name, split in dataset.splits.items():
        frames.append(
            pd.DataFrame(
                {
                    "sample_id": list(split.sample_ids),
                    "split": name,
                    "label": split.labels.numpy(),
                    "fine_label": None if split.fine_labels is None else split.fine_labels.numpy(),
                    "in_forget": forget_mask
                    if name == "train"
                    else np.zeros(len(split), dtype=bool),
                }
            )
        )
    samples = out_dir / "samples.parquet"
    write_table(pd.concat(frames, ignore_index=True), samples, "samples")

    summary = {
        "dataset": dataset_description(dataset),
        "fine_class_names": None
        if dataset.fine_class_names is None
        else list(dataset.fine_class_names),
        "request": request.request.spec,
        "request_kind": request.kind,
        "request_id": request.request_id,
        "ids_hash": request.ids_hash,
        "num_forget": len(request),
        "num_retain": len(dataset.train) - len(request),
    }
    log.info(
        "forget request %s resolved to %d samples (id %s)",
        request.request.spec,
        len(request),
        request.request_id,
    )
    return StageOutput({"samples": samples}, summary)


def train(
    cfg: PipelineConfig, out_dir: Path, retrain: bool, ids_hash: str, progress: bool = True
) -> StageOutput:
    """Train the original model, or with `retrain` the gold retrain, trained without the forget set."""
    experiment = ExperimentConfig(
        data=cfg.data, model=cfg.model, train=cfg.train, device=cfg.device, preset=cfg.preset
    )
    exclude = None
    if retrain:
        dataset, request = load_prepared(cfg, ids_hash)
        exclude = request.forget_mask(len(dataset.train))

    report = train_original(experiment, out_dir / "checkpoint", progress=progress, exclude=exclude)
    summary = {
        "role": "retrain" if retrain else "original",
        "test_accuracy": report.test_accuracy,
        "seconds": report.train.seconds,
        "images_per_second": report.train.images_per_second,
        "bare_images_per_second": report.bare_images_per_second,
        "epochs": report.epochs,
    }
    files = {
        "weights": out_dir / "checkpoint" / "model.safetensors",
        "checkpoint_config": out_dir / "checkpoint" / "config.json",
    }
    return StageOutput(files, summary)


def import_model(cfg: PipelineConfig, source: Path, out_dir: Path) -> StageOutput:
    """Adopt an existing checkpoint as the original model, after checking it fits the dataset."""
    model, document = load_checkpoint(source, "cpu")
    dataset = load_dataset(dataset_spec(cfg.data))
    expected = document["model"]["num_classes"]
    if expected != dataset.num_classes:
        raise CheckpointError(
            f"{source} predicts {expected} classes but dataset {cfg.data.source!r} has {dataset.num_classes}; "
            "pass the checkpoint of a model trained on this dataset"
        )
    recorded = document.get("dataset", {}).get("class_names")
    if recorded and list(recorded) != list(dataset.class_names):
        raise CheckpointError(
            f"{source} was trained on classes {recorded[:5]}... but the dataset has {list(dataset.class_names)[:5]}..."
        )

    metadata = {key: value for key, value in document.items() if key != "model"}
    metadata["imported_from"] = str(source)
    save_checkpoint(out_dir / "checkpoint", model, ModelSpec(**document["model"]), metadata)
    training = document.get("training", {})
    summary = {
        "role": "original",
        "imported_from": str(source),
        "test_accuracy": document.get("test_accuracy"),
        "seconds": training.get("seconds", 0.0),
        "images_per_second": training.get("images_per_second"),
        "bare_images_per_second": training.get("bare_images_per_second"),
        "epochs": document.get("config", {}).get("train", {}).get("epochs"),
    }
    files = {
        "weights": out_dir / "checkpoint" / "model.safetensors",
        "checkpoint_config": out_dir / "checkpoint" / "config.json",
    }
    return StageOutput(files, summary)
