"""Stage `unlearn`: run the configured method from the original model and save the unlearned model."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from megu_core.checkpoint import ModelSpec, load_checkpoint, save_checkpoint
from megu_core.devices import resolve_device
from megu_core.methods import UnlearnContext
from megu_core.pipeline.common import StageOutput, load_prepared
from megu_core.pipeline.concepts import read_perturbing_labels
from megu_core.pipeline.config import PipelineConfig
from megu_core.pipeline.noise import read_feature_targets

log = logging.getLogger(__name__)


def unlearn(
    cfg: PipelineConfig,
    checkpoint: Path,
    ids_hash: str,
    out_dir: Path,
    perturbing_path: Path | None = None,
    noise_path: Path | None = None,
    progress: bool = True,
) -> StageOutput:
    """Unlearn the forget set from the original model with `cfg.method`; time the unlearning step alone."""
    device = resolve_device(cfg.device)
    dataset, request = load_prepared(cfg, ids_hash)
    original, document = load_checkpoint(checkpoint, device)
    method = cfg.method_instance()

    inputs = {}
    forget_ids = [dataset.train.sample_ids[i] for i in request.indices]
    if perturbing_path is not None:
        soft = (
            read_perturbing_labels(perturbing_path)
            .set_index("sample_id")
            .loc[forget_ids, "soft_target"]
        )
        inputs["soft_targets"] = torch.as_tensor(np.stack(soft.to_numpy()))
    if noise_path is not None:
        inputs["feature_targets"] = read_feature_targets(noise_path, forget_ids)

    torch.manual_seed(cfg.budget.seed)
    ctx = UnlearnContext(
        original, dataset, request, device, cfg.budget, inputs, progress, train_config=cfg.train
    )
    result = method.unlearn(ctx)
    log.info("%s unlearned %d samples in %.1f s", cfg.method, len(request), result.seconds)

    changed = changed_fraction(original, result.model)
    if changed == 0.0:
        log.warning(
            "%s changed no weight of the original model, so the unlearned model equals the "
            "original; check the method's warnings above and its hyperparameters",
            cfg.method,
        )

    spec = ModelSpec(**document["model"])
    metadata = {
        "config": cfg.to_dict(),
        "role": "unlearned",
        "method": cfg.method,
        "method_params": method.params_dict(),
        "forget_request": request.request.spec,
        "request_id": request.request_id,
        "ids_hash": request.ids_hash,
        "unlearn_seconds": result.seconds,
    }
    save_checkpoint(out_dir / "checkpoint", result.model, spec, metadata)
    summary = {
        "method": cfg.method,
        "seconds": result.seconds,
        "final_loss": None if result.train is None else result.train.final_loss,
        "history": [] if result.train is None else result.train.history,
        "changed_fraction": changed,
        "details": {
            key: value
            for key, value in result.details.items()
            if isinstance(value, (bool, int, float, str))
        },
    }
    files = {
        "weights": out_dir / "checkpoint" / "model.safetensors",
        "checkpoint_config": out_dir / "checkpoint" / "config.json",
    }
    return StageOutput(files, summary)


@torch.no_grad()
def changed_fraction(original: torch.nn.Module, unlearned: torch.nn.Module) -> float:
    """Fraction of the original's parameter entries that unlearning changed (0.0: none)."""
    after = dict(unlearned.named_parameters())
    changed = total = 0
    for name, before in original.named_parameters():
        changed += int((after[name].detach().to(before.device) != before).sum())
        total += before.numel()
    return changed / total if total else 0.0
