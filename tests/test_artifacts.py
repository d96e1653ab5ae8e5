import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from megu_core.artifacts import (
    SCHEMAS,
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    choice_field,
    file_digest,
    read_frame,
    read_table,
    vector_field,
    vectors_from_arrow,
    vectors_to_arrow,
    write_table,
)
from megu_core.errors import ArtifactError


def example_column(field: pa.Field, rows: int) -> pa.Array:
    """Build a valid column for `field`: one null where nullable, vectors of size 4."""
    metadata = field.metadata or {}
    if b"megu.vector" in metadata:
        vectors = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4) / 7
        return vectors_to_arrow(vectors)
    if b"megu.choices" in metadata:
        choices = metadata[b"megu.choices"].decode().split(",")
        values = [choices[i % len(choices)] for i in range(rows)]
    elif pa.types.is_string(field.type):
        values = [f"{field.name}-{i}" for i in range(rows)]
    elif pa.types.is_integer(field.type):
        values = list(range(rows))
    elif pa.types.is_floating(field.type):
        values = [i + 0.25 for i in range(rows)]
    elif pa.types.is_boolean(field.type):
        values = [i % 2 == 0 for i in range(rows)]
    else:
        raise NotImplementedError(f"no example values for {field.type}")

    if field.nullable:
        values[0] = None
    return pa.array(values, type=field.type)


def example_table(kind: str, rows: int = 3) -> pa.Table:
    schema = SCHEMAS[kind]
    return pa.table({field.name: example_column(field, rows) for field in schema})


def feature_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "sample_id": ["train/0", "train/1"],
            "split": ["train", "train"],
            "label": [3, 5],
            "fine_label": [None, 12],
            "prediction": [3, 1],
            "confidence": [0.9, 0.4],
            "feature": [np.ones(4, dtype=np.float32), np.zeros(4, dtype=np.float32)],
        }
    )


def leftover_temporary_files(folder: Path) -> list[str]:
    return [name for name in os.listdir(folder) if name.endswith(".tmp")]


# ---------------------------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize("kind", sorted(SCHEMAS))
def test_every_schema_round_trips(kind: str, tmp_path: Path) -> None:
    table = example_table(kind)
    path = tmp_path / f"{kind}.parquet"

    write_table(table, path, kind)
    read = read_table(path, kind)

    assert read.column_names == SCHEMAS[kind].names
    for name in SCHEMAS[kind].names:
        assert read.column(name).to_pylist() == table.column(name).to_pylist(), name


@pytest.mark.parametrize("kind", sorted(SCHEMAS))
def test_every_schema_round_trips_frames(kind: str, tmp_path: Path) -> None:
    path = tmp_path / f"{kind}.parquet"
    write_table(example_table(kind), path, kind)
    frame = read_frame(path, kind)

    second = tmp_path / f"{kind}-again.parquet"
    write_table(frame, second, kind)

    assert read_table(second, kind).equals(read_table(path, kind))


def test_new_schema_kind_needs_one_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    schema = pa.schema([pa.field("name", pa.string(), nullable=False), vector_field("embedding")])
    monkeypatch.setitem(SCHEMAS, "embeddings", schema)
    table = pa.table({"name": ["a"], "embedding": vectors_to_arrow(np.ones((1, 3), np.float32))})

    write_table(table, tmp_path / "e.parquet", "embeddings")

    assert read_table(tmp_path / "e.parquet", "embeddings").num_rows == 1


def test_frame_converts_declared_types(tmp_path: Path) -> None:
    path = tmp_path / "features.parquet"
    write_table(feature_frame(), path, "features")

    table = read_table(path, "features")

    assert table.schema.field("confidence").type == pa.float32()
    assert table.schema.field("feature").type.list_size == 4
    assert table.column("fine_label").to_pylist() == [None, 12]


def test_read_frame_keeps_nullable_integers(tmp_path: Path) -> None:
    path = tmp_path / "features.parquet"
    write_table(feature_frame(), path, "features")

    frame = read_frame(path, "features")

    assert str(frame["fine_label"].dtype) == "Int64"
    assert frame["fine_label"].isna().tolist() == [True, False]
    assert frame["label"].dtype == np.int64


def test_table_widens_smaller_integers(tmp_path: Path) -> None:
    table = example_table("samples").set_column(2, "label", pa.array([1, 2, 3], type=pa.int32()))

    write_table(table, tmp_path / "s.parquet", "samples")

    assert read_table(tmp_path / "s.parquet", "samples").schema.field("label").type == pa.int64()


# ---------------------------------------------------------------------------------------------
# Schema violations


def test_extra_column_is_named(tmp_path: Path) -> None:
    table = example_table("samples").append_column("weight", pa.array([1.0, 2.0, 3.0]))

    with pytest.raises(ArtifactError, match=r"unexpected: \['weight'\]"):
        write_table(table, tmp_path / "s.parquet", "samples")


