"""Train an original model and evaluate a saved model: the library side of `megu train` and `megu evaluate`."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from megu_core.checkpoint import ModelSpec, load_checkpoint, save_checkpoint
from megu_core.config import DataConfig, ExperimentConfig
from megu_core.data import Dataset, DatasetSpec, load_dataset
from megu_core.devices import resolve_device
from megu_core.forget import parse_forget_request, resolve_forget_request
from megu_core.metrics import Evaluation, accuracy, evaluate, sample_outputs
from megu_core.training import TrainResult, measure_step_throughput, train_classifier

log = logging.getLogger(__name__)


def dataset_spec(data: DataConfig) -> DatasetSpec:
    """Translate the data section of a configuration into a loader spec."""
    return DatasetSpec(
        source=data.source,
        label_column=data.label_column,
        fine_label_column=data.fine_label_column,
        image_size=data.image_size,
    )


@dataclass
class TrainReport:
    """Measurements of `megu train`: accuracy, time and throughput."""

    checkpoint: Path
    test_accuracy: float
    epochs: float
    data_seconds: float
    train: TrainResult
    bare_images_per_second: float


def train_original(
    cfg: ExperimentConfig, out_dir: Path, progress: bool = True, exclude: torch.Tensor | None = None
) -> TrainReport:
    """Train a model from scratch on the training split (minus `exclude` rows) and save it.

    With `exclude` set to a forget mask, this is the gold retrain.
    """
    device = resolve_device(cfg.device)
    started = time.perf_counter()
    dataset = load_dataset(dataset_spec(cfg.data))
    data_seconds = time.perf_counter() - started
    log.info(
        "data ready in %.1f s: %d training images, %d classes",
        data_seconds,
        len(dataset.train),
        dataset.num_classes,
    )

    torch.manual_seed(cfg.train.seed)
    spec = ModelSpec(cfg.model.architecture, dataset.num_classes, cfg.model.base_width)
    model = spec.build()
    bare = measure_step_throughput(model, cfg.train, device)

    images, labels = dataset.train.images, dataset.train.labels
    if exclude is not None:
        images, labels = images[~exclude], labels[~exclude]
    result = train_classifier(
        model, images, labels, cfg.train, device, description="train", progress=progress
    )
    test_accuracy = accuracy(sample_outputs(model, dataset.test, device).correct)

    metadata = {
        "config": cfg.to_dict(),
        "dataset": dataset_description(dataset),
        "training": {
            "seconds": result.seconds,
            "images_per_second": result.images_per_second,
            "bare_images_per_second": bare,
            "final_train_accuracy": result.final_train_accuracy,
            "excluded_samples": 0 if exclude is None else int(exclude.sum()),
        },
        "test_accuracy": test_accuracy,
    }
    save_checkpoint(out_dir, model, spec, metadata)
    log.info("saved %s (test accuracy %.2f%%)", out_dir, test_accuracy)
    return TrainReport(Path(out_dir), test_accuracy, cfg.train.epochs, data_seconds, result, bare)


def dataset_description(dataset: Dataset) -> dict:
    """Describe a dataset as a checkpoint records it."""
    return {
        "name": dataset.name,
        "digest": dataset.source_digest,
        "class_names": list(dataset.class_names),
        "num_train": len(dataset.train),
        "num_test": len(dataset.test),
    }


def evaluate_checkpoint(
    checkpoint: Path,
    forget: str,
    data: DataConfig | None = None,
    device_name: str = "auto",
    seed: int = 0,
    reference: Evaluation | None = None,
) -> tuple[Evaluation, Dataset]:
    """Evaluate a saved model against a forget request on the dataset it was trained on (or `data`)."""
    device = resolve_device(device_name)
    model, document = load_checkpoint(checkpoint, device)
    if data is None:
        data = DataConfig(**document["config"]["data"])
    dataset = load_dataset(dataset_spec(data))
    if dataset.num_classes != document["model"]["num_classes"]:
        raise ValueError(
            f"{checkpoint} predicts {document['model']['num_classes']} classes but dataset "
            f"{data.source!r} has {dataset.num_classes}; pass the dataset the model was trained on"
        )
    request = resolve_forget_request(parse_forget_request(forget, seed), dataset)
    return evaluate(model, dataset, request, device, reference), dataset
