"""A tiny dataset, a trained width-4 original model and unlearning contexts built on them."""

from __future__ import annotations

import copy

import pytest
import torch

from megu_core.checkpoint import ModelSpec
from megu_core.data import DatasetSpec, load_dataset
from megu_core.forget import resolve_forget_request
from megu_core.inference import predict
from megu_core.methods import UnlearnBudget, UnlearnContext
from megu_core.training import TrainConfig, train_classifier
from tests.factories import write_parquet_dataset

CPU = torch.device("cpu")
ORIGINAL_TRAINING = TrainConfig(epochs=4, batch_size=32, lr=0.05, warmup_epochs=0, seed=0)
TINY_BUDGET = UnlearnBudget(
    epochs=1.0, retain_subset=0, retain_batch_size=32, forget_batch_size=8, seed=0
)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """Four colour classes of 48 training and 16 test images each, two fine classes per class."""
    root = write_parquet_dataset(tmp_path_factory.mktemp("methods-data") / "tiny")
    spec = DatasetSpec(str(root), "coarse_label", "fine_label")
    return load_dataset(spec, cache_dir=tmp_path_factory.mktemp("methods-cache"))


@pytest.fixture(scope="session")
def original_model(tiny_dataset):
    """A width-4 CIFAR ResNet-18 trained on the whole tiny training split."""
    torch.manual_seed(0)
    model = ModelSpec("resnet18", tiny_dataset.num_classes, 4).build()
    train = tiny_dataset.train
    train_classifier(model, train.images, train.labels, ORIGINAL_TRAINING, CPU, progress=False)
    return model.eval()


@pytest.fixture
def make_context(tiny_dataset, original_model):
    """Build an UnlearnContext for a forget request on a private copy of the original model."""

    def build(request: str = "class:red_things", **changes) -> UnlearnContext:
        resolved = resolve_forget_request(request, tiny_dataset)
        values = dict(
            original=copy.deepcopy(original_model),
            dataset=tiny_dataset,
            request=resolved,
            device=CPU,
            budget=TINY_BUDGET,
            progress=False,
            train_config=ORIGINAL_TRAINING,
        )
        values.update(changes)
        return UnlearnContext(**values)

    return build


def megu_inputs(ctx: UnlearnContext) -> dict[str, torch.Tensor]:
    """Valid MeGU stage outputs: q is the one-hot of the next class, z* the original features."""
    images, labels = ctx.forget_data()
    num_classes = ctx.dataset.num_classes
    soft_targets = torch.nn.functional.one_hot((labels + 1) % num_classes, num_classes).float()
    _, features = predict(ctx.original, images, CPU, with_features=True)
    return {"soft_targets": soft_targets, "feature_targets": features}