def test_missing_column_is_named(tmp_path: Path) -> None:
    table = example_table("samples").drop_columns(["in_forget"])

    with pytest.raises(ArtifactError, match=r"missing: \['in_forget'\]"):
        write_table(table, tmp_path / "s.parquet", "samples")


def test_wrong_type_names_column_and_types(tmp_path: Path) -> None:
    table = example_table("samples").set_column(2, "label", pa.array(["a", "b", "c"]))

    with pytest.raises(ArtifactError) as raised:
        write_table(table, tmp_path / "s.parquet", "samples")

    message = str(raised.value)
    assert "'label'" in message
    assert "has type string" in message
    assert "expected int64" in message


def test_float64_vectors_are_rejected(tmp_path: Path) -> None:
    table = example_table("features")
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(12)), 4)
    table = table.set_column(6, "feature", vectors)

    with pytest.raises(ArtifactError, match=r"'feature' has type fixed_size_list<item: double>"):
        write_table(table, tmp_path / "f.parquet", "features")


def test_null_in_required_column_is_named(tmp_path: Path) -> None:
    table = example_table("samples").set_column(0, "sample_id", pa.array(["a", None, "c"]))

    with pytest.raises(ArtifactError, match=r"'sample_id' has 1 null values"):
        write_table(table, tmp_path / "s.parquet", "samples")


def test_invalid_choice_value_is_named(tmp_path: Path) -> None:
    table = example_table("noise_pairs")
    table = table.set_column(1, "kind", pa.array(["negative", "sideways", "positive"]))

    with pytest.raises(ArtifactError, match=r"'kind' contains invalid values \['sideways'\]"):
        write_table(table, tmp_path / "n.parquet", "noise_pairs")


def test_choice_field_declares_allowed_values() -> None:
    field = choice_field("mode", ["a", "b"])

    assert field.metadata[b"megu.choices"] == b"a,b"


def test_frame_text_in_integer_column(tmp_path: Path) -> None:
    frame = feature_frame().assign(label=["3", "5"])

    with pytest.raises(ArtifactError, match=r"'label' has dtype"):
        write_table(frame, tmp_path / "f.parquet", "features")


def test_frame_fraction_in_integer_column(tmp_path: Path) -> None:
    frame = feature_frame().assign(prediction=[1.5, 2.0])

    with pytest.raises(ArtifactError, match=r"'prediction' of dtype float64 does not convert"):
        write_table(frame, tmp_path / "f.parquet", "features")


def test_frame_integers_as_booleans_rejected(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "sample_id": ["a"],
            "split": ["train"],
            "label": [1],
            "fine_label": [None],
            "in_forget": [1],
        }
    )

    with pytest.raises(ArtifactError, match=r"'in_forget' has dtype int64"):
        write_table(frame, tmp_path / "s.parquet", "samples")


def test_frame_ragged_vectors_rejected(tmp_path: Path) -> None:
    frame = feature_frame()
    frame["feature"] = [np.ones(4, np.float32), np.ones(3, np.float32)]

    with pytest.raises(ArtifactError, match=r"'feature' is not a list of equal-length"):
        write_table(frame, tmp_path / "f.parquet", "features")


def test_frame_empty_vectors_need_table(tmp_path: Path) -> None:
    frame = feature_frame().iloc[:0]

    with pytest.raises(ArtifactError, match=r"vectors_to_arrow"):
        write_table(frame, tmp_path / "f.parquet", "features")


