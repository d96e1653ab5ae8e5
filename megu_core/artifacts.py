"""Parquet artifacts of the pipeline: declared schemas, checked reads and writes, atomic files.

Every artifact kind has one schema in `SCHEMAS`. `write_table` and `read_table` check tables
against it, so a file with a missing, extra or mistyped column raises instead of being used.
To add a kind, add an entry to `SCHEMAS` built from `pa.field`, `vector_field` and
`choice_field`.

Every file is written to a temporary file in the target folder, flushed to disk and renamed
into place with `os.replace`, so a crash leaves either the old file or the new one, never a
half-written artifact.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from megu_core.errors import ArtifactError

logger = logging.getLogger(__name__)

# Field metadata for the checks that a pyarrow type alone cannot express.
VECTOR_METADATA_KEY = b"megu.vector"  # marks a fixed_size_list<float32>[d] column of any d
CHOICES_METADATA_KEY = b"megu.choices"  # comma-separated allowed values of a string column
KIND_METADATA_KEY = b"megu.kind"  # schema metadata of a written file: its artifact kind

PathLike = str | os.PathLike[str]


def vector_field(name: str) -> pa.Field:
    """Declare a required column of float32 vectors whose size d is fixed per file."""
    # The declared type is a placeholder: the writer's table decides d.
    metadata = {VECTOR_METADATA_KEY: b"fixed_size_list<float32>[d]"}
    return pa.field(name, pa.list_(pa.float32()), nullable=False, metadata=metadata)


def choice_field(name: str, choices: Sequence[str]) -> pa.Field:
    """Declare a required string column whose values must be one of `choices`."""
    metadata = {CHOICES_METADATA_KEY: ",".join(choices).encode()}
    return pa.field(name, pa.string(), nullable=False, metadata=metadata)


def _required(name: str, type_: pa.DataType) -> pa.Field:
    return pa.field(name, type_, nullable=False)


def _optional(name: str, type_: pa.DataType) -> pa.Field:
    return pa.field(name, type_, nullable=True)


_SAMPLE_ID = _required("sample_id", pa.string())  # "<split>/<original path>", stable across runs
_SPLIT = _required("split", pa.string())
_LABEL = _required("label", pa.int64())  # output class index
_FINE_LABEL = _optional("fine_label", pa.int64())  # null where the dataset has no fine labelling
_TARGET_INDEX = _required("target_index", pa.int64())  # index of the target concept
_UTC_TIME = pa.string()  # ISO 8601 in UTC with microseconds, so text order is time order

SCHEMAS: dict[str, pa.Schema] = {
    "samples": pa.schema(
        [_SAMPLE_ID, _SPLIT, _LABEL, _FINE_LABEL, _required("in_forget", pa.bool_())]
    ),
    "features": pa.schema(
        [
            _SAMPLE_ID,
            _SPLIT,
            _LABEL,
            _FINE_LABEL,
            _required("prediction", pa.int64()),
            _required("confidence", pa.float32()),  # softmax probability of the prediction
            vector_field("feature"),  # penultimate feature g0(x)
        ]
    ),
    "concept_scores": pa.schema(
        [
            _required("target", pa.string()),
            _TARGET_INDEX,
            _required("candidate", pa.string()),
            _required("candidate_index", pa.int64()),
            _required("score", pa.float64()),  # in [0, 1]
            _required("oracle", pa.string()),
            _required("model", pa.string()),
            _required("prompt_version", pa.string()),
        ]
    ),
    "transition_matrix": pa.schema(
        [
            _required("row", pa.int64()),
            _required("column", pa.int64()),
            _required("row_name", pa.string()),
            _required("column_name", pa.string()),
            _required("probability", pa.float64()),
        ]
    ),
    "perturbing_labels": pa.schema(
        [
            _SAMPLE_ID,
            _TARGET_INDEX,
            _required("perturbing_label", pa.int64()),
            vector_field("soft_target"),  # distribution over the output classes
        ]
    ),
    "noise_pairs": pa.schema(
        [
            _TARGET_INDEX,
            choice_field("kind", ["negative", "positive"]),
            vector_field("vector"),
            _required("norm", pa.float64()),
            _optional("final_loss", pa.float64()),  # null where no optimisation ran
        ]
    ),
    "noise_per_sample": pa.schema(
        [
            _SAMPLE_ID,
            _TARGET_INDEX,
            _required("negative_norm", pa.float64()),
            _required("positive_norm", pa.float64()),
            _required("head_prediction", pa.int64()),  # frozen head's class for z + n_neg + n_pos
            vector_field("feature_target"),  # z* = z + n_neg + n_pos, the finetuning target
        ]
    ),
    "subspaces": pa.schema(
        [
            _TARGET_INDEX,
            choice_field("kind", ["shared", "specific"]),
            _required("rank", pa.int64()),  # position of the basis vector, 0 = strongest
            vector_field("basis_vector"),
        ]
    ),
    "metrics": pa.schema(
        [
            _required("metric", pa.string()),
            _required("value", pa.float64()),
            _required("model", pa.string()),
            _optional("split", pa.string()),  # null for metrics over several splits
        ]
    ),
    "per_sample": pa.schema(
        [
            _SAMPLE_ID,
            _SPLIT,
            _LABEL,
            _required("prediction", pa.int64()),
            _required("loss", pa.float32()),  # cross-entropy against `label`
            _required("confidence", pa.float32()),
            _required("entropy", pa.float32()),  # of the softmax, in nats
            _required("true_prob", pa.float32()),  # softmax probability of `label`
            _required("in_forget", pa.bool_()),
        ]
    ),
    # One row per benchmark run (scenario, target, method, seed) with every metric and its gap
    # to the gold retrain of the same seed. Metrics are null where a run failed or was skipped.
    "benchmark_results": pa.schema(
        [
            _required("scenario", pa.string()),
            _required("dataset", pa.string()),
            _required("target", pa.string()),
            _required("forget_request", pa.string()),
            _optional("num_forget", pa.int64()),
            _required("method", pa.string()),  # a registered method, or "original"
            _required("seed", pa.int64()),
            choice_field("status", ["ok", "failed", "skipped"]),
            _optional("error", pa.string()),  # why a run failed or was skipped
            _optional("forget_accuracy", pa.float64()),
            _optional("retain_accuracy", pa.float64()),
            _optional("test_accuracy", pa.float64()),
            _optional("test_forgotten_accuracy", pa.float64()),
            _optional("test_retained_accuracy", pa.float64()),
            _optional("mia_entropy", pa.float64()),
            _optional("mia_confidence", pa.float64()),
            _optional("gap_forget_accuracy", pa.float64()),
            _optional("gap_retain_accuracy", pa.float64()),
            _optional("gap_test_accuracy", pa.float64()),
            _optional("gap_test_forgotten_accuracy", pa.float64()),
            _optional("gap_test_retained_accuracy", pa.float64()),
            _optional("gap_mia_entropy", pa.float64()),
            _optional("gap_mia_confidence", pa.float64()),
            _optional("avg_gap", pa.float64()),
            _optional("seconds", pa.float64()),  # the unlearning step alone, or the training run
            _optional("retrain_seconds", pa.float64()),  # the gold retrain of the same seed
            _optional("time_ratio", pa.float64()),  # seconds / retrain_seconds
            _optional("changed_fraction", pa.float64()),  # parameter entries unlearning changed
            _required("preset", pa.string()),
            _required("base_width", pa.int64()),
        ]
    ),
    # Mean and standard deviation per scenario, method and metric over targets and seeds.
    "benchmark_summary": pa.schema(
        [
            _required("scenario", pa.string()),
            _required("method", pa.string()),
            _required("metric", pa.string()),
            _optional("mean", pa.float64()),  # null when no run of the method succeeded
            _optional("std", pa.float64()),  # sample standard deviation; null for a single run
            _required("runs", pa.int64()),  # successful runs behind the mean
        ]
    ),
    # Long format, so that new quantities need no schema change: one row per value, with
    # `column` set for pairwise quantities such as prototype cosine similarity.
    "entanglement": pa.schema(
        [
            _required("model", pa.string()),
            _required("quantity", pa.string()),
            _required("row", pa.int64()),
            _required("row_name", pa.string()),
            _optional("column", pa.int64()),
            _optional("column_name", pa.string()),
            _required("value", pa.float64()),
        ]
    ),
    # One queued forget request and, once processed, its audit record (megu_core.request_queue).
    "forget_request": pa.schema(
        [
            _required("request_id", pa.string()),  # queue id, e.g. 20250101-120000-a1b2c3
            _required("forget", pa.string()),  # the request as submitted, e.g. class:cat
            _optional("note", pa.string()),
            _optional("dataset", pa.string()),  # null: the processing flow's default
            _optional("method", pa.string()),  # null: the processing flow's default
            choice_field("status", ["pending", "running", "done", "failed"]),
            _required("submitted_at", _UTC_TIME),
            _optional("claimed_at", _UTC_TIME),
            _optional("finished_at", _UTC_TIME),
            _optional("worker", pa.string()),  # host:pid of the process that claimed it
            _optional("flow_run_id", pa.string()),  # Prefect flow run that processed it
            _optional("error", pa.string()),
            _optional("resolved_request", pa.string()),  # canonical form of `forget`
            _optional("forget_set_id", pa.string()),  # hash of the request and its sample ids
            _optional("num_forget", pa.int64()),
            _optional("forget_ids_sha256", pa.string()),  # sha256 of the sorted sample ids
            _optional("registered_model", pa.string()),
            _optional("source_version", pa.int64()),  # version the unlearning started from
            _optional("unlearned_version", pa.int64()),
            _optional("mlflow_run_id", pa.string()),
            _optional("metrics", pa.string()),  # JSON: {model role: {metric: value}}
            _optional("verdict", pa.string()),  # passed or failed; null until processed
            _optional("verdict_checks", pa.string()),  # JSON list of checks with value and limit
            _optional("thresholds", pa.string()),  # JSON: the limits the verdict applied
        ]
    ),
    # One alias move in the model registry (megu_core.promotion), appended per promote or rollback.
    "promotion": pa.schema(
        [
            _required("at", _UTC_TIME),
            _required("registered_model", pa.string()),
            _required("alias", pa.string()),
            choice_field("action", ["promote", "rollback"]),
            _required("version", pa.int64()),  # the version the alias points at afterwards
            _optional("previous_version", pa.int64()),  # null when the alias was unset
            _optional("verdict", pa.string()),  # passed, failed, or null for a version without one
            _required("forced", pa.bool_()),  # promoted despite a verdict other than passed
            _optional("reason", pa.string()),
            _required("actor", pa.string()),  # user@host that ran the command
        ]
    ),
}

# Casts that lose no value, accepted from pyarrow tables and from files written elsewhere.
_LOSSLESS_SOURCES: dict[pa.DataType, tuple[pa.DataType, ...]] = {
    pa.int64(): (pa.int8(), pa.int16(), pa.int32(), pa.uint8(), pa.uint16(), pa.uint32()),
    pa.float64(): (
        pa.float16(),
        pa.float32(),
        pa.int8(),
        pa.int16(),
        pa.int32(),
        pa.uint8(),
        pa.uint16(),
        pa.uint32(),
    ),
    pa.float32(): (pa.float16(),),
    pa.string(): (pa.large_string(), pa.string_view()),
}


# ---------------------------------------------------------------------------------------------
# Atomic files and digests


def file_digest(path: PathLike) -> str:
    """Return the sha256 hex digest of a file, read in chunks so that size does not matter."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`, then fsync it and rename it to `path` on success.

    The caller creates and writes the temporary file. If the block raises, the temporary file
    is removed and `path` keeps its old content.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")

    try:
        yield temporary
        if not temporary.exists():
            raise ArtifactError(f"the writer of {target} did not create {temporary}")
        _fsync_file(temporary)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise

    _fsync_directory(target.parent)


