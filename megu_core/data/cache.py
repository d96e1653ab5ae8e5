"""Decode a dataset once into uint8 tensors and keep them on disk, keyed by the source content.

A second run with unchanged source files loads the tensors from the cache in about a second
instead of decoding tens of thousands of images again.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from megu_core.data.catalog import CIFAR100_FINE_TO_COARSE
from megu_core.data.dataset import Dataset, ImageSplit
from megu_core.data.sources import (
    DatasetSpec,
    EncodedSplit,
    SourceFiles,
    iter_source_files,
    read_class_names,
    read_split,
    resolve_source,
)
from megu_core.errors import DatasetError

log = logging.getLogger(__name__)

# Bump when decoding or the cache format changes, so that old entries are not reused.
CACHE_FORMAT_VERSION = "1"
CIFAR100_FINE_CLASS_COUNT = 100


def megu_home() -> Path:
    """Return MEGU_HOME (default ./.megu), where caches and artifacts live."""
    return Path(os.environ.get("MEGU_HOME", ".megu")).expanduser()


def load_dataset(spec: DatasetSpec, cache_dir: Path | None = None) -> Dataset:
    """Load a dataset as uint8 tensors, decoding it only when the cache has no entry for its content."""
    source = resolve_source(spec)
    digest = source_digest(source)
    entry = (cache_dir or megu_home() / "datasets") / digest

    if (entry / "meta.json").is_file():
        log.info("loading %s from the tensor cache %s", source.name, entry)
        try:
            return _read_cache(entry, source.name, digest)
        except (SafetensorError, OSError, ValueError, KeyError) as exc:
            log.warning(
                "the tensor cache %s is unreadable (%s); decoding the dataset again", entry, exc
            )
            shutil.rmtree(entry, ignore_errors=True)

    dataset = decode_dataset(source, digest)
    _write_cache(entry, dataset)
    return dataset


def source_digest(source: SourceFiles) -> str:
    """Hash the source files' content together with every setting that changes the decoded tensors."""
    hasher = hashlib.sha256()
    settings = {
        "format": CACHE_FORMAT_VERSION,
        "layout": source.layout,
        "label_column": source.label_column,
        "fine_label_column": source.fine_label_column,
        "image_column": source.image_column,
        "image_size": source.image_size,
    }
    hasher.update(json.dumps(settings, sort_keys=True).encode())
    for path in iter_source_files(source):
        hasher.update(path.relative_to(source.root).as_posix().encode())
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                hasher.update(block)
    return hasher.hexdigest()


def decode_dataset(source: SourceFiles, digest: str = "") -> Dataset:
    """Decode every split of a source into tensors and check its labels."""
    class_names, fine_names = read_class_names(source)
    splits = {}
    for split in source.split_names:
        encoded = read_split(source, split)
        _check_label_range(encoded, class_names, fine_names)
        splits[split] = ImageSplit(
            name=split,
            images=decode_images(encoded, source.image_size, resize=source.layout == "imagefolder"),
            labels=torch.from_numpy(encoded.labels),
            sample_ids=tuple(encoded.sample_ids),
            fine_labels=None
            if encoded.fine_labels is None
            else torch.from_numpy(encoded.fine_labels),
        )
        log.info("decoded %d %s images of %s", len(splits[split]), split, source.name)

    fine_to_class = None
    if fine_names is not None:
        fine_to_class = fine_to_class_map(splits, len(fine_names), class_names, fine_names)
    return Dataset(source.name, splits, class_names, fine_names, fine_to_class, digest)


def _check_label_range(encoded: EncodedSplit, class_names, fine_names) -> None:
    for values, names, what in (
        (encoded.labels, class_names, "label"),
        (encoded.fine_labels, fine_names, "fine label"),
    ):
        if values is None or len(values) == 0:
            continue
        bad = np.flatnonzero((values < 0) | (values >= len(names)))
        if bad.size:
            row = int(bad[0])
            raise DatasetError(
                f"{encoded.origins[row]}: {what} {int(values[row])} is outside 0..{len(names) - 1} "
                f"({len(names)} class names in the schema)"
            )


