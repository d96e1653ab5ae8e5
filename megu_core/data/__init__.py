"""Datasets: sources, the decoded-tensor cache and batched on-device augmentation."""

from megu_core.data.cache import load_dataset, megu_home
from megu_core.data.dataset import Dataset, ImageSplit
from megu_core.data.sources import DatasetSpec

__all__ = ["Dataset", "DatasetSpec", "ImageSplit", "load_dataset", "megu_home"]
