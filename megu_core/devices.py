"""Device choice and the precision settings that go with it."""

from __future__ import annotations

import contextlib
import logging

import torch

log = logging.getLogger(__name__)


def resolve_device(name: str = "auto") -> torch.device:
    """Return CUDA when present for "auto", else the named device, checking it exists."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"invalid device {name!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {name!r} was requested but CUDA is not available; use 'cpu' or 'auto'"
        )
    return device


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; full float32 on CPU, where bf16 is slower on most processors."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
