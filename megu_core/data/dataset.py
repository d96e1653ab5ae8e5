"""The in-memory form of a decoded image-classification split."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ImageSplit:
    """One split of a dataset, decoded into tensors.

    `labels` are the output classes the model is trained on (for CIFAR-20, the coarse labels);
    `fine_labels` are kept when the source has a finer labelling (CIFAR-100's fine classes),
    so that sub-class forget requests can name them.
    """

    name: str  # "train" or "test"
    images: torch.Tensor  # (n, 3, h, w) uint8
    labels: torch.Tensor  # (n,) int64, indices into Dataset.class_names
    sample_ids: tuple[str, ...]  # stable across runs and sources: "<split>/<original path>"
    fine_labels: torch.Tensor | None = None  # (n,) int64, indices into Dataset.fine_class_names

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class Dataset:
    """A decoded dataset: its splits, class names and, where present, the fine labelling."""

    name: str
    splits: dict[str, ImageSplit]
    class_names: tuple[str, ...]
    fine_class_names: tuple[str, ...] | None = None
    fine_to_class: tuple[int, ...] | None = (
        None  # fine label -> output class, checked against the data
    )
    source_digest: str = ""  # content hash of the source files

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def train(self) -> ImageSplit:
        return self.split("train")

    @property
    def test(self) -> ImageSplit:
        return self.split("test")

    def split(self, name: str) -> ImageSplit:
        """Return the split called `name`, or raise naming the splits that exist."""
        if name not in self.splits:
            from megu_core.errors import DatasetError

            raise DatasetError(
                f"dataset {self.name!r} has no split {name!r}; available splits: "
                f"{', '.join(sorted(self.splits))}"
            )
        return self.splits[name]