def atomic_write_bytes(path: PathLike, data: bytes) -> str:
    """Write `data` to `path` atomically and return its sha256 hex digest."""
    with atomic_path(path) as temporary, open(temporary, "xb") as handle:
        handle.write(data)
    return hashlib.sha256(data).hexdigest()


def atomic_write_json(path: PathLike, value: Any) -> str:
    """Write `value` as indented, key-sorted JSON atomically and return the file's digest."""
    try:
        text = json.dumps(value, indent=2, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"cannot write {path} as JSON: {exc}; pass only dicts, lists, strings, finite "
            "numbers, booleans and None"
        ) from exc
    return atomic_write_bytes(path, (text + "\n").encode())


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_directory(path: Path) -> None:
    # Makes the rename itself durable. Windows cannot open a folder, and needs no such step.
    if os.name != "posix":
        return
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


# ---------------------------------------------------------------------------------------------
# Vector columns


def vectors_to_arrow(vectors: Any) -> pa.FixedSizeListArray:
    """Convert a (n, d) floating numpy array or torch tensor to a fixed-size float32 list array.

    A C-contiguous float32 CPU array is wrapped without a copy, so the column changes if the
    input is modified in place later. Other inputs are copied once.
    """
    array = _as_float32_matrix(vectors)  # (n, d)
    values = pa.array(array.reshape(-1))  # (n * d,), shares the numpy buffer
    return pa.FixedSizeListArray.from_arrays(values, array.shape[1])


