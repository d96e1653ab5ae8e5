"""Datasets that megu loads by name: where to find them and which columns contain the labels."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CatalogEntry:
    """A named dataset: its Hub id, local folder name and label columns."""

    hub_id: str
    folder: str  # looked up under MEGU_DATA_DIR before downloading
    label_column: str
    fine_label_column: str | None = None


CATALOG: dict[str, CatalogEntry] = {
    "cifar10": CatalogEntry("uoft-cs/cifar10", "cifar10", "label"),
    "cifar100": CatalogEntry("uoft-cs/cifar100", "cifar100", "fine_label"),
    # CIFAR-20: the CIFAR-100 images with the 20 superclasses as output classes.
    "cifar20": CatalogEntry("uoft-cs/cifar100", "cifar100", "coarse_label", "fine_label"),
}

# Official CIFAR-100 superclass of each fine class, in fine-label order. The loader checks the
# map it reads from the data against this table whenever the class names are CIFAR-100's.
CIFAR100_FINE_TO_COARSE: tuple[int, ...] = (
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11,
    6, 11, 5, 10, 7, 6, 13, 15, 3, 15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5,
    5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
    16, 19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
)  # fmt: skip
