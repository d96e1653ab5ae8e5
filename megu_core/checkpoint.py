"""Model checkpoints: safetensors weights with the resolved configuration beside them.

Nothing is ever loaded with pickle: weights come from safetensors, metadata from JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from megu_core.errors import CheckpointError
from megu_core.models import create_model

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class ModelSpec:
    """Architecture, class count and width: enough to rebuild a model before loading its weights."""

    architecture: str
    num_classes: int
    base_width: int

    def build(self) -> nn.Module:
        return create_model(self.architecture, self.num_classes, self.base_width)


def save_checkpoint(directory: Path, model: nn.Module, spec: ModelSpec, metadata: dict) -> Path:
    """Write weights and metadata to a temporary folder, then rename it to `directory`.

    An existing checkpoint at `directory` is replaced only once the new one is complete.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, staging / WEIGHTS_FILE)
        document = {"model": spec.__dict__, **metadata}
        (staging / CONFIG_FILE).write_text(
            json.dumps(document, indent=2, sort_keys=True, default=str)
        )

        if directory.exists():
            backup = directory.with_name(f".{directory.name}.old")
            shutil.rmtree(backup, ignore_errors=True)
            os.replace(directory, backup)
            os.replace(staging, directory)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def read_checkpoint_config(directory: Path) -> dict:
    """Return the JSON document saved beside the weights."""
    path = Path(directory) / CONFIG_FILE
    if not Path(directory).is_dir():
        raise CheckpointError(f"checkpoint folder {directory} does not exist")
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a megu checkpoint: {CONFIG_FILE} is missing")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc})") from exc


def load_checkpoint(directory: Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model described in the checkpoint and load its safetensors weights."""
    directory = Path(directory)
    document = read_checkpoint_config(directory)
    try:
        spec = ModelSpec(**document["model"])
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{directory / CONFIG_FILE}: invalid 'model' entry ({exc})") from exc

    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{directory}: {WEIGHTS_FILE} is missing")
    model = spec.build()
    try:
        state = load_file(weights, device=str(device))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(
            f"{weights} is not a readable safetensors file ({exc}); the file is corrupt or truncated"
        ) from exc
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{weights} does not match {spec}: {exc}") from exc
    return model.to(device), document