def test_unknown_kind_lists_known_kinds(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown artifact kind 'sample'.*samples"):
        write_table(example_table("samples"), tmp_path / "s.parquet", "sample")


def test_read_names_file_column_and_types(tmp_path: Path) -> None:
    path = tmp_path / "foreign.parquet"
    table = example_table("metrics").set_column(1, "value", pa.array(["1", "2", "3"]))
    pq.write_table(table, path)

    with pytest.raises(ArtifactError) as raised:
        read_table(path, "metrics")

    message = str(raised.value)
    assert str(path) in message
    assert "'value' has type string" in message
    assert "expected double" in message


def test_read_rejects_other_kind(tmp_path: Path) -> None:
    path = tmp_path / "features.parquet"
    write_table(feature_frame(), path, "features")

    with pytest.raises(ArtifactError, match=r"contains a 'features' table, not 'samples'"):
        read_table(path, "samples")


def test_read_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "absent.parquet"

    with pytest.raises(ArtifactError, match=r"absent.parquet not found"):
        read_table(path, "samples")


def test_read_corrupt_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.parquet"
    path.write_bytes(b"not parquet at all")

    with pytest.raises(ArtifactError, match=r"corrupt.parquet is not a readable Parquet file"):
        read_table(path, "samples")


# ---------------------------------------------------------------------------------------------
# Atomic writes and digests


def test_failing_writer_keeps_old_file(tmp_path: Path) -> None:
    path = tmp_path / "samples.parquet"
    write_table(example_table("samples"), path, "samples")
    before = path.read_bytes()
    schema = read_table(path, "samples").schema

    with (
        pytest.raises(pa.ArrowInvalid),
        atomic_path(path) as temporary,
        pq.ParquetWriter(temporary, schema) as writer,
    ):
        writer.write_table(read_table(path, "samples"))  # the first row group lands on disk
        bad_labels = pa.array(["x"]).cast(pa.int64())  # the conversion of the next one fails
        writer.write_table(pa.table({"label": bad_labels}))

    assert path.read_bytes() == before
    assert leftover_temporary_files(tmp_path) == []


def test_failing_conversion_keeps_old_file(tmp_path: Path) -> None:
    path = tmp_path / "features.parquet"
    write_table(feature_frame(), path, "features")
    before = path.read_bytes()

    with pytest.raises(ArtifactError):
        write_table(feature_frame().assign(prediction=[0.5, 1.5]), path, "features")

    assert path.read_bytes() == before
    assert leftover_temporary_files(tmp_path) == []


def test_writer_without_file_is_error(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match=r"did not create"), atomic_path(tmp_path / "x.bin"):
        pass

    assert not (tmp_path / "x.bin").exists()


def test_atomic_bytes_replace_and_digest(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "blob.bin"
    atomic_write_bytes(path, b"first")

    digest = atomic_write_bytes(path, b"second")

    assert path.read_bytes() == b"second"
    assert digest == hashlib.sha256(b"second").hexdigest()
    assert leftover_temporary_files(path.parent) == []


def test_atomic_json_sorted_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    atomic_write_json(path, {"b": 1, "a": [1.5, None]})

    with pytest.raises(ValueError, match=r"cannot write .*config.json as JSON"):
        atomic_write_json(path, {"bad": float("nan")})

    assert path.read_text() == '{\n  "a": [\n    1.5,\n    null\n  ],\n  "b": 1\n}\n'


def test_digest_changes_with_content(tmp_path: Path) -> None:
    path = tmp_path / "samples.parquet"
    first = write_table(example_table("samples"), path, "samples")

    changed = example_table("samples").set_column(2, "label", pa.array([7, 8, 9]))
    second = write_table(changed, path, "samples")

    assert first != second
    assert second == file_digest(path)


def test_digest_stable_for_same_table(tmp_path: Path) -> None:
    first = write_table(example_table("features"), tmp_path / "a.parquet", "features")
    second = write_table(example_table("features"), tmp_path / "b.parquet", "features")

    assert first == second


def test_file_digest_matches_hashlib(tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    data = os.urandom(3 * 1024 * 1024 + 17)
    path.write_bytes(data)

    assert file_digest(path) == hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------
# Vector columns


def test_numpy_vectors_wrap_without_copy() -> None:
    vectors = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)

    column = vectors_to_arrow(vectors)

    assert column.type == pa.list_(pa.float32(), 3)
    assert column.values.buffers()[1].address == vectors.ctypes.data


def test_arrow_vectors_read_without_copy() -> None:
    column = vectors_to_arrow(np.arange(12, dtype=np.float32).reshape(4, 3))

    vectors = vectors_from_arrow(pa.chunked_array([column]))

    assert vectors.shape == (4, 3)
    assert vectors.ctypes.data == column.values.buffers()[1].address
    assert not vectors.flags.writeable


def test_torch_vectors_round_trip() -> None:
    tensor = torch.randn(6, 5, dtype=torch.float64)

    vectors = vectors_from_arrow(vectors_to_arrow(tensor))

    assert vectors.dtype == np.float32
    np.testing.assert_array_equal(vectors, tensor.float().numpy())


def test_sliced_vectors_keep_offset() -> None:
    column = vectors_to_arrow(np.arange(12, dtype=np.float32).reshape(4, 3))

    vectors = vectors_from_arrow(column.slice(1, 2))

    np.testing.assert_array_equal(vectors, [[3, 4, 5], [6, 7, 8]])


def test_chunked_vectors_are_concatenated() -> None:
    first = vectors_to_arrow(np.zeros((2, 3), np.float32))
    second = vectors_to_arrow(np.ones((1, 3), np.float32))

    vectors = vectors_from_arrow(pa.chunked_array([first, second]))

    np.testing.assert_array_equal(vectors[:, 0], [0, 0, 1])


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (np.zeros((2, 3), dtype=np.int64), "floating point"),
        (torch.zeros(2, 3, dtype=torch.int32), "floating point"),
        (np.zeros(3, dtype=np.float32), r"shape \(n, d\)"),
        (np.array([[0.0, np.nan]], dtype=np.float32), "NaN or infinite values in 1 rows"),
    ],
)
def test_invalid_vectors_are_rejected(values: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        vectors_to_arrow(values)


def test_non_vector_column_rejected() -> None:
    with pytest.raises(ValueError, match=r"expected a fixed_size_list<float32> column"):
        vectors_from_arrow(pa.array([1.0, 2.0]))