def decode_images(encoded: EncodedSplit, image_size: int, resize: bool) -> torch.Tensor:
    """Decode encoded images into one (n, 3, size, size) uint8 tensor, in two threads."""
    out = np.empty((len(encoded.encoded), image_size, image_size, 3), dtype=np.uint8)

    def decode_one(row: int) -> None:
        out[row] = _decode(encoded.encoded[row], encoded.origins[row], image_size, resize)

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        list(pool.map(decode_one, range(len(encoded.encoded)), chunksize=512))
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def _decode(data: bytes | None, origin: str, image_size: int, resize: bool) -> np.ndarray:
    if not data:
        raise DatasetError(f"{origin}: the image is empty")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image = image.convert("RGB")
            if image.size != (image_size, image_size):
                if not resize:
                    raise DatasetError(
                        f"{origin}: image is {image.size[0]}x{image.size[1]}, expected "
                        f"{image_size}x{image_size}; set image_size to match the dataset"
                    )
                image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
            return np.asarray(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        if isinstance(exc, DatasetError):
            raise
        reason = str(exc).split(" <_io.BytesIO")[0]  # PIL appends the buffer's repr
        raise DatasetError(f"{origin}: corrupt or unreadable image ({reason})") from exc


def fine_to_class_map(
    splits: dict[str, ImageSplit], num_fine: int, class_names, fine_names
) -> tuple[int, ...]:
    """Derive the fine-to-output-class map from the data and check that it is a function."""
    mapping = [-1] * num_fine
    for split in splits.values():
        for fine, coarse in set(
            zip(split.fine_labels.tolist(), split.labels.tolist(), strict=True)
        ):
            if mapping[fine] not in (-1, coarse):
                raise DatasetError(
                    f"fine class {fine_names[fine]!r} appears under two output classes "
                    f"({class_names[mapping[fine]]!r} and {class_names[coarse]!r}) in split {split.name!r}"
                )
            mapping[fine] = coarse

    is_cifar100 = num_fine == CIFAR100_FINE_CLASS_COUNT and len(class_names) == 20
    if is_cifar100 and tuple(mapping) != CIFAR100_FINE_TO_COARSE:
        wrong = [
            fine_names[i]
            for i, (a, b) in enumerate(zip(mapping, CIFAR100_FINE_TO_COARSE, strict=True))
            if a != b
        ]
        raise DatasetError(
            f"the fine-to-coarse map in the data differs from the official CIFAR-100 one for: {', '.join(wrong[:10])}"
        )
    return tuple(mapping)


def _write_cache(entry: Path, dataset: Dataset) -> None:
    """Write the tensors and metadata to a temporary folder and rename it into place."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=entry.parent))
    try:
        meta = {
            "name": dataset.name,
            "class_names": list(dataset.class_names),
            "fine_class_names": None
            if dataset.fine_class_names is None
            else list(dataset.fine_class_names),
            "fine_to_class": None if dataset.fine_to_class is None else list(dataset.fine_to_class),
            "splits": {},
        }
        for name, split in dataset.splits.items():
            tensors = {"images": split.images, "labels": split.labels}
            if split.fine_labels is not None:
                tensors["fine_labels"] = split.fine_labels
            save_file(tensors, staging / f"{name}.safetensors")
            meta["splits"][name] = list(split.sample_ids)
        (staging / "meta.json").write_text(json.dumps(meta))
        os.replace(staging, entry)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if (entry / "meta.json").is_file():
            return  # another process finished the same entry first
        raise


def _read_cache(entry: Path, name: str, digest: str) -> Dataset:
    meta = json.loads((entry / "meta.json").read_text())
    splits = {}
    for split, sample_ids in meta["splits"].items():
        tensors = load_file(entry / f"{split}.safetensors")
        splits[split] = ImageSplit(
            name=split,
            images=tensors["images"],
            labels=tensors["labels"],
            sample_ids=tuple(sample_ids),
            fine_labels=tensors.get("fine_labels"),
        )
    fine_names = meta["fine_class_names"]
    fine_to_class = meta["fine_to_class"]
    return Dataset(
        name,
        splits,
        tuple(meta["class_names"]),
        None if fine_names is None else tuple(fine_names),
        None if fine_to_class is None else tuple(fine_to_class),
        digest,
    )
