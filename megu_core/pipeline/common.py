"""Shared pieces of the pipeline stages: the output record and loading the prepared data."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from megu_core.data import Dataset, load_dataset
from megu_core.errors import ArtifactError
from megu_core.experiment import dataset_spec
from megu_core.forget import ResolvedForgetRequest, parse_forget_request, resolve_forget_request
from megu_core.pipeline.config import PipelineConfig

log = logging.getLogger(__name__)


@dataclass
class StageOutput:
    """Files a stage wrote (name -> path inside its folder) and small JSON-able facts about them."""

    files: dict[str, Path]
    summary: dict[str, Any] = field(default_factory=dict)


def load_prepared(
    cfg: PipelineConfig, expected_ids_hash: str | None = None
) -> tuple[Dataset, ResolvedForgetRequest]:
    """Load the dataset (from the tensor cache) and resolve the forget request again.

    With `expected_ids_hash`, checks that the request still resolves to the forget set the
    prepare stage recorded, so that a stage never pairs artifacts of two different forget sets.
    """
    dataset = load_dataset(dataset_spec(cfg.data))
    request = resolve_forget_request(parse_forget_request(cfg.forget, cfg.forget_seed), dataset)
    if expected_ids_hash is not None and request.ids_hash != expected_ids_hash:
        raise ArtifactError(
            f"forget request {cfg.forget!r} now resolves to another forget set (ids hash "
            f"{request.ids_hash[:12]} instead of {expected_ids_hash[:12]}); the ids file or dataset "
            "changed since the prepare stage ran. Rerun from the prepare stage."
        )
    return dataset, request


def checkpoint_dir(path: Path) -> Path:
    """Return the folder of a checkpoint, given the folder or its weights file."""
    path = Path(path)
    return path.parent if path.suffix == ".safetensors" else path
