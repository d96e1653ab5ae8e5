"""PNG plots that people would rather look at than read: the transition matrix and before/after metrics."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and workers

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

BAR_METRICS = (
    ("forget_accuracy", "forget acc (%)"),
    ("retain_accuracy", "retain acc (%)"),
    ("test_accuracy", "test acc (%)"),
    ("test_forgotten_accuracy", "test acc, forgotten (%)"),
    ("mia_confidence", "MIA confidence (%)"),
    ("mia_entropy", "MIA entropy (x100)"),
)


def save_figure(fig, path: Path) -> Path:
    """Save a figure atomically: to a temporary file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".png", dir=path.parent)
    os.close(handle)
    try:
        fig.savefig(temporary, dpi=120, bbox_inches="tight")
        os.replace(temporary, path)
    finally:
        plt.close(fig)
        if os.path.exists(temporary):
            os.unlink(temporary)
    return path


def transition_heatmap(
    matrix: np.ndarray, class_names: Sequence[str], rows: Sequence[int], path: Path, title: str = ""
) -> Path:
    """Heatmap of the transition-matrix rows of the target concepts over all output classes."""
    rows = list(rows)
    data = np.asarray(matrix)[rows]  # (targets, C)
    width = max(6.0, 0.45 * len(class_names) + 2)
    fig, ax = plt.subplots(figsize=(width, 1.0 + 0.5 * len(rows)))
    image = ax.imshow(
        data, cmap="viridis", vmin=0.0, vmax=max(float(data.max()), 1e-6), aspect="auto"
    )
    ax.set_xticks(range(len(class_names)), labels=class_names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), labels=[class_names[r] for r in rows], fontsize=8)
    if len(class_names) <= 20:
        for i in range(data.shape[0]):
            for j in range(data.shape[1]):
                if data[i, j] >= 0.005:
                    ax.text(
                        j,
                        i,
                        f"{data[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white",
                    )
    ax.set_xlabel("perturbing class")
    ax.set_ylabel("forgotten concept")
    ax.set_title(title or "transition matrix")
    fig.colorbar(image, ax=ax, fraction=0.03)
    return save_figure(fig, path)


def metrics_comparison(rows: dict[str, dict[str, float]], path: Path, title: str = "") -> Path:
    """Grouped bars of accuracies and MIA figures, one group per metric, one bar per model."""
    metrics = [
        (key, label)
        for key, label in BAR_METRICS
        if any(np.isfinite(r.get(key, np.nan)) for r in rows.values())
    ]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(metrics)), 4.0))
    width = 0.8 / max(1, len(rows))
    positions = np.arange(len(metrics))
    for offset, (model_name, values) in enumerate(rows.items()):
        heights = [
            values.get(key, np.nan) * (100 if key == "mia_entropy" else 1) for key, _ in metrics
        ]
        ax.bar(positions + offset * width, np.nan_to_num(heights), width, label=model_name)
    ax.set_xticks(
        positions + width * (len(rows) - 1) / 2,
        labels=[label for _, label in metrics],
        rotation=20,
        ha="right",
    )
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8)
    ax.set_title(title or "metrics before and after unlearning")
    return save_figure(fig, path)
