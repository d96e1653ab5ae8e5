"""Parsing and resolving forget requests."""

from __future__ import annotations

import hashlib

import pandas as pd
import pytest

from megu_core.data import DatasetSpec, load_dataset
from megu_core.errors import ForgetRequestError
from megu_core.forget import parse_forget_request, resolve_forget_request
from tests.factories import write_parquet_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = write_parquet_dataset(tmp_path_factory.mktemp("data") / "tiny", {"train": 10, "test": 4})
    spec = DatasetSpec(str(root), label_column="coarse_label", fine_label_column="fine_label")
    return load_dataset(spec, cache_dir=tmp_path_factory.mktemp("cache"))


def test_class_request_selects_whole_classes(dataset):
    resolved = resolve_forget_request("class:red_things,blue things", dataset)

    assert len(resolved) == 40
    assert resolved.target_classes == (0, 2)
    assert set(dataset.train.labels[resolved.indices].tolist()) == {0, 2}
    assert int(resolved.forgotten_test_mask(dataset).sum()) == 16


def test_subclass_request_needs_fine_labels(dataset):
    resolved = resolve_forget_request("subclass:sea", dataset)

    assert len(resolved) == 10
    assert resolved.target_fine_class == 5
    assert resolved.target_classes == ()
    assert set(dataset.train.labels[resolved.indices].tolist()) == {2}


def test_random_fraction_and_count_are_seeded(dataset):
    fraction = resolve_forget_request(parse_forget_request("random:0.25", seed=3), dataset)
    again = resolve_forget_request(parse_forget_request("random:0.25,seed=3"), dataset)
    other = resolve_forget_request(parse_forget_request("random:0.25,seed=4"), dataset)
    count = resolve_forget_request("random:7", dataset)

    assert len(fraction) == 20
    assert fraction.sample_ids == again.sample_ids
    assert fraction.sample_ids != other.sample_ids
    assert len(count) == 7
    assert fraction.forgotten_test_mask(dataset) is None


def test_ids_request_from_text_and_parquet(dataset, tmp_path):
    wanted = list(dataset.train.sample_ids[3:6])
    text_file = tmp_path / "ids.txt"
    text_file.write_text("# forget these\n" + "\n".join(wanted) + "\n\n")
    parquet_file = tmp_path / "ids.parquet"
    pd.DataFrame({"sample_id": wanted}).to_parquet(parquet_file)

    from_text = resolve_forget_request(f"ids:{text_file}", dataset)
    from_parquet = resolve_forget_request(f"ids:{parquet_file}", dataset)

    assert from_text.sample_ids == tuple(sorted(wanted))
    assert from_parquet.ids_hash == from_text.ids_hash
    assert from_text.indices.tolist() == [3, 4, 5]


def test_ids_hash_is_sha256_of_sorted_ids(dataset):
    resolved = resolve_forget_request("subclass:rose", dataset)

    expected = hashlib.sha256("\n".join(sorted(resolved.sample_ids)).encode()).hexdigest()

    assert resolved.ids_hash == expected
    assert len(resolved.request_id) == 12


def test_unknown_class_lists_valid_names(dataset):
    with pytest.raises(
        ForgetRequestError, match="unknown class 'cat'; valid names: red_things, green_things"
    ):
        resolve_forget_request("class:cat", dataset)


def test_unknown_fine_class_lists_valid_names(dataset):
    with pytest.raises(ForgetRequestError, match="valid names: rose, apple, leaf"):
        resolve_forget_request("subclass:tulip", dataset)


def test_forgetting_everything_is_rejected(dataset):
    with pytest.raises(ForgetRequestError, match="whole training set.*valid names"):
        resolve_forget_request("class:red_things,green_things,blue_things,grey_things", dataset)


def test_empty_forget_set_is_rejected(dataset, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")

    with pytest.raises(ForgetRequestError, match="empty forget set"):
        resolve_forget_request(f"ids:{empty}", dataset)


def test_unknown_ids_are_named(dataset, tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text("train/nope.png\n")

    with pytest.raises(ForgetRequestError, match="train/nope.png"):
        resolve_forget_request(f"ids:{ids}", dataset)


@pytest.mark.parametrize(
    "text",
    [
        "cat",
        "class:",
        "delete:cat",
        "random:0",
        "random:1.5",
        "random:abc",
        "random:0.1,steps=3",
        "subclass:a,b",
    ],
)
def test_malformed_requests_rejected(text):
    with pytest.raises(ForgetRequestError):
        parse_forget_request(text)


def test_subclass_without_fine_labels_explained(tmp_path):
    root = write_parquet_dataset(tmp_path / "plain", {"train": 4, "test": 2})
    plain = load_dataset(DatasetSpec(str(root)), cache_dir=tmp_path / "cache")

    with pytest.raises(ForgetRequestError, match="needs fine labels"):
        resolve_forget_request("subclass:rose", plain)


def test_random_request_larger_than_split(dataset):
    with pytest.raises(ForgetRequestError, match="training split has 80"):
        resolve_forget_request("random:500", dataset)
