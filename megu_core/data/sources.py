"""Dataset sources: a local Hugging Face Parquet folder, a Hub dataset id, or an ImageFolder tree.

A source is first resolved to a list of files (cheap), so that the decoded-tensor cache can be
keyed by their content before any image is decoded; `read_split` then yields the encoded images
and labels of one split.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from megu_core.data.catalog import CATALOG, CatalogEntry
from megu_core.errors import DatasetError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class DatasetSpec:
    """The dataset to load (a catalog name, a local folder or a Hub id) and the labels to train on."""

    source: str  # "cifar10", "/path/to/folder", "hub:owner/name" or "owner/name"
    label_column: str | None = None  # None: the catalog's choice, else "label"
    fine_label_column: str | None = None  # a finer labelling kept for sub-class requests
    image_column: str = "img"
    image_size: int = 32  # images of another size are resized (ImageFolder) or rejected (Parquet)


@dataclass(frozen=True)
class SourceFiles:
    """A resolved source: its layout, its files per split and the label columns to read."""

    name: str
    layout: str  # "parquet" or "imagefolder"
    root: Path
    files: dict[str, tuple[Path, ...]]  # split -> files (Parquet shards or image files)
    label_column: str
    fine_label_column: str | None
    image_column: str
    image_size: int
    class_names: tuple[str, ...] = field(default=())  # ImageFolder: from the folder names

    @property
    def split_names(self) -> list[str]:
        return sorted(self.files)


@dataclass
class EncodedSplit:
    """The encoded images of one split with their labels, before decoding."""

    name: str
    encoded: list[bytes]
    labels: np.ndarray  # (n,) int64
    fine_labels: np.ndarray | None  # (n,) int64
    sample_ids: list[str]
    origins: list[str]  # "file, row N" for error messages


def data_dir() -> Path | None:
    """Return the folder that contains local copies of catalog datasets (MEGU_DATA_DIR), if set."""
    value = os.environ.get("MEGU_DATA_DIR")
    return Path(value).expanduser() if value else None


def resolve_source(spec: DatasetSpec) -> SourceFiles:
    """Turn a dataset spec into concrete files, downloading from the Hub only when needed."""
    entry = CATALOG.get(spec.source)
    if entry is not None:
        return _resolve_catalog(spec, entry)

    path = Path(spec.source).expanduser()
    if path.exists():
        return _resolve_local(spec, path, name=path.name)

    if spec.source.startswith("hub:") or _looks_like_hub_id(spec.source):
        hub_id = spec.source.removeprefix("hub:")
        return _resolve_local(spec, download_from_hub(hub_id), name=hub_id.split("/")[-1])

    raise DatasetError(
        f"dataset source {spec.source!r} is neither a known dataset ({', '.join(CATALOG)}), "
        "an existing folder, nor a Hub id such as 'hub:uoft-cs/cifar10'"
    )


def _resolve_catalog(spec: DatasetSpec, entry: CatalogEntry) -> SourceFiles:
    spec = DatasetSpec(
        source=spec.source,
        label_column=spec.label_column or entry.label_column,
        fine_label_column=spec.fine_label_column or entry.fine_label_column,
        image_column=spec.image_column,
        image_size=spec.image_size,
    )
    local_root = data_dir()
    if local_root is not None and (local_root / entry.folder).is_dir():
        return _resolve_local(spec, local_root / entry.folder, name=spec.source)

    log.info(
        "%s not found under MEGU_DATA_DIR=%s; using the Hub copy %s",
        spec.source,
        local_root,
        entry.hub_id,
    )
    return _resolve_local(spec, download_from_hub(entry.hub_id), name=spec.source)


def _looks_like_hub_id(value: str) -> bool:
    parts = value.split("/")
    return len(parts) == 2 and all(parts) and not value.startswith((".", "~"))


def download_from_hub(hub_id: str) -> Path:
    """Download the Parquet files of a Hub dataset (or reuse the local Hub cache) and return the folder.

    Respects HF_HUB_OFFLINE: with it set, only an already cached copy is used.
    """
    from huggingface_hub import snapshot_download

    try:
        # HF_HUB_CACHE is read here rather than at import time, so a changed variable takes effect.
        folder = snapshot_download(
            repo_id=hub_id,
            repo_type="dataset",
            allow_patterns=["*.parquet", "**/*.parquet"],
            cache_dir=os.environ.get("HF_HUB_CACHE") or None,
        )
    except Exception as exc:  # the hub client raises many types: offline, not found, HTTP
        raise DatasetError(
            f"could not download the Hub dataset {hub_id!r}: {exc}. Without network access, copy its "
            "Parquet files into a folder and pass that folder, or set MEGU_DATA_DIR."
        ) from exc
    return Path(folder)


def _resolve_local(spec: DatasetSpec, root: Path, name: str) -> SourceFiles:
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist or is not a folder")

    parquet_files = sorted(root.rglob("*.parquet"))
    if parquet_files:
        return SourceFiles(
            name=name,
            layout="parquet",
            root=root,
            files=_group_parquet_by_split(root, parquet_files),
            label_column=spec.label_column or "label",
            fine_label_column=spec.fine_label_column,
            image_column=spec.image_column,
            image_size=spec.image_size,
        )
    return _resolve_imagefolder(spec, root, name)


def _group_parquet_by_split(root: Path, files: Sequence[Path]) -> dict[str, tuple[Path, ...]]:
    """Group Hugging Face shard files (`<split>-00000-of-00001.parquet`) by split."""
    grouped: dict[str, list[Path]] = {}
    for path in files:
        split = path.name.split("-", 1)[0] if "-" in path.name else path.parent.name
        grouped.setdefault(split, []).append(path)
    if not grouped:
        raise DatasetError(f"no '<split>-*.parquet' files found under {root}")
    return {split: tuple(sorted(paths)) for split, paths in grouped.items()}


def _resolve_imagefolder(spec: DatasetSpec, root: Path, name: str) -> SourceFiles:
    split_dirs = sorted(p for p in root.iterdir() if p.is_dir())
    if not split_dirs:
        raise DatasetError(
            f"{root} contains no Parquet files and no split folders; expected "
            "'<root>/<split>/<class>/<image>' or Hugging Face '<split>-*.parquet' files"
        )

    class_names = sorted(
        {c.name for split_dir in split_dirs for c in split_dir.iterdir() if c.is_dir()}
    )
    if not class_names:
        raise DatasetError(f"ImageFolder {root} has split folders but no class folders inside them")

    files = {}
    for split_dir in split_dirs:
        images = sorted(
            p
            for class_dir in split_dir.iterdir()
            if class_dir.is_dir()
            for p in class_dir.rglob("*")
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if images:
            files[split_dir.name] = tuple(images)
    return SourceFiles(
        name=name,
        layout="imagefolder",
        root=root,
        files=files,
        label_column="folder",
        fine_label_column=None,
        image_column="file",
        image_size=spec.image_size,
        class_names=tuple(class_names),
    )


def read_class_names(source: SourceFiles) -> tuple[tuple[str, ...], tuple[str, ...] | None]:
    """Return the output class names and, if a fine label column is used, the fine class names."""
    if source.layout == "imagefolder":
        return source.class_names, None

    first_file = next(iter(source.files.values()))[0]
    names = _class_names_from_schema(first_file, source.label_column)
    fine_names = None
    if source.fine_label_column is not None:
        fine_names = _class_names_from_schema(first_file, source.fine_label_column)
    return names, fine_names


def _class_names_from_schema(path: Path, column: str) -> tuple[str, ...]:
    schema = pq.read_schema(path)
    if column not in schema.names:
        raise DatasetError(
            f"{path}: missing label column {column!r}; columns found: {', '.join(schema.names)}"
        )
    raw = (schema.metadata or {}).get(b"huggingface")
    try:
        features = json.loads(raw)["info"]["features"]
        return tuple(features[column]["names"])
    except (TypeError, KeyError, ValueError) as exc:
        raise DatasetError(
            f"{path}: no class names for column {column!r} in the schema metadata "
            "(key 'huggingface', info.features.<column>.names), as Hub Parquet exports carry them"
        ) from exc


def read_split(source: SourceFiles, split: str) -> EncodedSplit:
    """Read the encoded images, labels and sample ids of one split."""
    if split not in source.files:
        raise DatasetError(
            f"unknown split {split!r} in {source.root}; available splits: {', '.join(source.split_names)}"
        )
    if source.layout == "imagefolder":
        return _read_imagefolder_split(source, split)
    return _read_parquet_split(source, split)


def _read_parquet_split(source: SourceFiles, split: str) -> EncodedSplit:
    encoded: list[bytes] = []
    paths: list[str | None] = []
    origins: list[str] = []
    labels: list[np.ndarray] = []
    fine_labels: list[np.ndarray] = []

    for path in source.files[split]:
        table = _read_columns(path, source)
        images = table.column(source.image_column).combine_chunks()
        encoded.extend(images.field("bytes").to_pylist())
        paths.extend(
            images.field("path").to_pylist()
            if "path" in _struct_fields(images)
            else [None] * len(table)
        )
        origins.extend(f"{path}, row {row}" for row in range(table.num_rows))
        labels.append(_label_array(table, source.label_column, path))
        if source.fine_label_column is not None:
            fine_labels.append(_label_array(table, source.fine_label_column, path))

    return EncodedSplit(
        name=split,
        encoded=encoded,
        labels=np.concatenate(labels),
        fine_labels=np.concatenate(fine_labels) if fine_labels else None,
        sample_ids=_sample_ids(split, paths),
        origins=origins,
    )


def _read_columns(path: Path, source: SourceFiles):
    wanted = [source.image_column, source.label_column]
    if source.fine_label_column is not None:
        wanted.append(source.fine_label_column)
    try:
        schema = pq.read_schema(path)
    except Exception as exc:
        raise DatasetError(f"{path}: not a readable Parquet file ({exc})") from exc
    missing = [column for column in wanted if column not in schema.names]
    if missing:
        raise DatasetError(
            f"{path}: missing column(s) {', '.join(missing)}; columns found: {', '.join(schema.names)}. "
            "Choose the label column with --label-column."
        )
    return pq.read_table(path, columns=wanted)


def _struct_fields(array) -> list[str]:
    return [array.type.field(i).name for i in range(array.type.num_fields)]


def _label_array(table, column: str, path: Path) -> np.ndarray:
    values = table.column(column)
    if values.null_count:
        raise DatasetError(f"{path}: column {column!r} has {values.null_count} missing labels")
    return values.to_numpy().astype(np.int64)


def _sample_ids(split: str, paths: Sequence[str | None]) -> list[str]:
    """Stable ids: the original relative path when every row has a distinct one, else the row number."""
    usable = all(paths) and len(set(paths)) == len(paths)
    if not usable:
        return [f"{split}/{row:06d}" for row in range(len(paths))]
    return [p if p.startswith(f"{split}/") else f"{split}/{p}" for p in paths]  # type: ignore[union-attr]


def _read_imagefolder_split(source: SourceFiles, split: str) -> EncodedSplit:
    split_root = source.root / split
    class_index = {name: i for i, name in enumerate(source.class_names)}
    encoded, labels, ids, origins = [], [], [], []
    for path in source.files[split]:
        relative = path.relative_to(split_root)
        encoded.append(path.read_bytes())
        labels.append(class_index[relative.parts[0]])
        ids.append(f"{split}/{relative.as_posix()}")
        origins.append(str(path))
    return EncodedSplit(split, encoded, np.asarray(labels, dtype=np.int64), None, ids, origins)


def iter_source_files(source: SourceFiles) -> Iterator[Path]:
    """Yield every file of the source in a fixed order, for content hashing."""
    for split in source.split_names:
        yield from source.files[split]