def vectors_from_arrow(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Convert a fixed-size float32 list column to a (n, d) float32 numpy array.

    A single-chunk column comes back as a read-only view of the Arrow buffer, so copy the
    result (`array.copy()`) before writing into it.
    """
    array = _single_chunk(column)
    if not _is_vector_type(array.type):
        raise ValueError(
            f"expected a fixed_size_list<float32> column, got {array.type}; build vector "
            "columns with vectors_to_arrow"
        )
    if array.null_count:
        raise ValueError(f"vector column contains {array.null_count} null vectors")

    values = array.flatten()  # (n * d,), honours slicing offsets
    if values.null_count:
        raise ValueError(f"vector column contains {values.null_count} null elements")
    return values.to_numpy(zero_copy_only=True).reshape(len(array), array.type.list_size)


def _as_float32_matrix(vectors: Any) -> np.ndarray:
    if hasattr(vectors, "detach"):  # a torch tensor, converted without importing torch here
        if not vectors.is_floating_point():
            raise ValueError(f"vectors must be floating point, got a tensor of {vectors.dtype}")
        vectors = vectors.detach().cpu().float().numpy()

    array = np.asarray(vectors)
    if array.ndim != 2 or array.shape[1] == 0:
        raise ValueError(f"vectors must have shape (n, d) with d >= 1, got shape {array.shape}")
    if array.dtype.kind != "f":
        raise ValueError(
            f"vectors must be floating point, got dtype {array.dtype}; convert with "
            ".astype(np.float32)"
        )

    array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        bad_rows = int((~np.isfinite(array)).any(axis=1).sum())
        raise ValueError(f"vectors contain NaN or infinite values in {bad_rows} rows")
    return array


def _single_chunk(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    if not isinstance(column, pa.ChunkedArray):
        return column
    if column.num_chunks == 1:
        return column.chunk(0)
    return pa.concat_arrays(column.chunks) if column.num_chunks else pa.array([], column.type)


def _is_vector_type(type_: pa.DataType) -> bool:
    return (
        pa.types.is_fixed_size_list(type_)
        and type_.value_type == pa.float32()
        and type_.list_size > 0
    )


# ---------------------------------------------------------------------------------------------
# Schema checks


def schema_for(kind: str) -> pa.Schema:
    """Return the declared schema of an artifact kind, or raise naming the known kinds."""
    if kind not in SCHEMAS:
        raise ValueError(f"unknown artifact kind {kind!r}; known kinds: {', '.join(SCHEMAS)}")
    return SCHEMAS[kind]


def check_table(table: pa.Table, kind: str, source: str) -> pa.Table:
    """Check `table` against the schema of `kind` and return it in the declared column order.

    Raises ArtifactError naming `source`, the column and the expected and found types.
    """
    declared = schema_for(kind)
    _check_schema(table.schema, declared, source)

    columns = []
    fields = []
    for field in declared:
        resolved = _resolved_field(field, table.schema.field(field.name).type)
        column = table.column(field.name).cast(resolved.type)
        _check_values(column, field, source)
        columns.append(column)
        fields.append(resolved)

    schema = pa.schema(fields, metadata={KIND_METADATA_KEY: kind.encode()})
    return pa.Table.from_arrays(columns, schema=schema)


def _check_schema(found: pa.Schema, declared: pa.Schema, source: str) -> None:
    _check_column_names(found.names, declared, source)

    for field in declared:
        found_type = found.field(field.name).type
        if not _type_matches(found_type, field):
            raise ArtifactError(
                f"{source}: column {field.name!r} has type {found_type}, expected "
                f"{_describe_type(field)}"
            )


def _check_column_names(names: list[str], declared: pa.Schema, source: str) -> None:
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ArtifactError(f"{source}: duplicate columns {duplicates}")

    missing = [name for name in declared.names if name not in names]
    extra = [name for name in names if name not in declared.names]
    if missing or extra:
        raise ArtifactError(
            f"{source}: columns do not match the declared schema; missing: {missing or 'none'}, "
            f"unexpected: {extra or 'none'}; expected exactly {declared.names}"
        )


def _type_matches(found: pa.DataType, field: pa.Field) -> bool:
    if _is_vector_field(field):
        return _is_vector_type(found)
    if found == field.type:
        return True
    if pa.types.is_null(found):
        return field.nullable
    return found in _LOSSLESS_SOURCES.get(field.type, ())


def _check_values(column: pa.ChunkedArray, field: pa.Field, source: str) -> None:
    if not field.nullable and column.null_count:
        raise ArtifactError(
            f"{source}: column {field.name!r} has {column.null_count} null values but is required"
        )

    choices = _choices(field)
    if choices:
        allowed = pc.is_in(column, value_set=pa.array(choices))
        if not pc.all(allowed).as_py():
            invalid = pc.unique(pc.filter(column, pc.invert(allowed))).to_pylist()[:5]
            raise ArtifactError(
                f"{source}: column {field.name!r} contains invalid values {invalid}; "
                f"allowed values: {choices}"
            )


def _resolved_field(field: pa.Field, found: pa.DataType) -> pa.Field:
    """Return the declared field, with a vector field's placeholder type replaced by `found`."""
    type_ = found if _is_vector_field(field) else field.type
    return pa.field(field.name, type_, nullable=field.nullable, metadata=field.metadata)


def _is_vector_field(field: pa.Field) -> bool:
    return bool(field.metadata) and VECTOR_METADATA_KEY in field.metadata


def _choices(field: pa.Field) -> list[str]:
    if not field.metadata or CHOICES_METADATA_KEY not in field.metadata:
        return []
    return field.metadata[CHOICES_METADATA_KEY].decode().split(",")


def _describe_type(field: pa.Field) -> str:
    if _is_vector_field(field):
        return "fixed_size_list<float32>[d] (build it with vectors_to_arrow)"
    return str(field.type)


# ---------------------------------------------------------------------------------------------
# pandas input


def table_from_frame(frame: pd.DataFrame, kind: str, source: str) -> pa.Table:
    """Convert a DataFrame to a checked table of `kind`, converting each column to its type.

    Vector columns contain one array or list per row. Values that do not convert exactly
    (text in a number column, a fraction in an integer column) raise ArtifactError.
    """
    declared = schema_for(kind)
    names = list(frame.columns)
    non_text = [name for name in names if not isinstance(name, str)]
    if non_text:
        raise ArtifactError(f"{source}: column names must be strings, got {non_text}")
    _check_column_names(names, declared, source)

    arrays = [_column_from_series(frame[field.name], field, source) for field in declared]
    table = pa.Table.from_arrays(arrays, names=declared.names)
    return check_table(table, kind, source)


def _column_from_series(series: pd.Series, field: pa.Field, source: str) -> pa.Array:
    if _is_vector_field(field):
        return _vectors_from_series(series, field, source)

    _check_dtype(series, field, source)
    try:
        return pa.array(series, type=field.type, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
        raise ArtifactError(
            f"{source}: column {field.name!r} of dtype {series.dtype} does not convert to "
            f"{field.type}: {exc}"
        ) from exc


def _check_dtype(series: pd.Series, field: pa.Field, source: str) -> None:
    """Reject conversions that pyarrow would perform but that change meaning."""
    dtype = series.dtype
    if field.nullable and series.isna().all():
        accepted = True  # an all-null column has no values to misread, whatever its dtype
    elif pa.types.is_boolean(field.type):
        accepted = pd.api.types.is_bool_dtype(dtype)
    elif pa.types.is_integer(field.type) or pa.types.is_floating(field.type):
        accepted = pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)
    else:
        accepted = True  # strings: pyarrow itself rejects non-string values

    if not accepted:
        raise ArtifactError(
            f"{source}: column {field.name!r} has dtype {dtype}, expected values of type "
            f"{field.type}"
        )


def _vectors_from_series(series: pd.Series, field: pa.Field, source: str) -> pa.Array:
    if len(series) == 0:
        raise ArtifactError(
            f"{source}: cannot infer the vector size of column {field.name!r} from an empty "
            "DataFrame; pass a pyarrow Table whose column comes from vectors_to_arrow"
        )
    try:
        matrix = np.stack([np.asarray(value) for value in series])  # (n, d)
        return vectors_to_arrow(matrix)
    except (TypeError, ValueError) as exc:
        raise ArtifactError(
            f"{source}: column {field.name!r} is not a list of equal-length float vectors: {exc}"
        ) from exc


# ---------------------------------------------------------------------------------------------
# Reading and writing


def write_table(data: pd.DataFrame | pa.Table, path: PathLike, kind: str) -> str:
    """Check `data` against the schema of `kind`, write it atomically to `path` as Parquet.

    Returns the sha256 hex digest of the written file. Extra, missing or mistyped columns
    raise ArtifactError before anything is written.
    """
    source = f"{kind} table for {path}"
    if isinstance(data, pd.DataFrame):
        table = table_from_frame(data, kind, source)
    elif isinstance(data, pa.Table):
        table = check_table(data, kind, source)
    else:
        raise TypeError(f"expected a pandas DataFrame or a pyarrow Table, got {type(data)}")

    with atomic_path(path) as temporary:
        pq.write_table(table, temporary)
        digest = file_digest(temporary)

    logger.debug("wrote %s (%d rows, sha256 %s)", path, table.num_rows, digest)
    return digest


def read_table(path: PathLike, kind: str) -> pa.Table:
    """Read a Parquet artifact of `kind` and check it against the declared schema.

    Raises ArtifactError naming the file when it is missing, unreadable, of another kind,
    or when a column is missing, unexpected, mistyped or has invalid values.
    """
    schema_for(kind)
    found = _read_schema(path)

    stored_kind = (found.metadata or {}).get(KIND_METADATA_KEY)
    if stored_kind is not None and stored_kind.decode() != kind:
        raise ArtifactError(f"{path} contains a {stored_kind.decode()!r} table, not {kind!r}")
    _check_schema(found, schema_for(kind), str(path))

    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise ArtifactError(f"cannot read Parquet file {path}: {exc}") from exc
    return check_table(table, kind, str(path))


def read_frame(path: PathLike, kind: str) -> pd.DataFrame:
    """Read a Parquet artifact like `read_table` and return it as a DataFrame.

    Nullable integer columns use pandas' `Int64` dtype, so their dtype does not depend on
    whether this file has nulls. Vector columns contain one float32 array per row.
    """
    table = read_table(path, kind)
    frame = table.to_pandas()

    for field in schema_for(kind):
        if field.nullable and pa.types.is_integer(field.type):
            column = table.column(field.name)
            frame[field.name] = column.to_pandas(types_mapper={column.type: pd.Int64Dtype()}.get)
    return frame


def _read_schema(path: PathLike) -> pa.Schema:
    if not Path(path).is_file():
        raise ArtifactError(f"artifact {path} not found; rerun the stage that writes it")
    try:
        return pq.read_schema(path)
    except (OSError, pa.ArrowException) as exc:
        raise ArtifactError(f"{path} is not a readable Parquet file: {exc}") from exc
