"""Dataset loaders: Hugging Face Parquet folders, Hub ids (from a local Hub cache) and ImageFolder trees."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from megu_core.data import DatasetSpec, load_dataset
from megu_core.errors import DatasetError
from tests.factories import (
    COARSE_NAMES,
    FINE_NAMES,
    FINE_TO_COARSE,
    write_imagefolder,
    write_parquet_dataset,
)

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture
def parquet_dir(tmp_path: Path) -> Path:
    return write_parquet_dataset(tmp_path / "tiny")


def test_parquet_loader_reads_images_labels_and_names(parquet_dir, tmp_path):
    dataset = load_dataset(DatasetSpec(str(parquet_dir)), cache_dir=tmp_path / "cache")

    assert dataset.class_names == tuple(COARSE_NAMES)
    assert dataset.train.images.shape == (8 * 24, 3, 32, 32)
    assert dataset.train.images.dtype == torch.uint8
    assert dataset.test.images.shape == (8 * 8, 3, 32, 32)
    assert dataset.train.labels.tolist()[:24] == [0] * 24
    assert dataset.train.sample_ids[0] == "train/rose/0000.png"
    assert len(set(dataset.train.sample_ids)) == len(dataset.train)


def test_parquet_loader_without_paths_uses_row_ids(tmp_path):
    root = write_parquet_dataset(tmp_path / "nopath", with_paths=False)
    dataset = load_dataset(DatasetSpec(str(root)), cache_dir=tmp_path / "cache")

    assert dataset.train.sample_ids[:2] == ("train/000000", "train/000001")


def test_fine_and_coarse_targets_selectable(parquet_dir, tmp_path):
    fine = load_dataset(
        DatasetSpec(str(parquet_dir), label_column="fine_label"), cache_dir=tmp_path / "c"
    )
    coarse = load_dataset(
        DatasetSpec(str(parquet_dir), label_column="coarse_label", fine_label_column="fine_label"),
        cache_dir=tmp_path / "c",
    )

    assert fine.class_names == tuple(FINE_NAMES)
    assert fine.num_classes == 8
    assert coarse.num_classes == 4
    assert coarse.fine_class_names == tuple(FINE_NAMES)
    assert coarse.fine_to_class == tuple(FINE_TO_COARSE)
    assert torch.equal(coarse.train.fine_labels, fine.train.labels)


def test_inconsistent_fine_map_is_rejected(tmp_path):
    root = write_parquet_dataset(tmp_path / "bad")
    path = root / "train-00000-of-00001.parquet"
    table = pq.read_table(path)
    coarse = table.column("coarse_label").to_pylist()
    coarse[0] = 3  # one "rose" image under "grey_things"
    table = table.set_column(
        table.schema.get_field_index("coarse_label"), "coarse_label", pa.array(coarse)
    )
    pq.write_table(table, path)

    with pytest.raises(DatasetError, match="rose"):
        load_dataset(DatasetSpec(str(root), "coarse_label", "fine_label"), cache_dir=tmp_path / "c")


def test_imagefolder_loader_resizes_and_names_classes(tmp_path):
    root = write_imagefolder(tmp_path / "folder", per_class=3, size=40)
    dataset = load_dataset(DatasetSpec(str(root)), cache_dir=tmp_path / "cache")

    assert dataset.class_names == tuple(sorted(COARSE_NAMES))
    assert dataset.train.images.shape == (12, 3, 32, 32)
    assert dataset.train.sample_ids[0] == "train/blue_things/0.png"
    assert set(dataset.splits) == {"train", "test"}


def test_hub_id_loads_from_local_hub_cache(parquet_dir, tmp_path, monkeypatch):
    # The layout huggingface_hub uses for a cached dataset snapshot; offline mode reads it as is.
    commit = "0" * 40
    repo = tmp_path / "hub" / "datasets--megu-tests--tiny"
    snapshot = repo / "snapshots" / commit / "plain_text"
    shutil.copytree(parquet_dir, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))

    dataset = load_dataset(DatasetSpec("hub:megu-tests/tiny"), cache_dir=tmp_path / "cache")

    assert dataset.num_classes == 4
    assert len(dataset.train) == 8 * 24


def test_hub_id_offline_without_copy_explains(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))

    with pytest.raises(DatasetError, match="MEGU_DATA_DIR"):
        load_dataset(DatasetSpec("hub:megu-tests/missing"), cache_dir=tmp_path / "cache")


def test_catalog_name_found_under_data_dir(parquet_dir, tmp_path, monkeypatch):
    data_dir = tmp_path / "datasets"
    shutil.copytree(parquet_dir, data_dir / "cifar10")
    monkeypatch.setenv("MEGU_DATA_DIR", str(data_dir))

    dataset = load_dataset(DatasetSpec("cifar10"), cache_dir=tmp_path / "cache")

    assert dataset.class_names == tuple(COARSE_NAMES)


def test_corrupt_image_error_names_file_and_row(parquet_dir, tmp_path):
    path = parquet_dir / "train-00000-of-00001.parquet"
    table = pq.read_table(path)
    images = table.column("img").to_pylist()
    images[5] = {"bytes": b"not an image", "path": images[5]["path"]}
    table = table.set_column(0, "img", pa.array(images, type=table.schema.field("img").type))
    pq.write_table(table, path)

    with pytest.raises(DatasetError, match=r"train-00000-of-00001\.parquet, row 5"):
        load_dataset(DatasetSpec(str(parquet_dir)), cache_dir=tmp_path / "cache")


def test_missing_label_column_lists_columns(parquet_dir, tmp_path):
    with pytest.raises(DatasetError, match="missing .*'species'.*columns found: img, label"):
        load_dataset(
            DatasetSpec(str(parquet_dir), label_column="species"), cache_dir=tmp_path / "cache"
        )


def test_unknown_split_lists_available(parquet_dir, tmp_path):
    dataset = load_dataset(DatasetSpec(str(parquet_dir)), cache_dir=tmp_path / "cache")

    with pytest.raises(DatasetError, match="no split 'validation'; available splits: test, train"):
        dataset.split("validation")


def test_missing_source_is_explained(tmp_path):
    with pytest.raises(DatasetError, match="neither a known dataset"):
        load_dataset(DatasetSpec("no-such-dataset"), cache_dir=tmp_path / "cache")


def test_label_outside_class_names_rejected(parquet_dir, tmp_path):
    path = parquet_dir / "test-00000-of-00001.parquet"
    table = pq.read_table(path)
    labels = table.column("label").to_pylist()
    labels[2] = 9
    table = table.set_column(table.schema.get_field_index("label"), "label", pa.array(labels))
    pq.write_table(table, path)

    with pytest.raises(DatasetError, match="row 2: label 9 is outside 0..3"):
        load_dataset(DatasetSpec(str(parquet_dir)), cache_dir=tmp_path / "cache")


def test_cache_hit_skips_decoding(parquet_dir, tmp_path, monkeypatch):
    first = load_dataset(DatasetSpec(str(parquet_dir)), cache_dir=tmp_path / "cache")

    def fail(*args, **kwargs):
        raise AssertionError("decoded again despite a cache entry")

    monkeypatch.setattr("megu_core.data.cache.decode_dataset", fail)
    second = load_dataset(DatasetSpec(str(parquet_dir)), cache_dir=tmp_path / "cache")

    assert torch.equal(first.train.images, second.train.images)
    assert first.train.sample_ids == second.train.sample_ids
    assert first.source_digest == second.source_digest


def test_cache_key_follows_file_content(parquet_dir, tmp_path):
    first = load_dataset(DatasetSpec(str(parquet_dir)), cache_dir=tmp_path / "cache")
    write_parquet_dataset(parquet_dir, seed=1)  # same layout, other pixels

    second = load_dataset(DatasetSpec(str(parquet_dir)), cache_dir=tmp_path / "cache")

    assert first.source_digest != second.source_digest
    assert not torch.equal(first.train.images, second.train.images)
    assert len(os.listdir(tmp_path / "cache")) == 2


@pytest.mark.shared_data
def test_real_cifar100_coarse_map_matches_official(tmp_path, monkeypatch):
    if not (SHARED_DATA / "cifar100").is_dir():
        pytest.skip(f"real CIFAR-100 not found at {SHARED_DATA / 'cifar100'}")
    monkeypatch.setenv("MEGU_DATA_DIR", str(SHARED_DATA))
    dataset = load_dataset(DatasetSpec("cifar20"), cache_dir=tmp_path / "cache")

    assert dataset.num_classes == 20
    assert len(dataset.train) == 50_000
    assert dataset.fine_class_names[dataset.train.fine_labels[0]] == "apple"
    assert json.dumps(dataset.class_names[19]) == '"vehicles_2"'


def test_corrupt_tensor_cache_is_rebuilt(parquet_dir, tmp_path):
    first = load_dataset(DatasetSpec(str(parquet_dir)), cache_dir=tmp_path / "cache")
    entry = tmp_path / "cache" / first.source_digest
    cached = entry / "train.safetensors"
    cached.write_bytes(cached.read_bytes()[:64])

    second = load_dataset(DatasetSpec(str(parquet_dir)), cache_dir=tmp_path / "cache")

    assert torch.equal(first.train.images, second.train.images)
    assert (entry / "train.safetensors").stat().st_size > 64
