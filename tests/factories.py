"""Tiny datasets that tests build themselves: Hugging Face Parquet folders and ImageFolder trees.

Each class has its own mean colour plus noise, so a tiny network learns it within a few epochs.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

COARSE_NAMES = ["red_things", "green_things", "blue_things", "grey_things"]
FINE_NAMES = ["rose", "apple", "leaf", "frog", "sky", "sea", "rock", "cloud"]
FINE_TO_COARSE = [0, 0, 1, 1, 2, 2, 3, 3]
CLASS_COLOURS = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200], [128, 128, 128]])


def make_image(coarse: int, fine: int, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """A (size, size, 3) uint8 image: the class colour, a fine-class stripe and noise."""
    image = np.tile(CLASS_COLOURS[coarse], (size, size, 1)).astype(np.float64)
    if fine % 2:
        image[: size // 2] *= 0.6  # the second fine class of a superclass has a dark top half
    image += rng.normal(0, 25, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def encode_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def write_parquet_dataset(
    root: Path,
    per_fine_class: dict[str, int] | None = None,
    seed: int = 0,
    size: int = 32,
    with_paths: bool = True,
) -> Path:
    """Write `<root>/<split>-00000-of-00001.parquet` files in the Hugging Face layout.

    Columns: `img` (struct of bytes and path), `fine_label`, `coarse_label` and `label`
    (equal to `coarse_label`), with class names in the schema metadata.
    """
    per_fine_class = per_fine_class or {"train": 24, "test": 8}
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    metadata = {
        "info": {
            "features": {
                "img": {"_type": "Image"},
                "label": {"names": COARSE_NAMES, "_type": "ClassLabel"},
                "fine_label": {"names": FINE_NAMES, "_type": "ClassLabel"},
                "coarse_label": {"names": COARSE_NAMES, "_type": "ClassLabel"},
            }
        }
    }
    for split, count in per_fine_class.items():
        rows = {"img": [], "label": [], "fine_label": [], "coarse_label": []}
        for fine, coarse in enumerate(FINE_TO_COARSE):
            for i in range(count):
                path = f"{split}/{FINE_NAMES[fine]}/{i:04d}.png" if with_paths else None
                rows["img"].append(
                    {"bytes": encode_png(make_image(coarse, fine, rng, size)), "path": path}
                )
                rows["label"].append(coarse)
                rows["fine_label"].append(fine)
                rows["coarse_label"].append(coarse)
        table = pa.table(rows).replace_schema_metadata({"huggingface": json.dumps(metadata)})
        pq.write_table(table, root / f"{split}-00000-of-00001.parquet")
    return root


def write_imagefolder(root: Path, per_class: int = 6, seed: int = 0, size: int = 40) -> Path:
    """Write `<root>/<split>/<class>/<n>.png` with images of another size than 32."""
    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        for coarse, name in enumerate(COARSE_NAMES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(make_image(coarse, 0, rng, size)).save(folder / f"{i}.png")
    return root
