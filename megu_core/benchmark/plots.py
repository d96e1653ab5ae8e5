"""Benchmark plots: Avg. Gap per method, and forget versus retain accuracy, one panel per scenario."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and workers

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from megu_core.plots import save_figure  # noqa: E402


def _metric(summary: pd.DataFrame, scenario: str, metric: str) -> pd.DataFrame:
    part = summary[(summary["scenario"] == scenario) & (summary["metric"] == metric)]
    return part.set_index("method")[["mean", "std"]]


def _panels(count: int, width_each: float, height: float):
    fig, axes = plt.subplots(1, count, figsize=(width_each * count, height), squeeze=False)
    return fig, list(axes[0])


def gap_plot(summary: pd.DataFrame, path: Path) -> Path:
    """Draw the mean Avg. Gap to the gold retrain per method as bars with standard-deviation whiskers."""
    scenarios = list(dict.fromkeys(summary["scenario"]))
    fig, axes = _panels(len(scenarios), 6.0, 4.0)
    for ax, scenario in zip(axes, scenarios, strict=True):
        gaps = _metric(summary, scenario, "avg_gap").drop(index="retrain", errors="ignore")
        gaps = gaps.dropna(subset=["mean"]).sort_values("mean")
        positions = np.arange(len(gaps))
        colours = ["tab:orange" if name == "megu" else "tab:blue" for name in gaps.index]
        ax.bar(positions, gaps["mean"], yerr=gaps["std"].fillna(0.0), color=colours, capsize=3)
        ax.set_xticks(positions, labels=list(gaps.index), rotation=45, ha="right", fontsize=8)
        ax.set_ylabel("Avg. Gap to the gold retrain (points)")
        ax.set_title(scenario)
    fig.suptitle("Avg. Gap per method (lower is closer to the gold retrain)")
    return save_figure(fig, path)


def label_groups(
    points: dict[str, tuple[float, float]], tolerance: float = 0.03
) -> list[list[str]]:
    """Group methods whose points lie within `tolerance` of each axis's span, so one label names them all.

    Without grouping, methods with nearly the same accuracies print their names on top of each
    other (on a CIFAR-10 class, the original and an SSD that changed nothing share one point).
    """
    xs = [x for x, _ in points.values()]
    ys = [y for _, y in points.values()]
    x_span = max(max(xs) - min(xs), 1e-9)
    y_span = max(max(ys) - min(ys), 1e-9)

    groups: list[list[str]] = []
    for method, (x, y) in points.items():
        for group in groups:
            first_x, first_y = points[group[0]]
            if abs(x - first_x) <= tolerance * x_span and abs(y - first_y) <= tolerance * y_span:
                group.append(method)
                break
        else:
            groups.append([method])
    return groups


def forget_retain_plot(summary: pd.DataFrame, path: Path) -> Path:
    """Plot each method at (mean forget accuracy, mean retain accuracy), with the gold retrain as a star."""
    scenarios = list(dict.fromkeys(summary["scenario"]))
    fig, axes = _panels(len(scenarios), 5.5, 4.5)
    for ax, scenario in zip(axes, scenarios, strict=True):
        forget = _metric(summary, scenario, "forget_accuracy")
        retain = _metric(summary, scenario, "retain_accuracy")
        points = {}
        for method in forget.index:
            x, y = forget.loc[method, "mean"], retain.loc[method, "mean"]
            if not (np.isnan(x) or np.isnan(y)):
                points[method] = (float(x), float(y))

        palette = plt.get_cmap("tab20")  # 20 distinct colours: the default 10 repeat in a full grid
        for index, (method, (x, y)) in enumerate(points.items()):
            marker = "*" if method == "retrain" else "o"
            size = 160 if method in ("retrain", "megu") else 40
            ax.scatter(x, y, marker=marker, s=size, label=method, color=palette(index % 20))
        if points:
            for group in label_groups(points):
                ax.annotate(
                    ", ".join(group),
                    points[group[0]],
                    fontsize=7,
                    xytext=(4, 4),
                    textcoords="offset points",
                )

        ax.set_xlabel("forget accuracy (%)")
        ax.set_ylabel("retain accuracy (%)")
        ax.set_title(scenario)
    fig.suptitle("Forget versus retain accuracy (the gold retrain is the star)")
    return save_figure(fig, path)
