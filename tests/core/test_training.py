"""The training loop, schedules, throughput measurement and checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from megu_core.checkpoint import ModelSpec, load_checkpoint, save_checkpoint
from megu_core.data import DatasetSpec, load_dataset
from megu_core.errors import CheckpointError, ConfigError
from megu_core.metrics import accuracy, sample_outputs
from megu_core.training import (
    TensorBatches,
    TrainConfig,
    lr_factor,
    measure_step_throughput,
    train_classifier,
)
from tests.factories import write_parquet_dataset

CPU = torch.device("cpu")
TINY = TrainConfig(epochs=3, batch_size=32, lr=0.05, warmup_epochs=0.5, seed=0)


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    root = write_parquet_dataset(tmp_path_factory.mktemp("data") / "tiny")
    return load_dataset(DatasetSpec(str(root)), cache_dir=tmp_path_factory.mktemp("cache"))


def _train(dataset, seed=0, cfg=TINY):
    torch.manual_seed(seed)
    model = ModelSpec("resnet18", dataset.num_classes, 4).build()
    result = train_classifier(
        model, dataset.train.images, dataset.train.labels, cfg, CPU, progress=False
    )
    return model, result


def test_tiny_model_learns_above_chance(tiny_dataset):
    model, result = _train(tiny_dataset)

    test_accuracy = accuracy(sample_outputs(model, tiny_dataset.test, CPU).correct)

    assert test_accuracy > 60.0  # chance is 25% on 4 classes
    assert result.steps == 3 * (len(tiny_dataset.train) // 32)
    assert result.images_per_second > 0


def test_same_seed_same_weights(tiny_dataset):
    cfg = TrainConfig(epochs=1, batch_size=32, lr=0.05, warmup_epochs=0)
    first, _ = _train(tiny_dataset, cfg=cfg)
    second, _ = _train(tiny_dataset, cfg=cfg)

    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_batches_cover_split_once_per_epoch():
    images = torch.zeros(10, 3, 8, 8, dtype=torch.uint8)
    labels = torch.arange(10)
    batches = TensorBatches(images, labels, 3, CPU, augment=False, drop_last=False)

    seen = torch.cat([batch.y for batch in batches])

    assert len(batches) == 4
    assert sorted(seen.tolist()) == list(range(10))


def test_warmup_then_cosine_schedule():
    cfg = TrainConfig(epochs=10, warmup_epochs=1, schedule="cosine")

    assert lr_factor(0, 100, 10, cfg) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, cfg) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, cfg) == pytest.approx(0.5)
    assert lr_factor(100, 100, 10, cfg) == pytest.approx(0.0)


def test_step_schedule_decays_at_milestones():
    cfg = TrainConfig(epochs=10, warmup_epochs=0, schedule="step", milestones=(0.5,), gamma=0.2)

    assert lr_factor(49, 100, 0, cfg) == pytest.approx(1.0)
    assert lr_factor(50, 100, 0, cfg) == pytest.approx(0.2)


def test_invalid_schedule_names_choices():
    with pytest.raises(ConfigError, match="cosine, step, constant"):
        TrainConfig(schedule="linear")


def test_bare_throughput_leaves_model_untouched():
    model = ModelSpec("resnet18", 4, 4).build()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    rate = measure_step_throughput(model, TrainConfig(batch_size=8), CPU, steps=2)

    assert rate > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_checkpoint_round_trip(tmp_path):
    spec = ModelSpec("resnet18", 4, 4)
    model = spec.build().eval()
    x = torch.randn(2, 3, 32, 32)

    save_checkpoint(tmp_path / "ckpt", model, spec, {"note": "round trip"})
    loaded, document = load_checkpoint(tmp_path / "ckpt")

    assert torch.allclose(model(x), loaded.eval()(x))
    assert document["note"] == "round trip"
    assert (tmp_path / "ckpt" / "model.safetensors").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_checkpoint_mismatch_is_explained(tmp_path):
    spec = ModelSpec("resnet18", 4, 4)
    save_checkpoint(tmp_path / "ckpt", spec.build(), spec, {})
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    config["model"]["base_width"] = 8
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(config))

    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(tmp_path / "ckpt")


def test_missing_checkpoint_is_explained(tmp_path):
    (tmp_path / "empty").mkdir()

    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nothing")
    with pytest.raises(CheckpointError, match="config.json is missing"):
        load_checkpoint(tmp_path / "empty")


def test_truncated_weights_are_explained(tmp_path):
    spec = ModelSpec("resnet18", 4, 4)
    save_checkpoint(tmp_path / "ckpt", spec.build(), spec, {})
    weights = tmp_path / "ckpt" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])

    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(tmp_path / "ckpt")
